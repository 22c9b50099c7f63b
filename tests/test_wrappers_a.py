"""optax's wrappers (part wrappers-a): freezing, conditional steps, `apply_every`, `flatten`,
`lookahead` and `MultiSteps`, each against optax's function on the same inputs."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import gradtx
from gradtx.conditional import every_k_steps

SHAPES = {"w": (3, 4), "b": (4,), "blocks": [(2, 2, 3), ()]}
MASK = {"w": True, "b": False, "blocks": [False, True]}
STEPS = 300


def make_params(seed=0, dtype=jnp.float32):
    leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    arrays = [jax.random.normal(k, s, jnp.float32).astype(dtype) for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, arrays)


def loss(params):
    """A quartic bowl, a different curvature per leaf: its gradient feeds back on the run."""
    leaves = jax.tree.leaves(params)
    return sum((1.0 + 0.5 * i) * jnp.sum(0.5 * x**2 + 0.05 * x**4) for i, x in enumerate(leaves))


def fast_loss(params):
    return loss(params.fast)


def fast_grad(params):
    """Lookahead's gradients: taken at the fast params."""
    return jax.grad(loss)(params.fast)


def nan_every_5th(g, t):
    """A NaN in one leaf on every 5th step (from step 3), at every point of a 3-step cycle
    in turn: what `skip_not_finite` drops."""
    bad = t % 5 == 3
    return {**g, "b": jnp.where(bad, jnp.full_like(g["b"], jnp.nan), g["b"])}


def large_every_4th(g, t):
    """Large updates on every 4th step, at either point of a 2-step cycle in turn."""
    return jax.tree.map(lambda x: jnp.where(t % 4 == 2, 100.0 * x, x), g)


def run(opt, params, steps=STEPS, *, jit=True, grad=None, perturb=None, record=None, std=False):
    """`steps` updates with feedback gradients; returns (params, emitted updates, state,
    recorded values). Under `jit` the whole run is one `lax.scan`."""
    grad = jax.grad(loss) if grad is None else grad

    def step(carry, t):
        p, s = carry
        g = grad(p)
        if perturb is not None:
            g = perturb(g, t)
        u, s = opt.update(g, s, p)
        p = jax.tree.map(lambda a, b: a + b, p, u)
        return (p, s), (u, () if record is None else record(s))

    with jax.numpy_dtype_promotion("standard" if std else "strict"):
        state = opt.init(params)
        if jit:
            scan = jax.jit(lambda p, s: lax.scan(step, (p, s), jnp.arange(steps)))
            (params, state), (us, recs) = scan(params, state)
            return params, us, state, recs
        outs = []
        for t in range(steps):
            (params, state), out = step((params, state), jnp.asarray(t))
            outs.append(out)
        us, recs = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        return params, us, state, recs


def paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    assert paths(a) == paths(b), f"{paths(a)} != {paths(b)}"
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert jnp.shape(x) == jnp.shape(y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def tree_fn_mask(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


LOOKAHEAD = {"grad": fast_grad}
CASES = {
    "freeze": (
        lambda: gradtx.chain(gradtx.freeze(MASK), gradtx.sgd(0.05, momentum=0.9)),
        lambda: optax.chain(optax.freeze(MASK), optax.sgd(0.05, momentum=0.9)),
        {},
    ),
    "freeze_prefix_and_fn": (
        lambda: gradtx.chain(
            gradtx.freeze({"w": False, "b": True, "blocks": False}),
            gradtx.freeze(tree_fn_mask),
            gradtx.adam(1e-2),
        ),
        lambda: optax.chain(
            optax.freeze({"w": False, "b": True, "blocks": False}),
            optax.freeze(tree_fn_mask),
            optax.adam(1e-2),
        ),
        {},
    ),
    "selective_transform": (
        lambda: gradtx.selective_transform(gradtx.adam(1e-2, b1=0.8), freeze_mask=MASK),
        lambda: optax.selective_transform(optax.adam(1e-2, b1=0.8), freeze_mask=MASK),
        {},
    ),
    "conditionally_mask": (
        lambda: gradtx.conditionally_mask(gradtx.adam(1e-2), lambda s: s % 3 == 0),
        lambda: optax.conditionally_mask(optax.adam(1e-2), lambda s: s % 3 == 0),
        {},
    ),
    "conditionally_transform": (
        lambda: gradtx.chain(
            gradtx.conditionally_transform(gradtx.scale_by_adam(), lambda s: s >= 20),
            gradtx.scale(-0.02),
        ),
        lambda: optax.chain(
            optax.conditionally_transform(optax.scale_by_adam(), lambda s: s >= 20),
            optax.scale(-0.02),
        ),
        {},
    ),
    "apply_every_3": (
        lambda: gradtx.chain(gradtx.sgd(0.02, momentum=0.5), gradtx.apply_every(3)),
        lambda: optax.chain(optax.sgd(0.02, momentum=0.5), optax.apply_every(3)),
        {},
    ),
    "flatten_adam": (
        lambda: gradtx.flatten(gradtx.adam(1e-2)),
        lambda: optax.flatten(optax.adam(1e-2)),
        {},
    ),
    "flatten_global_clip": (
        lambda: gradtx.flatten(gradtx.chain(gradtx.clip_by_global_norm(0.5), gradtx.sgd(0.05))),
        lambda: optax.flatten(optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.05))),
        {},
    ),
    "lookahead_adam_reset": (
        lambda: gradtx.lookahead(gradtx.adam(1e-2), 7, 0.3, reset_state=True),
        lambda: optax.lookahead(optax.adam(1e-2), 7, 0.3, reset_state=True),
        LOOKAHEAD,
    ),
    "multisteps_int": (
        lambda: gradtx.MultiSteps(gradtx.adam(1e-2), 4),
        lambda: optax.MultiSteps(optax.adam(1e-2), 4),
        {},
    ),
    "multisteps_schedule": (
        lambda: gradtx.MultiSteps(
            gradtx.adam(1e-2), lambda step: jnp.where(step < 10, 2, 1 + step % 3)
        ).gradient_transformation(),
        lambda: optax.MultiSteps(
            optax.adam(1e-2), lambda step: jnp.where(step < 10, 2, 1 + step % 3)
        ).gradient_transformation(),
        {},
    ),
    "multisteps_sum_f32_schedule": (
        lambda: gradtx.MultiSteps(
            gradtx.sgd(0.01, momentum=0.9),
            gradtx.schedules.piecewise_constant_schedule(2.0, {30: 2.0}),
            use_grad_mean=False,
        ).gradient_transformation(),
        lambda: optax.MultiSteps(
            optax.sgd(0.01, momentum=0.9),
            lambda step: jnp.where(step < 30, 2, 4),
            use_grad_mean=False,
        ).gradient_transformation(),
        {},
    ),
    "multisteps_skip_not_finite": (
        lambda: gradtx.MultiSteps(
            gradtx.adam(1e-2), 3, should_skip_update_fn=gradtx.skip_not_finite
        ),
        lambda: optax.MultiSteps(optax.adam(1e-2), 3, should_skip_update_fn=optax.skip_not_finite),
        {"perturb": nan_every_5th},
    ),
    "multisteps_skip_large": (
        lambda: gradtx.MultiSteps(
            gradtx.sgd(0.02),
            2,
            should_skip_update_fn=functools.partial(
                gradtx.skip_large_updates, max_squared_norm=1e3
            ),
        ),
        lambda: optax.MultiSteps(
            optax.sgd(0.02),
            2,
            should_skip_update_fn=functools.partial(optax.skip_large_updates, max_squared_norm=1e3),
        ),
        {"perturb": large_every_4th},
    ),
}


# Run without jit (a few steps; the jitted table above has the 300-step runs).
EAGER = {
    "lookahead_sgd": (
        lambda: gradtx.lookahead(gradtx.sgd(0.05), 5, 0.5),
        lambda: optax.lookahead(optax.sgd(0.05), 5, 0.5),
        LOOKAHEAD,
    ),
    "selective_transform": CASES["selective_transform"],
}


