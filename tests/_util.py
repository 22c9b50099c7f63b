"""Shared helpers for the tests: small random pytrees and trajectory runners."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {"dense": {"w": (4, 3), "b": (3,)}, "conv": [(2, 2, 3), ()], "scale": (5,)}


def make_params(key=0, dtype=jnp.float32):
    """A nested dict/list pytree of several shapes, with one scalar leaf."""
    leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(key), len(leaves))
    arrays = [jax.random.normal(k, s, jnp.float32).astype(dtype) for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, arrays)


@functools.partial(jax.jit, static_argnames="key")
def grads_at(params, step, key=1):
    """A curved loss's gradient plus step-dependent noise: trajectories feed back on updates."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(key), step), len(leaves))
    out = []
    for i, (k, p) in enumerate(zip(keys, leaves)):
        p32 = p.astype(jnp.float32)
        g = (1.0 + i) * p32 + 0.3 * jax.random.normal(k, p.shape, jnp.float32)
        out.append(g.astype(p.dtype))
    return jax.tree.unflatten(treedef, out)


def standard_promotion():
    """optax 0.2.8 does `float ** int32` internally, which strict promotion refuses."""
    return jax.numpy_dtype_promotion("standard")


def trajectory(opt, params, steps, *, jit=True, promotion=None, step_size=1.0):
    """Runs `steps` updates; returns (final params, stacked emitted updates, final state).

    Params move by `step_size * update`: a piece that emits a direction (not a
    step) is run with a small negative step size, so the run stays bounded.
    """
    ctx = standard_promotion() if promotion == "standard" else contextlib.nullcontext()
    with ctx:
        state = opt.init(params)
        update = jax.jit(opt.update) if jit else opt.update
        emitted = []
        for step in range(steps):
            g = grads_at(params, step)
            u, state = update(g, state, params)
            emitted.append(u)
            params = jax.tree.map(
                lambda p, v: (p.astype(jnp.float32) + step_size * v.astype(jnp.float32)).astype(
                    p.dtype
                ),
                params,
                u,
            )
        return params, jax.tree.map(lambda *xs: jnp.stack(xs), *emitted), state


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"tree structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol
        )
