"""optax.contrib's parameter-free optimisers: prodigy, dadapt_adamw, cocob, madgrad, mechanize,
dog and dowg.

Parity with optax.contrib (300 jitted steps with feedback gradients, states and the learning
rate estimate $d$ at every step), the edge cases where optax divides 0 by 0, the checks, and a
law each where one holds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx
import gradtx.contrib as gc
from tests._util import assert_trees_close, standard_promotion

settings.register_profile("contrib_b", deadline=None, max_examples=10, derandomize=True)

SHAPES = {"w": (3, 4), "b": (4,), "blocks": [(2, 2, 3), ()]}


def make_params(dtype=jnp.float32):
    leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(7), len(leaves))
    arrays = [jax.random.normal(k, s, jnp.float32).astype(dtype) for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, arrays)


def loss(params):
    """A fixed quadratic plus quartic, a different curvature per leaf."""
    total = jnp.zeros([], jnp.float32)
    for i, x in enumerate(jax.tree.leaves(params)):
        x = x.astype(jnp.float32)
        total = total + jnp.sum(0.5 * (1.0 + i) * x * x + 0.05 * x**4)
    return total


GRAD = jax.jit(jax.grad(loss))


def lr_schedule(count):
    return 0.9 * 0.999 ** count.astype(jnp.float32)


def wd_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


# name: (gradtx's, optax's, where the state keeps d (or None))
CASES = {
    "prodigy": (gc.prodigy, optax.contrib.prodigy, {}, lambda s: s.estim_lr),
    "prodigy_args": (
        gc.prodigy,
        optax.contrib.prodigy,
        dict(
            learning_rate=lr_schedule,
            betas=(0.8, 0.99),
            beta3=0.9,
            eps=1e-6,
            estim_lr0=1e-5,
            estim_lr_coef=0.8,
            weight_decay=0.01,
            safeguard_warmup=True,
        ),
        lambda s: s.estim_lr,
    ),
    "dadapt_adamw": (gc.dadapt_adamw, optax.contrib.dadapt_adamw, {}, lambda s: s.estim_lr),
    "dadapt_adamw_args": (
        gc.dadapt_adamw,
        optax.contrib.dadapt_adamw,
        dict(
            learning_rate=lr_schedule,
            betas=(0.8, 0.99),
            eps=1e-6,
            estim_lr0=1e-5,
            weight_decay=0.01,
        ),
        lambda s: s.estim_lr,
    ),
    "cocob": (gc.cocob, optax.contrib.cocob, {}, None),
    "cocob_args": (
        gc.cocob,
        optax.contrib.cocob,
        dict(learning_rate=lr_schedule, alpha=50.0, eps=1e-6, weight_decay=0.01, mask=wd_mask),
        None,
    ),
    "madgrad": (gc.madgrad, optax.contrib.madgrad, dict(learning_rate=0.01), None),
    "madgrad_args": (
        gc.madgrad,
        optax.contrib.madgrad,
        dict(learning_rate=lr_schedule, momentum=0.5, weight_decay=0.01, eps=1e-5),
        None,
    ),
    "mechanize": (
        lambda **kw: gc.mechanize(gradtx.sgd(0.01), **kw),
        lambda **kw: optax.contrib.mechanize(optax.sgd(0.01), **kw),
        {},
        lambda s: jnp.sum(s.s),
    ),
    "mechanize_args": (
        lambda **kw: gc.mechanize(gradtx.sgd(lr_schedule, momentum=0.9), **kw),
        lambda **kw: optax.contrib.mechanize(optax.sgd(lr_schedule, momentum=0.9), **kw),
        dict(weight_decay=0.1, eps=1e-6, s_init=1e-5, num_betas=4),
        lambda s: jnp.sum(s.s),
    ),
    "mechanize_of_optax": (  # a foreign (optax) base optimiser inside gradtx's mechanize
        lambda **kw: gc.mechanize(optax.sgd(0.01, momentum=0.5), **kw),
        lambda **kw: optax.contrib.mechanize(optax.sgd(0.01, momentum=0.5), **kw),
        {},
        lambda s: jnp.sum(s.s),
    ),
    "dog": (gc.dog, optax.contrib.dog, {}, lambda s: s[1].max_dist),
    "dog_args": (
        gc.dog,
        optax.contrib.dog,
        dict(
            learning_rate=lr_schedule,
            init_step=("distance", 1e-3),
            eps=1e-6,
            weight_decay=0.01,
            mask=wd_mask,
        ),
        lambda s: s[1].max_dist,
    ),
    "dog_learning_rate": (
        gc.dog,
        optax.contrib.dog,
        dict(init_step=("learning_rate", 1e-3)),
        lambda s: s[1].max_dist,
    ),
    "dowg": (gc.dowg, optax.contrib.dowg, {}, lambda s: s[1].estim_sq_dist),
    "dowg_args": (
        gc.dowg,
        optax.contrib.dowg,
        dict(learning_rate=0.5, init_estim_sq_dist=1e-3, eps=1e-6, weight_decay=0.01),
        lambda s: s[1].estim_sq_dist,
    ),
}


def run(opt, steps, *, jit=True, params=None, state=None, d_of=None):
    """`steps` updates on `loss` with feedback gradients, under one `lax.scan` when `jit`, as
    jitted steps from Python with `jit="step"` (the state may change class: optax's to ours).

    Returns the final params, the stacked updates, the final state and the stacked $d$.
    """
    params = make_params() if params is None else params
    state = opt.init(params) if state is None else state

    def step(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(loss)(p), s, p)
        d = d_of(s) if d_of is not None else jnp.zeros([])
        return (optax.apply_updates(p, u), s), (u, d)

    if jit is True:
        (params, state), (us, ds) = jax.jit(lambda c: jax.lax.scan(step, c, None, steps))(
            (params, state)
        )
        return params, us, state, ds
    outs = []
    one_step = jax.jit(step) if jit == "step" else step
    for _ in range(steps):
        (params, state), out = one_step((params, state), None)
        outs.append(out)
    us, ds = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    return params, us, state, ds


def key_paths(tree):
    """The tree's key paths: equal for two states of the same layout, whatever the classes."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_optax_contrib_for_300_jitted_steps(name):
    ours, theirs, kwargs, d_of = CASES[name]
    p_ours, u_ours, s_ours, d_ours = run(ours(**kwargs), 300, d_of=d_of)
    with standard_promotion():
        p_theirs, u_theirs, s_theirs, d_theirs = run(theirs(**kwargs), 300, d_of=d_of)
    assert key_paths(s_ours) == key_paths(s_theirs)
    assert_trees_close(u_ours, u_theirs, rtol=1e-5, atol=1e-6)
    assert_trees_close(p_ours, p_theirs, rtol=1e-5, atol=1e-6)
    assert_trees_close(jax.tree.leaves(s_ours), jax.tree.leaves(s_theirs))
    if d_of is not None:  # the learning-rate estimate, at every step, and it did adapt
        np.testing.assert_allclose(d_ours, d_theirs, rtol=1e-5)
        assert d_ours[-1] > 10 * d_ours[0]
    # each optimiser trains the problem to optax's loss, far below where it started
    assert float(loss(p_ours)) == pytest.approx(float(loss(p_theirs)), rel=1e-4, abs=1e-7)
    assert float(loss(p_ours)) < 0.05 * float(loss(make_params()))


@pytest.mark.parametrize("name", ["cocob_args", "dowg_args"])
def test_matches_optax_contrib_without_jit(name):
    ours, theirs, kwargs, d_of = CASES[name]
    p_ours, u_ours, s_ours, _ = run(ours(**kwargs), 3, jit=False)
    with standard_promotion():
        p_theirs, u_theirs, s_theirs, _ = run(theirs(**kwargs), 3, jit=False)
    assert_trees_close(u_ours, u_theirs)
    assert_trees_close(jax.tree.leaves(s_ours), jax.tree.leaves(s_theirs))


@pytest.mark.parametrize("name", ["prodigy_args", "cocob_args"])
def test_an_optax_state_resumes_in_gradtx(name):
    """An optax checkpoint (its state after 20 steps) continues in gradtx as in optax."""
    ours, theirs, kwargs, _ = CASES[name]
    with standard_promotion():
        params, _, optax_state, _ = run(theirs(**kwargs), 20)
        p_theirs, u_theirs, _, _ = run(
            theirs(**kwargs), 10, jit="step", params=params, state=optax_state
        )
    p_ours, u_ours, _, _ = run(ours(**kwargs), 10, jit="step", params=params, state=optax_state)
    assert_trees_close(u_ours, u_theirs)
    assert_trees_close(p_ours, p_theirs)


ZERO_GRADS = {
    "prodigy": gc.prodigy(),
    "prodigy_eps0": gc.prodigy(eps=0.0, weight_decay=0.1),
    "dadapt_adamw": gc.dadapt_adamw(),
    "dadapt_adamw_eps0": gc.dadapt_adamw(eps=0.0, weight_decay=0.1),
    "cocob_eps0": gc.cocob(eps=0.0),
    "scale_by_madgrad_eps0": gc.scale_by_madgrad(0.1, eps=0.0),
    "mechanize": gc.mechanize(gradtx.sgd(0.1)),
    "dog_eps0": gc.dog(eps=0.0),
    "dowg_eps0": gc.dowg(eps=0.0, init_estim_sq_dist=1.0),
}


@pytest.mark.parametrize(
    "name, zero_params",
    [(name, False) for name in sorted(ZERO_GRADS)] + [("prodigy", True), ("mechanize", True)],
)
def test_zero_gradients_give_finite_steps_where_optax_has_0_over_0(name, zero_params):
    opt = ZERO_GRADS[name]
    params = make_params()
    if zero_params:
        params = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    update = jax.jit(opt.update)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        updates, state = update(zeros, state, params)
        for leaf in jax.tree.leaves((updates, state)):
            assert bool(jnp.all(jnp.isfinite(leaf))), name
    # no gradient, no move (weight decay aside)
    if "eps0" not in name or zero_params:
        for leaf in jax.tree.leaves(updates):
            np.testing.assert_array_equal(leaf, 0.0)
    # the estimate of d stays at its start, then adapts once gradients arrive
    if hasattr(state, "estim_lr"):
        assert float(state.estim_lr) == pytest.approx(1e-6)
        p = params
        for _ in range(5):
            updates, state = update(GRAD(p), state, p)
            p = optax.apply_updates(p, updates)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((p, state)))
        if not zero_params:
            assert float(state.estim_lr) > 1e-6


