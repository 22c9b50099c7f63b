"""monitor_norms: records norms and ratios in the state, and leaves the updates alone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradtx
from gradtx.monitor import MonitorNormsState, monitor_norms


def make_params(dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 2)
    return {
        "w": jax.random.normal(keys[0], (4, 3)).astype(dtype),
        "b": jax.random.normal(keys[1], (3,)).astype(dtype),
    }


def norm(tree):
    return np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))


def test_records_norms_and_ratios_without_changing_updates():
    params = make_params()
    opt, ref = monitor_norms(gradtx.adam(1e-2)), gradtx.adam(1e-2)
    state, ref_state = opt.init(params), ref.init(params)
    update, ref_update = jax.jit(opt.update), jax.jit(ref.update)
    for t in range(3):
        grads = jax.tree.map(lambda p: p * (t + 1.0), params)
        updates, state = update(grads, state, params)
        ref_updates, ref_state = ref_update(grads, ref_state, params)
        for x, y in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_allclose(state.grad_norm, norm(grads), rtol=1e-6)
        np.testing.assert_allclose(state.update_norm, norm(updates), rtol=1e-6)
        np.testing.assert_allclose(state.param_norm, norm(params), rtol=1e-6)
        np.testing.assert_allclose(state.grad_param_ratio, norm(grads) / norm(params), rtol=1e-6)
        np.testing.assert_allclose(
            state.update_param_ratio, norm(updates) / norm(params), rtol=1e-6
        )
        params = gradtx.apply_updates(params, updates)
    assert int(state.count) == 3
    for x, y in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(ref_state)):
        np.testing.assert_array_equal(x, y)


def test_bare_monitor_in_a_chain_records_what_reaches_it():
    params = make_params(jnp.bfloat16)
    opt = gradtx.chain(gradtx.clip_by_global_norm(0.5), monitor_norms(), gradtx.sgd(0.1))
    state = opt.init(params)
    updates, state = jax.jit(opt.update)(params, state, params)
    watched = state[1]
    assert isinstance(watched, MonitorNormsState)
    np.testing.assert_allclose(watched.grad_norm, 0.5, rtol=1e-2)  # after clipping
    assert watched.grad_norm == watched.update_norm
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(updates))
    assert repr(opt) == (
        "chain(clip_by_global_norm(0.5), monitor_norms(), "
        "chain(identity(), scale_by_learning_rate(0.1)))"
    )


def test_without_params_the_param_norm_is_nan():
    opt = monitor_norms(gradtx.sgd(0.1))
    params = make_params()
    _, state = opt.update(params, opt.init(params))
    assert np.isnan(state.param_norm) and np.isnan(state.update_param_ratio)
    np.testing.assert_allclose(state.grad_norm, norm(params), rtol=1e-6)


def test_state_is_stable_under_jit():
    opt = monitor_norms(gradtx.adam(1e-3))
    params = make_params(jnp.bfloat16)
    state = opt.init(params)
    _, new = jax.jit(opt.update)(params, state, params)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, state)


def test_watches_an_optax_optimiser_and_is_found_by_name():
    params = make_params()
    opt = monitor_norms(optax.adam(1e-2))
    with jax.numpy_dtype_promotion("standard"):
        _, state = jax.jit(opt.update)(params, opt.init(params), params)
    np.testing.assert_allclose(state.update_norm, 1e-2 * np.sqrt(15), rtol=1e-4)
    # Field names are unique in a state, so optax's lookup by name finds them.
    nested = gradtx.chain(gradtx.clip(1.0), opt)
    with jax.numpy_dtype_promotion("standard"):
        _, s = jax.jit(nested.update)(params, nested.init(params), params)
    assert float(optax.tree.get(s, "update_norm")) == float(s[1].update_norm)
