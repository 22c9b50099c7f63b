r"""Tree utilities: arithmetic, reductions, casts, random trees and state look-ups on pytrees.

The names, signatures, defaults and results of `optax.tree_utils` (optax 0.2.8), so
`optax.tree_utils.tree_norm(g)` becomes `gradtx.tree_utils.tree_norm(g)` (or, with the short
names, `gradtx.tree.norm(g)`). Complex leaves are handled as optax does: inner products and
norms conjugate, $\langle x, y \rangle = \sum_i \bar x_i y_i$ and
$\lVert x \rVert_2^2 = \sum_i |x_i|^2$.

Where gradtx differs from optax, on purpose:

* Bad input raises at the call, naming the function and the argument: leaves whose shapes
  differ (other than a scalar against an array) are refused instead of broadcast, a `scalar`
  that is not a scalar is refused, and so are a decay outside $[0, 1]$ or an unknown `ord`.
* Reductions over leaves (`tree_sum`, `tree_vdot`, `tree_norm`, `tree_max`, `tree_min`) work
  under strict dtype promotion: each leaf's part is taken in float32 or wider, the parts are
  added in the leaves' common dtype (`jnp.promote_types`), and the result has the dtype optax's
  has under standard promotion (a bfloat16 tree has a bfloat16 norm).
* `tree_set` sets every value that `tree_get_all_with_path` finds (optax 0.2.8 leaves those
  nested in a list or tuple of a matching node unchanged).
* `tree_get` names the paths it found when there are several.
* `tree_norm(ord=inf)` of an empty tree is 0, not $-\infty$.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import numbers
import operator
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike, DTypeLike

from gradtx import checks, numerics
from gradtx.typing import OptState, Params, PyTree

__all__ = [
    "NamedTupleKey",
    "is_params_placeholder",
    "tree_add",
    "tree_add_scale",
    "tree_allclose",
    "tree_batch_shape",
    "tree_bias_correction",
    "tree_cast",
    "tree_cast_like",
    "tree_clip",
    "tree_conj",
    "tree_div",
    "tree_dtype",
    "tree_full_like",
    "tree_get",
    "tree_get_all_with_path",
    "tree_map_params",
    "tree_max",
    "tree_min",
    "tree_mul",
    "tree_norm",
    "tree_ones_like",
    "tree_random_like",
    "tree_real",
    "tree_scale",
    "tree_set",
    "tree_size",
    "tree_split_key_like",
    "tree_sub",
    "tree_sum",
    "tree_unwrap_random_key_data",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
]


# ----------------------------------------------------------------------------
# Checks shared by the element-wise functions.


def _flatten_with_path(
    tree: PyTree, is_leaf: Callable[[Any], bool] | None = None
) -> tuple[list[tuple[Any, Any]], Any]:
    """`jax.tree_util.tree_flatten_with_path`, its treedef typed `Any` (jaxlib has no stubs)."""
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)


def _keystr(path: Sequence[Any]) -> str:
    return jax.tree_util.keystr(tuple(path))


def _structure_error(fn: str, names: Sequence[str], trees: Sequence[PyTree]) -> ValueError:
    """The error for trees of different structures, naming the first path where they part."""
    a_paths = [_keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(trees[0])[0]]
    b_paths = [_keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(trees[1])[0]]
    for pa, pb in zip(a_paths, b_paths):
        if pa != pb:
            return ValueError(
                f"{fn}: {names[1]} must have the tree structure of {names[0]}; {names[0]} has "
                f"{names[0]}{pa} where {names[1]} has {names[1]}{pb}"
            )
    return ValueError(
        f"{fn}: {names[1]} must have the tree structure of {names[0]}; {names[0]} has "
        f"{len(a_paths)} leaves, {names[1]} has {len(b_paths)}"
    )


def _flat(
    fn: str,
    names: Sequence[str],
    trees: Sequence[PyTree],
    is_leaf: Callable[[Any], bool] | None = None,
) -> tuple[list[list[Any]], Any, list[Any]]:
    """The leaves of `trees` (one list per leaf position), the first tree's treedef and paths.

    Raises a ValueError naming `fn` when a tree's structure differs from the first one's, or
    when two leaves have different shapes and neither is a scalar (which `jnp` would broadcast
    into a leaf of another shape).
    """
    with_path, treedef = _flatten_with_path(trees[0], is_leaf)
    paths = [p for p, _ in with_path]
    columns = [[x for _, x in with_path]]
    for name, tree in zip(names[1:], trees[1:]):
        try:
            columns.append(treedef.flatten_up_to(tree))
        except (ValueError, TypeError):
            raise _structure_error(fn, (names[0], name), (trees[0], tree)) from None
    rows = [list(r) for r in zip(*columns)] if columns[0] else []
    for path, row in zip(paths, rows):
        shapes = [None if x is None else jnp.shape(x) for x in row]
        known = [(n, s) for n, s in zip(names, shapes) if s is not None and s != ()]
        for name, shape in known[1:]:
            if shape != known[0][1]:
                key = _keystr(path)
                raise ValueError(
                    f"{fn}: leaves must have the same shape (or be scalars); "
                    f"{known[0][0]}{key} has shape {known[0][1]}, {name}{key} has {shape}"
                )
    return rows, treedef, paths


def _check_scalar(fn: str, name: str, value: Any) -> None:
    """`value` is a scalar (a number or a 0-d array, traced or not)."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{fn}: {name} must be a scalar number, got {value!r}")
    shape = jnp.shape(value)
    if shape != ():
        raise ValueError(
            f"{fn}: {name} must be a scalar, got an array of shape {shape}; use tree_mul for "
            "a leaf-by-leaf product"
        )


