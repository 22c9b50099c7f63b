r"""`flatten(inner)`: run a transformation on one vector holding every leaf (optax's layout
wrapper).

Each `init` and `update` concatenates the leaves into one vector, runs `inner` on it, and
splits its output back into the tree. `inner` then sees (and keeps its state as) one leaf.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import base, numerics
from gradtx.base import GradientTransformation, OptState, Params, PyTree, Updates, factory

__all__ = ["flatten"]


def _as_vector(tree: PyTree) -> jax.Array:
    """Every leaf of `tree`, raveled and concatenated in leaf order, in their common dtype
    (complex if any leaf is; float32 for an empty tree)."""
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros((0,), jnp.float32)
    dtype = numerics.common_dtype(*(x.dtype for x in leaves))
    return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])


def _as_tree(vector: jax.Array, like: PyTree) -> PyTree:
    """`vector` split into `like`'s leaves: their shapes, and their dtypes (a real leaf takes
    the real part of a complex vector, which is exactly real there for element-wise `inner`)."""
    leaves, treedef = numerics.flatten(like)
    sizes = [int(np.size(x)) for x in leaves]
    pieces = jnp.split(vector, np.cumsum(sizes)[:-1].tolist()) if leaves else []
    out = []
    for piece, leaf in zip(pieces, leaves):
        dtype = jnp.result_type(leaf)
        if numerics.is_complex(piece) and not numerics.is_complex(dtype):
            piece = jnp.real(piece)
        out.append(jnp.reshape(piece, jnp.shape(leaf)).astype(dtype))
    return treedef.unflatten(out)


@factory
def flatten(inner: GradientTransformation) -> GradientTransformation:
    r"""Runs `inner` on one vector: every leaf raveled and concatenated.

    $$v = [\operatorname{vec}(g^{(1)}); \dots; \operatorname{vec}(g^{(n)})], \qquad
    u = \operatorname{split}(\text{inner}(v))$$

    with the params flattened the same way for `inner`'s `init` and `update`. Emits `inner`'s
    output split back into the updates' tree (each leaf in its own shape and dtype: the
    vector is in the leaves' common dtype); stores `inner`'s state, built on the flat
    vector, as it is (optax's layout).

    When `gradtx.group` is the faster choice: `flatten` concatenates and splits on every
    step, so with thousands of small leaves it pays for a copy of every tree per step and
    saves only `inner`'s per-leaf loops; `group` packs the params once and keeps them
    packed across steps (one buffer per dtype), which removes the per-leaf cost itself and
    keeps each dtype's buffer in its own dtype. Use `flatten` to drop a transformation into
    code whose params must stay a tree, or to make a transformation that reduces over each
    leaf (a norm, a trust ratio) reduce over all parameters at once.

    Args:
        inner: the transformation to run on the flat vector (gradtx or optax).

    Returns:
        A `GradientTransformation` whose state is `inner`'s state for the flat vector.

    Raises:
        TypeError: when `inner` is not a transformation.
    """
    tx = base.as_transformation("flatten", "inner", inner)

    def init(params: Params) -> OptState:
        return tx.init(_as_vector(params))

    def update(
        updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]:
        flat_params = None if params is None else _as_vector(params)
        flat_updates, state = tx.update(_as_vector(updates), state, flat_params, **extra_args)
        return _as_tree(flat_updates, updates), state

    return GradientTransformation(init, update)
