"""inject_hyperparams: hyper-parameters in the state, read and changed between jitted steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx import schedules
from gradtx.hyperparams import (
    InjectHyperparamsState,
    get_hyperparam,
    inject_hyperparams,
    set_hyperparam,
)
from gradtx.plateau import reduce_on_plateau


def make_params(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return {
        "dense": {
            "w": jnp.asarray(rng.normal(size=(4, 3)), dtype),
            "b": jnp.asarray(rng.normal(size=(3,)), dtype),
        },
        "scale": jnp.asarray(rng.normal(), dtype),
    }


def grads_at(params, step):
    """The gradient of a curved loss plus a step-dependent wiggle, in the params' dtypes."""
    leaves, treedef = jax.tree.flatten(params)
    out = [
        (
            (1.0 + i) * p.astype(jnp.float32) + 0.3 * jnp.sin(3.0 * p.astype(jnp.float32) + step)
        ).astype(p.dtype)
        for i, p in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def run(opt, params, steps, state=None, start=0):
    """Jitted steps; returns the params, the state and the list of emitted updates."""
    state = opt.init(params) if state is None else state
    update = jax.jit(opt.update)
    emitted = []
    for t in range(start, start + steps):
        updates, state = update(grads_at(params, t), state, params)
        params = gradtx.apply_updates(params, updates)
        emitted.append(updates)
    return params, state, emitted


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def lr_schedule(count):
    return 1e-2 / (1.0 + count.astype(jnp.float32))


# ----------------------------------------------------------------------------
# Parity with optax.


@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        (gradtx.adam, optax.adam, {"learning_rate": 1e-2, "b1": 0.8}),
        (gradtx.adam, optax.adam, {"learning_rate": lr_schedule, "b2": 0.99}),
        (gradtx.sgd, optax.sgd, {"learning_rate": 0.05, "momentum": 0.9}),
        (gradtx.sgd, optax.sgd, {"learning_rate": lr_schedule}),
    ],
)
def test_matches_optax_inject_hyperparams(ours, theirs, kwargs):
    params = make_params()
    _, state, emitted = run(inject_hyperparams(ours)(**kwargs), params, 5)
    with jax.numpy_dtype_promotion("standard"):
        _, ref_state, ref_emitted = run(optax.inject_hyperparams(theirs)(**kwargs), params, 5)
    assert_trees_close(emitted, ref_emitted)
    assert sorted(state.hyperparams) == sorted(ref_state.hyperparams)
    assert_trees_close(state.hyperparams, ref_state.hyperparams, rtol=1e-7, atol=0)
    assert int(state.count) == int(ref_state.count) == 5


def test_acts_as_the_inner_optimiser():
    params = make_params()
    _, _, emitted = run(inject_hyperparams(gradtx.adam)(1e-2, b1=0.8), params, 4)
    _, _, ref = run(gradtx.adam(1e-2, b1=0.8), params, 4)
    # A traced b1 (float32) and a constant one (folded in double) differ in the last bit.
    assert_trees_close(emitted, ref)


# ----------------------------------------------------------------------------
# Changing values between steps, under one jit.