def _check_decay(fn: str, decay: Any) -> None:
    """A moment's decay is a real scalar in $[0, 1]$ (traced values are not checked)."""
    _check_scalar(fn, "decay", decay)
    checks.check_range(fn, "decay", decay, 0.0, 1.0)


# ----------------------------------------------------------------------------
# Element-wise arithmetic.


def tree_add(tree_x: PyTree, tree_y: PyTree, *other_trees: PyTree) -> PyTree:
    r"""The leaf-by-leaf sum of two or more trees: $z = x + y + \dots$.

    Args:
        tree_x: the first tree $x$.
        tree_y: the second tree $y$, with the structure of `tree_x`.
        *other_trees: further trees to add, with the same structure.

    Returns:
        A tree with the structure of `tree_x`.

    Raises:
        ValueError: when the trees' structures differ, or two leaves have different shapes
            and neither is a scalar.
    """
    trees = (tree_x, tree_y, *other_trees)
    names = ["tree_x", "tree_y", *(f"other_trees[{i}]" for i in range(len(other_trees)))]
    rows, treedef, _ = _flat("tree_add", names, trees)
    return treedef.unflatten([functools.reduce(operator.add, row) for row in rows])


def _binary(fn: str, op: Callable[[Any, Any], Any], tree_x: PyTree, tree_y: PyTree) -> PyTree:
    rows, treedef, _ = _flat(fn, ("tree_x", "tree_y"), (tree_x, tree_y))
    return treedef.unflatten([op(x, y) for x, y in rows])


