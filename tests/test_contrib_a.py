"""optax.contrib's muon, schedule-free, AdEMAMix and ADOPT: parity, laws, errors."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib._muon as optax_muon
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx
from gradtx import contrib

settings.register_profile("contrib_a", deadline=None, max_examples=10, derandomize=True)

MDN = contrib.MuonDimensionNumbers
OMDN = optax_muon.MuonDimensionNumbers


def make_params(four_d=False, dtype=jnp.float32):
    """Two matrices, a vector and a scalar (and a 4-D leaf), nested."""
    shapes = {"w": (4, 3), "b": (3,), "blocks": [(3, 5), ()]}
    if four_d:
        shapes["conv"] = (2, 3, 2, 4)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(0), len(leaves))
    arrays = [jax.random.normal(k, s).astype(dtype) for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, arrays)


def loss(params):
    """A quartic with a different centre and curvature per leaf."""
    total = jnp.zeros([], jnp.float32)
    for i, x in enumerate(jax.tree.leaves(params)):
        x = x.astype(jnp.float32)
        total = total + (i + 1) * 0.5 * jnp.sum((x - 0.3 * (i - 1)) ** 2) + 0.05 * jnp.sum(x**4)
    return total


def run(opt, params, steps, *, optax_side=False, jit=True):
    """`steps` steps on `loss` in one `lax.scan`: (params, state, losses), each stacked over
    the steps (without jit, the final params and state)."""

    def go(params):
        state = opt.init(params)

        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            p = jax.tree.map(lambda a, b: (a + b).astype(a.dtype), p, u)
            return (p, s), ((p, s), loss(p))

        if not jit:
            carry, losses = (params, state), []
            for _ in range(steps):
                carry, (_, value) = step(carry, None)
                losses.append(value)
            return carry[0], carry[1], jnp.stack(losses)
        _, ((p, s), losses) = jax.lax.scan(step, (params, state), None, length=steps)
        return p, s, losses

    # optax 0.2.8 does `float ** int32` internally, which strict promotion refuses.
    ctx = jax.numpy_dtype_promotion("standard") if optax_side else contextlib.nullcontext()
    with ctx:
        return jax.jit(go)(params) if jit else go(params)


def paths(tree):
    return [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_states_match(ours, theirs, rtol=1e-5):
    """The same layout (key paths, up to class identity) and the same values."""
    assert paths(ours) == paths(theirs)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        scale = np.max(np.abs(y)) if y.size else 0.0
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6 + rtol * scale)


def decaying(count):
    return 0.05 * 0.99 ** count.astype(jnp.float32)


def slow_decay(count):
    return 0.999 - 0.01 * 0.9 ** count.astype(jnp.float32)


def warm_alpha(count):
    return 3.0 * jnp.minimum(count.astype(jnp.float32) / 50.0, 1.0)


OUR_DIMS = {"w": MDN(), "b": None, "blocks": [MDN(1, 0), None], "conv": MDN((1, 2), 3)}
OPTAX_DIMS = {"w": OMDN(), "b": None, "blocks": [OMDN(1, 0), None], "conv": OMDN((1, 2), 3)}

# name: (builder taking a module (gradtx.contrib or optax.contrib), dims tree per module)
CASES = {
    "adopt": lambda m: m.adopt(1e-2),
    "adopt_args": lambda m: m.adopt(
        3e-3, 0.8, 0.99, 1e-5, jnp.float32, nesterov=True, use_clipping=False
    ),
    "ademamix": lambda m: m.ademamix(1e-2),
    "ademamix_args": lambda m: m.ademamix(
        1e-2, 0.8, 0.99, slow_decay, warm_alpha, 1e-6, 1e-8, weight_decay=0.01
    ),
    "simplified_ademamix": lambda m: m.simplified_ademamix(1e-3),
    "simplified_ademamix_args": lambda m: m.simplified_ademamix(
        1e-3, 0.9, 0.99, warm_alpha, weight_decay=0.1
    ),
    "schedule_free_sgd": lambda m: m.schedule_free_sgd(0.05),
    "schedule_free_sgd_args": lambda m: m.schedule_free_sgd(0.05, 10, 0.8, 0.01, 1.0),
    "schedule_free_adamw": lambda m: m.schedule_free_adamw(1e-2),
    "schedule_free_adamw_args": lambda m: m.schedule_free_adamw(1e-2, 20, 0.95, 0.99, 1e-6, 0.01),
    "muon": lambda m: m.muon(decaying),
    "muon_args": lambda m: m.muon(
        decaying,
        ns_coeffs="dion",
        beta=0.9,
        weight_decay=0.01,
        nesterov=False,
        adaptive=True,
        preconditioning="aol",
        adam_b1=0.8,
        adam_learning_rate=3e-3,
        consistent_rms=0.2,
    ),
    "muon_dims_4d": lambda m: m.muon(
        decaying,
        ns_steps=4,
        preconditioning="schatten",
        muon_weight_dimension_numbers=OUR_DIMS if m is contrib else OPTAX_DIMS,
    ),
}


def at_step(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@pytest.mark.parametrize("name", CASES)
def test_matches_optax_contrib_for_300_jitted_steps(name):
    params = make_params(four_d=name.startswith("muon"))
    p, s, losses = run(CASES[name](contrib), params, 300)
    op, os_, olosses = run(CASES[name](optax.contrib), params, 300, optax_side=True)
    # Muon's orthogonalised step is sign-like: once a leaf sits at its optimum the step
    # direction follows round-off. Exact for 50 steps; then the same loss is reached.
    exact = 50 if name.startswith("muon") else 300
    assert_close(at_step(p, exact - 1), at_step(op, exact - 1))
    assert_states_match(at_step(s, exact - 1), at_step(os_, exact - 1))
    assert_close(losses[:exact], olosses[:exact])
    np.testing.assert_allclose(losses[-1], olosses[-1], rtol=1e-4)
    assert float(losses[-1]) < 0.5 * float(loss(params))  # it trains


@pytest.mark.parametrize("name", ["adopt_args", "schedule_free_adamw_args"])
def test_matches_optax_contrib_without_jit(name):
    params = make_params()
    grads = jax.jit(jax.grad(loss))(params)
    ours, theirs = CASES[name](contrib), CASES[name](optax.contrib)
    state, their_state = ours.init(params), theirs.init(params)
    for _ in range(2):
        u, state = ours.update(grads, state, params)
        with jax.numpy_dtype_promotion("standard"):
            expected, their_state = theirs.update(grads, their_state, params)
        assert_close(u, expected)
    assert_states_match(state, their_state)


@pytest.mark.parametrize("name", ["schedule_free_sgd_args", "ademamix_args", "muon_args"])
def test_an_optax_state_feeds_into_gradtx(name):
    params = make_params(four_d=True)
    grads = jax.grad(loss)(params)
    ours, theirs = CASES[name](contrib), CASES[name](optax.contrib)
    with jax.numpy_dtype_promotion("standard"):
        state = theirs.init(params)
        update = jax.jit(theirs.update)
        for _ in range(2):
            _, state = update(grads, state, params)
        expected, expected_state = update(grads, state, params)
    got, got_state = jax.jit(ours.update)(grads, state, params)
    assert_close(got, expected)
    assert_states_match(got_state, expected_state)


def test_schedule_free_wraps_any_base_optimiser_and_eval_params_match_optax():
    params = make_params()
    ours = contrib.schedule_free(gradtx.adam(decaying, b1=0.0), decaying, b1=0.85)
    theirs = optax.contrib.schedule_free(optax.adam(decaying, b1=0.0), decaying, b1=0.85)
    p, s, _ = run(ours, params, 300)
    op, os_, _ = run(theirs, params, 300, optax_side=True)
    p, s, op, os_ = (at_step(t, -1) for t in (p, s, op, os_))
    assert_close(p, op)
    assert_states_match(s, os_)
    x = contrib.schedule_free_eval_params(s, p)
    assert_close(x, optax.contrib.schedule_free_eval_params(os_, op))
    assert_close(contrib.schedule_free_eval_params(os_, op), x)  # optax's state works too
    # x is the average of the z's; evaluating there beats the interpolated point here.
    assert float(loss(x)) < float(loss(params))


def test_schedule_free_passes_extra_arguments_to_its_base_optimiser():
    base = gradtx.chain(gradtx.sgd(0.1), gradtx.reduce_on_plateau(factor=0.5, patience=1))
    opt = contrib.schedule_free(base, 0.1)
    params = make_params()
    state = opt.init(params)
    grads = jax.grad(loss)(params)
    _, state = opt.update(grads, state, params, value=jnp.asarray(2.5))
    assert float(state.base_optimizer_state[1].best_value) == 2.5


# ----------------------------------------------------------------------------
# Newton-Schulz and the other Muon pieces.


def _matrix(seed, m, n, cond, scale, dtype=np.float32):
    """A random (m, n) matrix with singular values in [scale, cond * scale]: (x, u, s, vt)."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    u, _ = np.linalg.qr(rng.normal(size=(m, m)))
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    s = scale * np.exp(rng.uniform(0.0, np.log(cond), k))
    return ((u[:, :k] * s) @ v[:k]).astype(dtype), u[:, :k], s, v[:k]


