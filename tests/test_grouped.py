"""Grouped parameters: one buffer per dtype, exact against the tree path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx import fused
from gradtx.grouped import Grouped, group, ungroup


def _tree():
    key = jax.random.key(0)
    return {
        "dense": {"w": jax.random.normal(key, (6, 5)), "b": jnp.zeros((5,))},
        "scale": jnp.float32(1.5),
        "blocks": [jax.random.normal(jax.random.fold_in(key, i), (3, 2)) for i in range(3)],
        "empty": jnp.zeros((0, 4)),
        "half": jnp.ones((7,), jnp.bfloat16),
    }


def _loss(params, x):
    h = jnp.tanh(x @ params["dense"]["w"] + params["dense"]["b"][None, :]) * params["scale"]
    h = h + sum(jnp.sum(b * b) for b in params["blocks"]) + jnp.sum(params["empty"])
    half = params.get("half", jnp.zeros((0,), jnp.bfloat16))
    return jnp.mean(h * h) + jnp.sum(half.astype(jnp.float32) ** 2)


def _assert_trees_equal(a, b, rtol=0.0):
    """Same structure, shapes and dtypes; values bit for bit, or to `rtol` (float32 ulps)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        if rtol:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max(initial=0))
        else:
            np.testing.assert_array_equal(x, y)


def test_group_makes_one_buffer_per_dtype_and_ungroup_gives_the_tree_back():
    tree = _tree()
    grouped = group(tree)
    assert isinstance(grouped, Grouped)
    assert grouped.layout.dtypes == ("float32", "bfloat16")
    assert [b.shape for b in grouped.buffers] == [(30 + 5 + 1 + 18,), (7,)]
    assert repr(grouped) == "Grouped(float32[54] holding 7 leaves, bfloat16[7] holding 1 leaves)"
    _assert_trees_equal(ungroup(grouped), tree)
    _assert_trees_equal(jax.jit(ungroup)(grouped), tree)


def test_grouped_is_a_pytree_keyed_by_dtype():
    grouped = group(_tree())
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(grouped)[0]]
    assert paths == ["['float32']", "['bfloat16']"]
    doubled = jax.tree.map(lambda b: 2 * b, grouped)
    assert isinstance(doubled, Grouped) and doubled.layout == grouped.layout


def test_gradients_come_out_grouped_and_equal_the_tree_gradients():
    tree, x = _tree(), jnp.ones((4, 6))
    grouped = group(tree)
    grads = jax.jit(jax.grad(lambda p: _loss(ungroup(p), x)))(grouped)
    assert isinstance(grads, Grouped) and grads.layout == grouped.layout
    _assert_trees_equal(ungroup(grads), jax.jit(jax.grad(_loss))(tree, x))


@pytest.mark.parametrize(
    "opt",
    [
        gradtx.sgd(0.1),
        gradtx.sgd(0.1, momentum=0.9),
        gradtx.sgd(0.1, momentum=0.9, nesterov=True),
        gradtx.rmsprop(1e-2),
        gradtx.rmsprop(1e-2, momentum=0.9, centered=True),
        gradtx.adam(1e-2),
        gradtx.adamw(1e-2, weight_decay=0.1),
        gradtx.nadam(1e-2),
        gradtx.adagrad(1e-1),
        gradtx.amsgrad(1e-2),
        gradtx.chain(gradtx.scale_by_adam_composed(), gradtx.scale_by_learning_rate(1e-2)),
    ],
    ids=repr,
)
def test_element_wise_optimisers_give_the_tree_numbers(opt):
    # The same operations on every element; XLA vectorises a long buffer and a short leaf
    # differently (fused multiply-adds, reciprocal roots), which can move the last bit.
    tree = _tree()

    def tree_step(params, state, x):
        updates, state = opt.update(jax.grad(_loss)(params, x), state, params)
        return gradtx.apply_updates(params, updates), state

    def grouped_step(params, state, x):
        grads = jax.grad(lambda p: _loss(ungroup(p), x))(params)
        updates, state = opt.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state

    steps = [jax.jit(tree_step), jax.jit(grouped_step)]
    carries = [[tree, opt.init(tree)], [group(tree), opt.init(group(tree))]]
    for t in range(5):
        x = jax.random.normal(jax.random.key(t), (4, 6))
        for step, carry in zip(steps, carries):
            carry[0], carry[1] = step(carry[0], carry[1], x)
    _assert_trees_equal(ungroup(carries[1][0]), carries[0][0], rtol=2e-6)


def test_a_full_train_step_with_apply_step_matches_the_tree_and_does_not_recompile():
    opt = gradtx.adam(1e-2)
    tree = {k: v for k, v in _tree().items() if k != "half"}  # float32 only: native-eligible

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, state, x):
        loss, grads = jax.value_and_grad(lambda p: _loss(ungroup(p), x))(params)
        params, state = fused.apply_step(opt, grads, state, params)
        return params, state, loss

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def tree_step(params, state, x):
        loss, grads = jax.value_and_grad(_loss)(params, x)
        params, state = fused.apply_step(opt, grads, state, params)
        return params, state, loss

    params = group(jax.tree.map(jnp.copy, tree))
    state = opt.init(params)
    tree_params, tree_state = jax.tree.map(jnp.copy, tree), opt.init(tree)
    for t in range(3):
        x = jax.random.normal(jax.random.key(t), (4, 6))
        params, state, loss = train_step(params, state, x)
        tree_params, tree_state, tree_loss = tree_step(tree_params, tree_state, x)
        assert loss == tree_loss
    assert train_step._cache_size() == 1
    assert isinstance(params, Grouped) and isinstance(state[0].mu, Grouped)
    # The native kernel computes every element alike, so where it runs the match is exact.
    _assert_trees_equal(
        ungroup(params), tree_params, rtol=0.0 if fused.native_available() else 2e-6
    )


def test_errors_name_the_function():
    with pytest.raises(TypeError, match="ungroup: expected a Grouped"):
        ungroup({"w": jnp.ones(3)})
    with pytest.raises(TypeError, match=r"group: leaf \['bad'\] must be an array or a number"):
        group({"bad": "text"})


def test_updates_of_another_layout_are_refused_by_name():
    opt = gradtx.adam(1e-3)
    params = group({"a": jnp.ones(3), "b": jnp.ones(2)})
    other = group({"a": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="scale_by_adam"):
        opt.update(other, opt.init(params), params)
