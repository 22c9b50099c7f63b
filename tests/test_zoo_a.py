"""Sign-based, Adam-variant and trust-ratio optimisers (zoo-a) against optax 0.2.8.

Parity: 300 jitted steps (one `lax.scan`) on a nested tree with feedback gradients of a fixed
quartic, final params and states compared leaf by leaf at rtol 1e-5, the states' layouts equal
to optax's; sign-based methods on fewer steps (a sign flips on round-off near 0), then the
loss reached. Then laws (hypothesis), edge cases (zero params and gradients), dtypes, optax
states restored into gradtx's updates, and the messages of bad input.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx

settings.register_profile("zoo_a", deadline=None, max_examples=20, derandomize=True)

SHAPES = {"w": (3, 4), "b": (4,), "blocks": [(2, 2, 3), ()]}


def make_params(dtype=jnp.float32, key=0):
    leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(key), len(leaves))
    arrays = [jax.random.normal(k, s, jnp.float32).astype(dtype) for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, arrays)


def loss(params):
    """A fixed quartic: each leaf pulled towards 0.5 with its own curvature."""
    total = jnp.zeros([], jnp.float32)
    for i, p in enumerate(jax.tree.leaves(params)):
        d = p.astype(jnp.float32) - 0.5
        total = total + jnp.sum((1.0 + i) * d**2 + 0.1 * d**4)
    return total


def mask_fn(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


MASK_TREE = {"w": True, "b": False, "blocks": [True, False]}


def schedule(count):
    return 0.02 * 0.995 ** count.astype(jnp.float32)


def small_schedule(count):
    return 0.002 * 0.995 ** count.astype(jnp.float32)


def wd_schedule(count):
    return 1e-3 * (1.0 + 0.01 * count.astype(jnp.float32))


def _scan(opt, params, steps, apply):
    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p)
        p = apply(p, u)
        return (p, s), (value, (p, s, u))

    (p, s), (values, history) = jax.lax.scan(step, (params, opt.init(params)), length=steps)
    return p, s, values, history


def run_all(library, calls, steps=300):
    """Each call's optimiser (made by `library`, gradtx or optax) for `steps` updates on the
    quartic, every run a `lax.scan`, all of them in one jitted function (one compilation).

    Returns {name: (final params, final state, losses, history)}, where `history` holds the
    params, state and emitted update after each step, stacked along a leading axis.
    """
    opts = {name: make(library) for name, make in calls.items()}
    standard = library is optax
    apply = optax.apply_updates if standard else gradtx.apply_updates
    with jax.numpy_dtype_promotion("standard" if standard else "strict"):
        runs = jax.jit(lambda p: {k: _scan(opt, p, steps, apply) for k, opt in opts.items()})
        return runs(make_params())


def at(history, t):
    """The params, state and update after step t (1-based) of a `run` history."""
    return jax.tree.map(lambda x: x[t - 1], history)


def node_names(tree):
    """The classes of a state's nodes in order (NamedTuple names, tuple/list/dict)."""
    out = []

    def walk(x):
        if isinstance(x, (tuple, list)):  # NamedTuples by their class name
            out.append(type(x).__name__)
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            out.append("dict")
            for k in sorted(x):
                walk(x[k])
        else:
            out.append("leaf")

    walk(tree)
    return out


def assert_same_layout(ours, theirs):
    paths_ours = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(ours)]
    paths_theirs = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(theirs)]
    assert paths_ours == paths_theirs
    assert node_names(ours) == node_names(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert jnp.shape(a) == jnp.shape(b)


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol
        )