QUINTIC = jnp.asarray((3.4445, -4.775, 2.0315))
CUBIC = jnp.asarray((1.5, -0.5, 0.0))
quintic_ns = jax.jit(lambda x: contrib.orthogonalize_via_newton_schulz(x, QUINTIC))
cubic_ns = jax.jit(lambda x: contrib.orthogonalize_via_newton_schulz(x, CUBIC, ns_steps=20))


@settings(settings.get_profile("contrib_a"))
@given(
    seed=st.integers(0, 10_000),
    shape=st.sampled_from([(1, 4), (3, 3), (5, 2)]),
    cond=st.floats(1.0, 10.0),
    log_scale=st.floats(-3.0, 3.0),
)
def test_newton_schulz_output_is_close_to_orthogonal(seed, shape, cond, log_scale):
    x, u, _, vt = _matrix(seed, *shape, cond, 10.0**log_scale)
    # optax's quintic coefficients: singular values pushed into a band around 1, fast.
    sv = np.linalg.svd(np.asarray(quintic_ns(x)), compute_uv=False)
    assert sv.min() >= 0.6 and sv.max() <= 1.25, sv
    # The classic cubic iteration converges: to the polar factor U V^T itself.
    np.testing.assert_allclose(np.asarray(cubic_ns(x)), u @ vt, atol=2e-3)


