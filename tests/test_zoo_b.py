"""Factored and per-coordinate-step optimisers: adafactor, sm3, adadelta, rprop and their pieces.

Parity with optax 0.2.8 (300 jitted steps of feedback gradients on a nested tree with leaves of
rank 0 to 3, final params, every emitted update and the final state leaf by leaf), the laws the
pieces obey, and the errors for bad input.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx
from gradtx.factored import decay_rate_pow, factored_dims

SHAPES = {"w": (3, 4), "t": (5, 3), "b": (4,), "blocks": [(2, 2, 3), ()], "small": (1, 5)}
BIG = {**SHAPES, "big": (130, 128)}  # factored by adafactor's default min_dim_size_to_factor


def make_params(shapes=SHAPES, key=0, dtype=jnp.float32):
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(key), len(leaves))
    arrays = [jax.random.normal(k, s, jnp.float32).astype(dtype) for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, arrays)


def loss(params):
    """A quadratic plus a quartic, one curvature per leaf: gradients feed back on the params."""
    leaves = jax.tree.leaves(params)
    return sum(
        (1.0 + i) * jnp.sum(x.astype(jnp.float32) ** 2) / 2
        + jnp.sum(x.astype(jnp.float32) ** 4) / 4
        for i, x in enumerate(leaves)
    )


def wd_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def lr_schedule(count):
    return 0.05 * 0.99 ** count.astype(jnp.float32)


def run(opt, params, steps=300, step_size=1.0, *, standard=False, state=None):
    """`steps` jitted steps under one `lax.scan`: (final params, stacked updates, final state)."""

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        p = jax.tree.map(lambda x, v: (x + step_size * v).astype(x.dtype), p, u)
        return (p, s), u

    ctx = jax.numpy_dtype_promotion("standard") if standard else contextlib.nullcontext()
    with ctx:
        state = opt.init(params) if state is None else state
        (p, s), us = jax.jit(lambda c: jax.lax.scan(step, c, None, steps))((params, state))
    return p, us, s


def layout(tree):
    """Key paths, shapes and dtypes of the leaves, and the node classes by name."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = str(treedef).replace("optax._src.", "").replace("optax.", "")
    return [(jax.tree_util.keystr(p), jnp.shape(x), jnp.result_type(x)) for p, x in leaves], names


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert jnp.shape(x) == jnp.shape(y)
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol
        )


def assert_parity(ours, theirs, params, steps=300, step_size=1.0, rtol=1e-5, atol=1e-6):
    p1, u1, s1 = run(ours, params, steps, step_size)
    p2, u2, s2 = run(theirs, params, steps, step_size, standard=True)
    assert_close(p1, p2, rtol, atol)
    assert_close(u1, u2, rtol, atol)
    assert layout(s1) == layout(s2)
    assert_close(s1, s2, rtol, atol)
    return p1, p2


# ----------------------------------------------------------------------------
# Adafactor and its pieces.


def custom_decay(step, decay_rate):
    return jnp.minimum(decay_rate, 1 - (step.astype(jnp.float32) + 1) ** -0.8)


ADAFACTOR = {
    "default": (dict(), BIG),
    "absolute_unfactored": (
        dict(learning_rate=0.05, multiply_by_parameter_scale=False, factored=False),
        SHAPES,
    ),
    "decay_mask_no_clip": (
        dict(
            learning_rate=0.05,
            min_dim_size_to_factor=2,
            decay_rate=0.9,
            weight_decay_rate=0.1,
            weight_decay_mask=wd_mask,
            clipping_threshold=None,
        ),
        SHAPES,
    ),
    "schedule_clip_momentum": (
        dict(
            learning_rate=lr_schedule,
            min_dim_size_to_factor=3,
            clipping_threshold=0.5,
            eps=1e-20,
            momentum=0.9,
            dtype_momentum=jnp.float32,
        ),
        SHAPES,
    ),
}


@pytest.mark.parametrize("name", ADAFACTOR)
def test_adafactor_matches_optax(name):
    kwargs, shapes = ADAFACTOR[name]
    params = make_params(shapes)
    p1, p2 = assert_parity(gradtx.adafactor(**kwargs), optax.adafactor(**kwargs), params)
    # ...and trains: the loss falls well below where it started, to optax's value.
    assert float(loss(p1)) < 0.5 * float(loss(params))
    np.testing.assert_allclose(float(loss(p1)), float(loss(p2)), rtol=1e-4)