# name -> the call, made on gradtx and on optax; each optimiser with its defaults and with
# every argument changed (schedules, masks as trees and as functions).
PARITY = {
    "adabelief": lambda m: m.adabelief(0.01),
    "adabelief_args": lambda m: m.adabelief(
        schedule, b1=0.8, b2=0.99, eps=1e-8, eps_root=0.0, nesterov=True
    ),
    "adamax": lambda m: m.adamax(0.01),
    "adamaxw_args": lambda m: m.adamaxw(schedule, 0.85, 0.995, 1e-6, wd_schedule, mask_fn),
    "yogi": lambda m: m.yogi(0.01),
    "scale_by_yogi_args": lambda m: m.chain(
        m.scale_by_yogi(0.85, 0.99, 1e-4, 1e-8, initial_accumulator_value=0.1),
        m.scale_by_learning_rate(schedule),
    ),
    "radam": lambda m: m.radam(0.01),
    "radam_args": lambda m: m.radam(schedule, 0.8, 0.99, 1e-6, 1e-8, threshold=6.0, nesterov=True),
    "nadamw": lambda m: m.nadamw(0.01),
    "nadamw_args": lambda m: m.nadamw(schedule, 0.85, weight_decay=0.05, mask=MASK_TREE),
    # NovoGrad's steps are normalised too: at the optimum they jitter as LAMB's do.
    "novograd": lambda m: m.novograd(5e-4),
    "scale_by_novograd_args": lambda m: m.chain(
        m.scale_by_novograd(0.8, 0.5, 1e-4, 1e-8, weight_decay=0.01, mu_dtype=jnp.float32),
        m.scale_by_learning_rate(small_schedule),
    ),
    # LAMB's step is a fixed fraction of the weight norm: near the optimum it jitters, and
    # round-off grows; a small rate keeps 300 steps away from there.
    "lamb": lambda m: m.lamb(0.002),
    "lamb_args": lambda m: m.lamb(small_schedule, 0.8, 0.99, 1e-4, 1e-8, 0.01, mask_fn),
    "lars": lambda m: m.lars(0.1),
    "lars_args": lambda m: m.lars(
        schedule, 0.01, MASK_TREE, 0.01, 1e-6, mask_fn, momentum=0.8, nesterov=True
    ),
    "fromage": lambda m: m.fromage(0.01),
    "fromage_args": lambda m: m.fromage(schedule, min_norm=1e-4),
}

# Sign-based: compared step by step for 20 steps (round-off near 0 flips a sign later on).
SIGN_PARITY = {
    "sign_sgd": lambda m: m.sign_sgd(0.01),
    "signum": lambda m: m.signum(0.01),
    "signum_args": lambda m: m.signum(schedule, beta=0.7, accumulator_dtype=jnp.float32),
    "lion": lambda m: m.lion(0.003),
    "lion_args": lambda m: m.lion(schedule, 0.8, 0.95, jnp.float32, wd_schedule, mask_fn),
    "scale_by_lion_smooth": lambda m: m.chain(
        m.scale_by_lion(0.85, mode="smooth", smooth_beta=3.0), m.scale(-0.01)
    ),
    "scale_by_lion_refined": lambda m: m.chain(
        m.scale_by_lion(0.85, 0.95, mode="refined"), m.scale(-0.01)
    ),
}
CALLS = {**PARITY, **SIGN_PARITY}


@pytest.fixture(scope="module")
def runs():
    """The 300-step runs of every call in CALLS, by gradtx and by optax."""
    return {"gradtx": run_all(gradtx, CALLS), "optax": run_all(optax, CALLS)}


@pytest.mark.parametrize("name", sorted(PARITY))
def test_matches_optax_for_300_jitted_steps(runs, name):
    p_ours, s_ours, l_ours, h_ours = runs["gradtx"][name]
    p_theirs, s_theirs, l_theirs, h_theirs = runs["optax"][name]
    assert_same_layout(s_ours, s_theirs)
    assert_close(p_ours, p_theirs)
    assert_close(s_ours, s_theirs)
    assert_close(h_ours, h_theirs)  # params, states and updates at every step
    assert_close(l_ours, l_theirs)
    assert float(l_ours[-1]) < 0.9 * float(l_ours[0])  # it trains


