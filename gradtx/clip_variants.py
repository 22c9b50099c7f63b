r"""Clipping by block and by unit, and per-example clipping for differential privacy.

* `clip_by_block_rms(threshold)`: each leaf (a block) scaled down to an RMS of at most $c$.
* `adaptive_grad_clip(clipping, eps, axis)`: each unit of a leaf (a column of a dense kernel,
  an output channel of a convolution) scaled down to at most `clipping` times its
  parameter's norm (AGC), built from `unitwise_norm` and `unitwise_clip`.
* `per_example_global_norm_clip`, `per_example_layer_norm_clip`: functions of stacked
  per-example gradients that clip each example and return the sum (DP-SGD).

Norms are of $|x|$, so complex leaves are clipped by their modulus and keep their phase.
Every norm is taken in float32 or wider; results keep the dtype of the leaf they scale.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, PyTree, factory


def _out_dtype(x: Array, computed: Any) -> Any:
    """`x`'s dtype when it is floating or complex, else the dtype the math ran in."""
    return x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else computed


@factory
def clip_by_block_rms(threshold: float) -> GradientTransformation:
    r"""Scales each leaf (block) down so that its root mean square is at most $c$.

    $$u = \frac{g}{\max\left(1, \operatorname{rms}(g) / c\right)}, \quad
      \operatorname{rms}(g) = \sqrt{\tfrac{1}{n} \textstyle\sum_i |g_i|^2}$$

    over the $n$ coordinates of each leaf. Emits $u$, in each leaf's dtype; stores nothing.

    Args:
        threshold: $c > 0$, the largest RMS a leaf's update keeps.

    Returns:
        A stateless `GradientTransformation` (state `EmptyState()`).

    Raises:
        ValueError: for a `threshold` that is not positive (zero would divide by zero).
    """
    checks.check_positive("clip_by_block_rms", "threshold", threshold)

    def leaf(g):
        g = jnp.asarray(g)
        dtype = numerics.compute_dtype(g)
        x = numerics.cast(g, dtype)
        rms = jnp.sqrt(jnp.mean(numerics.abs_sq(x)))
        denominator = jnp.maximum(1.0, rms / numerics.as_compute(threshold, rms.dtype))
        return numerics.cast(x / denominator.astype(dtype), _out_dtype(g, dtype))

    return base.stateless_pair(lambda updates, params: jax.tree.map(leaf, updates))


def _check_axis(fn: str, axis: Any) -> None:
    """`axis` is None, an int or a tuple (or list) of ints."""
    if axis is None:
        return
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    for a in items:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
            raise TypeError(f"{fn}: axis must be None, an int or a tuple of ints, got {axis!r}")


def _unit_axes(fn: str, x: Array, axis: Any) -> tuple[int, ...] | None:
    """The axes `unitwise_norm` reduces over for `x` (None: all of them)."""
    if axis is not None:
        _check_axis(fn, axis)
        items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
        for a in items:
            if not -x.ndim <= int(a) < x.ndim:
                raise ValueError(
                    f"{fn}: axis {a} is out of range for a leaf of shape {x.shape}; pass "
                    "axes that every leaf has, or None for the default units"
                )
        return tuple(int(a) for a in items)
    if sum(d != 1 for d in x.shape) <= 1:  # scalars and vectors, once squeezed: one unit
        return None
    if x.ndim in (2, 3):  # dense kernels (in, out) and multi-head ones
        return (0,)
    if x.ndim == 4:  # convolution kernels HWIO
        return (0, 1, 2)
    if x.ndim == 5:  # 3-D convolution kernels DHWIO
        return (0, 1, 2, 3)
    raise ValueError(
        f"{fn}: the default units are defined for leaves of rank 1 to 5, got a leaf of "
        f"shape {x.shape}; pass axis= to name the axes each unit spans"
    )


