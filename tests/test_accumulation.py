"""Tests for gradtx.accumulation: accumulate (gradient accumulation, optax's MultiSteps)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx.accumulation import AccumulateState, accumulate, has_updated
from gradtx.base import EmptyState, GradientTransformation, apply_updates


def _sgd(learning_rate):
    """A small hand-written transformation built with base.py: u = -lr * g."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: -learning_rate * g, updates), state

    return GradientTransformation(init, update)


def _problem(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 5)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=(n, 2)).astype(np.float32))
    params = {"w": jnp.asarray(0.1 * rng.normal(size=(5, 2)).astype(np.float32)),
              "b": {"bias": jnp.zeros((2,))}}  # fmt: skip
    return x, y, params


def _loss(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"]["bias"][None, :] - y) ** 2)


_grad = jax.jit(jax.grad(_loss))


def _assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def test_repr():
    assert (
        repr(accumulate(_sgd(0.1), every_k=4))
        == "accumulate(<transformation test_accumulation._sgd>, 4)"
    )
    nested = accumulate(accumulate(_sgd(0.5), 2), 3, accumulator_dtype=jnp.float32)
    assert repr(accumulate(gradtx.adam(1e-3), 2)).startswith("accumulate(chain(scale_by_adam(")
    assert repr(nested) == (
        "accumulate(accumulate(<transformation test_accumulation._sgd>, 2), 3, "
        "accumulator_dtype=jnp.float32)"
    )


INNER = {
    "hand-written sgd": lambda: _sgd(0.1),
    "gradtx.adam": lambda: gradtx.adam(1e-2),
    "gradtx.sgd momentum": lambda: gradtx.sgd(0.1, momentum=0.9),
    "optax.adam": lambda: optax.adam(1e-2),
}


@pytest.mark.parametrize("inner_name", list(INNER))
def test_k_micro_batches_equal_one_step_on_the_concatenated_batch(inner_name):
    x, y, params = _problem(n=32)
    k = 4
    with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes int32 and float
        inner = INNER[inner_name]()
        acc = accumulate(inner, k)
        update = jax.jit(acc.update)
        big = jax.jit(inner.update)
        p_acc, s_acc = params, acc.init(params)
        p_big, s_big = params, inner.init(params)
        for _ in range(3):  # three big steps
            for xs, ys in zip(jnp.split(x, k), jnp.split(y, k)):
                updates, s_acc = update(_grad(p_acc, xs, ys), s_acc, p_acc)
                p_acc = apply_updates(p_acc, updates)
            updates, s_big = big(_grad(p_big, x, y), s_big, p_big)
            p_big = apply_updates(p_big, updates)
            assert bool(has_updated(s_acc))
            _assert_trees_close(p_acc, p_big)
    _assert_trees_close(s_acc.inner_opt_state, s_big)
    assert int(s_acc.gradient_step) == 3 and int(s_acc.mini_step) == 0


@pytest.mark.parametrize("make_inner", [optax.adam, gradtx.adam], ids=["optax", "gradtx"])
def test_parity_with_optax_multisteps(make_inner):
    x, y, params = _problem(n=40)
    with jax.numpy_dtype_promotion("standard"):  # optax.MultiSteps mixes int32 and float
        ours = accumulate(make_inner(1e-2), 3)
        theirs = optax.MultiSteps(make_inner(1e-2), every_k_schedule=3)
        ours_update, theirs_update = jax.jit(ours.update), jax.jit(theirs.update)
        p1, s1 = params, ours.init(params)
        p2, s2 = params, theirs.init(params)
        for i, (xs, ys) in enumerate(zip(jnp.split(x, 10), jnp.split(y, 10))):
            u1, s1 = ours_update(_grad(p1, xs, ys), s1, p1)
            u2, s2 = theirs_update(_grad(p2, xs, ys), s2, p2)
            _assert_trees_close(u1, u2)
            p1, p2 = apply_updates(p1, u1), apply_updates(p2, u2)
            assert int(s1.mini_step) == int(s2.mini_step) == (i + 1) % 3
            assert int(s1.gradient_step) == int(s2.gradient_step)
            assert bool(has_updated(s1)) == bool(theirs.has_updated(s2))
            _assert_trees_close(s1.acc_grads, s2.acc_grads)
            _assert_trees_close(s1.inner_opt_state, s2.inner_opt_state)
    _assert_trees_close(p1, p2)


def test_between_steps_emits_zeros_and_keeps_the_inner_state():
    params = {"a": jnp.ones((3,)), "b": jnp.ones((2, 2))}
    acc = accumulate(gradtx.sgd(1.0, momentum=0.9), every_k=3)
    state = acc.init(params)
    update = jax.jit(acc.update)
    grads = [jax.tree.map(lambda p, i=i: jnp.full_like(p, float(i + 1)), params) for i in range(3)]
    for i, g in enumerate(grads[:2]):
        out, state = update(g, state, params)
        assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(out))
        assert not bool(has_updated(state)) and int(state.mini_step) == i + 1
        assert all(float(jnp.abs(t).max()) == 0.0 for t in jax.tree.leaves(state.inner_opt_state))
    np.testing.assert_allclose(state.acc_grads["a"], 1.5)  # mean of 1 and 2
    out, state = update(grads[2], state, params)
    np.testing.assert_allclose(out["a"], -2.0)  # -lr * mean(1, 2, 3)
    np.testing.assert_allclose(state.acc_grads["a"], 0.0)
    assert bool(has_updated(state)) and int(state.gradient_step) == 1


