"""Adam is momentum combined with RMSprop: the composed form equals the fused one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from tests._util import grads_at, make_params


def run_scan(opt, params, steps):
    """`steps` jitted updates in one lax.scan; returns final params and all updates."""

    def step(carry, i):
        p, s = carry
        u, s = opt.update(grads_at(p, i), s, p)
        return (gradtx.apply_updates(p, u), s), u

    (p, _), us = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), jnp.arange(steps)))(params)
    return p, us


@pytest.mark.parametrize("kwargs", [{}, {"b1": 0.8, "b2": 0.99, "eps": 1e-6, "eps_root": 1e-10}])
def test_composed_adam_equals_fused_over_1000_steps(kwargs):
    params = make_params()
    fused = gradtx.chain(gradtx.scale_by_adam(**kwargs), gradtx.scale_by_learning_rate(1e-2))
    composed = gradtx.chain(
        gradtx.scale_by_adam_composed(**kwargs), gradtx.scale_by_learning_rate(1e-2)
    )
    p_fused, u_fused = run_scan(fused, params, 1000)
    p_comp, u_comp = run_scan(composed, params, 1000)
    for a, b in zip(jax.tree.leaves(u_fused), jax.tree.leaves(u_comp)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    for a, b in zip(jax.tree.leaves(p_fused), jax.tree.leaves(p_comp)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_composed_adam_is_literally_the_pieces():
    """Built by hand from the public pieces, it is the same as scale_by_adam_composed."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    by_hand = gradtx.divide(
        gradtx.chain(gradtx.ema(b1), gradtx.bias_correction(b1)),
        gradtx.chain(
            gradtx.square(),
            gradtx.ema(b2),
            gradtx.bias_correction(b2),
            gradtx.sqrt(),
            gradtx.add_constant(eps),
        ),
    )
    params = make_params()
    p1, _ = run_scan(gradtx.chain(by_hand, gradtx.scale_by_learning_rate(1e-2)), params, 100)
    p2, _ = run_scan(gradtx.adam(1e-2), params, 100)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_adam_with_b1_zero_is_rms_scaling_with_bias_correction():
    """IDEAS §5-6: RMSprop is Adam without momentum (eps outside the root, debiased)."""
    params = make_params()
    adam0 = gradtx.chain(gradtx.scale_by_adam(b1=0.0, b2=0.99), gradtx.scale(-0.01))
    rms = gradtx.chain(
        gradtx.scale_by_rms(0.99, 1e-8, eps_in_sqrt=False, bias_correction=True),
        gradtx.scale(-0.01),
    )
    p1, _ = run_scan(adam0, params, 200)
    p2, _ = run_scan(rms, params, 200)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_momentum_ewa_is_heavy_ball_with_rescaled_rate():
    """IDEAS §4: dropping (1 - beta) just rescales the learning rate, also under a schedule."""
    beta = 0.9

    def lr(count):
        return 0.1 * 0.97 ** count.astype(jnp.float32)

    params = make_params()
    p_ewa, _ = run_scan(gradtx.momentum_ewa(lr, beta), params, 300)
    p_hb, _ = run_scan(gradtx.sgd(lambda c: lr(c) * (1 - beta), beta), params, 300)
    for a, b in zip(jax.tree.leaves(p_ewa), jax.tree.leaves(p_hb)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nu_dtype_stores_second_moment_separately():
    params = make_params(dtype=jnp.bfloat16)
    opt = gradtx.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32)
    state = opt.init(params)
    adam_state = state[0]
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(adam_state.mu))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(adam_state.nu))
    updates, new_state = jax.jit(opt.update)(grads_at(params, 0), state, params)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
