r"""Building pytrees: trees of constants shaped like others, casts and dtypes, batch shapes,
random trees.

`tree_zeros_like`, `tree_ones_like`, `tree_full_like`, `tree_cast`, `tree_cast_like`,
`tree_dtype`, `tree_batch_shape`, `tree_split_key_like`, `tree_random_like` and
`tree_unwrap_random_key_data` of `optax.tree_utils` (optax 0.2.8), all of them in
`gradtx.tree_utils`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike, DTypeLike

from gradtx import checks, numerics
from gradtx.tree_arithmetic import keystr, leaf_rows
from gradtx.typing import PyTree

__all__ = [
    "tree_batch_shape",
    "tree_cast",
    "tree_cast_like",
    "tree_dtype",
    "tree_full_like",
    "tree_ones_like",
    "tree_random_like",
    "tree_split_key_like",
    "tree_unwrap_random_key_data",
    "tree_zeros_like",
]


# ----------------------------------------------------------------------------
# Trees of constants, casts and dtypes.


def _dtype_or_none(fn: str, dtype: Any) -> Any:
    if dtype is None:
        return None
    try:
        return jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{fn}: dtype must be a dtype or None, got {dtype!r}") from err


def tree_zeros_like(tree: PyTree, dtype: DTypeLike | None = None) -> PyTree:
    r"""A tree of zeros shaped like `tree`: $z_i = 0$.

    Args:
        tree: the tree whose structure and shapes to copy.
        dtype: the zeros' dtype; None keeps each leaf's.
    """
    dt = _dtype_or_none("tree_zeros_like", dtype)
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dt), tree)


def tree_ones_like(tree: PyTree, dtype: DTypeLike | None = None) -> PyTree:
    r"""A tree of ones shaped like `tree`: $z_i = 1$.

    Args:
        tree: the tree whose structure and shapes to copy.
        dtype: the ones' dtype; None keeps each leaf's.
    """
    dt = _dtype_or_none("tree_ones_like", dtype)
    return jax.tree.map(lambda x: jnp.ones_like(x, dtype=dt), tree)


def tree_full_like(tree: PyTree, fill_value: ArrayLike, dtype: DTypeLike | None = None) -> PyTree:
    r"""A tree shaped like `tree`, every element `fill_value`: $z_i = c$.

    Args:
        tree: the tree whose structure and shapes to copy.
        fill_value: the value $c$ (a scalar, or an array that broadcasts to every leaf).
        dtype: the result's dtype; None keeps each leaf's.
    """
    dt = _dtype_or_none("tree_full_like", dtype)
    return jax.tree.map(lambda x: jnp.full_like(x, fill_value, dtype=dt), tree)


def tree_cast(tree: PyTree, dtype: DTypeLike | None) -> PyTree:
    r"""Every leaf cast to `dtype`; the tree unchanged when `dtype` is None.

    Args:
        tree: the tree to cast.
        dtype: the target dtype, or None to skip the cast.
    """
    dt = _dtype_or_none("tree_cast", dtype)
    if dt is None:
        return tree
    return jax.tree.map(lambda t: jnp.asarray(t).astype(dt), tree)


def tree_cast_like(tree: PyTree, other_tree: PyTree) -> PyTree:
    r"""Every leaf of `tree` cast to the dtype of the matching leaf of `other_tree`.

    Leaves of `other_tree` without a dtype (Python numbers) leave theirs unchanged.

    Args:
        tree: the tree to cast.
        other_tree: the tree whose leaf dtypes to copy, with the structure of `tree`.
    """
    rows, treedef, _ = leaf_rows("tree_cast_like", ("tree", "other_tree"), (tree, other_tree))
    return treedef.unflatten([t.astype(o.dtype) if hasattr(o, "dtype") else t for t, o in rows])


_MIXED = (None, "promote", "highest", "lowest")


def tree_dtype(tree: PyTree, mixed_dtype_handler: str | None = None) -> Any:
    r"""The dtype of the tree's leaves (JAX's default float dtype for an empty tree).

    Args:
        tree: the tree.
        mixed_dtype_handler: what to do when the leaves' dtypes differ: None raises;
            `"promote"` returns their common dtype (`jnp.promote_types` under standard
            promotion, whatever the config); `"highest"` / `"lowest"` the
            highest / lowest in promotion order (where $a \le b$ when $a$ promotes to $b$),
            raising for two dtypes neither of which promotes to the other.

    Raises:
        ValueError: for mixed dtypes with `mixed_dtype_handler=None` (naming the leaves),
            for incomparable dtypes with `"highest"`/`"lowest"`, or for another handler.
    """
    fn = "tree_dtype"
    if mixed_dtype_handler not in _MIXED:
        raise ValueError(
            f"{fn}: mixed_dtype_handler must be one of None, 'promote', 'highest', 'lowest', "
            f"got {mixed_dtype_handler!r}"
        )
    with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not with_path:
        return jnp.asarray([]).dtype
    dtypes = [jnp.asarray(x).dtype for _, x in with_path]
    if mixed_dtype_handler is None:
        wrong = [f"{keystr(p)} is {d}" for (p, _), d in zip(with_path, dtypes) if d != dtypes[0]]
        if wrong:
            raise ValueError(
                f"{fn}: the leaves have mixed dtypes (the first is {dtypes[0]}; "
                f"{', '.join(wrong)}); pass mixed_dtype_handler='promote', 'highest' or 'lowest'"
            )
        return dtypes[0]
    if mixed_dtype_handler == "promote":
        return numerics.common_dtype(*dtypes)
    pick_high = mixed_dtype_handler == "highest"

    def pick(a, b):
        joined = numerics.common_dtype(a, b)
        if joined not in (a, b):
            raise ValueError(
                f"{fn}: cannot order dtypes {a} and {b}: neither promotes to the other; "
                "use mixed_dtype_handler='promote'"
            )
        high = joined
        low = b if high == a else a
        return high if pick_high else low

    return functools.reduce(pick, dtypes)


def tree_batch_shape(tree: PyTree, shape: tuple[int, ...] = ()) -> PyTree:
    r"""Every leaf broadcast to leading batch dimensions: shape $(\text{shape}, *x.\text{shape})$.

    Args:
        tree: the tree.
        shape: the batch dimensions to put in front, a tuple of ints.
    """
    fn = "tree_batch_shape"
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{fn}: shape must be a tuple of ints, got {shape!r}; e.g. (4,)")
    dims = tuple(checks.check_int(fn, f"shape[{i}]", d) for i, d in enumerate(shape))
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (*dims, *jnp.shape(x))), tree)


# ----------------------------------------------------------------------------
# Random trees.


def tree_split_key_like(rng_key: Array, target_tree: PyTree) -> PyTree:
    r"""One independent key per leaf of `target_tree`: `jax.random.split(rng_key, n)`.

    Args:
        rng_key: the key to split, `jax.random.key(seed)` or a legacy `PRNGKey`.
        target_tree: the tree whose structure to give the keys.

    Returns:
        A tree of keys with the structure of `target_tree`.
    """
    checks.check_key("tree_split_key_like", rng_key)
    treedef = numerics.flatten(target_tree)[1]
    return treedef.unflatten(list(jax.random.split(rng_key, treedef.num_leaves)))


def tree_random_like(
    rng_key: Array,
    target_tree: PyTree,
    sampler: Callable[..., ArrayLike] = jax.random.normal,
    dtype: DTypeLike | None = None,
) -> PyTree:
    r"""A tree of random arrays shaped like `target_tree`: $z_\ell \sim \text{sampler}$.

    Leaf $\ell$ is `sampler(k_l, x_l.shape, dtype or x_l.dtype)`, with the keys of
    `tree_split_key_like(rng_key, target_tree)`; a sampler that takes `out_sharding` gets
    the leaf's sharding. The same key gives optax's tree.

    Args:
        rng_key: the key, `jax.random.key(seed)` or a legacy `PRNGKey`.
        target_tree: the tree whose structure and shapes to copy; its leaves must be arrays.
        sampler: `sampler(key, shape, dtype)`, e.g. `jax.random.normal` (the default).
        dtype: the random arrays' dtype; None keeps each leaf's.
    """
    fn = "tree_random_like"
    if not callable(sampler):
        raise TypeError(f"{fn}: sampler must be callable, got {type(sampler).__name__}")
    dt = _dtype_or_none(fn, dtype)
    checks.check_key(fn, rng_key)
    keys = tree_split_key_like(rng_key, target_tree)
    try:
        takes_sharding = "out_sharding" in inspect.signature(sampler).parameters
    except (TypeError, ValueError):
        takes_sharding = False

    def draw(leaf, key):
        shape = jnp.shape(leaf)
        leaf_dtype = jnp.result_type(leaf) if dt is None else dt
        if takes_sharding:
            return sampler(key, shape, leaf_dtype, out_sharding=jax.typeof(leaf).sharding)
        return sampler(key, shape, leaf_dtype)

    return jax.tree.map(draw, target_tree, keys)


def tree_unwrap_random_key_data(input_tree: PyTree) -> PyTree:
    r"""Typed PRNG keys in the tree replaced by their raw `uint32` data (`jax.random.key_data`).

    Args:
        input_tree: a tree of arrays and keys.
    """

    def unwrap(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(unwrap, input_tree)