def test_change_learning_rate_mid_run_without_retrace():
    traces = 0

    def stepper(opt):
        @jax.jit
        def step(params, state, grads):
            nonlocal traces
            traces += 1
            updates, state = opt.update(grads, state, params)
            return gradtx.apply_updates(params, updates), state

        return step

    params = make_params()
    opt = inject_hyperparams(gradtx.adam)(learning_rate=1e-2)
    step = stepper(opt)
    p, state = params, opt.init(params)
    for t in range(6):
        if t == 3:
            p3, state3 = p, state
            state = set_hyperparam(state, "learning_rate", 1e-3)
        p, state = step(p, state, grads_at(p, t))
    assert traces == 1
    assert get_hyperparam(state, "learning_rate") == np.float32(1e-3)

    # Bit for bit: an optimiser built with learning_rate=1e-3, continuing from step 3.
    rebuilt = inject_hyperparams(gradtx.adam)(learning_rate=1e-3)
    ref_p, ref_state = p3, state3._replace(hyperparams=rebuilt.init(params).hyperparams)
    step = stepper(rebuilt)
    for t in range(3, 6):
        ref_p, ref_state = step(ref_p, ref_state, grads_at(ref_p, t))
    assert_trees_equal(p, ref_p)
    assert_trees_equal(state, ref_state)

    # To round-off: plain adam(1e-2) for 3 steps, then adam(1e-3) continuing its state.
    # (Traced b1, b2 make 1 - b1 differ from the constant folded in double by an ulp.)
    ref_p, ref_state = params, gradtx.adam(1e-2).init(params)
    for t in range(6):
        step = stepper(gradtx.adam(1e-2 if t < 3 else 1e-3)) if t in (0, 3) else step
        ref_p, ref_state = step(ref_p, ref_state, grads_at(ref_p, t))
    assert_trees_close(p, ref_p)
    assert_trees_close(state.inner_state, ref_state, atol=1e-6)


def test_change_b1_mid_run_takes_effect():
    params = make_params()
    opt = inject_hyperparams(gradtx.adam)(learning_rate=1e-2)
    _, state, _ = run(opt, params, 2)
    _, new_state, emitted = run(opt, params, 1, state=set_hyperparam(state, "b1", 0.5), start=2)
    _, ref_state, ref = run(gradtx.adam(1e-2, b1=0.5), params, 1, state=state.inner_state, start=2)
    assert_trees_close(emitted, ref)
    assert_trees_close(new_state.inner_state, ref_state)


def test_schedules_are_evaluated_into_the_state_each_step():
    schedule = schedules.cosine_decay_schedule(1e-2, decay_steps=5)
    opt = inject_hyperparams(gradtx.sgd)(learning_rate=schedule, momentum=0.9)
    params = make_params()
    state = opt.init(params)
    assert get_hyperparam(state, "learning_rate") == schedule(0)
    update = jax.jit(opt.update)
    for t in range(4):
        _, state = update(grads_at(params, t), state, params)
        np.testing.assert_allclose(get_hyperparam(state, "learning_rate"), schedule(t), rtol=1e-7)
        assert int(state.count) == t + 1
    # Setting a scheduled value has no effect: the schedule wins at the next step.
    state = set_hyperparam(state, "learning_rate", 123.0)
    _, state = update(grads_at(params, 4), state, params)
    np.testing.assert_allclose(get_hyperparam(state, "learning_rate"), schedule(4), rtol=1e-7)


def test_state_keeps_structure_and_dtypes_under_jit():
    opt = inject_hyperparams(gradtx.adamw)(learning_rate=lr_schedule, weight_decay=1e-3)
    params = make_params()
    state = opt.init(params)
    _, new_state = jax.jit(opt.update)(grads_at(params, 0), state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert all(x.dtype == jnp.float32 for x in state.hyperparams.values())


# ----------------------------------------------------------------------------
# Reading by name: schedules, nesting, and optax's states.


def test_get_hyperparam_in_a_nested_chain_with_a_schedule():
    opt = gradtx.chain(
        gradtx.clip_by_global_norm(1.0),
        inject_hyperparams(gradtx.adam)(learning_rate=lr_schedule, b1=0.9),
    )
    params = make_params()
    _, state, _ = run(opt, params, 3)
    np.testing.assert_allclose(get_hyperparam(state, "learning_rate"), lr_schedule(jnp.int32(2)))
    assert get_hyperparam(state, "b1") == np.float32(0.9)
    assert isinstance(state[1], InjectHyperparamsState)


def test_get_hyperparam_reads_optax_states_where_optax_tree_get_fails():
    with jax.numpy_dtype_promotion("standard"):
        opt = optax.inject_hyperparams(optax.adam)(learning_rate=optax.linear_schedule(1.0, 0, 4))
        _, state, _ = run(opt, make_params(), 2)
        # optax 0.2.8 also stores a schedule state under the same name:
        with pytest.raises(KeyError, match="multiple values"):
            optax.tree.get(state, "learning_rate")
    np.testing.assert_allclose(get_hyperparam(state, "learning_rate"), 0.75)


def test_get_hyperparam_errors_name_the_problem():
    params = make_params()
    opt = gradtx.chain(
        inject_hyperparams(gradtx.adam)(1e-3), inject_hyperparams(gradtx.sgd)(learning_rate=0.1)
    )
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"2 places.*state\[0\]\.hyperparams.*state\[1\]"):
        get_hyperparam(state, "learning_rate")
    assert get_hyperparam(state[1], "learning_rate") == np.float32(0.1)
    with pytest.raises(KeyError, match=r"no hyper-parameter 'lr'.*'b1'"):
        get_hyperparam(state, "lr")
    with pytest.raises(KeyError, match="inject_hyperparams"):
        get_hyperparam(gradtx.adam(1e-3).init(params), "learning_rate")


