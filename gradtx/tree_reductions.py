r"""Reductions of pytrees to a scalar: $\sum_i x_i$, $\langle x, y \rangle$, $\lVert x \rVert$, ...

`tree_sum`, `tree_vdot`, `tree_norm`, `tree_max`, `tree_min`, `tree_size` and `tree_allclose`
of `optax.tree_utils` (optax 0.2.8), all of them in `gradtx.tree_utils`, whose docstring says
how they work under strict dtype promotion.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.tree_arithmetic import keystr, leaf_rows
from gradtx.typing import PyTree

__all__ = [
    "tree_allclose",
    "tree_max",
    "tree_min",
    "tree_norm",
    "tree_size",
    "tree_sum",
    "tree_vdot",
]


def _part_dtype(dtype: Any) -> np.dtype:
    """The dtype a leaf's part of a reduction is taken in: float32 or wider for floats."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    if jnp.issubdtype(dtype, jnp.complexfloating) and dtype.itemsize < 8:
        return jnp.dtype(jnp.complex64)
    return dtype


def _combine(
    parts: Sequence[Array],
    out_dtypes: Sequence[Any],
    op: Callable[[Any, Any], Any],
    post: Callable[[Array], Array] | None = None,
) -> Array:
    """`op`-reduces the leaves' parts in their common (wide) dtype, then casts the result.

    `out_dtypes` are the dtypes the parts have in optax; the result has their promoted dtype.
    `post` is applied before that cast (e.g. the square root of a squared norm).
    """
    out = numerics.common_dtype(*out_dtypes)
    wide = numerics.common_dtype(*(p.dtype for p in parts))
    total = functools.reduce(op, [p.astype(wide) for p in parts])
    if post is not None:
        total = post(total)
        if jnp.issubdtype(total.dtype, jnp.inexact) and not jnp.issubdtype(out, jnp.inexact):
            out = total.dtype  # the square root of an integer sum is a float, as in jnp
    return total.astype(out)


def _leaf_sum(x: Array) -> tuple[Array, Any]:
    """A leaf's sum taken in float32 or wider, and the dtype `jnp.sum` gives it."""
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.sum(x, dtype=_part_dtype(x.dtype)), x.dtype
    total = jnp.sum(x)  # bools and ints: exact, in the default int dtype as jnp.sum has it
    return total, total.dtype


def tree_sum(tree: PyTree, associative_reduction: bool = False) -> ArrayLike:
    r"""The sum of every element of every leaf: $\sum_i x_i$.

    Each leaf is summed in float32 or wider; the result has the leaves' common dtype (0 for
    an empty tree).

    Args:
        tree: the tree $x$.
        associative_reduction: add the leaves' sums as a balanced tree
            (`jax.tree.reduce_associative`), which can compile faster for large trees and
            rounds differently.
    """
    checks.check_bool("tree_sum", "associative_reduction", associative_reduction)
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return 0
    parts, dtypes = zip(*(_leaf_sum(x) for x in leaves))
    if associative_reduction:
        out, wide = numerics.common_dtype(*dtypes), numerics.common_dtype(*(p.dtype for p in parts))
        total = jax.tree.reduce_associative(operator.add, [p.astype(wide) for p in parts])
        return total.astype(out)
    return _combine(parts, dtypes, operator.add)


def tree_vdot(tree_x: PyTree, tree_y: PyTree) -> ArrayLike:
    r"""The inner product of two trees, conjugating the first: $\sum_i \bar x_i \, y_i$.

    Each leaf's product is summed in float32 or wider, at the highest matmul precision.

    Args:
        tree_x: the tree $x$ (conjugated when complex).
        tree_y: the tree $y$, with the structure and leaf shapes of `tree_x`.

    Returns:
        A scalar (0 for empty trees).

    Raises:
        ValueError: when the trees' structures or leaf shapes differ.
    """
    fn = "tree_vdot"
    rows, _, paths = leaf_rows(fn, ("tree_x", "tree_y"), (tree_x, tree_y))
    if not rows:
        return 0
    parts, dtypes = [], []
    for path, (x, y) in zip(paths, rows):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.shape != y.shape:
            key = keystr(path)
            raise ValueError(
                f"{fn}: leaves must have the same shape; tree_x{key} has shape {x.shape}, "
                f"tree_y{key} has {y.shape}"
            )
        dtype = numerics.common_dtype(x.dtype, y.dtype)
        wide = _part_dtype(dtype)
        a = x.astype(wide)
        if jnp.issubdtype(wide, jnp.complexfloating):
            a = jnp.conj(a)
        parts.append(jnp.tensordot(a, y.astype(wide), a.ndim, precision=jax.lax.Precision.HIGHEST))
        dtypes.append(dtype)
    return _combine(parts, dtypes, operator.add)


