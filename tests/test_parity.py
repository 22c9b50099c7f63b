"""Parity with optax: same inputs, many jitted steps, tight tolerances.

Every piece and optimiser that optax also has is run side by side on a
nested pytree for 200 steps with gradients that feed back on the parameters;
the emitted updates at every step and the final parameters must agree.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import gradtx
from tests._util import assert_trees_close, make_params, trajectory


def lr_schedule(count):
    return 0.05 * 0.99 ** count.astype(jnp.float32)


def wd_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


PIECES = {
    "ema": (lambda: gradtx.ema(0.9), lambda: optax.ema(0.9, debias=False)),
    "ema_debias": (lambda: gradtx.ema(0.8, debias=True), lambda: optax.ema(0.8, debias=True)),
    "ema+bias_correction": (
        lambda: gradtx.chain(gradtx.ema(0.8), gradtx.bias_correction(0.8)),
        lambda: optax.ema(0.8, debias=True),
    ),
    "trace": (lambda: gradtx.trace(0.9), lambda: optax.trace(0.9)),
    "trace_nesterov": (lambda: gradtx.trace(0.7, True), lambda: optax.trace(0.7, True)),
    "scale_by_rms": (lambda: gradtx.scale_by_rms(), lambda: optax.scale_by_rms()),
    "scale_by_rms_outside": (
        lambda: gradtx.scale_by_rms(0.95, 1e-3, 0.5, eps_in_sqrt=False, bias_correction=True),
        lambda: optax.scale_by_rms(0.95, 1e-3, 0.5, eps_in_sqrt=False, bias_correction=True),
    ),
    "scale_by_stddev": (
        lambda: gradtx.scale_by_stddev(0.9, 1e-4),
        lambda: optax.scale_by_stddev(0.9, 1e-4),
    ),
    # With bias correction the first step's variance is 0 up to round-off, so
    # a root of it amplifies round-off: keep eps inside the root, and not tiny.
    "scale_by_stddev_debiased": (
        lambda: gradtx.scale_by_stddev(0.9, 0.5, bias_correction=True),
        lambda: optax.scale_by_stddev(0.9, 0.5, bias_correction=True),
    ),
    "scale_by_rss": (lambda: gradtx.scale_by_rss(0.2, 1e-6), lambda: optax.scale_by_rss(0.2, 1e-6)),
    "scale_by_adam": (lambda: gradtx.scale_by_adam(), lambda: optax.scale_by_adam()),
    "scale_by_adam_variant": (
        lambda: gradtx.scale_by_adam(0.8, 0.99, 1e-6, 1e-8, nesterov=True),
        lambda: optax.scale_by_adam(0.8, 0.99, 1e-6, 1e-8, nesterov=True),
    ),
    "scale_by_amsgrad": (lambda: gradtx.scale_by_amsgrad(), lambda: optax.scale_by_amsgrad()),
    "scale": (lambda: gradtx.scale(-0.3), lambda: optax.scale(-0.3)),
    "scale_by_learning_rate": (
        lambda: gradtx.scale_by_learning_rate(0.1),
        lambda: optax.scale_by_learning_rate(0.1),
    ),
    "scale_by_learning_rate_schedule": (
        lambda: gradtx.scale_by_learning_rate(lr_schedule),
        lambda: optax.scale_by_learning_rate(lr_schedule),
    ),
    "scale_by_schedule": (
        lambda: gradtx.scale_by_schedule(lr_schedule),
        lambda: optax.scale_by_schedule(lr_schedule),
    ),
    "add_decayed_weights": (
        lambda: gradtx.add_decayed_weights(0.1, wd_mask),
        lambda: optax.add_decayed_weights(0.1, wd_mask),
    ),
    "clip": (lambda: gradtx.clip(0.5), lambda: optax.clip(0.5)),
    "clip_by_global_norm": (
        lambda: gradtx.clip_by_global_norm(1.0),
        lambda: optax.clip_by_global_norm(1.0),
    ),
    "masked": (
        lambda: gradtx.masked(gradtx.trace(0.9), wd_mask),
        lambda: optax.masked(optax.trace(0.9), wd_mask),
    ),
    "partition": (
        lambda: gradtx.partition(
            {"a": gradtx.scale_by_adam(), "s": gradtx.scale(0.5)},
            lambda p: jax.tree.map(lambda x: "a" if x.ndim > 1 else "s", p),
        ),
        lambda: optax.partition(
            {"a": optax.scale_by_adam(), "s": optax.scale(0.5)},
            lambda p: jax.tree.map(lambda x: "a" if x.ndim > 1 else "s", p),
        ),
    ),
    "named_chain": (
        lambda: gradtx.named_chain(("m", gradtx.trace(0.9)), ("lr", gradtx.scale(-0.1))),
        lambda: optax.named_chain(("m", optax.trace(0.9)), ("lr", optax.scale(-0.1))),
    ),
}

OPTIMIZERS = {
    "sgd": (lambda: gradtx.sgd(0.05), lambda: optax.sgd(0.05)),
    "sgd_momentum": (lambda: gradtx.sgd(0.05, 0.9), lambda: optax.sgd(0.05, 0.9)),
    "sgd_nesterov": (
        lambda: gradtx.sgd(lr_schedule, 0.9, nesterov=True),
        lambda: optax.sgd(lr_schedule, 0.9, nesterov=True),
    ),
    "rmsprop": (lambda: gradtx.rmsprop(0.01), lambda: optax.rmsprop(0.01)),
    "rmsprop_centered_momentum": (
        lambda: gradtx.rmsprop(0.01, centered=True, momentum=0.9, nesterov=True),
        lambda: optax.rmsprop(0.01, centered=True, momentum=0.9, nesterov=True),
    ),
    "adagrad": (lambda: gradtx.adagrad(0.1), lambda: optax.adagrad(0.1)),
    "adam": (lambda: gradtx.adam(0.01), lambda: optax.adam(0.01)),
    "adam_schedule": (lambda: gradtx.adam(lr_schedule), lambda: optax.adam(lr_schedule)),
    "adamw": (
        lambda: gradtx.adamw(0.01, weight_decay=0.1, mask=wd_mask),
        lambda: optax.adamw(0.01, weight_decay=0.1, mask=wd_mask),
    ),
    "nadam": (lambda: gradtx.nadam(0.01), lambda: optax.nadam(0.01)),
    "amsgrad": (lambda: gradtx.amsgrad(0.01), lambda: optax.amsgrad(0.01)),
}


@pytest.mark.parametrize("name", sorted(PIECES) + sorted(OPTIMIZERS))
def test_matches_optax_float32_jit(name):
    ours, theirs = {**PIECES, **OPTIMIZERS}[name]
    params = make_params()
    step_size = -0.02 if name in PIECES else 1.0
    p_ours, u_ours, _ = trajectory(ours(), params, 200, step_size=step_size)
    p_theirs, u_theirs, _ = trajectory(
        theirs(), params, 200, promotion="standard", step_size=step_size
    )
    assert_trees_close(u_ours, u_theirs, rtol=1e-5, atol=1e-6)
    assert_trees_close(p_ours, p_theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "rmsprop", "adamw"])
def test_matches_optax_without_jit(name):
    ours, theirs = OPTIMIZERS[name]
    params = make_params()
    p_ours, u_ours, _ = trajectory(ours(), params, 20, jit=False)
    p_theirs, u_theirs, _ = trajectory(theirs(), params, 20, jit=False, promotion="standard")
    assert_trees_close(u_ours, u_theirs)
    assert_trees_close(p_ours, p_theirs)


@pytest.mark.parametrize("name", ["sgd_momentum", "rmsprop", "adam", "adagrad"])
def test_matches_optax_bfloat16_params(name):
    """bfloat16 params: optax computes in bfloat16, gradtx in float32 then rounds.

    The two agree to bfloat16 resolution (2^-8 relative) on a contracting
    problem; the states and the params keep bfloat16.
    """
    ours, theirs = OPTIMIZERS[name]
    params = make_params(dtype=jnp.bfloat16)
    p_ours, _, s_ours = trajectory(ours(), params, 50)
    p_theirs, _, _ = trajectory(theirs(), params, 50, promotion="standard")
    for leaf in jax.tree.leaves(p_ours):
        assert leaf.dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(s_ours):
        assert leaf.dtype in (jnp.bfloat16, jnp.int32)
    assert_trees_close(p_ours, p_theirs, rtol=5e-2, atol=2e-2)