FACTORED_PIECES = {
    "factored_rms_decay_fn": (
        lambda: gradtx.scale_by_factored_rms(
            decay_rate=0.9, min_dim_size_to_factor=2, decay_rate_fn=custom_decay
        ),
        lambda: optax.scale_by_factored_rms(
            decay_rate=0.9, min_dim_size_to_factor=2, decay_rate_fn=custom_decay
        ),
    ),
    "factored_rms_args": (
        lambda: gradtx.scale_by_factored_rms(False, 0.6, 0, 3, 1e-20),
        lambda: optax.scale_by_factored_rms(False, 0.6, 0, 3, 1e-20),
    ),
    "param_block_rms_norm": (
        lambda: gradtx.chain(
            gradtx.scale_by_param_block_rms(), gradtx.scale_by_param_block_norm(0.1)
        ),
        lambda: optax.chain(optax.scale_by_param_block_rms(), optax.scale_by_param_block_norm(0.1)),
    ),
}


@pytest.mark.parametrize("name", FACTORED_PIECES)
def test_factored_pieces_match_optax(name):
    ours, theirs = FACTORED_PIECES[name]
    assert_parity(ours(), theirs(), make_params(), steps=300, step_size=-0.01)


def test_step_offset_shifts_the_decay_schedule():
    """optax's schedule is NaN before the offset; from a count past it the two agree."""
    params = make_params()
    ours = gradtx.scale_by_factored_rms(step_offset=7, min_dim_size_to_factor=2)
    theirs = optax.scale_by_factored_rms(step_offset=7, min_dim_size_to_factor=2)
    start = ours.init(params)._replace(count=jnp.asarray(10, jnp.int32))
    optax_start = theirs.init(params)._replace(count=jnp.asarray(10, jnp.int32))
    p1, u1, s1 = run(ours, params, 50, -0.01, state=start)
    p2, u2, s2 = run(theirs, params, 50, -0.01, standard=True, state=optax_start)
    assert_close(u1, u2)
    assert_close(s1, s2)
    # Before the offset, steps count as step 0 (beta = 0): finite, the first step's update.
    grads, update = jax.grad(loss)(params), jax.jit(ours.update)
    u_early, _ = update(grads, ours.init(params))
    u_first, _ = update(grads, ours.init(params)._replace(count=jnp.asarray(7, jnp.int32)))
    assert_close(u_early, u_first, rtol=0, atol=0)


def test_adafactor_without_jit_and_from_an_optax_state():
    params = make_params()
    kwargs = dict(learning_rate=0.02, min_dim_size_to_factor=2, momentum=0.8)
    ours, theirs = gradtx.adafactor(**kwargs), optax.adafactor(**kwargs)

    def stepper(opt):
        def step(p, s):
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return gradtx.apply_updates(p, u), s

        return jax.jit(step)

    optax_step = stepper(theirs)
    with jax.numpy_dtype_promotion("standard"):
        p, s = params, theirs.init(params)
        for _ in range(4):
            p, s = optax_step(p, s)
        p_ref, s_ref = p, s
        for _ in range(4):
            p_ref, s_ref = optax_step(p_ref, s_ref)
    # An optax state (a restored checkpoint) goes straight into gradtx's update, eagerly...
    p, s = stepper(ours).__wrapped__(p, s)
    # ...and the state it returns, gradtx's classes, carries on under jit.
    gradtx_step = stepper(ours)
    for _ in range(3):
        p, s = gradtx_step(p, s)
    assert_close(p, p_ref)
    assert_close(s, s_ref)


def test_factored_state_layout_follows_the_factoring_rule():
    params = make_params(SHAPES)
    state = gradtx.scale_by_factored_rms(min_dim_size_to_factor=3).init(params)
    assert state._fields == ("count", "v_row", "v_col", "v")
    # (3, 4): factored over its largest axis (1) and second largest (0).
    assert state.v_row["w"].shape == (3,) and state.v_col["w"].shape == (4,)
    assert state.v["w"].shape == (1,)
    # (2, 2, 3) and (1, 5): second largest axis below 3, so the full second moment.
    assert state.v["blocks"][0].shape == (2, 2, 3) and state.v_row["blocks"][0].shape == (1,)
    assert state.v["small"].shape == (1, 5) and state.v_col["small"].shape == (1,)
    assert state.v["blocks"][1].shape == () and state.v["b"].shape == (4,)
    assert factored_dims((2, 5, 5, 2), True, 2) == (1, 2)  # ties broken as np.argsort does
    assert factored_dims((7, 9), False, 1) is None