def test_newton_schulz_of_a_complex_matrix_is_its_unitary_polar_factor():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3, 5)) + 1j * rng.normal(size=(3, 5))).astype(np.complex64)
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    o = contrib.orthogonalize_via_newton_schulz(x, jnp.asarray((1.5, -0.5, 0.0)), ns_steps=40)
    assert o.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(o), u @ vt, atol=2e-3)


@pytest.mark.parametrize("preconditioning", ["frobenius", "spectral", "aol", "schatten"])
def test_orthogonalize_matches_optax_on_a_4d_array(preconditioning):
    x = jax.random.normal(jax.random.key(1), (2, 3, 2, 4))
    coeffs = jnp.asarray(optax_muon._DION_NS_COEFFS)
    # Five triples: five steps, whatever ns_steps says (as in optax).
    ours = contrib.orthogonalize_via_newton_schulz(
        x, coeffs, 2, preconditioning, dimension_numbers=MDN((1, 2), 3)
    )
    theirs = optax_muon.orthogonalize_via_newton_schulz(
        x, coeffs, 2, preconditioning, dimension_numbers=OMDN((1, 2), 3)
    )
    assert_close(ours, theirs)


def _newton_schulz_by_hand(x, steps=5, a=3.4445, b=-4.775, c=2.0315):
    x = np.asarray(x, np.float64)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + 1e-8)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_scale_by_newton_schulz_after_any_momentum_is_the_formula():
    params = {"w": jnp.zeros((4, 3)), "v": jnp.zeros((2, 5))}
    opt = gradtx.chain(gradtx.trace(0.9), contrib.scale_by_newton_schulz())
    state = opt.init(params)
    key = jax.random.key(2)
    velocity = jax.tree.map(lambda p: np.zeros(p.shape), params)
    for t in range(3):
        grads = jax.tree.map(
            lambda p, t=t: jax.random.normal(jax.random.fold_in(key, t), p.shape), params
        )
        u, state = jax.jit(opt.update)(grads, state)
        velocity = jax.tree.map(lambda v, g: 0.9 * v + np.asarray(g, np.float64), velocity, grads)
        for name in params:
            np.testing.assert_allclose(
                np.asarray(u[name]), _newton_schulz_by_hand(velocity[name]), rtol=2e-4, atol=2e-5
            )