def test_first_step_and_zero_params_stay_finite_with_real_gradients():
    params = jax.tree.map(jnp.zeros_like, make_params())
    grads = jax.tree.map(jnp.ones_like, params)
    opts = [gc.prodigy(), gc.dadapt_adamw(), gc.cocob(), gc.madgrad(0.1), gc.dog(), gc.dowg()]
    for opt in opts + [gc.mechanize(gradtx.sgd(0.1))]:
        updates, state = opt.update(grads, opt.init(params), params)
        for leaf in jax.tree.leaves((updates, state)):
            assert bool(jnp.all(jnp.isfinite(leaf)))
        assert all(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))


def test_bfloat16_params_keep_bfloat16_state_and_updates():
    params = make_params(jnp.bfloat16)
    opts = [gc.prodigy(estim_lr0=1e-3), gc.dadapt_adamw(), gc.cocob(), gc.madgrad(0.01)]
    for opt in opts + [gc.mechanize(gradtx.sgd(1.0), s_init=1e-2)]:
        p, u, state, _ = run(opt, 20, params=params)
        for leaf in jax.tree.leaves((p, u)):
            assert leaf.dtype == jnp.bfloat16
        for leaf in jax.tree.leaves(state):
            assert leaf.dtype in (jnp.bfloat16, jnp.int32)
        assert float(loss(p)) < float(loss(params))