def by_hand_factored(gs, beta, eps=0.0):
    """Adafactor's factored estimate for 2-D gradients, written out with numpy."""
    r = c = None
    out = []
    for t, g in enumerate(gs):
        b = beta(t)
        sq = np.abs(g) ** 2 + eps
        r = (1 - b) * sq.mean(1) + (0 if r is None else b * r)  # mean over the largest axis 1
        c = (1 - b) * sq.mean(0) + (0 if c is None else b * c)
        v_hat = np.outer(r / r.mean(), c)
        out.append(g / np.sqrt(v_hat))
    return np.stack(out)


def test_factored_rms_is_the_rank_one_estimate_by_hand():
    rng = np.random.default_rng(1)
    gs = rng.normal(size=(6, 3, 5)).astype(np.float32)
    opt = gradtx.scale_by_factored_rms(min_dim_size_to_factor=1, epsilon=0.0)
    state, outs = opt.init(jnp.zeros((3, 5))), []
    for g in gs:
        u, state = opt.update(jnp.asarray(g), state)
        outs.append(u)
    expected = by_hand_factored(gs.astype(np.float64), lambda t: 1 - (t + 1.0) ** -0.8)
    np.testing.assert_allclose(np.stack(outs), expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(decay_rate_pow(jnp.arange(4), 0.5), 1 - np.arange(1, 5) ** -0.5)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    rows=st.integers(2, 5),
    cols=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 3),
)
def test_rank_one_gradients_are_factored_exactly(rows, cols, seed, steps):
    """For g_t = s_t a b^T the squared gradients are rank one, so the factored second moment
    equals the full one and both scalings emit the same updates."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, rows) * rng.choice([-1, 1], rows)
    b = rng.uniform(0.5, 2.0, cols) * rng.choice([-1, 1], cols)
    gs = [jnp.asarray(s * np.outer(a, b), jnp.float32) for s in rng.uniform(0.5, 2, steps)]
    factored = gradtx.scale_by_factored_rms(min_dim_size_to_factor=1, epsilon=0.0)
    full = gradtx.scale_by_factored_rms(factored=False, epsilon=0.0)
    sf, sv = factored.init(gs[0]), full.init(gs[0])
    for g in gs:
        uf, sf = factored.update(g, sf)
        uv, sv = full.update(g, sv)
        np.testing.assert_allclose(uf, uv, rtol=1e-4, atol=1e-6)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(scale=st.floats(1e-3, 1e3), threshold=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_block_rms_clipping_bounds_each_leaf(scale, threshold, seed):
    updates = jax.tree.map(lambda x: scale * x, make_params(SHAPES, seed))
    clipped, _ = gradtx.clip_by_block_rms(threshold).update(updates, optax.EmptyState())
    for u, c in zip(jax.tree.leaves(updates), jax.tree.leaves(clipped)):
        rms = float(jnp.sqrt(jnp.mean(u**2)))
        assert float(jnp.sqrt(jnp.mean(c**2))) <= threshold * (1 + 1e-5)
        if rms <= threshold:
            np.testing.assert_array_equal(c, u)  # below the threshold: untouched
        else:
            np.testing.assert_allclose(c, u * threshold / rms, rtol=1e-5)  # direction kept


def test_param_block_scaling_by_hand():
    params, updates = make_params(SHAPES, 3), make_params(SHAPES, 4)
    params["b"] = jnp.zeros(4)  # below min_scale
    rms, _ = gradtx.scale_by_param_block_rms(0.01).update(updates, optax.EmptyState(), params)
    norm, _ = gradtx.scale_by_param_block_norm(0.01).update(updates, optax.EmptyState(), params)
    for u, p, r, n in zip(*map(jax.tree.leaves, (updates, params, rms, norm))):
        p = np.asarray(p, np.float64)
        np.testing.assert_allclose(r, u * max(np.sqrt(np.mean(p**2)), 0.01), rtol=1e-6)
        np.testing.assert_allclose(n, u * max(np.sqrt(np.sum(p**2)), 0.01), rtol=1e-6)


def test_no_nan_from_zero_gradients_and_params_even_without_epsilon():
    params = jax.tree.map(jnp.zeros_like, make_params(SHAPES))
    opt = gradtx.adafactor(min_dim_size_to_factor=2, eps=0.0, momentum=0.9, weight_decay_rate=0.1)
    state = opt.init(params)
    for _ in range(2):
        u, state = jax.jit(opt.update)(params, state, params)
        for x in jax.tree.leaves((u, state)):
            assert bool(jnp.all(jnp.isfinite(x)))
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(u))


def test_adafactor_keeps_bfloat16_and_takes_complex():
    params = make_params(SHAPES, dtype=jnp.bfloat16)
    opt = gradtx.adafactor(0.01, min_dim_size_to_factor=2, momentum=0.9, dtype_momentum=None)
    state = opt.init(params)
    u, state = jax.jit(opt.update)(jax.grad(loss)(params), state, params)
    assert {x.dtype for x in jax.tree.leaves(u)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state[0][1:])} == {jnp.dtype(jnp.bfloat16)}
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    u32, _ = opt.update(jax.grad(loss)(p32), opt.init(p32), p32)
    assert_close(u, u32, rtol=3e-2, atol=1e-3)

    # Complex leaves: the second moments come from |g|^2 (stored real), the phase is kept.
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4)), jnp.complex64)
    opt = gradtx.scale_by_factored_rms(min_dim_size_to_factor=2)
    state = opt.init(g)
    assert state.v_row.dtype == jnp.float32
    uc, _ = opt.update(g, state)
    ur, _ = opt.update(jnp.abs(g), opt.init(jnp.abs(g)))
    np.testing.assert_allclose(uc, np.asarray(g) * np.asarray(ur / jnp.abs(g)), rtol=1e-5)


def test_factored_state_that_does_not_fit_is_refused():
    opt = gradtx.scale_by_factored_rms(min_dim_size_to_factor=2)
    state = opt.init({"w": jnp.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"updates\[.w.\] has shape \(3, 5\), whose"):
        opt.update({"w": jnp.zeros((3, 5))}, state)
    with pytest.raises(ValueError, match="scale_by_factored_rms: tree structures differ"):
        opt.update({"v": jnp.zeros((3, 4))}, state)
    with pytest.raises(ValueError, match=r"state must be a FactoredState\(count, v_row"):
        opt.update({"w": jnp.zeros((3, 4))}, gradtx.TraceState({"w": jnp.zeros((3, 4))}))
    p, adafactor = {"w": jnp.ones((3, 4))}, gradtx.adafactor()
    with pytest.raises(TypeError, match="scale_by_param_block_rms: update needs params"):
        adafactor.update(p, adafactor.init(p))


BAD = [
    (lambda: gradtx.scale_by_factored_rms(factored=1), TypeError, "factored must be True or"),
    (
        lambda: gradtx.scale_by_factored_rms(decay_rate=-0.5),
        ValueError,
        "scale_by_factored_rms: decay_rate must be in [0, inf), got -0.5",
    ),
    (lambda: gradtx.scale_by_factored_rms(step_offset=1.5), TypeError, "step_offset must be an"),
    (
        lambda: gradtx.scale_by_factored_rms(min_dim_size_to_factor=-1),
        ValueError,
        "scale_by_factored_rms: min_dim_size_to_factor must be an integer >= 0, got -1",
    ),
    (
        lambda: gradtx.scale_by_factored_rms(epsilon=-1e-30),
        ValueError,
        "scale_by_factored_rms: epsilon must be in [0, inf]",
    ),
    (
        lambda: gradtx.scale_by_factored_rms(decay_rate_fn=0.8),
        TypeError,
        "scale_by_factored_rms: decay_rate_fn must be a callable",
    ),
    (
        lambda: gradtx.adafactor(clipping_threshold=0.0),
        ValueError,
        "clip_by_block_rms: threshold must be in (0, inf], got 0.0",
    ),
    (
        lambda: gradtx.adafactor(multiply_by_parameter_scale=None),
        TypeError,
        "adafactor: multiply_by_parameter_scale must be True or False",
    ),
    (lambda: gradtx.adafactor(-0.1), ValueError, "adafactor: learning_rate must be in [0, inf]"),
    (lambda: gradtx.adafactor(momentum=1.0), ValueError, "ema: decay must be in [0, 1)"),
    (lambda: gradtx.adafactor(momentum=0.9, dtype_momentum="int8"), ValueError, "accumulator"),
    (
        lambda: gradtx.adafactor(weight_decay_rate=-1),
        ValueError,
        "adafactor: weight_decay_rate must be in",
    ),
    (lambda: gradtx.adafactor(eps=-1.0), ValueError, "scale_by_factored_rms: epsilon"),
    (
        lambda: gradtx.scale_by_param_block_rms(-1.0),
        ValueError,
        "scale_by_param_block_rms: min_scale must be in [0, inf], got -1.0",
    ),
    (
        lambda: gradtx.scale_by_param_block_norm("big"),
        TypeError,
        "scale_by_param_block_norm: min_scale must be a real number",
    ),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=lambda x: getattr(x, "__name__", x))
def test_bad_arguments_are_refused_with_a_clear_message(make, error, message):
    with pytest.raises(error, match=__import__("re").escape(message)):
        make()


# ----------------------------------------------------------------------------
# SM3.

NO_SCALAR = {"w": (3, 4), "t": (5, 3), "b": (4,), "blocks": [(2, 2, 3), (1,)], "small": (1, 5)}


@pytest.mark.parametrize(
    "ours, theirs, step_size",
    [
        (lambda: gradtx.sm3(0.1), lambda: optax.sm3(0.1), 1.0),
        (
            lambda: gradtx.scale_by_sm3(0.5, 0.99, 1e-6),
            lambda: optax.scale_by_sm3(0.5, 0.99, 1e-6),
            -0.01,
        ),
    ],
    ids=["sm3", "scale_by_sm3_args"],
)
def test_sm3_matches_optax(ours, theirs, step_size):
    # optax's update fails on scalar leaves (its state has no accumulator for them).
    params = make_params(NO_SCALAR)
    p1, _ = assert_parity(ours(), theirs(), params, 300, step_size)
    if step_size > 0:
        assert float(loss(p1)) < 0.1 * float(loss(params))


def sm3_by_hand(gs, b1, b2=1.0, eps=1e-8):
    """SM3-II for a sequence of gradients of one leaf (rank 0, 1 or 2), with numpy."""
    shape = gs[0].shape
    mu = [np.zeros(n) for n in shape] or [np.zeros(())]
    m = np.zeros(shape)
    c = 1.0 if b2 == 1.0 else 1 - b2
    out = []
    for g in gs:
        prev = mu[0] if len(shape) < 2 else np.minimum(mu[0][:, None], mu[1][None, :])
        nu = c * np.abs(g) ** 2 + b2 * prev
        s = np.where(nu > 0, g / np.sqrt(nu + eps), 0)
        m = b1 * m + (1 - b1) * s
        mu = [nu] if len(shape) < 2 else [nu.max(1), nu.max(0)]
        out.append(m)
    return np.stack(out)


@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_sm3_by_hand_including_scalars(shape):
    rng = np.random.default_rng(2)
    gs = rng.normal(size=(8, *shape))
    gs[2] = 0  # a zero gradient: 0/0 is 0
    opt = gradtx.scale_by_sm3(0.7, 0.9 if shape == (5,) else 1.0)
    state, outs = opt.init(jnp.zeros(shape)), []
    for g in gs:
        u, state = jax.jit(opt.update)(jnp.asarray(g, jnp.float32), state)
        outs.append(u)
    expected = sm3_by_hand(gs, 0.7, 0.9 if shape == (5,) else 1.0)
    np.testing.assert_allclose(np.stack(outs), expected, rtol=2e-5, atol=1e-6)


def test_sm3_takes_optax_state_of_a_scalar_and_complex_leaves():
    params = {"s": jnp.asarray(0.5), "v": jnp.ones(3)}
    g = {"s": jnp.asarray(-2.0), "v": jnp.arange(3.0)}
    optax_state = optax.scale_by_sm3().init(params)  # {"s": []}: no accumulator for a scalar
    assert optax_state.mu["s"] == []
    opt = gradtx.scale_by_sm3()
    u_from_optax, _ = opt.update(g, optax_state)
    u, state = opt.update(g, opt.init(params))
    assert_close(u_from_optax, u, rtol=0, atol=0)
    assert [m.shape for m in state.mu["s"]] == [()]

    z = jnp.asarray([[1 + 2j, -3j], [0.5, 2 - 1j]], jnp.complex64)
    opt = gradtx.scale_by_sm3(0.0)
    state = opt.init(z)
    assert {m.dtype for m in state.mu} == {jnp.dtype(jnp.float32)}
    uc, _ = opt.update(z, state)
    ur, _ = opt.update(jnp.abs(z), opt.init(jnp.abs(z)))
    np.testing.assert_allclose(uc, np.asarray(z) * np.asarray(ur / jnp.abs(z)), rtol=1e-6)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), steps=st.integers(1, 5))
def test_sm3_accumulators_bound_adagrads_sums(seed, steps):
    """With b2 = 1, min over an entry's accumulators >= its own sum of squares (the cover
    bounds Adagrad's accumulator), with equality for vectors."""
    rng = np.random.default_rng(seed)
    gs = rng.normal(size=(steps, 3, 4)).astype(np.float32)
    opt = gradtx.scale_by_sm3()
    update = jax.jit(opt.update)
    state = opt.init({"m": jnp.zeros((3, 4)), "v": jnp.zeros(4)})
    for g in gs:
        _, state = update({"m": jnp.asarray(g), "v": jnp.asarray(g[0])}, state)
    rows, cols = (np.asarray(m, np.float64) for m in state.mu["m"])
    bound = np.minimum(rows[:, None], cols[None, :])
    sums = (gs.astype(np.float64) ** 2).sum(0)
    assert np.all(bound >= sums * (1 - 1e-5))
    np.testing.assert_allclose(state.mu["v"][0], sums[0], rtol=1e-5)


