"""Each piece against its IDEAS.md formula written out by hand, and the laws it obeys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx

settings.register_profile("gradtx", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("gradtx")

SEQ = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)


def run(opt, sequence, params=None):
    """Feeds `sequence[t]` as the updates of step t; returns the emitted updates."""
    state = opt.init(jnp.asarray(sequence[0]))
    update = jax.jit(opt.update)
    out = []
    for g in sequence:
        u, state = update(jnp.asarray(g), state, params)
        out.append(np.asarray(u))
    return np.stack(out)


def ewa_by_hand(xs, beta):
    v, out = np.zeros_like(xs[0], np.float64), []
    for x in xs:
        v = beta * v + (1 - beta) * x  # IDEAS §2
        out.append(v.copy())
    return np.stack(out)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.98])
def test_ema_is_the_exponentially_weighted_average(beta):
    np.testing.assert_allclose(
        run(gradtx.ema(beta), SEQ), ewa_by_hand(SEQ, beta), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.98])
def test_bias_correction_divides_by_one_minus_beta_to_the_t(beta):
    t = np.arange(1, len(SEQ) + 1)[:, None]
    expected = ewa_by_hand(SEQ, beta) / (1 - beta**t)  # IDEAS §3
    np.testing.assert_allclose(
        run(gradtx.chain(gradtx.ema(beta), gradtx.bias_correction(beta)), SEQ),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        run(gradtx.ema(beta, debias=True), SEQ), expected, rtol=1e-5, atol=1e-6
    )


def test_uncorrected_ewa_starts_near_zero_and_corrected_starts_on_the_data():
    """IDEAS §3 with beta = 0.98: v_1 = 0.02 theta_1; the corrected v_1 = theta_1."""
    temps = np.full((300, 1), 20.0, np.float32)
    raw = run(gradtx.ema(0.98), temps)
    corrected = run(gradtx.ema(0.98, debias=True), temps)
    np.testing.assert_allclose(raw[0], 0.4, rtol=1e-5)
    np.testing.assert_allclose(corrected, temps, rtol=1e-5)
    assert abs(raw[-1, 0] - 20.0) < 0.1  # the two curves merge later


@pytest.mark.parametrize("nesterov", [False, True])
def test_trace_is_heavy_ball_momentum(nesterov):
    beta, v, expected = 0.9, np.zeros(3), []
    for g in SEQ.astype(np.float64):
        v = beta * v + g  # IDEAS §4, the variant without (1 - beta)
        expected.append(g + beta * v if nesterov else v.copy())
    np.testing.assert_allclose(
        run(gradtx.trace(beta, nesterov), SEQ), np.stack(expected), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("eps_in_sqrt", [False, True])
def test_scale_by_rms_is_rmsprop(eps_in_sqrt):
    beta, eps, s, expected = 0.9, 1e-3, np.zeros(3), []
    for g in SEQ.astype(np.float64):
        s = beta * s + (1 - beta) * g**2  # IDEAS §5
        expected.append(g / np.sqrt(s + eps) if eps_in_sqrt else g / (np.sqrt(s) + eps))
    got = run(gradtx.scale_by_rms(beta, eps, eps_in_sqrt=eps_in_sqrt), SEQ)
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-6)


def test_scale_by_adam_is_the_adam_formula():
    b1, b2, eps = 0.9, 0.999, 1e-8
    v, s, expected = np.zeros(3), np.zeros(3), []
    for t, g in enumerate(SEQ.astype(np.float64), start=1):
        v = b1 * v + (1 - b1) * g  # IDEAS §6
        s = b2 * s + (1 - b2) * g**2
        expected.append((v / (1 - b1**t)) / (np.sqrt(s / (1 - b2**t)) + eps))
    np.testing.assert_allclose(
        run(gradtx.scale_by_adam(b1, b2, eps), SEQ), np.stack(expected), rtol=1e-5, atol=1e-6
    )


def test_sgd_minimises_the_course_example():
    """IDEAS §9: f(x) = (x - 1)^2 moves to x = 1 by stepping against the gradient."""
    opt, x = gradtx.sgd(0.1), jnp.float32(5.0)
    state = opt.init(x)
    for _ in range(100):
        u, state = opt.update(2 * (x - 1), state)
        x = gradtx.apply_updates(x, u)
    assert abs(float(x) - 1.0) < 1e-6


floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(value=floats, beta=st.floats(0.0, 0.999), steps=st.integers(1, 60))
def test_debiased_ewa_of_a_constant_is_that_constant_at_every_step(value, beta, steps):
    seq = np.full((steps, 2), value, np.float32)
    got = run(gradtx.ema(beta, debias=True), seq)
    np.testing.assert_allclose(got, seq, rtol=2e-4, atol=1e-4)


@given(xs=st.lists(floats, min_size=1, max_size=5))
def test_chain_of_nothing_is_identity(xs):
    tree = {"a": jnp.asarray(xs, jnp.float32), "b": [jnp.float32(1.5)]}
    opt = gradtx.chain()
    out, state = opt.update(tree, opt.init(tree))
    assert state == ()
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), out, tree))


@given(beta=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_chain_of_one_acts_as_the_piece(beta, seed):
    seq = np.random.default_rng(seed).normal(size=(6, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        run(gradtx.chain(gradtx.trace(beta)), seq), run(gradtx.trace(beta), seq)
    )


@given(mask=st.lists(st.booleans(), min_size=3, max_size=3), seed=st.integers(0, 1000))
def test_masked_leaves_are_untouched(mask, seed):
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(size=(2,)), jnp.float32) for k in "abc"}
    mask_tree = dict(zip("abc", mask))
    opt = gradtx.masked(gradtx.chain(gradtx.trace(0.9), gradtx.scale(-3.0)), mask_tree)
    state = opt.init(params)
    for _ in range(3):
        out, state = opt.update(params, state)
    for k in "abc":
        if mask_tree[k]:
            assert not np.allclose(out[k], params[k])
        else:
            np.testing.assert_array_equal(out[k], params[k])


@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(1e-2, 10.0), seed=st.integers(0, 99))
def test_clip_by_global_norm_bounds_the_norm_and_keeps_direction(scale, max_norm, seed):
    g = {"x": jnp.asarray(np.random.default_rng(seed).normal(size=(5,)) * scale, jnp.float32)}
    opt = gradtx.clip_by_global_norm(max_norm)
    out, _ = opt.update(g, opt.init(g))
    norm_in, norm_out = float(gradtx.global_norm(g)), float(gradtx.global_norm(out))
    assert norm_out <= max_norm * (1 + 1e-5)
    if norm_in <= max_norm:
        np.testing.assert_array_equal(out["x"], g["x"])
    else:
        np.testing.assert_allclose(out["x"] * (norm_in / norm_out), g["x"], rtol=1e-4)


@given(lr=st.floats(0.0, 10.0), seed=st.integers(0, 99))
def test_scale_by_learning_rate_is_descent(lr, seed):
    g = {"x": jnp.asarray(np.random.default_rng(seed).normal(size=(4,)), jnp.float32)}
    opt = gradtx.scale_by_learning_rate(lr)
    out, _ = opt.update(g, opt.init(g))
    np.testing.assert_allclose(out["x"], -np.float32(lr) * g["x"], rtol=1e-6)


@pytest.mark.parametrize("p_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("u_dtype", [jnp.float32, jnp.bfloat16])
def test_apply_updates_keeps_each_parameter_dtype(p_dtype, u_dtype):
    params = {"w": jnp.ones(3, p_dtype), "none": None}
    updates = {"w": jnp.full(3, 0.5, u_dtype), "none": None}
    out = gradtx.apply_updates(params, updates)
    assert out["w"].dtype == p_dtype and out["none"] is None
    np.testing.assert_allclose(np.asarray(out["w"], np.float32), 1.5)