def start(kwargs, params, lib=gradtx):
    return lib.LookaheadParams.init_synced(params) if "grad" in kwargs else params


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_optax_over_300_jitted_steps(name):
    ours, theirs, kwargs = CASES[name]
    params = start(kwargs, make_params())
    record = None
    if name.startswith("multisteps"):
        record = gradtx.has_updated
    p1, u1, s1, r1 = run(ours(), params, record=record, **kwargs)
    p2, u2, s2, r2 = run(
        theirs(), start(kwargs, make_params(), optax), record=record, std=True, **kwargs
    )
    assert_close(u1, u2)
    assert_close(p1, p2)
    assert_close(s1, s2)  # the same layout (key paths) and values, leaf by leaf
    if record is not None:
        np.testing.assert_array_equal(np.asarray(r1), np.asarray(r2))
        assert 0 < int(np.sum(r1)) < STEPS  # some steps updated, some accumulated
    f = fast_loss if "grad" in kwargs else loss
    assert float(f(p1)) < float(f(params))  # trains, to optax's loss (params agree)


@pytest.mark.parametrize("name", list(EAGER))
def test_parity_without_jit(name):
    ours, theirs, kwargs = EAGER[name]
    p1, u1, s1, _ = run(ours(), start(kwargs, make_params(1)), 3, jit=False, **kwargs)
    p2, u2, s2, _ = run(
        theirs(), start(kwargs, make_params(1), optax), 3, jit=False, std=True, **kwargs
    )
    assert_close(u1, u2)
    assert_close(s1, s2)


def test_multisteps_method_by_method_against_optax():
    """`init`, `update`, `has_updated`, `inner_opt` called on the class, as optax users do."""
    ours = gradtx.MultiSteps(gradtx.sgd(0.1, momentum=0.9), every_k_schedule=3)
    theirs = optax.MultiSteps(optax.sgd(0.1, momentum=0.9), every_k_schedule=3)
    assert callable(ours.inner_opt.update)
    params = make_params(2)
    s1, s2 = ours.init(params), theirs.init(params)
    assert type(s1) is gradtx.MultiStepsState
    up1, up2 = jax.jit(ours.update), jax.jit(theirs.update)
    for t in range(8):
        g = jax.grad(loss)(params)
        u1, s1 = up1(g, s1, params)
        with jax.numpy_dtype_promotion("standard"):
            u2, s2 = up2(g, s2, params)
        assert_close(u1, u2)
        assert bool(ours.has_updated(s1)) == bool(theirs.has_updated(s2)) == (t % 3 == 2)
        params = jax.tree.map(lambda p, u: p + u, params, u1)
    assert int(s1.gradient_step) == 2 and int(s1.mini_step) == 2
    assert repr(ours.gradient_transformation()).startswith("accumulate(chain(trace(0.9)")


def test_multisteps_defaults_match_optax():
    import inspect

    ours = inspect.signature(gradtx.MultiSteps.__init__).parameters
    theirs = inspect.signature(optax.MultiSteps.__init__).parameters
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].default == theirs[name].default
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    assert gradtx.MultiSteps(gradtx.sgd(0.1), 2).init(params).acc_grads["w"].dtype == jnp.float32