def test_set_hyperparam_keeps_dtype_and_shape():
    opt = inject_hyperparams(gradtx.adam)(1e-3)
    state = opt.init(make_params())
    new = set_hyperparam(state, "b1", np.float64(0.5))
    assert new.hyperparams["b1"].dtype == jnp.float32 and new.hyperparams["b1"] == 0.5
    assert state.hyperparams["b1"] == np.float32(0.9)  # the original state is untouched
    with pytest.raises(ValueError, match=r"'b1' has shape \(\)"):
        set_hyperparam(state, "b1", jnp.ones(2))
    jitted = jax.jit(set_hyperparam, static_argnums=1)(state, "eps", 1e-6)
    assert jitted.hyperparams["eps"].dtype == jnp.float32


def test_hyperparam_dtype():
    opt = inject_hyperparams(gradtx.sgd, hyperparam_dtype=jnp.bfloat16)(0.1, momentum=0.5)
    state = opt.init(make_params())
    assert state.hyperparams["momentum"].dtype == jnp.bfloat16
    # A value that rounds out of range in that dtype is refused, not used: b2 = 0.999 -> 1.0.
    opt = inject_hyperparams(gradtx.adam, hyperparam_dtype=jnp.bfloat16)(1e-3)
    with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\), got Array\(1"):
        opt.init(make_params())


# ----------------------------------------------------------------------------
# dtypes.


def test_bfloat16_params_keep_bfloat16_moments_and_float32_hyperparams():
    params = make_params(jnp.bfloat16)
    opt = inject_hyperparams(gradtx.adam)(learning_rate=1e-3)
    state = opt.init(params)
    _, new_state = jax.jit(opt.update)(grads_at(params, 0), state, params)
    for moments in (new_state.inner_state[0].mu, new_state.inner_state[0].nu):
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(moments))
    assert new_state.hyperparams["b2"].dtype == jnp.float32
    assert new_state.hyperparams["b2"] == np.float32(0.999)  # not 1.0, as bfloat16 would round


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (gradtx.adam, {"learning_rate": 1e-3}),
        (gradtx.adam, {"learning_rate": 1e-3, "mu_dtype": jnp.float32, "nu_dtype": jnp.float32}),
        (gradtx.sgd, {"learning_rate": 0.1, "momentum": 0.9, "accumulator_dtype": jnp.float32}),
        (gradtx.sgd, {"learning_rate": 0.1, "momentum": 0.9}),
        (gradtx.momentum_ewa, {"learning_rate": 0.1}),
        (gradtx.rmsprop, {"learning_rate": 0.1}),
        (gradtx.rmsprop, {"learning_rate": 0.1, "centered": True, "momentum": 0.9}),
        (gradtx.adagrad, {"learning_rate": 0.1}),
    ],
)
def test_injected_state_dtypes_are_stable_with_bfloat16_params(factory, kwargs):
    params = make_params(jnp.bfloat16)
    opt = inject_hyperparams(factory)(**kwargs)
    state = opt.init(params)
    _, new_state = jax.jit(opt.update)(grads_at(params, 0), state, params)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)


