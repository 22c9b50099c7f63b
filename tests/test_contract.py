"""Every transformation: update jits, does not retrace on a second call, keeps the
state's tree structure and dtypes, and leaves the updates' tree and dtypes alone."""

import jax
import jax.numpy as jnp
import pytest

import gradtx
from tests._util import grads_at, make_params

FACTORIES = {
    "identity": gradtx.identity,
    "stateless": lambda: gradtx.stateless(lambda u, p: jax.tree.map(lambda x: 2 * x, u)),
    "stateless_with_tree_map": lambda: gradtx.stateless_with_tree_map(lambda g, p: g - p),
    "ema": lambda: gradtx.ema(0.9, debias=True),
    "ema_f32_acc": lambda: gradtx.ema(0.9, accumulator_dtype=jnp.float32),
    "bias_correction": lambda: gradtx.bias_correction(0.9),
    "trace": lambda: gradtx.trace(0.9, nesterov=True),
    "trace_f32_acc": lambda: gradtx.trace(0.9, accumulator_dtype=jnp.float32),
    "scale_by_rms": lambda: gradtx.scale_by_rms(bias_correction=True),
    "scale_by_stddev": gradtx.scale_by_stddev,
    "scale_by_rss": gradtx.scale_by_rss,
    "scale_by_adam": gradtx.scale_by_adam,
    "scale_by_adam_mixed": lambda: gradtx.scale_by_adam(mu_dtype=jnp.float32, nu_dtype="float32"),
    "scale_by_adam_composed": gradtx.scale_by_adam_composed,
    "scale_by_amsgrad": gradtx.scale_by_amsgrad,
    "scale": lambda: gradtx.scale(0.5),
    "scale_by_learning_rate": lambda: gradtx.scale_by_learning_rate(
        lambda c: 0.1 / (1 + c.astype(jnp.float32))
    ),
    "add_decayed_weights": lambda: gradtx.add_decayed_weights(1e-2),
    "clip": lambda: gradtx.clip(0.1),
    "clip_by_global_norm": lambda: gradtx.clip_by_global_norm(0.1),
    "square_sqrt_add": lambda: gradtx.chain(gradtx.square(), gradtx.sqrt(), gradtx.add_constant(1)),
    "named_chain": lambda: gradtx.named_chain(("a", gradtx.trace(0.5)), ("b", gradtx.scale(2.0))),
    "masked": lambda: gradtx.masked(
        gradtx.trace(0.5), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    ),
    "partition": lambda: gradtx.partition(
        {0: gradtx.adam(0.1), 1: gradtx.sgd(0.1)},
        lambda p: jax.tree.map(lambda x: int(x.ndim > 1), p),
    ),
    "sgd": lambda: gradtx.sgd(0.1, 0.9),
    "momentum_ewa": lambda: gradtx.momentum_ewa(0.1, debias=True),
    "rmsprop": lambda: gradtx.rmsprop(0.1, centered=True, momentum=0.9),
    "adagrad": lambda: gradtx.adagrad(0.1),
    "adam": lambda: gradtx.adam(0.1),
    "adamw": lambda: gradtx.adamw(0.1),
    "nadam": lambda: gradtx.nadam(0.1),
    "amsgrad": lambda: gradtx.amsgrad(0.1),
}


def dtypes(tree):
    return jax.tree.map(lambda x: jnp.result_type(x), tree)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_update_contract(name, dtype):
    opt = FACTORIES[name]()
    params = make_params(dtype=dtype)
    traces = []

    def update(g, s, p):
        traces.append(1)
        return opt.update(g, s, p)

    jitted = jax.jit(update)
    state = opt.init(params)
    structure, state_dtypes = jax.tree.structure(state), dtypes(state)
    for step in range(3):
        grads = grads_at(params, step)
        updates, state = jitted(grads, state, params)
        assert jax.tree.structure(state) == structure
        assert dtypes(state) == state_dtypes
        assert jax.tree.structure(updates) == jax.tree.structure(grads)
        assert dtypes(updates) == dtypes(grads)
        params = gradtx.apply_updates(params, updates)
        assert dtypes(params) == dtypes(grads)
    assert len(traces) == 1, "update was traced again on a later call"


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop", "partition", "masked"])
def test_update_without_jit_matches_jit(name):
    opt = FACTORIES[name]()
    params = make_params()
    state = opt.init(params)
    grads = grads_at(params, 0)
    eager, _ = opt.update(grads, state, params)
    jitted, _ = jax.jit(opt.update)(grads, state, params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        assert jnp.allclose(a, b, rtol=1e-6, atol=1e-7)