def test_multisteps_skip_state_and_a_skipped_micro_batch_changes_nothing():
    opt = gradtx.MultiSteps(gradtx.sgd(1.0), 2, should_skip_update_fn=gradtx.skip_not_finite)
    params = {"a": jnp.ones(2), "b": jnp.zeros((2, 2))}
    state = opt.init(params)
    assert int(state.skip_state["num_not_finite"]) == 0
    good = jax.tree.map(jnp.ones_like, params)
    bad = {"a": jnp.asarray([jnp.nan, jnp.inf]), "b": jnp.ones((2, 2))}
    u, after_good = opt.update(good, state, params)
    u, after_bad = opt.update(bad, after_good, params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
    assert int(after_bad.skip_state["num_not_finite"]) == 2 and bool(
        after_bad.skip_state["should_skip"]
    )
    assert_close(after_bad._replace(skip_state=()), after_good._replace(skip_state=()))
    u, final = opt.update(jax.tree.map(lambda x: 3.0 * x, good), after_bad, params)
    np.testing.assert_allclose(u["a"], -2.0)  # -lr * mean(1, 3): the bad batch never counted
    assert bool(opt.has_updated(final))


def test_an_optax_state_resumes_in_gradtx():
    """optax checkpoints restore: an optax state goes into gradtx's update and the run
    continues as optax's does."""
    params = make_params(3)
    pairs = [
        (gradtx.MultiSteps(gradtx.adam(1e-2), 3), optax.MultiSteps(optax.adam(1e-2), 3)),
        (
            gradtx.lookahead(gradtx.adam(1e-2), 4, 0.5),
            optax.lookahead(optax.adam(1e-2), 4, 0.5),
        ),
        (
            gradtx.conditionally_mask(gradtx.sgd(0.1), lambda s: s % 2 == 0),
            optax.conditionally_mask(optax.sgd(0.1), lambda s: s % 2 == 0),
        ),
        (
            gradtx.selective_transform(gradtx.adam(0.1), freeze_mask=MASK),
            optax.selective_transform(optax.adam(0.1), freeze_mask=MASK),
        ),
    ]
    for ours, theirs in pairs:
        is_la = "lookahead" in repr(ours)
        p = optax.LookaheadParams.init_synced(params) if is_la else params  # optax's class
        grad = fast_grad if is_la else jax.grad(loss)

        def stepper(opt, grad=grad):
            return jax.jit(lambda p, s: opt.update(grad(p), s, p))

        def steps(step, p, state, n):
            us = []
            for _ in range(n):
                u, state = step(p, state)
                p = jax.tree.map(lambda a, b: a + b, p, u)
                us.append(u)
            return p, state, us

        with jax.numpy_dtype_promotion("standard"):
            theirs_step = stepper(theirs)
            p, optax_state, _ = steps(theirs_step, p, theirs.init(p), 5)
            p2, s2, u2 = steps(theirs_step, p, optax_state, 4)
        p1, s1, u1 = steps(stepper(ours), p, optax_state, 4)  # from optax's state
        assert_close(u1, u2)
        assert_close(p1, p2)
        assert_close(s1, s2)


def test_lookahead_by_hand_over_many_sync_periods():
    """slow moves only on synchronisations, to slow + alpha (fast + delta - slow); fast is
    then reset to slow."""
    k, alpha, lr = 4, 0.25, 0.1
    opt = gradtx.lookahead(gradtx.sgd(lr), k, alpha)
    params = gradtx.LookaheadParams.init_synced({"x": jnp.asarray([2.0, -1.0])})
    state = opt.init(params)
    fast, slow = np.asarray([2.0, -1.0]), np.asarray([2.0, -1.0])
    update = jax.jit(opt.update)
    for t in range(10 * k):
        g = jax.grad(lambda p: jnp.sum(p["x"] ** 2))(params.fast)
        u, state = update(g, state, params)
        params = gradtx.apply_updates(params, u)
        fast = fast - lr * 2 * fast
        if t % k == k - 1:
            slow = slow + alpha * (fast - slow)
            fast = slow.copy()
        np.testing.assert_allclose(params.fast["x"], fast, rtol=1e-5)
        np.testing.assert_allclose(params.slow["x"], slow, rtol=1e-5)
        assert int(state.steps_since_sync) == (t + 1) % k
    assert float(jnp.abs(params.slow["x"]).max()) < 0.5  # from 2: 0.8525 per period


def test_lookahead_init_takes_plain_params_and_prints_and_round_trips():
    opt = gradtx.lookahead(gradtx.adam(1e-2), 3, 0.5, reset_state=True)
    params = make_params(4)
    paired = gradtx.LookaheadParams.init_synced(params)
    assert_close(opt.init(params), opt.init(paired))
    assert repr(opt).startswith("lookahead(chain(scale_by_adam(") and "reset_state=True" in repr(
        opt
    )
    rebuilt = gradtx.from_config(json.loads(json.dumps(gradtx.to_config(opt))))
    assert repr(rebuilt) == repr(opt)
    a = run(opt, paired, 4, jit=False, **LOOKAHEAD)  # through a synchronisation and reset
    b = run(rebuilt, paired, 4, jit=False, **LOOKAHEAD)
    assert_close(a[0], b[0], rtol=0, atol=0)


def test_conditional_extra_args_reach_the_condition_only_when_forwarded():
    params = {"w": jnp.ones(3)}

    def positive(step, value):
        return value > 0

    for make in (gradtx.conditionally_mask, optax.conditionally_mask):
        opt = make(gradtx.sgd(1.0), positive, forward_extra_args=True)
        state = opt.init(params)
        u, state = opt.update(params, state, params, value=jnp.asarray(-1.0))
        np.testing.assert_array_equal(u["w"], 0.0)
        u, state = opt.update(params, state, params, value=jnp.asarray(2.0))
        np.testing.assert_array_equal(u["w"], -1.0)
        assert int(state.step) == 2
    opt = gradtx.conditionally_transform(gradtx.sgd(1.0), lambda step: step == 1)
    state = opt.init(params)
    u, state = opt.update(params, state, params, value=jnp.asarray(1.0))  # not forwarded
    np.testing.assert_array_equal(u["w"], 1.0)  # step 0: passed through unchanged
    u, state = opt.update(params, state, params, value=jnp.asarray(1.0))
    np.testing.assert_array_equal(u["w"], -1.0)


def test_set_to_zero_is_optax_set_to_zero():
    params = make_params(6, jnp.bfloat16)
    for opt in (gradtx.set_to_zero(), optax.set_to_zero()):
        state = opt.init(params)
        u, new_state = jax.jit(opt.update)(params, state)
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, params)
        assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
        assert paths(new_state) == [] and type(new_state).__name__ == "EmptyState"
    assert repr(gradtx.set_to_zero()) == "set_to_zero()"