# ----------------------------------------------------------------------------
# Adadelta.


@pytest.mark.parametrize(
    "ours, theirs, step_size",
    [
        (lambda: gradtx.adadelta(1.0), lambda: optax.adadelta(1.0), 1.0),
        (
            lambda: gradtx.adadelta(lr_schedule, 0.95, 1e-4, 0.1, wd_mask),
            lambda: optax.adadelta(lr_schedule, 0.95, 1e-4, 0.1, wd_mask),
            1.0,
        ),
    ],
    ids=["adadelta", "adadelta_schedule_decay"],
)
def test_adadelta_matches_optax(ours, theirs, step_size):
    params = make_params()
    p1, _ = assert_parity(ours(), theirs(), params, 300, step_size)
    assert float(loss(p1)) < 0.9 * float(loss(params))


def test_adadelta_without_a_learning_rate_descends():
    """optax's adadelta(learning_rate=None) skips the sign flip and climbs; gradtx's takes
    the paper's step (rate 1): on the same gradients, exactly the negated updates."""
    params = make_params()
    ours, theirs = gradtx.adadelta(), optax.adadelta()
    s1, s2 = ours.init(params), theirs.init(params)
    for t in range(3):
        g = jax.tree.map(lambda p, t=t: jnp.cos(p * (t + 1)), params)
        u1, s1 = ours.update(g, s1, params)
        with jax.numpy_dtype_promotion("standard"):
            u2, s2 = theirs.update(g, s2, params)
        assert_close(u1, jax.tree.map(jnp.negative, u2), rtol=0, atol=0)
    assert_close(s1, s2)
    g = jax.grad(loss)(params)
    step, _ = ours.update(g, ours.init(params), params)
    with jax.numpy_dtype_promotion("standard"):
        climb, _ = theirs.update(g, theirs.init(params), params)
    assert float(loss(gradtx.apply_updates(params, step))) < float(loss(params))
    assert float(loss(gradtx.apply_updates(params, climb))) > float(loss(params))


