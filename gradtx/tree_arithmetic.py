r"""Element-wise arithmetic on pytrees: $z = x + y$, $x - y$, $x \odot y$, $x / y$, $s\,x$, ...

Leaf-by-leaf functions of `optax.tree_utils` (optax 0.2.8): `tree_add`, `tree_sub`,
`tree_mul`, `tree_div`, `tree_scale`, `tree_add_scale`, `tree_conj`, `tree_real`, `tree_clip`,
`tree_where`. All of them are in `gradtx.tree_utils`, whose docstring says where gradtx differs
from optax.

It also holds what the other tree modules share to read several trees side by side and check
them (`leaf_rows`, `check_scalar`, `keystr`).
"""

from __future__ import annotations

import functools
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.typing import PyTree

__all__ = [
    "tree_add",
    "tree_add_scale",
    "tree_clip",
    "tree_conj",
    "tree_div",
    "tree_mul",
    "tree_real",
    "tree_scale",
    "tree_sub",
    "tree_where",
]


# ----------------------------------------------------------------------------
# Reading trees side by side, with the checks every tree utility shares.


def keystr(path: Sequence[Any]) -> str:
    """A key path as `jax.tree_util.keystr` prints it, e.g. `['dense']['bias']`."""
    return jax.tree_util.keystr(tuple(path))


def _structure_error(fn: str, names: Sequence[str], trees: Sequence[PyTree]) -> ValueError:
    """The error for trees of different structures, naming the first path where they part."""
    a_paths = [keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(trees[0])[0]]
    b_paths = [keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(trees[1])[0]]
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


def leaf_rows(
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
    with_path, treedef = numerics.flatten_with_path(trees[0], is_leaf)
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
                key = keystr(path)
                raise ValueError(
                    f"{fn}: leaves must have the same shape (or be scalars); "
                    f"{known[0][0]}{key} has shape {known[0][1]}, {name}{key} has {shape}"
                )
    return rows, treedef, paths


def check_scalar(fn: str, name: str, value: Any) -> None:
    """`value` is a scalar (a number or a 0-d array, traced or not)."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{fn}: {name} must be a scalar number, got {value!r}")
    shape = jnp.shape(value)
    if shape != ():
        raise ValueError(
            f"{fn}: {name} must be a scalar, got an array of shape {shape}; use tree_mul for "
            "a leaf-by-leaf product"
        )


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
    rows, treedef, _ = leaf_rows("tree_add", names, trees)
    return treedef.unflatten([functools.reduce(operator.add, row) for row in rows])


def _binary(fn: str, op: Callable[[Any, Any], Any], tree_x: PyTree, tree_y: PyTree) -> PyTree:
    rows, treedef, _ = leaf_rows(fn, ("tree_x", "tree_y"), (tree_x, tree_y))
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
    check_scalar("tree_scale", "scalar", scalar)
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
    check_scalar(fn, "scalar", scalar)
    s = jnp.asarray(scalar)
    rows, treedef, _ = leaf_rows(fn, ("tree_x", "tree_y"), (tree_x, tree_y), lambda v: v is None)
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
    check_scalar(fn, "condition", condition)
    rows, treedef, _ = leaf_rows(fn, ("tree_x", "tree_y"), (tree_x, tree_y))
    return treedef.unflatten([jnp.where(condition, x, y) for x, y in rows])