def test_a_bool_or_0d_jax_bool_mask_freezes_all_or_nothing_as_in_optax():
    params = make_params(7)
    grads = jax.tree.map(jnp.ones_like, params)
    for mask, want in ((True, 0.0), (jnp.asarray(True), 0.0), (np.bool_(False), 1.0)):
        for opt in (gradtx.freeze(mask), optax.freeze(mask)):
            u, _ = opt.update(grads, opt.init(params), params)
            assert all(bool(jnp.all(x == want)) for x in jax.tree.leaves(u))
    with pytest.raises(
        TypeError, match=r"freeze: mask must be a Python or NumPy bool, got .*traced"
    ):
        jax.jit(lambda m: gradtx.freeze(m).init(params))(jnp.asarray(True))


def test_every_k_steps_is_a_printable_condition():
    cond = every_k_steps(3, offset=1)
    assert [bool(cond(jnp.asarray(t))) for t in range(7)] == [t % 3 == 1 for t in range(7)]
    assert repr(cond) == "every_k_steps(3, offset=1)"
    opt = gradtx.conditionally_mask(gradtx.sgd(0.1), cond)
    assert repr(opt) == (
        "conditionally_mask(chain(identity(), scale_by_learning_rate(0.1)), "
        "every_k_steps(3, offset=1))"
    )


def test_freeze_and_selective_transform_take_an_equinox_mask():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(3, 2, width_size=4, depth=1, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_array)
    mask = tree_fn_mask(params)  # an MLP of bools: a callable pytree, a mask tree
    grads = jax.tree.map(jnp.ones_like, params)
    for freezer in (gradtx.freeze(mask), gradtx.freeze(tree_fn_mask)):
        u, _ = freezer.update(grads, freezer.init(params), params)
        assert float(jnp.abs(u.layers[0].weight).max()) == 0.0
        np.testing.assert_array_equal(u.layers[0].bias, 1.0)
    ours = gradtx.selective_transform(gradtx.adam(0.1), freeze_mask=mask)
    by_fn = gradtx.selective_transform(gradtx.adam(0.1), freeze_mask=tree_fn_mask)
    theirs = optax.selective_transform(optax.adam(0.1), freeze_mask=mask)
    u1, s1 = ours.update(grads, ours.init(params), params)
    u3, s3 = by_fn.update(grads, by_fn.init(params), params)
    with jax.numpy_dtype_promotion("standard"):
        u2, s2 = theirs.update(grads, theirs.init(params), params)
    assert_close(u1, u2)
    assert_close(u3, u2)
    assert_close(s1, s2)
    assert float(jnp.abs(u1.layers[0].weight).max()) == 0.0


def test_flatten_keeps_each_leaf_dtype_and_complex_parts():
    params = {"a": jnp.ones((2, 2), jnp.bfloat16), "b": jnp.asarray([1.0 + 2.0j, -1.0j]),
              "c": jnp.arange(3.0)}  # fmt: skip
    opt = gradtx.flatten(gradtx.sgd(0.5))
    state = opt.init(params)
    u, _ = jax.jit(opt.update)(params, state, params)
    assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, params)
    for x, g in zip(jax.tree.leaves(u), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(x, np.complex64), -0.5 * np.asarray(g, np.complex64))
    empty = gradtx.flatten(gradtx.adam(0.1))
    assert empty.update({}, empty.init({}), {})[0] == {}