def test_adadelta_complex_and_bfloat16():
    z = jnp.asarray([1 + 2j, -3j, 0.5], jnp.complex64)
    opt = gradtx.scale_by_adadelta()
    state = opt.init(z)
    assert state.e_g.dtype == state.e_x.dtype == jnp.float32
    uc, sc = opt.update(z, state)
    ur, sr = opt.update(jnp.abs(z), opt.init(jnp.abs(z)))
    np.testing.assert_allclose(uc, np.asarray(z) * np.asarray(ur / jnp.abs(z)), rtol=1e-6)
    assert_close(sc, sr)
    params = make_params(dtype=jnp.bfloat16)
    opt = gradtx.adadelta(1.0)
    u, state = jax.jit(opt.update)(params, opt.init(params), params)
    assert {x.dtype for x in jax.tree.leaves((u, state))} == {jnp.dtype(jnp.bfloat16)}


# ----------------------------------------------------------------------------
# Rprop.


def rprop_by_hand(params, steps, lr, eta_minus=0.5, eta_plus=1.2, lo=1e-6, hi=50.0):
    """iRprop- on `loss` with its gradient written out: (1 + i) x + x^3 for leaf i."""
    xs = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    step = [np.full_like(x, lr) for x in xs]
    prev = [np.zeros_like(x) for x in xs]
    for _ in range(steps):
        for i, x in enumerate(xs):
            g = (1.0 + i) * x + x**3
            p = g * prev[i]
            grown = np.clip(step[i] * np.where(p > 0, eta_plus, eta_minus), lo, hi)
            step[i] = np.where(p == 0, step[i], grown)
            prev[i] = np.where(p < 0, 0.0, step[i] * np.sign(g))
            xs[i] = x - prev[i]
    return jax.tree.unflatten(jax.tree.structure(params), xs)