def test_scale_by_shape_is_the_width_or_rms_factor():
    g = {"a": jnp.ones((2, 8)), "b": jnp.ones((8, 2)), "c": jnp.ones((2, 3, 4))}
    dims = {"a": None, "b": MDN(), "c": MDN((0, 1), 2)}
    u, _ = contrib.scale_by_shape(dims).update(g, contrib.scale_by_shape(dims).init(g))
    np.testing.assert_allclose(u["a"], np.full((2, 8), 2.0))  # sqrt(8 / 2)
    np.testing.assert_allclose(u["b"], np.ones((8, 2)))  # sqrt(max(1, 2 / 8))
    np.testing.assert_allclose(u["c"], np.ones((2, 3, 4)))  # fan_in 6, fan_out 4
    rms = contrib.scale_by_shape(dims, consistent_rms=0.2)
    u, _ = rms.update(g, rms.init(g))
    np.testing.assert_allclose(u["c"], np.full((2, 3, 4), 0.2 * np.sqrt(6.0)), rtol=1e-6)


def test_muon_sends_matrices_to_muon_and_the_rest_to_adam():
    params = make_params(four_d=True)
    labels = contrib.muon_param_labels()(params)
    assert labels == {"w": "muon", "b": "adam", "blocks": ["muon", "adam"], "conv": "adam"}
    labels = contrib.muon_param_labels(OUR_DIMS)(params)
    assert labels == {"w": "muon", "b": "adam", "blocks": ["muon", "adam"], "conv": "muon"}
    text = repr(contrib.muon(0.1))
    assert text.startswith("partition({'muon': chain(scale_by_muon(")
    assert text.endswith("muon_param_labels())")


# ----------------------------------------------------------------------------
# Dtypes and edge cases.

ALL = {
    "adopt": lambda: contrib.adopt(1e-2),
    "ademamix": lambda: contrib.ademamix(1e-2),
    "simplified_ademamix": lambda: contrib.simplified_ademamix(1e-2),
    "schedule_free_sgd": lambda: contrib.schedule_free_sgd(0.1, warmup_steps=3),
    "schedule_free_adamw": lambda: contrib.schedule_free_adamw(1e-2),
    "muon": lambda: contrib.muon(1e-2),
}


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_leaves_stay_bfloat16_and_zeros_give_no_nan(name):
    opt = ALL[name]()
    params = make_params(four_d=True, dtype=jnp.bfloat16)
    state = opt.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for grads, at in [(zeros, zeros), (jax.grad(loss)(params), params)]:
        u, new_state = opt.update(grads, state, at)
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new_state))
    moments = [
        x
        for path, x in jax.tree_util.tree_flatten_with_path(new_state)[0]
        if x.ndim > 0 and "ns_coeffs" not in jax.tree_util.keystr(path)
    ]
    assert moments and all(x.dtype == jnp.bfloat16 for x in moments)


def test_complex_params_get_complex_moments_and_real_second_moments():
    params = {"z": jnp.asarray([1.0 + 2.0j, -0.5j], jnp.complex64)}
    grads = {"z": jnp.asarray([0.3 - 0.1j, 1.0 + 1.0j], jnp.complex64)}
    for opt in [contrib.ademamix(1e-2), contrib.adopt(1e-2, use_clipping=False)]:
        state = opt.init(params)
        for _ in range(3):
            u, state = opt.update(grads, state, params)
        assert u["z"].dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(u["z"])))
        second = state[0].nu["z"]
        assert second.dtype == jnp.float32
    # ADOPT's first step is 0 and its second moment starts at |g|^2.
    opt = contrib.scale_by_adopt(use_clipping=False)
    u, state = opt.update(grads, opt.init(params))
    np.testing.assert_allclose(np.asarray(u["z"]), 0.0)
    np.testing.assert_allclose(state.nu["z"], np.abs(np.asarray(grads["z"])) ** 2, rtol=1e-6)


def test_adopt_refuses_to_clip_complex_params():
    with pytest.raises(TypeError, match=r"scale_by_adopt: params\['z'\] is complex.*use_clipping"):
        contrib.adopt(1e-2).init({"z": jnp.zeros(2, jnp.complex64)})


# ----------------------------------------------------------------------------
# Bad input.