def test_dtypes_are_kept_in_state_and_updates():
    params = make_params(5, jnp.bfloat16)
    grads = jax.tree.map(jnp.ones_like, params)
    for opt in (
        gradtx.apply_every(2),
        gradtx.conditionally_mask(gradtx.adam(0.1), lambda s: s % 2 == 0),
        gradtx.freeze(MASK),
        gradtx.selective_transform(gradtx.adam(0.1), freeze_mask=MASK),
        gradtx.MultiSteps(gradtx.adam(0.1), 2, accumulator_dtype=None).gradient_transformation(),
    ):
        state = opt.init(params)
        update = jax.jit(opt.update)
        for _ in range(2):
            u, new_state = update(grads, state, params)
            assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, params)
            assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
                lambda x: x.dtype, state
            )
            state = new_state
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, state)))


def test_complex_params_keep_their_imaginary_part():
    params = {"z": jnp.asarray([1.0 + 1.0j, -2.0j]), "r": jnp.asarray([3.0])}
    grads = {"z": jnp.asarray([2.0 - 1.0j, 1.0j]), "r": jnp.asarray([1.0])}
    ms = gradtx.MultiSteps(gradtx.sgd(1.0), 2)  # float32 accumulator: complex64 for "z"
    state = ms.init(params)
    assert state.acc_grads["z"].dtype == jnp.complex64
    _, state = ms.update(grads, state, params)
    u, state = ms.update(grads, state, params)
    np.testing.assert_allclose(u["z"], -np.asarray(grads["z"]))
    every = gradtx.apply_every(2)
    s = every.init(params)
    _, s = every.update(grads, s)
    u, s = every.update(grads, s)
    np.testing.assert_allclose(u["z"], 2 * np.asarray(grads["z"]))
    la = gradtx.lookahead(gradtx.sgd(1.0), 1, 0.5)
    p = gradtx.LookaheadParams.init_synced(params)
    u, _ = la.update(grads, la.init(p), p)
    np.testing.assert_allclose(u.slow["z"], -0.5 * np.asarray(grads["z"]), rtol=1e-6)
    assert float(gradtx.skip_large_updates(grads, 0, None, 7.5)[1]["norm_squared"]) == 7.0


@settings(max_examples=4, deadline=None)
@given(k=st.integers(1, 4), blocks=st.integers(1, 3), seed=st.integers(0, 100))
def test_apply_every_emits_each_block_sum_at_its_end(k, blocks, seed):
    xs = jax.random.normal(jax.random.key(seed), (k * blocks, 3))
    opt = gradtx.apply_every(k)
    state = opt.init(jnp.zeros(3))
    for t in range(k * blocks):
        u, state = opt.update(xs[t], state)
        if t % k == k - 1:
            np.testing.assert_allclose(u, xs[t - k + 1 : t + 1].sum(0), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(u, 0.0)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), b1=st.floats(0.0, 0.95))