@pytest.mark.parametrize("name", sorted(SIGN_PARITY))
def test_sign_methods_match_optax_then_reach_its_loss(runs, name):
    _, s_ours, l_ours, h_ours = runs["gradtx"][name]
    _, s_theirs, l_theirs, h_theirs = runs["optax"][name]
    assert_same_layout(s_ours, s_theirs)
    assert_close(at(h_ours, 20), at(h_theirs, 20))  # params, state, update after 20 steps
    assert float(l_ours[-1]) < 0.5 * float(l_ours[0])
    np.testing.assert_allclose(float(l_ours[-1]), float(l_theirs[-1]), rtol=0.05)


@pytest.mark.parametrize("name", ["lars_args", "lion"])
def test_matches_optax_without_jit(runs, name):
    opt, params = CALLS[name](gradtx), make_params()
    state, grad = opt.init(params), jax.jit(jax.grad(loss))
    for _ in range(3):
        u, state = opt.update(grad(params), state, params)
        params = gradtx.apply_updates(params, u)
    assert_close((params, state, u), at(runs["optax"][name][3], 3))


@pytest.mark.parametrize("name", ["adabelief_args", "scale_by_novograd_args", "lamb_args"])
def test_an_optax_state_drives_gradtx_update(runs, name):
    """A restored optax checkpoint: optax's state after 7 steps, fed to gradtx's update."""
    history = runs["optax"][name][3]
    params, state, _ = at(history, 7)
    u_ours, s_ours = jax.jit(CALLS[name](gradtx).update)(jax.grad(loss)(params), state, params)
    _, s_theirs, u_theirs = at(history, 8)
    assert_close(u_ours, u_theirs)
    assert_close(s_ours, s_theirs)


# ----------------------------------------------------------------------------
# Laws and formulas.


def vectors(tiny):
    """float32 vectors: 0 or at least `tiny` in size (float32's subnormals are flushed to
    zero on the CPU, and squares below 1e-38 too)."""
    entries = st.one_of(
        st.just(0.0), st.floats(tiny, 1e3, width=32), st.floats(-1e3, -tiny, width=32)
    )
    return st.lists(entries, min_size=1, max_size=12).map(lambda xs: np.asarray(xs, np.float32))


@settings(settings.get_profile("zoo_a"))
@given(vectors(2.0**-100))
def test_a_sign_update_has_unit_magnitude(g):
    u, _ = gradtx.scale_by_sign().update({"g": jnp.asarray(g)}, gradtx.EmptyState())
    u = np.asarray(u["g"])
    np.testing.assert_array_equal(np.abs(u), (g != 0).astype(np.float32))
    assert np.all(u * g >= 0)
    opt = gradtx.scale_by_lion(0.5, 0.9)
    v, _ = opt.update(jnp.asarray(g), opt.init(jnp.asarray(g)))
    np.testing.assert_array_equal(np.abs(np.asarray(v)), (g != 0).astype(np.float32))


@settings(settings.get_profile("zoo_a"))
@given(vectors(2.0**-10), vectors(2.0**-10), st.floats(0.0, 2.0), st.floats(0.0, 1.0))
def test_the_trust_ratio_keeps_the_direction(g, p, coefficient, min_norm):
    n = min(len(g), len(p))
    g, p = g[:n], p[:n]
    tx = gradtx.scale_by_trust_ratio(min_norm, coefficient)
    u, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(p)), jnp.asarray(p))
    u = np.asarray(u, np.float64)
    p_norm = max(np.linalg.norm(p.astype(np.float64)), min_norm)
    g_norm = max(np.linalg.norm(g.astype(np.float64)), min_norm)
    ratio = 1.0 if p_norm == 0 or g_norm == 0 else coefficient * p_norm / g_norm
    assert np.all(np.isfinite(u))
    np.testing.assert_allclose(u, ratio * g, rtol=1e-5, atol=1e-30)  # u = r g with r >= 0
    assert np.all(u * g >= 0)


