r"""Clipping: bound each update coordinate, or the update's global norm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, PyTree


def global_norm(tree: PyTree) -> Array:
    r"""$\lVert g \rVert = \sqrt{\sum_i |g_i|^2}$ over every leaf, accumulated in float32 or wider.

    Complex leaves count by their modulus; the norm is real.

    Args:
        tree: a pytree of arrays (0 for an empty tree).
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros([], jnp.float32)
    dtype = numerics.compute_dtype(*leaves)
    return jnp.sqrt(sum(jnp.sum(numerics.abs_sq(jnp.asarray(x).astype(dtype))) for x in leaves))


@base.factory
def clip(max_delta: float) -> GradientTransformation:
    r"""Clips every coordinate to $[-\delta, \delta]$: $u_i = \min(\max(g_i, -\delta), \delta)$.

    A complex coordinate is clipped by its modulus, keeping its phase:
    $u_i = g_i \min(1, \delta / |g_i|)$.

    Args:
        max_delta: $\delta \geq 0$.
    """
    checks.check_non_negative("clip", "max_delta", max_delta)

    def leaf(g):
        g = jnp.asarray(g)
        if numerics.is_complex(g):
            size = jnp.abs(g)
            delta = jnp.asarray(max_delta, size.dtype)
            factor = jnp.where(size > delta, delta / jnp.where(size > delta, size, 1), 1)
            return g * factor.astype(g.dtype)
        return jnp.clip(g, -jnp.asarray(max_delta, g.dtype), jnp.asarray(max_delta, g.dtype))

    return base.stateless_pair(lambda updates, params: jax.tree.map(leaf, updates))


@base.factory
def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    r"""Rescales the whole update so its global norm is at most $c$.

    $$u = g \cdot \frac{c}{\max(\lVert g \rVert, c)}$$

    The direction is kept; only steps longer than $c$ are shortened.

    Args:
        max_norm: $c > 0$.
    """
    checks.check_positive("clip_by_global_norm", "max_norm", max_norm)

    def f(updates):
        updates = numerics.as_arrays(updates)
        norm = global_norm(updates)
        factor = jnp.where(norm <= max_norm, 1.0, max_norm / jnp.maximum(norm, max_norm))
        return jax.tree.map(lambda g: numerics.scale_leaf(g, factor), updates)

    return base.stateless_pair(lambda u, p: f(u))
