"""The edges of the pieces that the formula and parity tables leave out.

Values the tables never pass (an `eps` that matters, `eps=0`, a zero gradient, the defaults
with gradients small enough for `eps` to count, a bfloat16 accumulator), each against the
formula written out in float64 or against optax. Found by mutation testing (README).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx

RNG = np.random.default_rng(7)
SEQ = RNG.normal(size=(12, 4)).astype(np.float32)
SMALL = (SEQ * 1e-3).astype(np.float32)  # gradients small enough for eps = 1e-8 to count


def run(opt, sequence):
    """Feeds `sequence[t]` as the updates of step t (jitted); returns updates and state."""
    state = opt.init(jnp.asarray(sequence[0]))
    update = jax.jit(opt.update)
    out = []
    for g in sequence:
        u, state = update(jnp.asarray(g), state)
        out.append(np.asarray(u))
    return np.stack(out), state


def run_optax(opt, sequence):
    with jax.numpy_dtype_promotion("standard"):
        return run(opt, sequence)


# ----------------------------------------------------------------------------
# Adam's family.


@pytest.mark.parametrize("eps, eps_root", [(0.1, 0.0), (0.0, 0.05), (1e-3, 1e-4)])
def test_amsgrad_is_its_formula(eps, eps_root):
    b1, b2 = 0.8, 0.9
    m, v, v_max, expected = np.zeros(4), np.zeros(4), np.zeros(4), []
    seq = SEQ * np.linspace(2.0, 0.1, len(SEQ))[:, None]  # shrinking: the max holds on
    for t, g in enumerate(seq.astype(np.float64), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        v_max = np.maximum(v_max, v / (1 - b2**t))
        expected.append(m / (1 - b1**t) / (np.sqrt(v_max + eps_root) + eps))
    got, state = run(gradtx.scale_by_amsgrad(b1, b2, eps, eps_root), seq.astype(np.float32))
    np.testing.assert_allclose(got, np.stack(expected), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(state.nu_max, v_max, rtol=2e-5)
    assert int(state.count) == len(seq)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gradtx.scale_by_adam, optax.scale_by_adam),
        (gradtx.scale_by_amsgrad, optax.scale_by_amsgrad),
    ],
)
def test_adam_defaults_match_optax_where_eps_counts(ours, theirs):
    got, _ = run(ours(), SMALL)
    want, _ = run_optax(theirs(), SMALL)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------
# RMS scaling: the defaults (optax's), and Adagrad's accumulator at zero.


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (gradtx.scale_by_rms, optax.scale_by_rms),
        (gradtx.scale_by_stddev, optax.scale_by_stddev),
        (gradtx.scale_by_rss, optax.scale_by_rss),
    ],
)
@pytest.mark.parametrize("scale", [1e-3, 1.0])
def test_rms_defaults_match_optax(ours, theirs, scale):
    seq = (SEQ * scale).astype(np.float32)
    got, _ = run(ours(), seq)
    want, _ = run_optax(theirs(), seq)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("initial, eps", [(0.0, 0.5), (0.3, 0.0), (0.2, 1e-2)])
def test_scale_by_rss_is_adagrads_formula(initial, eps):
    total, expected = np.full(4, initial, np.float64), []
    for g in SEQ.astype(np.float64):
        total = total + g**2
        expected.append(g / np.sqrt(total + eps))
    got, state = run(gradtx.scale_by_rss(initial, eps), SEQ)
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.sum_of_squares, total, rtol=1e-5)


def test_scale_by_rss_with_nothing_accumulated_emits_zero_not_nan():
    """eps = 0 and G_0 = 0: a coordinate whose gradients were all zero gets u = 0."""
    seq = np.array([[0.0, 3.0], [0.0, -4.0]], np.float32)
    got, state = run(gradtx.scale_by_rss(0.0, 0.0), seq)
    np.testing.assert_allclose(got, [[0.0, 1.0], [0.0, -0.8]], rtol=1e-6)
    assert got[:, 0].tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(state.sum_of_squares, [0.0, 25.0])


@pytest.mark.parametrize("factory", [gradtx.scale_by_rms, gradtx.scale_by_stddev])
def test_rms_accumulator_dtype_stores_and_computes_in_float32(factory):
    """bfloat16 updates, float32 moments: the stored moments are float32 math, not bfloat16."""
    seq = SEQ.astype(jnp.bfloat16)
    got, state = run(factory(0.9, 1e-3, accumulator_dtype=jnp.float32), seq)
    want, ref_state = run(factory(0.9, 1e-3), seq.astype(np.float32))
    assert got.dtype == jnp.bfloat16 and state.nu.dtype == jnp.float32
    np.testing.assert_allclose(state.nu, ref_state.nu, rtol=1e-6)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2)


# ----------------------------------------------------------------------------
# Momentum with a bfloat16 accumulator: float32 math, the stored trace rounded.


@pytest.mark.parametrize("nesterov", [False, True])
def test_trace_with_a_bfloat16_accumulator_computes_in_float32(nesterov):
    beta = 0.9
    v, emitted, stored = np.zeros(4, np.float32), [], []
    for g in SEQ:
        v_new = np.float32(beta) * v + g  # float32 math from the stored (rounded) trace
        emitted.append(g + np.float32(beta) * v_new if nesterov else v_new)
        v = v_new.astype(jnp.bfloat16).astype(np.float32)
        stored.append(v)
    opt = gradtx.trace(beta, nesterov, accumulator_dtype=jnp.bfloat16)
    got, state = run(opt, SEQ)
    assert got.dtype == np.float32 and state.trace.dtype == jnp.bfloat16
    np.testing.assert_allclose(got, np.stack(emitted), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(state.trace, np.float32), stored[-1])


# ----------------------------------------------------------------------------
# EWA: debias read from its argument, bfloat16 moments.


def test_ema_debias_is_off_by_default_and_on_when_asked():
    beta, m, plain, debiased = 0.7, np.zeros(4), [], []
    for t, g in enumerate(SEQ.astype(np.float64), start=1):
        m = beta * m + (1 - beta) * g
        plain.append(m.copy())
        debiased.append(m / (1 - beta**t))
    got, state = run(gradtx.ema(beta), SEQ)
    np.testing.assert_allclose(got, np.stack(plain), rtol=1e-5, atol=1e-7)
    got, state = run(gradtx.ema(beta, debias=True), SEQ)
    np.testing.assert_allclose(got, np.stack(debiased), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state.ema, m, rtol=1e-5)  # stores m_t, never the debiased value
    assert int(state.count) == len(SEQ)


def test_ema_with_a_float32_accumulator_of_bfloat16_updates():
    seq = SEQ.astype(jnp.bfloat16)
    got, state = run(gradtx.ema(0.9, accumulator_dtype=jnp.float32), seq)
    m = np.zeros(4, np.float64)
    for g in seq.astype(np.float64):
        m = 0.9 * m + 0.1 * g
    assert got.dtype == jnp.bfloat16 and state.ema.dtype == jnp.float32
    np.testing.assert_allclose(state.ema, m, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[-1], state.ema.astype(jnp.bfloat16))


# ----------------------------------------------------------------------------
# chain: a state of the wrong length is refused, never truncated.


@pytest.mark.parametrize("entries", [1, 3])
def test_chain_refuses_a_state_of_the_wrong_length(entries):
    opt = gradtx.chain(gradtx.trace(0.9), gradtx.scale(0.5))
    g = jnp.ones(3)
    state = opt.init(g)
    wrong = (state * 2)[:entries]
    with pytest.raises(
        ValueError, match=f"chain: state must be the tuple of 2 states .* got {entries} entries"
    ):
        opt.update(g, wrong)
    # a state restored as a list (Orbax without a target) is the same state
    assert jnp.array_equal(opt.update(g, list(state))[0], opt.update(g, state)[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.adam(0.1),
        lambda: gradtx.sgd(0.1, momentum=0.9),
        lambda: gradtx.sgd(0.1),
        lambda: gradtx.rmsprop(0.1),
        lambda: gradtx.adamw(0.1),
    ],
)
def test_weakly_typed_gradients_give_strongly_typed_states_and_updates(make):
    """The trace-time shortcut of `numerics.cast` (no cast when the dtype already matches)
    must not let a weak type through: the state would change type between steps (a retrace
    under jit, an error as a scan carry)."""
    opt = make()
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    grads = {"w": jnp.asarray(0.5) * jnp.ones(3)}  # strong
    weak = {"w": jnp.asarray(0.5)}  # a weakly typed scalar leaf
    params_weak = {"w": jnp.asarray(1.0)}
    state_weak = opt.init(params_weak)
    for g, p, s in [(grads, params, state), (weak, params_weak, state_weak)]:
        out = jax.eval_shape(lambda g, s, p: opt.update(g, s, p), g, s, p)
        for leaf in jax.tree.leaves(out):
            assert not leaf.weak_type, out
    (_, new), _ = jax.lax.scan(
        lambda c, _: ((None, opt.update(weak, c[1], params_weak)[1]), None),
        (None, state_weak),
        length=2,
    )
    assert jax.tree.structure(new) == jax.tree.structure(state_weak)


def test_a_zero_constant_weight_decay_skips_the_update():
    # as optax: no pass over the params (a measured 1.3x step for adadelta/lars otherwise),
    # so even a non-finite parameter leaves the update as it is
    params = {"w": jnp.array([jnp.inf, 2.0]), "b": jnp.array(1.0)}
    updates = {"w": jnp.array([0.5, -1.0]), "b": 3.0}
    out, _ = gradtx.add_decayed_weights(0.0).update(updates, gradtx.EmptyState(), params)
    np.testing.assert_array_equal(out["w"], updates["w"])
    assert isinstance(out["b"], jax.Array) and float(out["b"]) == 3.0
    jaxpr = jax.make_jaxpr(lambda u, p: gradtx.add_decayed_weights(0.0).update(u, None, p)[0])
    assert "mul" not in str(jaxpr(updates, params))
    # a non-zero or scheduled decay still reads the params
    out, _ = gradtx.add_decayed_weights(0.5).update(updates, gradtx.EmptyState(), params)
    np.testing.assert_array_equal(out["w"], [jnp.inf, 0.0])