def _unit_norm(fn: str, x: ArrayLike, axis: Any) -> Array:
    """`unitwise_norm` of `x` in float32 or wider (real), broadcast to `x`'s shape."""
    x = jnp.asarray(x)
    axes = _unit_axes(fn, x, axis)
    squares = numerics.abs_sq(numerics.cast(x, numerics.compute_dtype(x)))
    norm = jnp.sqrt(jnp.sum(squares, axis=axes, keepdims=True))
    return jnp.broadcast_to(norm, x.shape)


def unitwise_norm(x: ArrayLike, axis: int | tuple[int, ...] | None = None) -> Array:
    r"""The L2 norm of each unit of `x`, broadcast back to `x`'s shape.

    $$\lVert x \rVert_{\text{unit}} = \sqrt{\textstyle\sum_{i \in \text{unit}} |x_i|^2}$$

    A unit is a slice of `x` across the axes `axis`. With `axis=None` the axes follow the
    usual layer layouts, as in optax: a scalar or a vector (also once squeezed) is one
    unit; rank 2 and 3 (dense and multi-head dense kernels) reduce axis 0; rank 4 (HWIO
    convolutions) axes (0, 1, 2); rank 5 (DHWIO) axes (0, 1, 2, 3).

    Args:
        x: an array (real or complex).
        axis: the axis or axes each unit spans; None for the default by rank.

    Returns:
        An array of `x`'s shape holding each coordinate's unit norm, in `x`'s real dtype
        (float32 for integer `x`); computed in float32 or wider.

    Raises:
        ValueError: for a rank outside 1 to 5 with `axis=None`, or an axis out of range.
        TypeError: for an `axis` that is not None, an int or a tuple of ints.
    """
    x = jnp.asarray(x)
    norm = _unit_norm("unitwise_norm", x, axis)
    dtype = numerics.real_dtype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else norm.dtype
    return norm.astype(dtype)


def unitwise_clip(
    g_norm: ArrayLike, max_norm: ArrayLike, grad: ArrayLike, div_eps: float = 1e-6
) -> Array:
    r"""Scales `grad` down wherever its unit norm reaches `max_norm`.

    $$u = \begin{cases} g & \lVert g \rVert < m \\
        g \, m / \max(\lVert g \rVert, \delta) & \text{otherwise} \end{cases}$$

    coordinate by coordinate, with $\lVert g \rVert$ = `g_norm` and $m$ = `max_norm`
    (e.g. from `unitwise_norm`, broadcast to `grad`'s shape). Where $m = 0$ the result is 0.

    Args:
        g_norm: $\lVert g \rVert$, real, of `grad`'s shape.
        max_norm: $m \geq 0$, real, of `grad`'s shape.
        grad: $g$, real or complex.
        div_eps: $\delta \geq 0$, the floor of the divisor.

    Returns:
        The clipped gradient, in `grad`'s dtype (float32 for an integer `grad`).

    Raises:
        ValueError: when the three shapes differ, or for a negative `div_eps`.
        TypeError: for complex `g_norm` or `max_norm` (norms are real).
    """
    fn = "unitwise_clip"
    checks.check_non_negative(fn, "div_eps", div_eps)
    g_norm, max_norm, grad = jnp.asarray(g_norm), jnp.asarray(max_norm), jnp.asarray(grad)
    if not jnp.shape(g_norm) == jnp.shape(max_norm) == jnp.shape(grad):
        raise ValueError(
            f"{fn}: g_norm, max_norm and grad must have one shape, got {jnp.shape(g_norm)}, "
            f"{jnp.shape(max_norm)} and {jnp.shape(grad)}; unitwise_norm returns norms "
            "broadcast to the leaf's shape"
        )
    for name, value in (("g_norm", g_norm), ("max_norm", max_norm)):
        if numerics.is_complex(value):
            raise TypeError(f"{fn}: {name} must be real (a norm), got {value.dtype}")
    dtype = numerics.compute_dtype(g_norm, max_norm, grad)
    real = numerics.real_dtype(dtype)
    norm, limit = numerics.cast(g_norm, real), numerics.cast(max_norm, real)
    eps = numerics.as_compute(div_eps, real)
    factor = jnp.where(limit == 0, 0, limit / jnp.maximum(norm, eps))
    g = numerics.cast(grad, dtype)
    clipped = jnp.where(norm < limit, g, g * factor.astype(dtype))
    return numerics.cast(clipped, _out_dtype(grad, dtype))