def test_dtype_arguments_are_static():
    opt = inject_hyperparams(gradtx.adam)(1e-3, mu_dtype=jnp.bfloat16, nesterov=True)
    state = opt.init(make_params())
    assert set(state.hyperparams) == {"learning_rate", "b1", "b2", "eps", "eps_root"}
    assert state.inner_state[0].mu["scale"].dtype == jnp.bfloat16


def test_float64_params_get_float64_hyperparams():
    enable_x64 = getattr(jax, "enable_x64", None)  # jax >= 0.8
    if enable_x64 is None:  # the jax floor, 0.7
        from jax.experimental import enable_x64
    with enable_x64(True):
        params = make_params(jnp.float64)
        opt = inject_hyperparams(gradtx.adam)(1e-3)
        state = opt.init(params)
        assert state.hyperparams["b2"].dtype == jnp.float64


# ----------------------------------------------------------------------------
# Static arguments, extra arguments, validation, printing.


def test_static_args_for_a_callable_that_is_not_a_schedule():
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 0, p)  # noqa: E731
    opt = inject_hyperparams(gradtx.adamw, static_args="mask")(1e-2, weight_decay=0.1, mask=mask)
    params = make_params()
    _, _, emitted = run(opt, params, 2)
    _, _, ref = run(gradtx.adamw(1e-2, weight_decay=0.1, mask=mask), params, 2)
    assert_trees_close(emitted, ref)
    with pytest.raises(ValueError, match=r"static_args \['msk'\] are not arguments of adamw"):
        inject_hyperparams(gradtx.adamw, static_args=["msk"])


def test_extra_args_reach_the_inner_transformation():
    opt = inject_hyperparams(reduce_on_plateau)(factor=0.5, patience=1)
    params = make_params()
    state = opt.init(params)
    update = jax.jit(opt.update)
    for loss in (1.0, 2.0, 2.0):
        _, state = update(params, state, params, value=jnp.asarray(loss))
    assert float(state.inner_state.scale) == 0.25
    state = set_hyperparam(state, "factor", 0.1)
    _, state = update(params, state, params, value=jnp.asarray(3.0))
    np.testing.assert_allclose(state.inner_state.scale, 0.025, rtol=1e-6)
    assert state.hyperparams["patience"].dtype == jnp.int32
    with pytest.raises(TypeError, match="'patience' is an integer hyper-parameter, got 2.5"):
        set_hyperparam(state, "patience", 2.5)


def test_bad_values_raise_when_built():
    with pytest.raises(ValueError, match="learning_rate"):
        inject_hyperparams(gradtx.adam)(learning_rate=-1.0)
    with pytest.raises(ValueError, match="b1 must be in"):
        inject_hyperparams(gradtx.adam)(1e-3, b1=lambda count: jnp.asarray(1.5))
    with pytest.raises(TypeError, match=r"inject_hyperparams\(adam\).*unexpected keyword"):
        inject_hyperparams(gradtx.adam)(1e-3, lr=1e-3)
    with pytest.raises(TypeError, match="inner_factory must be callable"):
        inject_hyperparams(gradtx.adam(1e-3))
    with pytest.raises(ValueError, match="hyperparam_dtype must be a floating dtype"):
        inject_hyperparams(gradtx.adam, hyperparam_dtype=jnp.int32)


def test_prints_the_call():
    opt = inject_hyperparams(gradtx.adam)(learning_rate=lr_schedule, b1=0.8)
    assert (
        repr(opt) == "inject_hyperparams(adam)(<function lr_schedule>, b1=0.8, b2=0.999, eps=1e-08)"
    )