def test_lion_and_signum_follow_their_formulas_by_hand():
    gs = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    params = np.linspace(-1, 1, 5).astype(np.float32)
    b1, b2, lr, wd = 0.8, 0.95, 0.1, 0.01
    opt = gradtx.lion(lr, b1, b2, weight_decay=wd)
    state = opt.init(jnp.asarray(params))
    m = np.zeros(5)
    signum = gradtx.signum(lr, beta=0.7)
    s_state, s_m = signum.init(jnp.asarray(params)), np.zeros(5)
    for g in gs:
        u, state = opt.update(jnp.asarray(g), state, jnp.asarray(params))
        expected = -lr * (np.sign(b1 * m + (1 - b1) * g) + wd * params)
        m = b2 * m + (1 - b2) * g
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6, atol=1e-7)
        v, s_state = signum.update(jnp.asarray(g), s_state)
        s_m = 0.7 * s_m + 0.3 * g
        np.testing.assert_allclose(np.asarray(v), -lr * np.sign(s_m), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state[0].mu), m, rtol=1e-5)


def test_fromage_shrinks_then_steps_by_a_fraction_of_the_weight_norm():
    p = jnp.asarray([3.0, -4.0])  # norm 5
    g = jnp.asarray([0.5, 0.0])
    lr = 0.2
    opt = gradtx.fromage(lr)
    u, _ = opt.update(g, opt.init(p), p)
    step = -lr * 5.0 / 0.5 * np.asarray(g)  # trust ratio |p|/|g|, then -lr
    expected = (np.asarray(p) + step) / np.sqrt(1 + lr**2) - np.asarray(p)
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6)


def test_radam_is_momentum_sgd_until_rho_reaches_the_threshold():
    b2 = 0.999
    opt = gradtx.scale_by_radam(b2=b2)
    g = jnp.ones(3)
    state = opt.init(g)
    ro_inf = 2 / (1 - b2) - 1
    for t in range(1, 9):
        u, state = opt.update(g, state)
        ro = ro_inf - 2 * t * b2**t / (1 - b2**t)
        if ro < 5.0:  # a constant gradient: the debiased momentum is 1
            np.testing.assert_allclose(np.asarray(u), 1.0, rtol=1e-5)
        else:
            r = np.sqrt((ro - 4) * (ro - 2) * ro_inf / ((ro_inf - 4) * (ro_inf - 2) * ro))
            # rho_t is a difference of numbers near rho_inf = 1999, taken in float32 (as
            # optax does): r_t has about 3 correct digits at the first rectified steps.
            np.testing.assert_allclose(np.asarray(u), r / (1 + 1e-8), rtol=1e-2)


def test_radam_with_a_low_b2_never_rectifies_and_stays_finite():
    opt = gradtx.scale_by_radam(b2=0.6, threshold=4.0)  # rho_inf = 4: r would be 0/0
    g = jnp.asarray([1.0, -2.0])
    state = opt.init(g)
    for _ in range(50):
        u, state = opt.update(g, state)
        assert np.all(np.isfinite(np.asarray(u)))


DEFAULTS = [name for name in CALLS if not name.endswith(("_args", "_smooth", "_refined"))]


@pytest.mark.parametrize("name", DEFAULTS)
def test_zero_params_and_zero_grads_give_no_nan(name):
    opt = CALLS[name](gradtx)
    zeros = jax.tree.map(jnp.zeros_like, make_params())
    state = opt.init(zeros)
    update = jax.jit(opt.update)
    for g in (zeros, make_params(key=3), zeros):
        u, state = update(g, state, zeros)
        for leaf in jax.tree.leaves((u, state)):
            assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