@factory
def adaptive_grad_clip(
    clipping: float, eps: float = 1e-3, axis: int | tuple[int, ...] | None = None
) -> GradientTransformation:
    r"""Adaptive gradient clipping (AGC): each unit's update is at most $\lambda$ times its
    parameter's norm.

    $$u = \begin{cases} g & \lVert g \rVert < \lambda \max(\lVert \theta \rVert, \epsilon) \\
        g \, \dfrac{\lambda \max(\lVert \theta \rVert, \epsilon)}{\lVert g \rVert}
        & \text{otherwise} \end{cases}$$

    with unit norms $\lVert \cdot \rVert$ from `unitwise_norm(x, axis)` and the clip from
    `unitwise_clip`. $\epsilon$ keeps zero-initialised parameters (biases) trainable.
    Emits $u$, in each leaf's dtype; stores nothing. `None` updates pass through.

    Args:
        clipping: $\lambda \geq 0$, the largest ratio of update norm to parameter norm.
        eps: $\epsilon \geq 0$, the smallest parameter norm the ratio is taken against.
        axis: the axis or axes each unit spans, for every leaf; None for the default by
            rank (see `unitwise_norm`).

    Returns:
        A stateless `GradientTransformation` (state `EmptyState()`).

    Raises:
        ValueError: for a negative `clipping` or `eps`; in `update`, for a leaf of rank
            above 5 with `axis=None`.
        TypeError: for a bad `axis`; in `update`, when `params` is not passed.

    References:
        Brock et al., High-Performance Large-Scale Image Recognition Without
        Normalization, 2021.
    """
    fn = "adaptive_grad_clip"
    checks.check_non_negative(fn, "clipping", clipping)
    checks.check_non_negative(fn, "eps", eps)
    _check_axis(fn, axis)

    def leaf(g, p):
        if g is None:
            return None
        g_norm = _unit_norm(fn, g, axis)
        p_norm = _unit_norm(fn, p, axis)
        floor = numerics.as_compute(eps, p_norm.dtype)
        max_norm = numerics.as_compute(clipping, p_norm.dtype) * jnp.maximum(p_norm, floor)
        return unitwise_clip(g_norm, max_norm, g)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        updates = numerics.as_arrays(updates)
        params = numerics.prune_like(updates, params)
        checks.check_tree_match(fn, updates, params, "updates", "params")
        return jax.tree.map(leaf, updates, params, is_leaf=lambda x: x is None), state

    return GradientTransformation(base.init_empty_state, update)


# ----------------------------------------------------------------------------
# Per-example clipping (functions of stacked per-example gradients, not transformations).


def _check_batch(fn: str, grads: PyTree) -> list[Array]:
    """The leaves of `grads` as arrays, all with one batch size on axis 0."""
    leaves = [jnp.asarray(g) for g in jax.tree.leaves(grads)]
    shapes = [g.shape for g in leaves]
    if not leaves or any(g.ndim < 1 or g.shape[0] != leaves[0].shape[0] for g in leaves):
        raise ValueError(
            f"{fn}: grads must be per-example gradients, every leaf with the same batch "
            f"size on axis 0, got shapes {shapes}; stack them, e.g. with "
            "jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)"
        )
    return leaves


def _clipped_sum(leaves: Sequence[Array], clip_norm: Any) -> tuple[list[Array], Array]:
    r"""$\sum_b g_b \min(1, C / \lVert g_b \rVert)$ per leaf (a zero norm keeps factor 1),
    and the number of examples scaled down."""
    dtype = numerics.compute_dtype(*leaves)
    real = numerics.real_dtype(dtype)
    squares = [
        jnp.sum(numerics.abs_sq(numerics.cast(g, dtype)), axis=tuple(range(1, g.ndim)))
        for g in leaves
    ]
    norms = jnp.sqrt(sum(squares[1:], squares[0]))
    ratio = numerics.as_compute(clip_norm, real) / norms
    multipliers = jnp.nan_to_num(jnp.minimum(ratio, 1.0), nan=1.0)
    num_clipped = jnp.sum(multipliers < 1.0)

    def total(g):
        computed = numerics.compute_dtype(g)
        summed = jnp.tensordot(multipliers.astype(computed), numerics.cast(g, computed), axes=1)
        return numerics.cast(summed, _out_dtype(g, computed))

    return [total(g) for g in leaves], num_clipped