@pytest.mark.parametrize("args", [(0.01,), (0.05, 0.3, 1.5, 1e-4, 0.5)], ids=["default", "args"])
def test_rprop_by_hand_then_to_its_loss(args):
    params = make_params()
    p, _, _ = run(gradtx.rprop(*args), params, 30)
    assert_close(p, rprop_by_hand(params, 30, *args), rtol=1e-5, atol=1e-5)  # float32 sums
    # Sign-based steps amplify round-off near the optimum: further on, compare the loss.
    p, _, _ = run(gradtx.rprop(*args), params, 300)
    reached, by_hand = float(loss(p)), float(loss(rprop_by_hand(params, 300, *args)))
    assert reached < 1e-3 * float(loss(params))
    assert abs(reached - by_hand) < 1e-3 * float(loss(params))
    if len(args) == 1:
        p_optax, _, _ = run(optax.rprop(*args), params, 300, standard=True)
        assert float(loss(p_optax)) < 1e-3 * float(loss(params))  # optax's, a step late, too


def test_rprop_state_is_optaxs_and_its_update_is_not_a_step_late():
    """On one gradient stream the states agree leaf by leaf at every step; optax 0.2.8 emits
    the previous step's update (zero at the first step, google-deepmind/optax#1725)."""
    params = make_params()
    ours, theirs = gradtx.scale_by_rprop(0.1), optax.scale_by_rprop(0.1)
    s1, s2 = ours.init(params), theirs.init(params)
    assert layout(s1) == layout(s2)
    previous = jax.tree.map(jnp.zeros_like, params)
    for t in range(6):
        g = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 2)), params)
        flipped = jax.tree.map(lambda g, u: g * u < 0, g, s1.prev_updates)
        u1, s1 = ours.update(g, s1)
        u2, s2 = theirs.update(g, s2)
        assert_close(s1, s2, rtol=0, atol=0)
        stale = jax.tree.map(lambda f, u: jnp.where(f, 0, u), flipped, previous)
        assert_close(u2, stale, rtol=0, atol=0)
        previous = u1
    # ...so an optax state restores into gradtx's update.
    u, _ = jax.jit(ours.update)(g, s2)
    assert layout(u) == layout(g)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), lo=st.floats(1e-6, 1e-2), hi=st.floats(0.1, 2.0))