def tree_norm(
    tree: PyTree,
    ord: int | str | float | None = None,
    squared: bool = False,
) -> Array:
    r"""The vector norm of all the tree's elements taken together.

    $$\lVert x \rVert_2 = \Bigl(\sum_i |x_i|^2\Bigr)^{1/2}, \quad
    \lVert x \rVert_1 = \sum_i |x_i|, \quad \lVert x \rVert_\infty = \max_i |x_i|$$

    Complex elements count by their modulus. Each leaf's part is taken in float32 or wider;
    the result has the leaves' common real dtype (float32 for complex64 leaves).

    Args:
        tree: the tree $x$.
        ord: the norm's order: None or 2, 1, or `jnp.inf` (also `"inf"`, `"infinity"`).
        squared: return the norm squared, $\lVert x \rVert^2$.

    Raises:
        ValueError: for another `ord`.
    """
    fn = "tree_norm"
    checks.check_bool(fn, "squared", squared)
    kind: float
    if ord is None or _is_number(ord, 2):
        kind = 2
    elif _is_number(ord, 1):
        kind = 1
    elif (isinstance(ord, str) and ord in ("inf", "infinity")) or _is_number(ord, math.inf):
        kind = math.inf
    else:
        raise ValueError(
            f"{fn}: ord must be None, 1, 2 or jnp.inf ('inf', 'infinity'), got {ord!r}"
        )
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    leaves = [x for x in leaves if kind != math.inf or x.size]
    if not leaves:
        return jnp.zeros([], jnp.result_type(float))
    dtypes = [numerics.real_dtype(x.dtype) for x in leaves]
    wide = [x.astype(_part_dtype(x.dtype)) for x in leaves]
    if kind == 2:
        parts = [jnp.sum(numerics.abs_sq(x)) for x in wide]
        return _combine(parts, dtypes, operator.add, None if squared else jnp.sqrt)
    post = jnp.square if squared else None
    if kind == 1:
        return _combine([jnp.sum(jnp.abs(x)) for x in wide], dtypes, operator.add, post)
    return _combine([jnp.max(jnp.abs(x)) for x in wide], dtypes, jnp.maximum, post)


def _is_number(value: Any, target: float) -> bool:
    return (
        isinstance(value, (numbers.Real, np.generic))
        and not isinstance(value, (bool, np.bool_))
        and float(value) == target
    )


def _extremum(tree: PyTree, reduce: Callable, combine: Callable, empty: float) -> ArrayLike:
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    leaves = [x for x in leaves if x.size]
    if not leaves:
        return empty
    return _combine([reduce(x) for x in leaves], [x.dtype for x in leaves], combine)


def tree_max(tree: PyTree) -> ArrayLike:
    r"""The largest element of all the leaves, $\max_i x_i$ ($-\infty$ for an empty tree).

    Leaves without elements are skipped. Complex leaves are ordered as `jnp.max` orders them.

    Args:
        tree: the tree.
    """
    return _extremum(tree, jnp.max, jnp.maximum, -math.inf)


def tree_min(tree: PyTree) -> ArrayLike:
    r"""The smallest element of all the leaves, $\min_i x_i$ ($+\infty$ for an empty tree).

    Leaves without elements are skipped. Complex leaves are ordered as `jnp.min` orders them.

    Args:
        tree: the tree.
    """
    return _extremum(tree, jnp.min, jnp.minimum, math.inf)


def tree_size(tree: PyTree) -> int:
    r"""The number of elements in all the leaves, $\sum_\ell \operatorname{size}(x_\ell)$.

    Args:
        tree: the tree.
    """
    return sum(int(jnp.size(leaf)) for leaf in jax.tree.leaves(tree))


def tree_allclose(
    a: PyTree,
    b: PyTree,
    rtol: ArrayLike = 1e-05,
    atol: ArrayLike = 1e-08,
    equal_nan: bool = False,
) -> Array | bool:
    r"""Whether $|a_i - b_i| \le \text{atol} + \text{rtol} \, |b_i|$ for every element.

    Args:
        a: a tree.
        b: a tree with the structure of `a`.
        rtol: the relative tolerance.
        atol: the absolute tolerance.
        equal_nan: count NaNs in the same places as equal.

    Returns:
        A boolean scalar (True for empty trees).
    """
    rows, _, _ = leaf_rows("tree_allclose", ("a", "b"), (a, b))
    result: Array | bool = True
    for x, y in rows:
        result = result & jnp.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan)
    return result