def per_example_global_norm_clip(grads: PyTree, l2_norm_clip: float) -> tuple[PyTree, Array]:
    r"""Clips each example's gradient to a global norm of at most $C$, and sums them.

    $$\sum_b g_b \min\left(1, \frac{C}{\lVert g_b \rVert}\right), \quad
      \lVert g_b \rVert = \sqrt{\textstyle\sum_{\text{leaves}} \sum_i |g_{b,i}|^2}$$

    over the examples $b$ on axis 0 of every leaf (an example with a zero norm counts
    whole). The clipping step of DP-SGD (Abadi et al., 2016).

    Args:
        grads: per-example gradients: every leaf has the batch on axis 0.
        l2_norm_clip: $C \geq 0$ (`inf` clips nothing).

    Returns:
        `(summed, num_clipped)`: the tree of clipped sums (each leaf without its batch axis,
        in its dtype, float32 for integer leaves) and the number of examples scaled down.

    Raises:
        ValueError: when `grads` has no leaves or the leaves do not share a batch axis, or
            for a negative `l2_norm_clip`.
    """
    fn = "per_example_global_norm_clip"
    checks.check_non_negative(fn, "l2_norm_clip", l2_norm_clip)
    leaves = _check_batch(fn, grads)
    summed, num_clipped = _clipped_sum(leaves, l2_norm_clip)
    return jax.tree.unflatten(jax.tree.structure(grads), summed), num_clipped


def per_example_layer_norm_clip(
    grads: PyTree, global_l2_norm_clip: float, uniform: bool = True
) -> tuple[PyTree, PyTree]:
    r"""`per_example_global_norm_clip` leaf by leaf, with per-leaf (per-layer) bounds.

    $$C_k = \frac{C}{\sqrt{K}} \;\; \text{(uniform)}, \qquad
      C_k = C \sqrt{D_k / D} \;\; \text{(otherwise)}$$

    for the $K$ leaves, $D_k$ the size of one example of leaf $k$ and $D = \sum_k D_k$;
    so that $\sum_k C_k^2 = C^2$ (McMahan et al., 2017).

    Args:
        grads: per-example gradients: every leaf has the batch on axis 0.
        global_l2_norm_clip: $C \geq 0$.
        uniform: the same bound for every leaf; False to share $C^2$ by leaf size.

    Returns:
        `(summed, num_clipped)`: two trees like `grads`, the clipped sums and, per leaf,
        the number of examples scaled down.

    Raises:
        ValueError: when `grads` has no leaves or the leaves do not share a batch axis, or
            for a negative `global_l2_norm_clip`.
        TypeError: for a `uniform` that is not a bool.
    """
    fn = "per_example_layer_norm_clip"
    checks.check_non_negative(fn, "global_l2_norm_clip", global_l2_norm_clip)
    checks.check_bool(fn, "uniform", uniform)
    leaves = _check_batch(fn, grads)
    if uniform:
        bounds = [global_l2_norm_clip * (1.0 / len(leaves)) ** 0.5 for _ in leaves]
    else:
        total = sum(g[0].size for g in leaves)
        bounds = [
            global_l2_norm_clip * ((g[0].size / total) if total else 1.0) ** 0.5 for g in leaves
        ]
    pairs = [_clipped_sum([g], c) for g, c in zip(leaves, bounds)]
    treedef = jax.tree.structure(grads)
    summed = jax.tree.unflatten(treedef, [s[0] for s, _ in pairs])
    counts = jax.tree.unflatten(treedef, [n for _, n in pairs])
    return summed, counts