def test_flatten_of_an_element_wise_piece_is_the_piece(seed, b1):
    params = make_params(seed)
    ours, flat = gradtx.scale_by_adam(b1=b1), gradtx.flatten(gradtx.scale_by_adam(b1=b1))
    s1, s2 = ours.init(params), flat.init(params)
    for _ in range(3):
        g = jax.grad(loss)(params)
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = flat.update(g, s2, params)
        assert_close(u2, u1, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------
# Bad input.


def test_bad_masks_are_refused_naming_the_key_path():
    params = make_params()
    with pytest.raises(TypeError, match=r"freeze: mask\['w'\] must be a Python or NumPy bool"):
        gradtx.freeze({"w": 1, "b": True, "blocks": True})
    with pytest.raises(TypeError, match=r"selective_transform: mask\['b'\] must be a Python"):
        gradtx.selective_transform(gradtx.sgd(0.1), freeze_mask={"w": True, "b": jnp.ones(2)})
    mismatch = {"w": True, "b": False, "blocks": [False]}  # blocks has 2 entries
    for opt, fn in (
        (gradtx.freeze(mismatch), "freeze"),
        (gradtx.selective_transform(gradtx.sgd(0.1), freeze_mask=mismatch), "selective_transform"),
    ):
        with pytest.raises(
            ValueError, match=rf"{fn}: the mask's tree must match(.|\n)*key path(.|\n)*\['blocks'\]"
        ):
            opt.init(params)
        with pytest.raises(ValueError, match=rf"{fn}: (.|\n)*\['blocks'\]"):
            opt.update(params, opt.init(jax.tree.map(lambda x: x, {**params, "blocks": [1.0]})))
    with pytest.raises(TypeError, match="selective_transform: optimizer must be a gradient"):
        gradtx.selective_transform(3, freeze_mask=True)


def test_bad_conditions_and_counts_are_refused():
    with pytest.raises(
        TypeError, match="conditionally_mask: should_transform_fn must be a function"
    ):
        gradtx.conditionally_mask(gradtx.sgd(0.1), 3)
    with pytest.raises(TypeError, match="conditionally_transform: forward_extra_args must be True"):
        gradtx.conditionally_transform(gradtx.sgd(0.1), lambda s: s > 0, forward_extra_args=1)
    with pytest.raises(TypeError, match="conditionally_transform: inner must be a gradient"):
        gradtx.conditionally_transform(None, lambda s: s > 0)
    opt = gradtx.conditionally_mask(gradtx.sgd(0.1), lambda s: s.astype(jnp.float32))
    with pytest.raises(
        TypeError, match="should_transform_fn must return a bool scalar, got .*float32"
    ):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))
    with pytest.raises(ValueError, match=r"apply_every: k must be an integer >= 1, got 0"):
        gradtx.apply_every(0)
    with pytest.raises(TypeError, match="apply_every: k must be an integer"):
        gradtx.apply_every(1.5)
    with pytest.raises(ValueError, match=r"every_k_steps: offset must be an integer in \[0, 3\)"):
        every_k_steps(3, 3)
    with pytest.raises(ValueError, match="every_k_steps: k must be an integer >= 1"):
        every_k_steps(0)
    with pytest.raises(TypeError, match="skip_large_updates: max_squared_norm must be a real"):
        gradtx.skip_large_updates({"w": jnp.ones(2)}, 0, None, "big")
    with pytest.raises(TypeError, match="flatten: inner must be a gradient transformation"):
        gradtx.flatten(lambda g: g)


def test_bad_lookahead_arguments_are_refused():
    with pytest.raises(ValueError, match="lookahead: sync_period must be an integer >= 1, got 0"):
        gradtx.lookahead(gradtx.sgd(0.1), 0, 0.5)
    with pytest.raises(ValueError, match="lookahead: slow_step_size must be"):
        gradtx.lookahead(gradtx.sgd(0.1), 2, float("nan"))
    with pytest.raises(ValueError, match="lookahead: slow_step_size must be a finite"):
        gradtx.lookahead(gradtx.sgd(0.1), 2, float("inf"))
    with pytest.raises(TypeError, match="lookahead: reset_state must be True or False"):
        gradtx.lookahead(gradtx.sgd(0.1), 2, 0.5, reset_state="yes")
    opt = gradtx.lookahead(gradtx.sgd(0.1), 2, 0.5)
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match=r"lookahead: update needs params as a LookaheadParams"):
        opt.update(params, opt.init(params), params)
    with pytest.raises(TypeError, match=r"LookaheadParams.init_synced\(params\)"):
        opt.update(params, opt.init(params))


def test_bad_multisteps_arguments_are_refused():
    with pytest.raises(ValueError, match="MultiSteps: every_k_schedule must be an integer >= 1"):
        gradtx.MultiSteps(gradtx.sgd(0.1), 0)
    with pytest.raises(TypeError, match="MultiSteps: every_k_schedule must be an integer"):
        gradtx.MultiSteps(gradtx.sgd(0.1), 2.5)
    with pytest.raises(TypeError, match="MultiSteps: use_grad_mean must be True or False"):
        gradtx.MultiSteps(gradtx.sgd(0.1), 2, use_grad_mean=None)
    with pytest.raises(TypeError, match="MultiSteps: should_skip_update_fn must be None or a"):
        gradtx.MultiSteps(gradtx.sgd(0.1), 2, should_skip_update_fn=True)
    with pytest.raises(TypeError, match="MultiSteps: opt must be a gradient transformation"):
        gradtx.MultiSteps("adam", 2)
    opt = gradtx.MultiSteps(
        gradtx.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (jnp.zeros(()), ())
    )
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="should_skip_update_fn must return a bool scalar"):
        opt.update(params, opt.init(params), params)