def test_every_k_one_is_the_inner_transformation():
    x, y, params = _problem()
    inner = gradtx.sgd(0.1, momentum=0.5)
    acc = accumulate(inner, 1)
    s1, s2 = acc.init(params), inner.init(params)
    acc_update, inner_update = jax.jit(acc.update), jax.jit(inner.update)
    for xs, ys in zip(jnp.split(x, 4), jnp.split(y, 4)):
        g = _grad(params, xs, ys)
        u1, s1 = acc_update(g, s1, params)
        u2, s2 = inner_update(g, s2, params)
        _assert_trees_close(u1, u2, rtol=0, atol=0)


def test_jit_compiles_once_and_keeps_structure_and_dtypes():
    traces = []
    params = {"w": jnp.ones((4,), jnp.bfloat16), "v": jnp.ones((2,), jnp.float32)}
    acc = accumulate(_sgd(0.5), 2)

    def update(g, s, p):
        traces.append(1)
        return acc.update(g, s, p)

    update = jax.jit(update)
    state = acc.init(params)
    assert isinstance(state, AccumulateState)
    assert state.acc_grads["w"].dtype == jnp.bfloat16  # each param's dtype, by default
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(4):
        out, new_state = update(grads, state, params)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        assert jax.tree.map(lambda a: a.dtype, new_state) == jax.tree.map(lambda a: a.dtype, state)
        assert out["w"].dtype == jnp.bfloat16 and out["v"].dtype == jnp.float32
        state = new_state
    assert len(traces) == 1
    wide = accumulate(_sgd(0.5), 2, accumulator_dtype=jnp.float32)
    wide_state = wide.init(params)
    assert wide_state.acc_grads["w"].dtype == jnp.float32  # optax.MultiSteps' default
    out, wide_state = jax.jit(wide.update)(grads, wide_state, params)
    assert out["w"].dtype == jnp.bfloat16 and wide_state.acc_grads["w"].dtype == jnp.float32


def test_extra_args_reach_the_inner_transformation():
    seen = {}

    def init(params):
        return EmptyState()

    def update(updates, state, params=None, **extra):
        seen.update(extra)
        return updates, state

    acc = accumulate(GradientTransformation(init, update), 2)
    params = {"w": jnp.ones(2)}
    acc.update(params, acc.init(params), params, value=jnp.ones(()))
    assert "value" in seen


def test_errors():
    with pytest.raises(ValueError, match="accumulate: every_k must be an integer >= 1, got 0"):
        accumulate(_sgd(0.1), 0)
    with pytest.raises(TypeError, match="accumulate: every_k must be an integer >= 1, got 2.5"):
        accumulate(_sgd(0.1), 2.5)
    with pytest.raises(TypeError, match="every_k must be an integer >= 1, got True"):
        accumulate(_sgd(0.1), True)
    with pytest.raises(TypeError, match="accumulate: inner must be a gradient transformation"):
        accumulate(lambda g: g, 2)
    with pytest.raises(
        ValueError, match="accumulate: accumulator_dtype must be a floating or complex dtype"
    ):
        accumulate(_sgd(0.1), 2, accumulator_dtype=jnp.int32)
    acc = accumulate(_sgd(0.1), 2)
    state = acc.init({"w": jnp.ones((3,)), "b": jnp.ones((2,))})
    with pytest.raises(ValueError, match=r"accumulate: updates\['w'\] has shape \(4,\)"):
        acc.update({"w": jnp.ones((4,)), "b": jnp.ones((2,))}, state)