BAD = [
    (lambda: gc.prodigy(learning_rate=-1.0), ValueError, r"prodigy: learning_rate must be in"),
    (lambda: gc.prodigy(betas=0.9), TypeError, r"prodigy: betas must be a pair \(beta1, beta2\)"),
    (lambda: gc.prodigy(betas=(0.9, 1.0)), ValueError, r"prodigy: betas\[1\] must be in \[0, 1\)"),
    (lambda: gc.prodigy(beta3=1.5), ValueError, r"prodigy: beta3 must be in \[0, 1\)"),
    (lambda: gc.prodigy(eps=-1e-8), ValueError, r"prodigy: eps must be in \[0, inf\]"),
    (lambda: gc.prodigy(estim_lr0=0.0), ValueError, r"prodigy: estim_lr0 must be in \(0, inf\)"),
    (lambda: gc.prodigy(estim_lr_coef=-1.0), ValueError, r"prodigy: estim_lr_coef must be in"),
    (lambda: gc.prodigy(weight_decay=-0.1), ValueError, r"prodigy: weight_decay must be in"),
    (lambda: gc.prodigy(safeguard_warmup=1), TypeError, "prodigy: safeguard_warmup must be True"),
    (lambda: gc.dadapt_adamw(betas=(-0.1, 0.9)), ValueError, r"dadapt_adamw: betas\[0\] must be"),
    (lambda: gc.dadapt_adamw(betas=(0.9,)), TypeError, "dadapt_adamw: betas must be a pair"),
    (lambda: gc.dadapt_adamw(eps=-1.0), ValueError, "dadapt_adamw: eps must be in"),
    (lambda: gc.dadapt_adamw(estim_lr0=-1.0), ValueError, "dadapt_adamw: estim_lr0 must be in"),
    (lambda: gc.dadapt_adamw(weight_decay=-1.0), ValueError, "dadapt_adamw: weight_decay must"),
    (lambda: gc.dadapt_adamw(learning_rate="1"), TypeError, "dadapt_adamw: learning_rate must"),
    (lambda: gc.scale_by_cocob(alpha=-1.0), ValueError, r"scale_by_cocob: alpha must be in \[0"),
    (lambda: gc.scale_by_cocob(eps=float("nan")), ValueError, "scale_by_cocob: eps must be in"),
    (lambda: gc.cocob(learning_rate=-0.5), ValueError, "cocob: learning_rate must be in"),
    (lambda: gc.cocob(weight_decay=-0.5), ValueError, "cocob: weight_decay must"),
    (lambda: gc.madgrad(0.1, momentum=1.5), ValueError, r"madgrad: momentum must be in \[0, 1\]"),
    (lambda: gc.madgrad(-0.1), ValueError, "madgrad: learning_rate must be in"),
    (lambda: gc.madgrad(0.1, eps=-1e-6), ValueError, "madgrad: eps must be in"),
    (lambda: gc.scale_by_madgrad(0.1, momentum=-0.1), ValueError, "scale_by_madgrad: momentum"),
    (lambda: gc.dog(init_step=("far", 1.0)), ValueError, "scale_by_dog: init_step's tag must"),
    (lambda: gc.dog(init_step=1e-6), TypeError, r"scale_by_dog: init_step must be a pair"),
    (lambda: gc.dog(init_step=("distance", 0.0)), ValueError, "init_step's value must be in"),
    (lambda: gc.dog(eps=-1.0), ValueError, "scale_by_dog: eps must be in"),
    (lambda: gc.dog(-1.0), ValueError, "dog: learning_rate must be in"),
    (lambda: gc.dowg(init_estim_sq_dist=0.0), ValueError, "init_estim_sq_dist must be in"),
    (lambda: gc.dowg(eps=-1.0), ValueError, "scale_by_dowg: eps must be in"),
    (lambda: gc.dowg(weight_decay=-1.0), ValueError, "dowg: weight_decay must be"),
    (lambda: gc.mechanize(0.1), TypeError, "mechanize: base_optimizer must be a gradient trans"),
    (lambda: gc.mechanize(gradtx.sgd(1.0), weight_decay=-1.0), ValueError, "weight_decay must"),
    (lambda: gc.mechanize(gradtx.sgd(1.0), eps=0.0), ValueError, r"mechanize: eps must be in \(0"),
    (lambda: gc.mechanize(gradtx.sgd(1.0), s_init=-1.0), ValueError, "mechanize: s_init must"),
    (lambda: gc.mechanize(gradtx.sgd(1.0), num_betas=0), ValueError, "num_betas must be an int"),
    (lambda: gc.mechanize(gradtx.sgd(1.0), num_betas=2.0), TypeError, "num_betas must be an int"),
]