def tree_sub(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    r"""The leaf-by-leaf difference $z = x - y$.

    Args:
        tree_x: the tree $x$.
        tree_y: the tree $y$, with the structure of `tree_x`.

    Raises:
        ValueError: as `tree_add`.
    """
    return _binary("tree_sub", operator.sub, tree_x, tree_y)


def tree_mul(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    r"""The leaf-by-leaf (Hadamard) product $z = x \odot y$.

    Args:
        tree_x: the tree $x$.
        tree_y: the tree $y$, with the structure of `tree_x`.

    Raises:
        ValueError: as `tree_add`.
    """
    return _binary("tree_mul", operator.mul, tree_x, tree_y)


def tree_div(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    r"""The leaf-by-leaf quotient $z = x / y$.

    Args:
        tree_x: the tree $x$.
        tree_y: the tree $y$, with the structure of `tree_x`.

    Raises:
        ValueError: as `tree_add`.
    """
    return _binary("tree_div", operator.truediv, tree_x, tree_y)


def tree_scale(scalar: ArrayLike, tree: PyTree) -> PyTree:
    r"""Every leaf times one scalar: $z = s \, x$.

    The product follows `jnp`'s dtype promotion (a Python number keeps each leaf's dtype).

    Args:
        scalar: the scalar $s$, a number or a 0-d array (traced or not).
        tree: the tree $x$.

    Raises:
        ValueError: when `scalar` is an array with more than one element.
    """
    _check_scalar("tree_scale", "scalar", scalar)
    return jax.tree.map(lambda x: scalar * x, tree)


def tree_add_scale(tree_x: PyTree, scalar: ArrayLike, tree_y: PyTree) -> PyTree:
    r"""$z = x + s \, y$, leaf by leaf; a `None` leaf of `tree_x` stays `None`.

    Args:
        tree_x: the tree $x$.
        scalar: the scalar $s$, a number or a 0-d array.
        tree_y: the tree $y$, with the structure of `tree_x`.

    Raises:
        ValueError: when `scalar` is not a scalar, or as `tree_add`.
    """
    fn = "tree_add_scale"
    _check_scalar(fn, "scalar", scalar)
    s = jnp.asarray(scalar)
    rows, treedef, _ = _flat(fn, ("tree_x", "tree_y"), (tree_x, tree_y), lambda v: v is None)
    return treedef.unflatten([None if x is None else x + s * y for x, y in rows])


def tree_conj(tree: PyTree) -> PyTree:
    r"""The complex conjugate of every leaf, $\bar x$ (real leaves are unchanged).

    Args:
        tree: the tree $x$.
    """
    return jax.tree.map(jnp.conj, tree)


def tree_real(tree: PyTree) -> PyTree:
    r"""The real part of every leaf, $\operatorname{Re} x$.

    Args:
        tree: the tree $x$.
    """
    return jax.tree.map(jnp.real, tree)


def tree_clip(
    tree: PyTree, min_value: ArrayLike | None = None, max_value: ArrayLike | None = None
) -> PyTree:
    r"""Every leaf clipped to $[a, b]$: $z = \min(\max(x, a), b)$.

    Args:
        tree: the tree $x$.
        min_value: the lower bound $a$, or None for no lower bound.
        max_value: the upper bound $b$, or None for no upper bound.

    Raises:
        ValueError: when both bounds are known numbers and $a > b$ (jnp would return $b$
            everywhere).
    """
    fn = "tree_clip"
    lo = _concrete_float(min_value)
    hi = _concrete_float(max_value)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(
            f"{fn}: min_value must be <= max_value, got min_value={min_value!r}, "
            f"max_value={max_value!r}"
        )
    return jax.tree.map(lambda g: jnp.clip(g, min_value, max_value), tree)


def _concrete_float(value: Any) -> float | None:
    """The float value of a concrete real scalar, else None."""
    if value is None or not checks.is_concrete(value) or jnp.ndim(value) != 0:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        return None
    return float(array)


def tree_where(condition: ArrayLike, tree_x: PyTree, tree_y: PyTree) -> PyTree:
    r"""$z = x$ if the condition holds else $y$, leaf by leaf (`jnp.where`).

    Args:
        condition: a scalar boolean, e.g. `jnp.isfinite(loss)` (traced or not).
        tree_x: the tree chosen where `condition` is True.
        tree_y: the tree chosen where it is False, with the structure of `tree_x`.

    Raises:
        ValueError: when `condition` is not a scalar, or as `tree_add`.
    """
    fn = "tree_where"
    _check_scalar(fn, "condition", condition)
    rows, treedef, _ = _flat(fn, ("tree_x", "tree_y"), (tree_x, tree_y))
    return treedef.unflatten([jnp.where(condition, x, y) for x, y in rows])


# ----------------------------------------------------------------------------
# Reductions.


def _promote(*dtypes: Any) -> np.dtype:
    """The dtypes' common dtype on JAX's standard promotion lattice, whatever the config says.

    Reductions add the parts of leaves of different dtypes (a bfloat16 leaf's and a float32
    leaf's); this is the explicit cast that lets them do so under strict promotion.
    """
    with jax.numpy_dtype_promotion("standard"):
        return functools.reduce(jnp.promote_types, dtypes)


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
    out = _promote(*out_dtypes)
    wide = _promote(*(p.dtype for p in parts))
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
        out, wide = _promote(*dtypes), _promote(*(p.dtype for p in parts))
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
    rows, _, paths = _flat(fn, ("tree_x", "tree_y"), (tree_x, tree_y))
    if not rows:
        return 0
    parts, dtypes = [], []
    for path, (x, y) in zip(paths, rows):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.shape != y.shape:
            key = _keystr(path)
            raise ValueError(
                f"{fn}: leaves must have the same shape; tree_x{key} has shape {x.shape}, "
                f"tree_y{key} has {y.shape}"
            )
        dtype = _promote(x.dtype, y.dtype)
        wide = _part_dtype(dtype)
        a = x.astype(wide)
        if jnp.issubdtype(wide, jnp.complexfloating):
            a = jnp.conj(a)
        parts.append(jnp.tensordot(a, y.astype(wide), a.ndim, precision=jax.lax.Precision.HIGHEST))
        dtypes.append(dtype)
    return _combine(parts, dtypes, operator.add)


def _abs_sq(x: Array) -> Array:
    """$|x|^2$, real for complex $x$."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jnp.square(x.real) + jnp.square(x.imag)
    return jnp.square(x)


def _real_dtype(dtype: Any) -> np.dtype:
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


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
    dtypes = [_real_dtype(x.dtype) for x in leaves]
    wide = [x.astype(_part_dtype(x.dtype)) for x in leaves]
    if kind == 2:
        parts = [jnp.sum(_abs_sq(x)) for x in wide]
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
    rows, _, _ = _flat("tree_allclose", ("a", "b"), (a, b))
    result: Array | bool = True
    for x, y in rows:
        result = result & jnp.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan)
    return result


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
# Trees of constants and casts.


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
    rows, treedef, _ = _flat("tree_cast_like", ("tree", "other_tree"), (tree, other_tree))
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
        wrong = [f"{_keystr(p)} is {d}" for (p, _), d in zip(with_path, dtypes) if d != dtypes[0]]
        if wrong:
            raise ValueError(
                f"{fn}: the leaves have mixed dtypes (the first is {dtypes[0]}; "
                f"{', '.join(wrong)}); pass mixed_dtype_handler='promote', 'highest' or 'lowest'"
            )
        return dtypes[0]
    if mixed_dtype_handler == "promote":
        return _promote(*dtypes)
    pick_high = mixed_dtype_handler == "highest"

    def pick(a, b):
        joined = _promote(a, b)
        if joined not in (a, b):
            raise ValueError(
                f"{fn}: cannot order dtypes {a} and {b}: neither promotes to the other; "
                "use mixed_dtype_handler='promote'"
            )
        high = joined
        low = b if high == a else a
        return high if pick_high else low

    return functools.reduce(pick, dtypes)


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


# ----------------------------------------------------------------------------
# Moments, as optimisers update them.


def _moment_map(fn: str, f: Callable, updates: PyTree, moments: PyTree) -> PyTree:
    rows, treedef, _ = _flat(fn, ("updates", "moments"), (updates, moments), lambda v: v is None)
    return treedef.unflatten([None if g is None else f(g, t) for g, t in rows])


def tree_update_moment(updates: PyTree, moments: PyTree, decay: float, order: int) -> PyTree:
    r"""The EWA of the updates' `order`-th power: $m \leftarrow (1 - \beta) g^k + \beta m$.

    `None` leaves of `updates` stay `None`.

    Args:
        updates: the updates $g$.
        moments: the moments $m$, with the structure of `updates`.
        decay: $\beta \in [0, 1]$.
        order: the power $k$.

    Raises:
        ValueError: when `decay` is outside $[0, 1]$, or as `tree_add`.
    """
    fn = "tree_update_moment"
    _check_decay(fn, decay)
    return _moment_map(fn, lambda g, t: (1 - decay) * (g**order) + decay * t, updates, moments)


def tree_update_infinity_moment(
    updates: PyTree, moments: PyTree, decay: float, eps: float
) -> PyTree:
    r"""The decayed running maximum of $|g|$: $u \leftarrow \max(|g| + \epsilon, \beta u)$.

    Args:
        updates: the updates $g$.
        moments: the moments $u$, with the structure of `updates`.
        decay: $\beta \in [0, 1]$.
        eps: $\epsilon$, added to $|g|$.

    Raises:
        ValueError: when `decay` is outside $[0, 1]$, or as `tree_add`.
    """
    fn = "tree_update_infinity_moment"
    _check_decay(fn, decay)
    return _moment_map(fn, lambda g, t: jnp.maximum(jnp.abs(g) + eps, decay * t), updates, moments)


def tree_update_moment_per_elem_norm(
    updates: PyTree, moments: PyTree, decay: float, order: int
) -> PyTree:
    r"""The EWA of $|g|^k$: $m \leftarrow (1 - \beta) |g|^k + \beta m$.

    For real updates $|g|^k$ is computed as $g^k$ (as in `tree_update_moment`); for complex
    ones as $(|g|^2)^{k/2}$, real.

    Args:
        updates: the updates $g$.
        moments: the moments $m$, with the structure of `updates`.
        decay: $\beta \in [0, 1]$.
        order: the power $k$.

    Raises:
        ValueError: when `decay` is outside $[0, 1]$, or as `tree_add`.
    """
    fn = "tree_update_moment_per_elem_norm"
    _check_decay(fn, decay)

    def power(g):
        if jnp.isrealobj(g):
            return g**order
        half = order / 2
        return _abs_sq(jnp.asarray(g)) ** (int(half) if float(half).is_integer() else half)

    return _moment_map(fn, lambda g, t: (1 - decay) * power(g) + decay * t, updates, moments)


def tree_bias_correction(moment: PyTree, decay: ArrayLike, count: ArrayLike) -> PyTree:
    r"""Bias correction of an EWA: $\hat m = m / (1 - \beta^t)$.

    $1 - \beta^t$ is taken in float32 (float64 for a float64 $\beta$), so it does not round
    to 0 for a bfloat16 moment, and then cast to each leaf's dtype for the division.

    Args:
        moment: the moments $m$.
        decay: $\beta \in [0, 1)$.
        count: the step count $t \ge 1$ (an int, usually traced).

    Raises:
        ValueError: when `decay` is a known number outside $[0, 1)$.
    """
    fn = "tree_bias_correction"
    _check_scalar(fn, "decay", decay)
    checks.check_range(fn, "decay", decay, 0.0, 1.0, high_open=True)
    _check_scalar(fn, "count", count)
    wide = _promote(jnp.result_type(decay), jnp.result_type(float))
    correction = 1 - jnp.asarray(decay, wide) ** jnp.asarray(count).astype(wide)
    return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)


# ----------------------------------------------------------------------------
# Looking values up in (and setting them into) optimiser states.


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """The path entry of a NamedTuple's field, naming the tuple: `ScaleByAdamState.mu`.

    `tree_get_all_with_path`, `tree_get` and `tree_set` write the fields of NamedTuples
    (optimiser states) so in their paths, where `jax.tree_util` writes a bare `.mu`, so that a
    `filtering(path, value)` function can tell fields of the same name apart by their state.

    Attributes:
        tuple_name: the NamedTuple's class name, e.g. `"ScaleByAdamState"`.
        name: the field's name, e.g. `"mu"`.
    """

    tuple_name: str
    name: str

    def __str__(self) -> str:
        return f"{self.tuple_name}.{self.name}"


KeyPath = tuple[Any, ...]
Filtering = Callable[[KeyPath, Any], bool]


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _has_any(node: Any, keys: Sequence[Any]) -> bool:
    """A NamedTuple with a field or class name in `keys`, or a dict with a key in `keys`."""
    if _is_named_tuple(node):
        return any(k in node._fields or k == type(node).__name__ for k in keys)
    if isinstance(node, dict):
        for k in keys:
            try:
                if k in node:
                    return True
            except TypeError:  # an unhashable key
                continue
    return False


def _entries(tree: PyTree, stop: Callable[[Any], bool]) -> list[tuple[KeyPath, Any]]:
    """`tree`'s leaves with paths, NamedTuple fields as `NamedTupleKey`, stopping at `stop`."""
    out: list[tuple[KeyPath, Any]] = []
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: stop(x) or _is_named_tuple(x)
    )
    for path, node in flat[0]:
        if stop(node) or not _is_named_tuple(node):
            out.append((tuple(path), node))
            continue
        for field in node._fields:
            key = NamedTupleKey(type(node).__name__, field)
            for sub, value in _entries(getattr(node, field), stop):
                out.append(((*path, key, *sub), value))
    return out


def _children(path: KeyPath, node: Any) -> list[tuple[KeyPath, Any]]:
    if _is_named_tuple(node):
        name = type(node).__name__
        return [((*path, NamedTupleKey(name, f)), getattr(node, f)) for f in node._fields]
    return [((*path, jax.tree_util.DictKey(k)), v) for k, v in node.items()]


def _direct(path: KeyPath, node: Any, key: Any) -> tuple[KeyPath, Any]:
    """The value `node` holds under `key` (or `node` itself when it is the NamedTuple `key`)."""
    if _is_named_tuple(node):
        if key == type(node).__name__:
            return path, node
        return (*path, NamedTupleKey(type(node).__name__, key)), getattr(node, key)
    return (*path, jax.tree_util.DictKey(key)), node[key]


def _find(tree: PyTree, key: Any) -> list[tuple[KeyPath, Any]]:
    """Every value under `key`, outermost first (optax's order): the nodes holding it, in
    leaf order, then what their children hold."""
    holds = functools.partial(_has_any, keys=(key,))
    holders = [(p, n) for p, n in _entries(tree, holds) if holds(n)]
    found = [_direct(p, n, key) for p, n in holders]
    for path, node in holders:
        for child_path, child in _children(path, node):
            found += [((*child_path, *sub), v) for sub, v in _find(child, key)]
    return found


def tree_get_all_with_path(
    tree: PyTree, key: Any, filtering: Filtering | None = None
) -> list[tuple[KeyPath, Any]]:
    r"""Every value held under `key` in `tree`, with its path.

    `key` is a dict key, a NamedTuple field name or a NamedTuple class name (which finds the
    tuple itself). Paths are tuples of `jax.tree_util` keys, with `NamedTupleKey` for
    NamedTuple fields; `jax.tree_util.keystr(path)` prints one, e.g.
    `InjectHyperparamsState.hyperparams['learning_rate']`. Values nested in a found value are
    found too.

    Args:
        tree: the tree to search, e.g. an optimiser state.
        key: the key, field or NamedTuple name to look for.
        filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.

    Returns:
        A list of `(path, value)`, outer matches before the ones nested in them.
    """
    if filtering is not None and not callable(filtering):
        raise TypeError(
            f"tree_get_all_with_path: filtering must be a function (path, value) -> bool or "
            f"None, got {type(filtering).__name__}"
        )
    found = _find(tree, key)
    if filtering is not None:
        found = [(p, v) for p, v in found if filtering(p, v)]
    return found


def tree_get(
    tree: PyTree, key: Any, default: Any = None, filtering: Filtering | None = None
) -> Any:
    r"""The one value held under `key` in `tree` (`default` when there is none).

    Finds what `tree_get_all_with_path(tree, key, filtering)` finds. With gradtx's
    `inject_hyperparams` a hyper-parameter is held once, scheduled or not, so
    `tree_get(state, "learning_rate")` is the rate the last step used.

    Args:
        tree: the tree to search, e.g. an optimiser state.
        key: the key, field or NamedTuple name to look for.
        default: returned when `key` is not found.
        filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.

    Raises:
        KeyError: when several values match; the message lists their paths.
    """
    if filtering is not None and not callable(filtering):
        raise TypeError(
            f"tree_get: filtering must be a function (path, value) -> bool or None, got "
            f"{type(filtering).__name__}"
        )
    found = tree_get_all_with_path(tree, key, filtering)
    if len(found) > 1:
        paths = ", ".join(jax.tree_util.keystr(p) for p, _ in found)
        raise KeyError(
            f"tree_get: found {len(found)} values for {key!r} (at {paths}); pass "
            "filtering=lambda path, value: ... to choose one, e.g. by the NamedTupleKey in "
            "its path"
        )
    return found[0][1] if found else default


def tree_set(tree: PyTree, filtering: Filtering | None = None, /, **kwargs: Any) -> PyTree:
    r"""A copy of `tree` with the values held under each keyword's name replaced.

    Every value that `tree_get_all_with_path(tree, name, filtering)` finds is replaced by
    `kwargs[name]` (a NamedTuple found by its class name is replaced whole); values nested in
    a replaced one go with it.

    Args:
        tree: the tree, e.g. an optimiser state.
        filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.
        **kwargs: `name=new_value` for each key, field or NamedTuple name to set.

    Raises:
        KeyError: when a name is not found (or no match passes `filtering`).
    """
    fn = "tree_set"
    if filtering is not None and not callable(filtering):
        raise TypeError(
            f"{fn}: filtering must be a function (path, value) -> bool or None, got "
            f"{type(filtering).__name__}"
        )
    for name in kwargs:
        if not tree_get_all_with_path(tree, name, filtering):
            where = " that passes the filtering" if filtering is not None else ""
            raise KeyError(f"{fn}: no value{where} is held under {name!r} in the tree")

    def accepts(path, value):
        return filtering is None or filtering(path, value)

    def rebuild(path: KeyPath, node: Any) -> Any:
        if _is_named_tuple(node):
            name = type(node).__name__
            if name in kwargs and accepts(path, node):
                return kwargs[name]
            fields = {}
            for child_path, child in _children(path, node):
                field = child_path[-1].name
                fields[field] = replace_or_descend(field, child_path, child)
            return node._replace(**fields)
        if type(node) is dict:
            return {
                k: replace_or_descend(k, child_path, child)
                for (child_path, child), k in zip(_children(path, node), node)
            }
        children, treedef = _flatten_with_path(node, lambda x: x is not node)
        if treedef.num_nodes == 1:  # a leaf
            return node
        new = []
        for sub, child in children:
            entry = sub[0]
            dict_key = entry.key if isinstance(entry, jax.tree_util.DictKey) else None
            new.append(replace_or_descend(dict_key, (*path, *sub), child, dict_key is not None))
        return treedef.unflatten(new)

    def replace_or_descend(name: Any, path: KeyPath, child: Any, keyed: bool = True) -> Any:
        try:
            hit = keyed and name in kwargs
        except TypeError:
            hit = False
        if hit and accepts(path, child):
            return kwargs[name]
        return rebuild(path, child)

    return rebuild((), tree)


# ----------------------------------------------------------------------------
# Mapping over the copies of the params inside an optimiser state.


@jax.tree_util.register_pytree_node_class
class _ParamsPlaceholder:
    """Stands in for the params when `tree_map_params` calls `init` (optax not installed)."""

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux, children
        return cls()


_OPTAX_STATE_UTILS = "optax.tree_utils._state_utils"


def _placeholder_types() -> tuple[type, ...]:
    optax_utils = sys.modules.get(_OPTAX_STATE_UTILS)  # its placeholder exists only if imported
    theirs = getattr(optax_utils, "_ParamsPlaceholder", None)
    return (_ParamsPlaceholder,) if theirs is None else (_ParamsPlaceholder, theirs)


def is_params_placeholder(x: Any) -> bool:
    """True for the stand-in for the params that `tree_map_params` passes to `init`.

    Recognises gradtx's and optax's (`optax.tree_map_params` calls `init` with optax's), so a
    combinator whose `init` reshapes the params (e.g. by a mask) can pass it through whole,
    as optax's `masked` does.

    Args:
        x: any value, e.g. the `params` given to an `init`.
    """
    return isinstance(x, _placeholder_types())


def _new_placeholder() -> Any:
    """optax's placeholder when optax is installed (so optax's `masked` recognises it too)."""
    try:
        optax_utils = importlib.import_module(_OPTAX_STATE_UTILS)
    except ImportError:
        return _ParamsPlaceholder()
    theirs = getattr(optax_utils, "_ParamsPlaceholder", None)
    return _ParamsPlaceholder() if theirs is None else theirs()


def tree_map_params(
    initable: Callable[[Params], OptState] | Any,
    f: Callable[..., Any],
    state: OptState,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[Params], bool] | None = None,
) -> OptState:
    r"""Maps `f` over every copy of the params inside an optimiser state.

    `initable`'s `init` is called with a placeholder for the params; wherever the state it
    builds holds the placeholder, the matching part of `state` is a tree shaped like the
    params (e.g. Adam's `mu` and `nu`), and is replaced by `jax.tree.map(f, part, *rest)`.
    Every other leaf $v$ (counts, injected hyper-parameters) becomes
    `transform_non_params(v)`, or stays. Typical use: sharding specs for a state from the
    params' specs.

    Args:
        initable: the transformation (an object with `init`) or an `init` function.
        f: applied leaf by leaf to each copy of the params, with the leaves of `rest`.
        state: the state to map over, made by `initable`'s `init`.
        *rest: trees shaped like the params, passed to `f` after the state's leaf.
        transform_non_params: applied to every leaf of `state` that is not part of a copy of
            the params; None leaves them unchanged.
        is_leaf: passed to `jax.tree.map` over each copy of the params (e.g. to stop at
            `MaskedNode`s).

    Raises:
        TypeError: when `initable` has no `init` and is not callable, or `f` is not callable.
        ValueError: when `state` does not have the structure `initable`'s `init` gives.
    """
    fn = "tree_map_params"
    init = getattr(initable, "init", None)
    if not callable(init):
        if not callable(initable):
            raise TypeError(
                f"{fn}: initable must be a transformation (with init) or an init function, "
                f"got {type(initable).__name__}"
            )
        init = initable
    if not callable(f):
        raise TypeError(f"{fn}: f must be callable, got {type(f).__name__}")
    if transform_non_params is not None and not callable(transform_non_params):
        raise TypeError(
            f"{fn}: transform_non_params must be callable or None, got "
            f"{type(transform_non_params).__name__}"
        )
    shaped = init(_new_placeholder())
    marked, treedef = _flatten_with_path(shaped, is_params_placeholder)
    markers = [m for _, m in marked]
    try:
        values = treedef.flatten_up_to(state)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{fn}: state does not have the tree structure that initable's init gives; pass "
            f"the state made by the same transformation ({err})"
        ) from None

    def visit(marker, value):
        if is_params_placeholder(marker):
            return jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        if transform_non_params is not None:
            return transform_non_params(value)
        return value

    return treedef.unflatten([visit(m, v) for m, v in zip(markers, values)])