PIECES = {
    "scale_by_sign": lambda: gradtx.scale_by_sign(),
    "scale_by_lion": lambda: gradtx.scale_by_lion(),
    "scale_by_belief": lambda: gradtx.scale_by_belief(),
    "scale_by_adamax": lambda: gradtx.scale_by_adamax(),
    "scale_by_yogi": lambda: gradtx.scale_by_yogi(),
    "scale_by_radam": lambda: gradtx.scale_by_radam(),
    "scale_by_novograd": lambda: gradtx.scale_by_novograd(weight_decay=0.01),
    "scale_by_trust_ratio": lambda: gradtx.scale_by_trust_ratio(),
}


@pytest.mark.parametrize("name", sorted(PIECES))
def test_bfloat16_params_keep_bfloat16_states_and_updates(name):
    opt = PIECES[name]()
    params = make_params(jnp.bfloat16)
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(3):
        u, state = update(jax.grad(loss)(params), state, params)
        params = gradtx.apply_updates(params, u)
    for leaf in jax.tree.leaves((u, params)):
        assert leaf.dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (jnp.bfloat16, jnp.int32)
    assert update._cache_size() == 1  # no recompilation on the later calls


COMPLEX = ["scale_by_sign", "scale_by_belief", "scale_by_adamax", "scale_by_yogi"]
COMPLEX += ["scale_by_radam", "scale_by_novograd", "scale_by_trust_ratio", "scale_by_lion"]


@pytest.mark.parametrize("name", COMPLEX)
def test_complex_params_match_optax_updates_with_real_second_moments(name):
    """optax keeps |g|^2 moments in the complex dtype (imaginary part 0): gradtx in the
    real one; the emitted updates agree."""
    key = jax.random.key(5)
    p = jax.random.normal(key, (4, 3), jnp.complex64)
    ours = PIECES[name]()
    theirs = getattr(optax, name)(**({"weight_decay": 0.01} if name == "scale_by_novograd" else {}))
    s_ours, s_theirs = ours.init(p), theirs.init(p)
    for t in range(5):
        g = jnp.cos(p * (t + 1)) + 1j * jnp.sin(0.5 * p)
        u_ours, s_ours = ours.update(g, s_ours, p)
        with jax.numpy_dtype_promotion("standard"):
            u_theirs, s_theirs = theirs.update(g, s_theirs, p)
        np.testing.assert_allclose(np.asarray(u_ours), np.asarray(u_theirs), rtol=1e-5, atol=1e-6)
        assert u_ours.dtype == jnp.complex64
    for field in ("nu",):
        if field in getattr(s_ours, "_fields", ()):
            for leaf in jax.tree.leaves(getattr(s_ours, field)):
                assert leaf.dtype == jnp.float32


def test_configs_round_trip_and_print_as_chains():
    assert repr(gradtx.lion(0.001)) == (
        "chain(scale_by_lion(b1=0.9, b2=0.99, mode='hard', smooth_beta=1.0), "
        "add_decayed_weights(weight_decay=0.001), scale_by_learning_rate(0.001))"
    )
    opt = gradtx.lars(0.1, weight_decay=0.01, weight_decay_mask=MASK_TREE)
    rebuilt = gradtx.from_config(gradtx.to_config(opt))
    assert repr(rebuilt) == repr(opt)
    assert "masked(scale_by_trust_ratio(" in repr(opt)


def test_nadamw_is_adamw_with_nesterov():
    a, b = (
        gradtx.nadamw(0.01, weight_decay=0.1),
        gradtx.adamw(0.01, weight_decay=0.1, nesterov=True),
    )
    assert repr(a) == repr(b)


# ----------------------------------------------------------------------------
# Bad input.

