"""gradtx and optax transformations mix in both directions.

The frameworks built on optax (Equinox, Flax, numpyro) are in tests/test_frameworks.py.
"""

import jax
import jax.numpy as jnp
import optax

import gradtx
from tests._util import assert_trees_close, make_params, standard_promotion, trajectory


def test_gradtx_inside_optax_chain():
    params = make_params()
    mixed = optax.chain(gradtx.scale_by_adam(), optax.scale_by_learning_rate(0.01))
    with standard_promotion():
        p_mixed, u_mixed, _ = trajectory(mixed, params, 50)
    p_ref, u_ref, _ = trajectory(optax.adam(0.01), params, 50, promotion="standard")
    assert_trees_close(u_mixed, u_ref)
    assert_trees_close(p_mixed, p_ref)


def test_optax_inside_gradtx_chain():
    params = make_params()
    mixed = gradtx.chain(optax.clip_by_global_norm(1.0), gradtx.adam(0.01))
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01))
    p_mixed, u_mixed, _ = trajectory(mixed, params, 50, promotion="standard")
    p_ref, u_ref, _ = trajectory(reference, params, 50, promotion="standard")
    assert_trees_close(u_mixed, u_ref)
    assert_trees_close(p_mixed, p_ref)


def test_optax_transform_without_extra_args_gets_none_passed_through_chain():
    """gradtx.chain passes extra keyword args only to pieces whose update accepts them."""
    params = make_params()
    opt = gradtx.chain(optax.scale(0.5), gradtx.scale(2.0))  # optax.scale has no **extra_args
    state = opt.init(params)
    updates, _ = opt.update(params, state, params, value=jnp.float32(1.0))
    assert_trees_close(updates, params)


def test_optax_apply_updates_and_gradtx_apply_updates_agree():
    params = make_params()
    updates = jax.tree.map(lambda p: 0.1 * p, params)
    with standard_promotion():
        ref = optax.apply_updates(params, updates)
    assert_trees_close(gradtx.apply_updates(params, updates), ref, rtol=0, atol=0)
