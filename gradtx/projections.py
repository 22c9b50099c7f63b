r"""Euclidean projections onto convex sets, for projected gradient descent.

Each function returns the point of the set $C$ nearest to a tree $x$,
$$P_C(x) = \operatorname*{argmin}_{p \in C} \lVert x - p \rVert_2^2,$$
taking the whole tree as one vector. A step of projected gradient descent is
`params = projection(apply_updates(params, updates), ...)`.

The names, signatures and defaults of `optax.projections` (optax 0.2.8). Differences, on
purpose: bounds and radii that are known numbers are checked (a negative radius or a lower
bound above the upper one raises, naming the function and the argument), and each leaf of the
result keeps its dtype (the scalar factors are taken in float32 or wider), so the functions
work under strict dtype promotion.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, flatten_util
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx import tree_utils as tu
from gradtx.typing import PyTree

__all__ = [
    "projection_box",
    "projection_halfspace",
    "projection_hypercube",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l1_sphere",
    "projection_l2_ball",
    "projection_l2_sphere",
    "projection_linf_ball",
    "projection_non_negative",
    "projection_simplex",
    "projection_vector",
]


def _check_radius(fn: str, scale: ArrayLike, *, positive: bool = False) -> None:
    """A known scalar radius is a real number $\\geq 0$ ($> 0$ with `positive`)."""
    if checks.is_concrete(scale) and jnp.ndim(scale) == 0:
        if positive:
            checks.check_positive(fn, "scale", scale)
        else:
            checks.check_non_negative(fn, "scale", scale)


def _wide(*values: ArrayLike) -> np.dtype:
    """The dtype scalar factors are taken in: the values' common dtype, float32 or wider
    (complex stays complex)."""
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.promote_types(jnp.result_type(*values), jnp.float32)
    return jnp.dtype(dtype)


def _scaled(factor: Array, tree: PyTree) -> PyTree:
    """`factor * x` leaf by leaf, in float32 or wider, each leaf back in its dtype."""

    def leaf(x):
        x = jnp.asarray(x)
        dtype = _wide(x, factor)
        return (factor.astype(dtype) * x.astype(dtype)).astype(x.dtype)

    return jax.tree.map(leaf, tree)


def projection_non_negative(tree: PyTree) -> PyTree:
    r"""Projection onto the non-negative orthant: $p = \max(x, 0)$.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad p \ge 0$$

    Args:
        tree: the tree $x$ to project.
    """
    return jax.tree.map(jax.nn.relu, tree)


def projection_box(tree: PyTree, lower: PyTree, upper: PyTree) -> PyTree:
    r"""Projection onto a box: $p = \min(\max(x, l), u)$, element-wise.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad l \le p \le u$$

    Args:
        tree: the tree $x$ to project.
        lower: the lower bound $l$: a scalar (for every leaf; optax 0.2.8 takes one only
            for a single-array tree), or a tree with the structure of `tree`.
        upper: the upper bound $u$: a scalar, or a tree with the structure of `tree`.

    Raises:
        ValueError: when known bounds have $l > u$ somewhere (the box is empty), or a bound's
            tree does not have the structure of `tree`.
    """
    fn = "projection_box"
    with_path, treedef = numerics.flatten_with_path(tree)
    lows = _bound_leaves(fn, "lower", lower, treedef)
    highs = _bound_leaves(fn, "upper", upper, treedef)
    out = []
    for (path, x), lo, hi in zip(with_path, lows, highs):
        if _known(lo) and _known(hi) and np.any(np.asarray(lo) > np.asarray(hi)):
            raise ValueError(
                f"{fn}: lower must be <= upper everywhere, got lower > upper at "
                f"tree{jax.tree_util.keystr(path)} (the box is empty)"
            )
        out.append(jnp.clip(x, lo, hi))
    return treedef.unflatten(out)


def _known(bound: Any) -> bool:
    return bound is not None and checks.is_concrete(bound)


def _bound_leaves(fn: str, name: str, bound: PyTree, treedef: Any) -> list[Any]:
    """A bound per leaf: a scalar (a leaf, or None) is repeated, a tree is matched leaf by leaf."""
    bound_def = numerics.flatten(bound)[1]
    if bound is None or bound_def.num_nodes == 1:
        return [bound] * treedef.num_leaves
    try:
        return treedef.flatten_up_to(bound)
    except (ValueError, TypeError):
        raise ValueError(
            f"{fn}: {name} must be a scalar or a tree with the structure of tree; tree is "
            f"{treedef}, {name} is {bound_def}"
        ) from None


def projection_hypercube(tree: PyTree, scale: PyTree = 1) -> PyTree:
    r"""Projection onto the hypercube $[0, s]^n$: `projection_box(tree, 0, scale)`.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad 0 \le p \le s$$

    Args:
        tree: the tree $x$ to project.
        scale: the side $s \ge 0$, a scalar or a tree (default: the unit hypercube).

    Raises:
        ValueError: when `scale` is a known negative number.
    """
    _check_radius("projection_hypercube", scale)
    return projection_box(tree, lower=0, upper=scale)


@jax.custom_jvp
def _unit_simplex(values: Array) -> Array:
    r"""The projection of a vector onto $\{p \ge 0, \sum p = 1\}$ (sort and threshold).

    With $u$ the values sorted in decreasing order, $\rho$ the number of $j$ with
    $u_j + (1 - \sum_{i \le j} u_i) / j > 0$ and $\tau = (\sum_{i \le \rho} u_i - 1) / \rho$:
    $p = \max(x - \tau, 0)$.
    """
    n = values.shape[0]
    u = jnp.sort(values)[::-1]
    cumsum = jnp.cumsum(u)
    ind = jnp.arange(1, n + 1).astype(values.dtype)
    rho = jnp.count_nonzero(1 / ind + (u - cumsum / ind) > 0)
    tau = (cumsum[rho - 1] - 1) / rho.astype(values.dtype)
    return jax.nn.relu(values - tau)


@_unit_simplex.defjvp
def _unit_simplex_jvp(primals, tangents):
    (values,), (dot,) = primals, tangents
    out = _unit_simplex(values)
    support = (out > 0).astype(values.dtype)
    size = jnp.sum(support)
    return out, support * dot - (jnp.dot(support, dot) / size) * support


def projection_simplex(tree: PyTree, scale: ArrayLike = 1) -> PyTree:
    r"""Projection onto the simplex of radius $s$, the whole tree as one vector.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad
    p \ge 0, \ \textstyle\sum_i p_i = s$$

    The result is $p = \max(x - \tau, 0)$ for the threshold $\tau$ that makes it sum to $s$;
    its derivative is defined on the support of $p$.

    Args:
        tree: the tree $x$ to project.
        scale: the sum $s > 0$ (default: the probability simplex).

    Raises:
        ValueError: when `scale` is a known number $\le 0$.
    """
    _check_radius("projection_simplex", scale, positive=True)
    with jax.numpy_dtype_promotion("standard"):  # one vector: leaves in their common dtype
        values, unravel = flatten_util.ravel_pytree(tree)
    dtype = _wide(values, scale)
    s = jnp.asarray(scale).astype(dtype)
    return unravel((s * _unit_simplex(values.astype(dtype) / s)).astype(values.dtype))


def projection_l1_sphere(tree: PyTree, scale: ArrayLike = 1) -> PyTree:
    r"""Projection onto the $\ell_1$ sphere: $p = \operatorname{sign}(x) \odot P_\Delta(|x|)$.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad
    \lVert p \rVert_1 = s$$

    where $P_\Delta$ projects onto the simplex of radius $s$ (`projection_simplex`).

    Args:
        tree: the tree $x$ to project.
        scale: the radius $s > 0$.

    Raises:
        ValueError: when `scale` is a known number $\le 0$.
    """
    _check_radius("projection_l1_sphere", scale, positive=True)
    magnitude = projection_simplex(jax.tree.map(jnp.abs, tree), scale)
    return jax.tree.map(lambda x, m: jnp.sign(x) * m, tree, magnitude)


def projection_l1_ball(tree: PyTree, scale: ArrayLike = 1) -> PyTree:
    r"""Projection onto the $\ell_1$ ball: $x$ inside it, else `projection_l1_sphere`.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad
    \lVert p \rVert_1 \le s$$

    Args:
        tree: the tree $x$ to project.
        scale: the radius $s > 0$.

    Raises:
        ValueError: when `scale` is a known number $\le 0$.
    """
    _check_radius("projection_l1_ball", scale, positive=True)
    inside = tu.tree_norm(tree, ord=1) <= scale
    return jax.lax.cond(inside, lambda t: t, lambda t: projection_l1_sphere(t, scale), tree)


def projection_l2_sphere(tree: PyTree, scale: ArrayLike = 1) -> PyTree:
    r"""Projection onto the $\ell_2$ sphere: $p = s \, x / \lVert x \rVert_2$.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad
    \lVert p \rVert_2 = s$$

    Every point of the sphere is nearest to $x = 0$; there the result is NaN, as in optax.

    Args:
        tree: the tree $x$ to project.
        scale: the radius $s \ge 0$.

    Raises:
        ValueError: when `scale` is a known negative number.
    """
    _check_radius("projection_l2_sphere", scale)
    norm = tu.tree_norm(tree)
    dtype = _wide(norm, scale)
    return _scaled(jnp.asarray(scale).astype(dtype) / norm.astype(dtype), tree)


def projection_l2_ball(tree: PyTree, scale: ArrayLike = 1) -> PyTree:
    r"""Projection onto the $\ell_2$ ball: $p = x \cdot s / \max(\lVert x \rVert_2, s)$.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad
    \lVert p \rVert_2 \le s$$

    Args:
        tree: the tree $x$ to project.
        scale: the radius $s \ge 0$.

    Raises:
        ValueError: when `scale` is a known negative number.
    """
    _check_radius("projection_l2_ball", scale)
    squared = tu.tree_norm(tree, squared=True)
    dtype = _wide(squared, scale)
    s, squared = jnp.asarray(scale).astype(dtype), squared.astype(dtype)
    return _scaled(s / jnp.sqrt(jnp.maximum(squared, s**2)), tree)


def projection_linf_ball(tree: PyTree, scale: ArrayLike = 1) -> PyTree:
    r"""Projection onto the $\ell_\infty$ ball: $p = \min(\max(x, -s), s)$, element-wise.

    $$\operatorname*{argmin}_p \lVert x - p \rVert_2^2 \quad \text{s.t.} \quad
    \lVert p \rVert_\infty \le s$$

    Args:
        tree: the tree $x$ to project.
        scale: the radius $s \ge 0$.

    Raises:
        ValueError: when `scale` is a known negative number.
    """
    _check_radius("projection_linf_ball", scale)
    radius: Any = scale
    lower = tu.tree_full_like(tree, -radius)
    upper = tu.tree_full_like(tree, radius)
    return projection_box(tree, lower=lower, upper=upper)


def _ratio(numerator: ArrayLike, a: PyTree) -> Array:
    """`numerator / <a, a>` in the wide dtype of both."""
    denominator = tu.tree_vdot(a, a)
    dtype = _wide(numerator, denominator)
    return jnp.asarray(numerator).astype(dtype) / jnp.asarray(denominator).astype(dtype)


def _offset(b: ArrayLike, x: PyTree, a: PyTree) -> Array:
    """$b - \\langle x, a \\rangle$ in the wide dtype of both."""
    dot = tu.tree_vdot(x, a)
    dtype = _wide(b, dot)
    return jnp.asarray(b).astype(dtype) - jnp.asarray(dot).astype(dtype)


def projection_vector(x: PyTree, a: PyTree) -> PyTree:
    r"""Projection onto the line spanned by $a$:
    $p = \frac{\langle x, a \rangle}{\langle a, a \rangle} a$ (NaN for $a = 0$, as in optax).

    Args:
        x: the tree to project.
        a: the direction, a tree with the structure of `x`.
    """
    return _scaled(_ratio(tu.tree_vdot(x, a), a), a)


def _add_scaled(x: PyTree, scalar: Array, a: PyTree) -> PyTree:
    """$x + c\\,a$ leaf by leaf, in float32 or wider, each leaf back in `x`'s dtype."""

    def leaf(xv, av):
        xv, av = jnp.asarray(xv), jnp.asarray(av)
        dtype = _wide(xv, av, scalar)
        return (xv.astype(dtype) + scalar.astype(dtype) * av.astype(dtype)).astype(xv.dtype)

    return jax.tree.map(leaf, x, a)


def projection_hyperplane(x: PyTree, a: PyTree, b: ArrayLike) -> PyTree:
    r"""Projection onto the hyperplane $\langle a, p \rangle = b$:
    $p = x + \frac{b - \langle x, a \rangle}{\langle a, a \rangle} a$.

    Args:
        x: the tree to project.
        a: the hyperplane's normal, a tree with the structure of `x` (not zero).
        b: the offset $b$, a scalar.
    """
    return _add_scaled(x, _ratio(_offset(b, x, a), a), a)


def projection_halfspace(x: PyTree, a: PyTree, b: ArrayLike) -> PyTree:
    r"""Projection onto the halfspace $\langle a, p \rangle \le b$:
    $p = x + \min\bigl(\frac{b - \langle x, a \rangle}{\langle a, a \rangle}, 0\bigr) a$.

    Args:
        x: the tree to project.
        a: the halfspace's normal, a tree with the structure of `x` (not zero).
        b: the offset $b$, a scalar.
    """
    return _add_scaled(x, jnp.minimum(_ratio(_offset(b, x, a), a), 0), a)