def test_rprop_steps_stay_in_bounds(seed, lo, hi):
    rng = np.random.default_rng(seed)
    opt = gradtx.scale_by_rprop(0.05, min_step_size=lo, max_step_size=hi)
    update = jax.jit(opt.update)
    state = opt.init(jnp.zeros(6))
    for _ in range(12):
        g = jnp.asarray(rng.choice([-1.0, 0.0, 1.0], 6) * rng.uniform(0.1, 2, 6), jnp.float32)
        u, state = update(g, state)
        sizes = np.asarray(state.step_sizes)
        assert np.all((sizes >= np.float32(lo)) | (sizes == np.float32(0.05)))
        assert np.all(sizes <= np.float32(hi) * (1 + 1e-6))
        # each coordinate moves by its step size along the gradient's sign, or rests
        assert np.all(np.isclose(np.abs(u), sizes) | (u == 0))


def test_rprop_keeps_bfloat16_and_refuses_complex():
    params = make_params(dtype=jnp.bfloat16)
    opt = gradtx.rprop(0.01)
    u, state = jax.jit(opt.update)(params, opt.init(params))
    assert {x.dtype for x in jax.tree.leaves((u, state))} == {jnp.dtype(jnp.bfloat16)}
    with pytest.raises(TypeError, match=r"scale_by_rprop: params\['z'\] is complex64; Rprop"):
        opt.init({"z": jnp.ones(2, jnp.complex64)})