BAD = [
    (lambda: gradtx.scale_by_lion(b1=1.0), ValueError, "scale_by_lion: b1 must be in [0, 1)"),
    (lambda: gradtx.scale_by_lion(mode="soft"), ValueError, "scale_by_lion: mode must be one of"),
    (lambda: gradtx.scale_by_lion(smooth_beta=0.0), ValueError, "scale_by_lion: smooth_beta"),
    (lambda: gradtx.scale_by_lion(mu_dtype=jnp.int8), ValueError, "scale_by_lion: mu_dtype"),
    (lambda: gradtx.lion(-0.1), ValueError, "lion: learning_rate must be in [0, inf]"),
    (lambda: gradtx.lion(0.1, weight_decay=-0.1), ValueError, "lion: weight_decay must be in"),
    (lambda: gradtx.sign_sgd(-1.0), ValueError, "sign_sgd: learning_rate"),
    (lambda: gradtx.signum(0.1, beta=1.0), ValueError, "ema: decay must be in [0, 1)"),
    (lambda: gradtx.signum("x"), TypeError, "signum: learning_rate must be a real number"),
    (lambda: gradtx.scale_by_belief(b2=1.5), ValueError, "scale_by_belief: b2 must be in [0, 1)"),
    (lambda: gradtx.scale_by_belief(eps=-1), ValueError, "scale_by_belief: eps must be in"),
    (lambda: gradtx.scale_by_belief(eps_root=-1), ValueError, "scale_by_belief: eps_root"),
    (lambda: gradtx.scale_by_belief(nesterov=1), TypeError, "scale_by_belief: nesterov must be"),
    (lambda: gradtx.adabelief(-1.0), ValueError, "adabelief: learning_rate"),
    (lambda: gradtx.scale_by_adamax(b1=-0.1), ValueError, "scale_by_adamax: b1"),
    (lambda: gradtx.scale_by_adamax(eps=-1e-8), ValueError, "scale_by_adamax: eps"),
    (lambda: gradtx.adamax(-1.0), ValueError, "adamax: learning_rate"),
    (lambda: gradtx.adamaxw(0.1, weight_decay=-1e-4), ValueError, "adamaxw: weight_decay"),
    (lambda: gradtx.scale_by_yogi(b2=1.0), ValueError, "scale_by_yogi: b2"),
    (lambda: gradtx.scale_by_yogi(eps_root=-1.0), ValueError, "scale_by_yogi: eps_root"),
    (
        lambda: gradtx.scale_by_yogi(initial_accumulator_value=-1e-6),
        ValueError,
        "scale_by_yogi: initial_accumulator_value must be in [0, inf]",
    ),
    (lambda: gradtx.yogi(0.1, eps=-1.0), ValueError, "scale_by_yogi: eps"),
    (
        lambda: gradtx.scale_by_radam(threshold=3.0),
        ValueError,
        "scale_by_radam: threshold must be in [4, inf), got 3.0; below 4",
    ),
    (lambda: gradtx.scale_by_radam(nesterov=None), TypeError, "scale_by_radam: nesterov"),
    (lambda: gradtx.radam(0.1, b1=1.0), ValueError, "scale_by_radam: b1"),
    (lambda: gradtx.nadamw(0.1, weight_decay=-0.5), ValueError, "nadamw: weight_decay"),
    (lambda: gradtx.nadamw(-0.1), ValueError, "nadamw: learning_rate"),
    (lambda: gradtx.scale_by_novograd(b2=1.0), ValueError, "scale_by_novograd: b2"),
    (
        lambda: gradtx.scale_by_novograd(weight_decay=-0.1),
        ValueError,
        "scale_by_novograd: weight_decay must be in [0, inf]",
    ),
    (
        lambda: gradtx.novograd(0.1, weight_decay=schedule),
        TypeError,
        "scale_by_novograd: weight_decay must be a number, got the schedule",
    ),
    (
        lambda: gradtx.scale_by_novograd(mu_dtype="nonsense"),
        TypeError,
        "scale_by_novograd: mu_dtype",
    ),
    (lambda: gradtx.novograd(-1.0), ValueError, "novograd: learning_rate"),
    (lambda: gradtx.scale_by_trust_ratio(min_norm=-1), ValueError, "scale_by_trust_ratio: min_"),
    (
        lambda: gradtx.scale_by_trust_ratio(trust_coefficient=-0.1),
        ValueError,
        "scale_by_trust_ratio: trust_coefficient must be in [0, inf]",
    ),
    (lambda: gradtx.scale_by_trust_ratio(eps=-1.0), ValueError, "scale_by_trust_ratio: eps"),
    (lambda: gradtx.lamb(-0.1), ValueError, "lamb: learning_rate"),
    (lambda: gradtx.lamb(0.1, weight_decay=-0.1), ValueError, "lamb: weight_decay"),
    (lambda: gradtx.lamb(0.1, b1=1.0), ValueError, "scale_by_adam: b1"),
    (lambda: gradtx.lars(-0.1), ValueError, "lars: learning_rate"),
    (lambda: gradtx.lars(0.1, weight_decay=-0.1), ValueError, "lars: weight_decay"),
    (lambda: gradtx.lars(0.1, momentum=1.0), ValueError, "trace: decay must be in [0, 1)"),
    (lambda: gradtx.lars(0.1, nesterov="yes"), TypeError, "trace: nesterov must be True"),
    (lambda: gradtx.fromage(-0.1), ValueError, "fromage: learning_rate"),
    (lambda: gradtx.fromage(0.1, min_norm=-1.0), ValueError, "scale_by_trust_ratio: min_norm"),
    (
        lambda: gradtx.add_decayed_weights(-1.0),
        ValueError,
        "add_decayed_weights: weight_decay must be in (-1, inf], got -1.0; a decay is >= 0",
    ),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_hyperparameters_are_refused_with_a_clear_message(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


def test_missing_params_and_bad_masks_are_named():
    params = make_params()
    for opt, fn in [
        (gradtx.scale_by_trust_ratio(), "scale_by_trust_ratio"),
        (gradtx.lamb(0.1), "add_decayed_weights"),
        (gradtx.scale_by_novograd(weight_decay=0.1), "scale_by_novograd"),
        (gradtx.lion(0.1), "add_decayed_weights"),
    ]:
        with pytest.raises(TypeError, match=rf"({fn}): update needs params"):
            opt.update(params, opt.init(params))
    # weight_decay=0: NovoGrad needs no params
    opt = gradtx.scale_by_novograd()
    opt.update(params, opt.init(params))
    with pytest.raises(TypeError, match=r"masked: mask\['w'\] must be a Python or NumPy bool"):
        opt = gradtx.lars(0.1, weight_decay_mask={"w": 1, "b": True, "blocks": True})
        opt.init(params)
    with pytest.raises(ValueError, match="scale_by_lion: state must be a ScaleByLionState"):
        gradtx.scale_by_lion().update(params, gradtx.scale_by_adam().init(params))
    with pytest.raises(ValueError, match=r"scale_by_belief: updates\['b'\] has shape"):
        opt = gradtx.scale_by_belief()
        opt.update({**params, "b": jnp.ones(3)}, opt.init(params))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("lamb", {"learning_rate": 0.002, "weight_decay": 0.01}),
        ("fromage", {"learning_rate": 0.01}),
        ("lion", {"learning_rate": 0.003, "b1": 0.8}),
        ("novograd", {"learning_rate": 0.001, "weight_decay": 0.01}),
    ],
)
def test_inject_hyperparams_traces_the_hyperparameters_as_optax_does(name, kwargs):
    ours = gradtx.inject_hyperparams(getattr(gradtx, name))(**kwargs)
    theirs = optax.inject_hyperparams(getattr(optax, name))(**kwargs)
    params = make_params()
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for _ in range(2):
        g = jax.grad(loss)(params)
        u_ours, s_ours = jax.jit(ours.update)(g, s_ours, params)
        with jax.numpy_dtype_promotion("standard"):
            u_theirs, s_theirs = jax.jit(theirs.update)(g, s_theirs, params)
        assert_close(u_ours, u_theirs)
        params = gradtx.apply_updates(params, u_ours)
    assert_close(s_ours.hyperparams, s_theirs.hyperparams)