@pytest.mark.parametrize("make, error, match", BAD, ids=[m for _, _, m in BAD])
def test_bad_hyperparameters_are_refused_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


MADE = {
    "prodigy": gc.prodigy(),
    "dadapt_adamw": gc.dadapt_adamw(),
    "scale_by_cocob": gc.scale_by_cocob(),
    "scale_by_madgrad": gc.scale_by_madgrad(0.1),
    "mechanize": gc.mechanize(gradtx.sgd(1.0)),
    "scale_by_dog": gc.scale_by_dog(("heuristic", 1e-6)),
    "scale_by_dowg": gc.scale_by_dowg(),
}


@pytest.mark.parametrize("name", sorted(MADE))
def test_update_without_params_says_how_to_pass_them(name):
    opt = MADE[name]
    params = make_params()
    with pytest.raises(TypeError, match=rf"{name}: update needs params; pass it as opt.update"):
        opt.update(params, opt.init(params))


@pytest.mark.parametrize("name", sorted(MADE))
def test_complex_params_are_refused_at_init_naming_the_leaf(name):
    params = {"w": jnp.ones(3), "z": [jnp.ones(2, jnp.complex64)]}
    with pytest.raises(TypeError, match=rf"{name}: params\['z'\]\[0\] is complex64, but"):
        MADE[name].init(params)