# ----------------------------------------------------------------------------
# Storage dtypes, value by value, and writing into one node of several.


def test_storage_dtypes_follow_the_kind_of_each_value():
    """A strongly typed array keeps its dtype; weak and Python floats get the float dtype."""
    opt = inject_hyperparams(gradtx.adam)(
        learning_rate=jnp.asarray(0.5, jnp.bfloat16),  # strongly typed: kept
        b1=jnp.asarray(0.5),  # weakly typed: stored as a float
        b2=np.float64(0.75),  # numpy: stored as a float
        eps=0.25,
    )
    params = make_params(jnp.bfloat16)
    state = opt.init(params)
    dtypes = {k: v.dtype for k, v in state.hyperparams.items()}
    assert dtypes == {
        "learning_rate": jnp.bfloat16,
        "b1": jnp.float32,
        "b2": jnp.float32,
        "eps": jnp.float32,
        "eps_root": jnp.float32,
    }
    assert not any(v.weak_type for v in state.hyperparams.values())
    _, new_state = jax.jit(opt.update)(grads_at(params, 0), state, params)
    assert {k: v.dtype for k, v in new_state.hyperparams.items()} == dtypes
    assert [float(new_state.hyperparams[k]) for k in ("learning_rate", "b1", "b2", "eps")] == [
        0.5,
        0.5,
        0.75,
        0.25,
    ]


def test_hyperparam_dtype_applies_to_weak_and_scheduled_values_not_typed_arrays():
    schedule = schedules.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    opt = inject_hyperparams(gradtx.sgd, hyperparam_dtype=jnp.bfloat16)(
        learning_rate=schedule, momentum=jnp.asarray(0.5, jnp.float32)
    )
    params = make_params()
    state = opt.init(params)
    assert state.hyperparams["learning_rate"].dtype == jnp.bfloat16
    assert state.hyperparams["momentum"].dtype == jnp.float32
    update = jax.jit(opt.update)
    grads = grads_at(params, 0)
    updates, state = update(grads, state, params)
    # The step used the scheduled value as stored: 0.1 rounded to bfloat16.
    lr = float(jnp.asarray(0.1, jnp.bfloat16))
    assert lr != 0.1
    assert_trees_close(updates, jax.tree.map(lambda g: -lr * g, grads), rtol=1e-6)
    _, state = update(grads, state, params)
    assert state.hyperparams["learning_rate"].dtype == jnp.bfloat16
    assert state.hyperparams["learning_rate"] == jnp.asarray(0.05, jnp.bfloat16)
    assert state.hyperparams["momentum"].dtype == jnp.float32


def test_set_hyperparam_writes_only_the_node_that_holds_the_name():
    opt = gradtx.chain(
        inject_hyperparams(gradtx.adam)(1e-3),
        gradtx.chain(inject_hyperparams(gradtx.sgd)(learning_rate=0.1, momentum=0.9)),
    )
    state = opt.init(make_params())
    new = set_hyperparam(state, "b1", 0.5)
    assert new[0].hyperparams["b1"] == np.float32(0.5)
    assert set(new[1][0].hyperparams) == {"learning_rate", "momentum"}
    new = set_hyperparam(state, "momentum", 0.25)
    assert new[1][0].hyperparams["momentum"] == np.float32(0.25)
    assert "momentum" not in new[0].hyperparams
    assert new[0].hyperparams["b1"] == np.float32(0.9)
    with pytest.raises(ValueError, match=r"'learning_rate' is held in 2 places"):
        set_hyperparam(state, "learning_rate", 1e-2)
    inner = set_hyperparam(state[1], "learning_rate", 0.2)
    assert inner[0].hyperparams["learning_rate"] == np.float32(0.2)
    assert state[1][0].hyperparams["learning_rate"] == np.float32(0.1)