BAD = [
    (lambda: contrib.scale_by_adopt(b1=1.0), ValueError, r"scale_by_adopt: b1 must be in \[0, 1\)"),
    (lambda: contrib.adopt(1e-3, eps=0.0), ValueError, r"scale_by_adopt: eps must be in \(0"),
    (lambda: contrib.adopt(-1.0), ValueError, "adopt: learning_rate must be in"),
    (
        lambda: contrib.scale_by_adopt(clip_value_fn=2.0),
        TypeError,
        "clip_value_fn must be a function of the step count",
    ),
    (lambda: contrib.scale_by_adopt(nesterov=1), TypeError, "nesterov must be True or False"),
    (lambda: contrib.scale_by_ademamix(b3=1.5), ValueError, r"scale_by_ademamix: b3 must be in"),
    (lambda: contrib.ademamix(1e-3, alpha=-1.0), ValueError, "scale_by_ademamix: alpha must be"),
    (
        lambda: contrib.simplified_ademamix(1e-3, eps_root=-1.0),
        ValueError,
        "scale_by_simplified_ademamix: eps_root must be",
    ),
    (lambda: contrib.schedule_free_sgd(b1=0.0), ValueError, "schedule_free divides by b1"),
    (
        lambda: contrib.schedule_free(gradtx.sgd(0.1), 0.1, weight_lr_power=-2.0),
        ValueError,
        "schedule_free: weight_lr_power must be",
    ),
    (
        lambda: contrib.schedule_free(3, 0.1),
        TypeError,
        "schedule_free: base_optimizer must be a gradient transformation",
    ),
    (lambda: contrib.muon(0.1, ns_coeffs="polar"), ValueError, "muon: ns_coeffs must be a preset"),
    (
        lambda: contrib.scale_by_muon(ns_coeffs=(1.0, 2.0)),
        ValueError,
        r"scale_by_muon: ns_coeffs must have shape \(3,\) or \(n, 3\), got \(2,\)",
    ),
    (
        lambda: contrib.muon(0.1, ns_coeffs="dion", ns_steps=3),
        ValueError,
        "ns_coeffs has 5 rows .* more than ns_steps=3; pass ns_steps=5",
    ),
    (lambda: contrib.scale_by_muon(ns_steps=2.5), TypeError, "ns_steps must be an integer"),
    (lambda: contrib.scale_by_muon(beta=1.0), ValueError, r"scale_by_muon: beta must be in"),
    (
        lambda: contrib.muon(0.1, preconditioning="svd"),
        ValueError,
        "preconditioning must be one of 'frobenius', 'spectral', 'aol', 'schatten'",
    ),
    (
        lambda: contrib.scale_by_shape(consistent_rms=-0.2),
        ValueError,
        "scale_by_shape: consistent_rms must be",
    ),
    (
        lambda: contrib.orthogonalize_via_newton_schulz(jnp.ones(3), jnp.ones(3)),
        ValueError,
        r"x must be a matrix \(m, n\) or come with dimension_numbers, got shape \(3,\)",
    ),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=lambda x: x if isinstance(x, str) else "")
def test_bad_arguments_are_refused_with_the_fix(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_leaf_that_cannot_be_orthogonalised_is_named_by_its_key_path():
    params = {"layer": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
    opt = contrib.scale_by_muon()
    with pytest.raises(ValueError, match=r"scale_by_muon: updates\['layer'\]\['bias'\] has shape"):
        opt.update(params, opt.init(params))
    dims = {"layer": {"kernel": MDN(0, 0), "bias": None}}
    opt = contrib.muon(0.1, muon_weight_dimension_numbers=dims)
    with pytest.raises(ValueError, match=r"updates\['layer'\]\['kernel'\] .* overlap"):
        opt.update(params, opt.init(params), params)
    kernel = {"layer": {"kernel": jnp.ones((3, 4))}}
    opt = contrib.scale_by_newton_schulz(weight_dimension_numbers={"layer": MDN(0, 5)})
    with pytest.raises(ValueError, match=r"output_axis=5 is out of range for rank 2"):
        opt.update(kernel, opt.init(kernel))


def test_missing_params_and_foreign_states_are_explained():
    params = make_params()
    opt = contrib.schedule_free_sgd(0.1)
    with pytest.raises(TypeError, match=r"schedule_free: update needs params"):
        opt.update(params, opt.init(params))
    with pytest.raises(ValueError, match="schedule_free_eval_params: state must be the Schedule"):
        contrib.schedule_free_eval_params(gradtx.adam(0.1).init(params), params)
    with pytest.raises(ValueError, match=r"scale_by_adopt: state must be a ScaleByAdamState"):
        contrib.scale_by_adopt().update(params, gradtx.trace(0.9).init(params))