def test_mechanize_around_adam_trains_to_optax_loss():
    """Adam inside Mechanic is chaotic here: float32 round-off parts the two trajectories
    after ~50 steps, so the loss reached is compared, not the path."""
    p_ours, _, _, _ = run(gc.mechanize(gradtx.adam(0.01)), 300)
    with standard_promotion():
        p_theirs, _, _, _ = run(optax.contrib.mechanize(optax.adam(0.01)), 300)
    start, ours, theirs = (float(loss(p)) for p in (make_params(), p_ours, p_theirs))
    assert ours < 1e-3 * start and theirs < 1e-3 * start
    assert ours == pytest.approx(theirs, rel=0.5)


def test_mechanize_passes_extra_arguments_to_its_base_optimiser():
    opt = gc.mechanize(gradtx.chain(gradtx.sgd(0.1), gradtx.reduce_on_plateau(patience=1)))
    params = make_params()
    state = opt.init(params)
    grads = GRAD(params)
    updates, state = opt.update(grads, state, params, value=loss(params))
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    with pytest.raises(
        TypeError, match="reduce_on_plateau: update needs the monitored metric value"
    ):
        opt.update(grads, state, params)


def test_a_state_of_another_optimiser_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match=r"prodigy: state must be a ProdigyState\(exp_avg"):
        gc.prodigy().update(params, gc.dadapt_adamw().init(params), params)


def test_the_optimisers_print_as_their_calls():
    assert repr(gc.prodigy(0.5, weight_decay=0.1)) == (
        "prodigy(learning_rate=0.5, betas=(0.9, 0.999), eps=1e-08, estim_lr0=1e-06, "
        "estim_lr_coef=1.0, weight_decay=0.1)"
    )
    assert repr(gc.madgrad(0.1)) == (
        "chain(add_decayed_weights(), scale_by_madgrad(0.1, momentum=0.9, eps=1e-06))"
    )
    assert repr(gc.cocob()) == (
        "chain(add_decayed_weights(), scale_by_learning_rate(1.0, flip_sign=False), "
        "scale_by_cocob(alpha=100.0, eps=1e-08))"
    )


D_OPTS = {"prodigy": gc.prodigy(estim_lr0=1e-3), "dadapt_adamw": gc.dadapt_adamw(estim_lr0=1e-3)}
D_UPDATES = {name: jax.jit(opt.update) for name, opt in D_OPTS.items()}
SCALE_FREE = {  # without eps, steps that do not depend on the scale of the gradients
    "scale_by_cocob": gc.scale_by_cocob(eps=0.0),
    "dog": gc.dog(init_step=("distance", 1e-2), eps=0.0),
    "dowg": gc.dowg(init_estim_sq_dist=1e-2, eps=0.0),
}
SCALE_FREE_UPDATES = {name: jax.jit(opt.update) for name, opt in SCALE_FREE.items()}


@settings(settings.get_profile("contrib_b"))
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(-3.0, 3.0),
    name=st.sampled_from(["prodigy", "dadapt_adamw"]),
)
def test_the_estimate_of_d_never_decreases(seed, scale, name):
    """d_t = max(d_{t-1}, ...) from d_0: whatever the gradients, d only grows."""
    params = make_params()
    state, update = D_OPTS[name].init(params), D_UPDATES[name]
    key = jax.random.key(seed)
    ds = [float(state.estim_lr)]
    for t in range(6):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(key, t), len(leaves))
        g = [10.0**scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
        updates, state = update(jax.tree.unflatten(treedef, g), state, params)
        params = optax.apply_updates(params, updates)
        ds.append(float(state.estim_lr))
    assert ds[0] == pytest.approx(1e-3)
    assert all(b >= a for a, b in zip(ds, ds[1:]))
    assert all(np.isfinite(ds))


@settings(settings.get_profile("contrib_b"))
@given(
    seed=st.integers(0, 2**16),
    factor=st.floats(1e-3, 1e3),
    name=st.sampled_from(sorted(SCALE_FREE)),
)
def test_without_eps_the_steps_are_invariant_to_the_scale_of_the_gradients(seed, factor, name):
    """COCOB bets fractions of its wealth; DoG's and DoWG's rates are distances over gradient
    norms: gradients times c > 0 give the same steps."""
    opt, update, params = SCALE_FREE[name], SCALE_FREE_UPDATES[name], make_params()
    runs = []
    for c in (1.0, factor):
        p, state, steps = params, opt.init(params), []
        for t in range(5):
            noise = jax.random.key(seed + t)
            g = jax.tree.map(lambda x: c * (x + 0.3 * jax.random.normal(noise, x.shape)), GRAD(p))
            u, state = update(g, state, p)
            p = optax.apply_updates(p, u)
            steps.append(u)
        runs.append(steps)
    assert_trees_close(runs[0], runs[1], rtol=1e-4, atol=1e-6)