BAD_ZOO = [
    (lambda: gradtx.scale_by_sm3(b1=1.0), ValueError, "scale_by_sm3: b1 must be in [0, 1)"),
    (lambda: gradtx.scale_by_sm3(b2=1.5), ValueError, "scale_by_sm3: b2 must be in [0, 1], got"),
    (lambda: gradtx.scale_by_sm3(eps=-1.0), ValueError, "scale_by_sm3: eps must be in [0, inf]"),
    (lambda: gradtx.sm3(-0.1), ValueError, "sm3: learning_rate must be in [0, inf]"),
    (lambda: gradtx.sm3(0.1, momentum=1.0), ValueError, "scale_by_sm3: b1 must be in [0, 1)"),
    (lambda: gradtx.scale_by_adadelta(rho=1.0), ValueError, "scale_by_adadelta: rho must be"),
    (
        lambda: gradtx.scale_by_adadelta(eps=0.0),
        ValueError,
        "scale_by_adadelta: eps must be in (0, inf], got 0.0",
    ),
    (lambda: gradtx.adadelta(-1.0), ValueError, "adadelta: learning_rate must be in [0, inf]"),
    (lambda: gradtx.adadelta(weight_decay=-2.0), ValueError, "adadelta: weight_decay must be"),
    (
        lambda: gradtx.rprop(0.0),
        ValueError,
        "scale_by_rprop: learning_rate must be in (0, inf], got 0.0",
    ),
    (lambda: gradtx.rprop(lr_schedule), TypeError, "scale_by_rprop: learning_rate must be a real"),
    (
        lambda: gradtx.rprop(0.1, eta_minus=0.0),
        ValueError,
        "scale_by_rprop: eta_minus must be in (0, 1], got 0.0",
    ),
    (lambda: gradtx.rprop(0.1, eta_minus=1.5), ValueError, "scale_by_rprop: eta_minus must be"),
    (
        lambda: gradtx.rprop(0.1, eta_plus=0.9),
        ValueError,
        "scale_by_rprop: eta_plus must be in [1, inf], got 0.9",
    ),
    (lambda: gradtx.rprop(0.1, min_step_size=-1.0), ValueError, "scale_by_rprop: min_step_size"),
    (
        lambda: gradtx.rprop(0.1, min_step_size=0.5, max_step_size=0.1),
        ValueError,
        "scale_by_rprop: max_step_size must be in [0.5, inf), got 0.1; max_step_size must be "
        "at least min_step_size",
    ),
    (lambda: gradtx.rprop(0.1, max_step_size=float("inf")), ValueError, "max_step_size must be"),
]


@pytest.mark.parametrize("make, error, message", BAD_ZOO)
def test_bad_zoo_arguments_are_refused_with_a_clear_message(make, error, message):
    with pytest.raises(error, match=__import__("re").escape(message)):
        make()


def test_states_that_do_not_fit_are_refused():
    opt = gradtx.scale_by_sm3()
    state = opt.init({"w": jnp.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"scale_by_sm3: updates\['w'\] has shape \(3, 4\)"):
        opt.update({"w": jnp.zeros((3, 4))}, state._replace(mu={"w": [jnp.zeros(3)]}))
    with pytest.raises(ValueError, match=r"scale_by_sm3: updates\['w'\] has shape \(2, 4\)"):
        opt.update({"w": jnp.zeros((2, 4))}, state)
    with pytest.raises(ValueError, match=r"state must be a ScaleByAdaDeltaState\(e_g, e_x\)"):
        gradtx.scale_by_adadelta().update({"w": jnp.zeros(3)}, state)
    rprop = gradtx.scale_by_rprop(0.1)
    with pytest.raises(ValueError, match=r"scale_by_rprop: updates\['w'\] has shape \(2,\)"):
        rprop.update({"w": jnp.zeros(2)}, rprop.init({"w": jnp.zeros(3)}))
    with pytest.raises(TypeError, match="add_decayed_weights: update needs params"):
        gradtx.adadelta().update({"w": jnp.zeros(2)}, gradtx.adadelta().init({"w": jnp.zeros(2)}))
