"""Ensembles: every optimiser under `jax.vmap` over a leading member axis equals a loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx.guards import apply_if_finite
from gradtx.hyperparams import inject_hyperparams
from gradtx.monitor import monitor_norms
from gradtx.plateau import reduce_on_plateau

MEMBERS = 3

OPTIMISERS = {
    "sgd": lambda: gradtx.sgd(0.1),
    "sgd_momentum": lambda: gradtx.sgd(0.1, momentum=0.9),
    "sgd_nesterov": lambda: gradtx.sgd(0.1, momentum=0.9, nesterov=True),
    "momentum_ewa": lambda: gradtx.momentum_ewa(0.1, debias=True),
    "rmsprop": lambda: gradtx.rmsprop(0.01),
    "rmsprop_centered": lambda: gradtx.rmsprop(0.01, centered=True, momentum=0.9),
    "adagrad": lambda: gradtx.adagrad(0.1),
    "adam": lambda: gradtx.adam(1e-2),
    "adam_scheduled": lambda: gradtx.adam(lambda t: 1e-2 / (1.0 + t.astype(jnp.float32))),
    "adamw": lambda: gradtx.adamw(1e-2, weight_decay=0.1),
    "nadam": lambda: gradtx.nadam(1e-2),
    "amsgrad": lambda: gradtx.amsgrad(1e-2),
    "adam_composed": lambda: gradtx.chain(
        gradtx.scale_by_adam_composed(), gradtx.scale_by_learning_rate(1e-2)
    ),
    "injected_adam": lambda: inject_hyperparams(gradtx.adam)(learning_rate=1e-2),
    "plateau": lambda: gradtx.chain(gradtx.adam(1e-2), reduce_on_plateau(patience=1)),
    "guarded": lambda: apply_if_finite(gradtx.adam(1e-2), 2),
    "monitored": lambda: monitor_norms(gradtx.sgd(0.1, momentum=0.9)),
}


def member_params(i):
    rng = np.random.default_rng(i)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
    }


def member_grads(params, i, t):
    """Member 1 gets a NaN at step 1, to exercise the guard per member."""
    grads = jax.tree.map(lambda p: p * (1.0 + i + t) - 0.1 * t, params)
    if i == 1 and t == 1:
        grads = {**grads, "b": grads["b"].at[0].set(jnp.nan)}
    return grads


def stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def assert_trees_close(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_vmapped_update_equals_a_loop_over_members(name):
    opt = OPTIMISERS[name]()
    steps = 3
    is_guarded = name == "guarded"
    grads = [[member_grads(member_params(i), i, t) for t in range(steps)] for i in range(MEMBERS)]
    if not is_guarded:  # only the guard is meant to see the NaN
        grads = [[jax.tree.map(jnp.nan_to_num, g) for g in gs] for gs in grads]
    values = [[jnp.asarray(float((i + 1) * (t % 2))) for t in range(steps)] for i in range(MEMBERS)]

    # A Python loop over the members.
    update = jax.jit(opt.update)
    loop_updates, loop_states = [], []
    for i in range(MEMBERS):
        params, state = member_params(i), opt.init(member_params(i))
        for t in range(steps):
            updates, state = update(grads[i][t], state, params, value=values[i][t])
            params = gradtx.apply_updates(params, updates)
        loop_updates.append(updates)
        loop_states.append(state)

    # The same members as one vmapped ensemble.
    params = stack([member_params(i) for i in range(MEMBERS)])
    state = jax.vmap(opt.init)(params)
    vmapped = jax.jit(jax.vmap(opt.update))
    for t in range(steps):
        g = stack([grads[i][t] for i in range(MEMBERS)])
        v = jnp.stack([values[i][t] for i in range(MEMBERS)])
        updates, state = vmapped(g, state, params, value=v)
        params = jax.vmap(gradtx.apply_updates)(params, updates)

    assert_trees_close(updates, stack(loop_updates))
    assert_trees_close(state, stack(loop_states))
    if is_guarded:
        np.testing.assert_array_equal(state.total_notfinite, [0, 1, 0])


def test_ensemble_with_a_learning_rate_per_member():
    opt = inject_hyperparams(gradtx.adam)(learning_rate=1e-2)
    params = stack([member_params(i) for i in range(MEMBERS)])
    state = jax.vmap(opt.init)(params)
    rates = jnp.asarray([1e-3, 1e-2, 1e-1], jnp.float32)
    state = state._replace(hyperparams={**state.hyperparams, "learning_rate": rates})
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(jax.vmap(opt.update))(grads, state, params)
    np.testing.assert_allclose(updates["b"][:, 0], -rates, rtol=1e-5)
