r"""Numerically safe norms and counters: optax's `safe_norm`, `safe_root_mean_squares`,
`safe_increment` (optax 0.2.8's names, signatures and results).

`max(norm(x), m)` has a NaN gradient at $x = 0$ (JAX differentiates both branches and the
norm's derivative there is $0/0$); the safe forms give the gradient 0 there instead.
Complex inputs count by their modulus.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from gradtx import checks, numerics

__all__ = [
    "abs_sq",
    "safe_increment",
    "safe_int32_increment",
    "safe_norm",
    "safe_root_mean_squares",
]


def abs_sq(x: ArrayLike) -> Array:
    r"""$|x|^2 = \operatorname{Re}(\bar x x)$, element-wise; real for complex $x$.

    Unlike optax's (in `optax._src.numerics`), Python numbers are taken too.

    Args:
        x: an array (real or complex).
    """
    return numerics.abs_sq(jnp.asarray(x))


def _check_lower_bound(fn: str, name: str, value: ArrayLike) -> None:
    """A known scalar lower bound is a real number $\\geq 0$ (arrays and tracers pass)."""
    if checks.is_concrete(value) and jnp.ndim(value) == 0:
        checks.check_non_negative(fn, name, value)


def safe_norm(
    x: ArrayLike,
    min_norm: ArrayLike,
    ord: int | float | str | None = None,
    axis: None | tuple[int, ...] | int = None,
    keepdims: bool = False,
) -> Array:
    r"""$\max(\lVert x \rVert, m)$ with the gradient 0 (not NaN) where $\lVert x \rVert \le m$.

    Where the norm is at most $m$ the norm is taken of ones instead of $x$, so that branch
    has a finite gradient, and $m$ is returned.

    Args:
        x: the array.
        min_norm: $m \ge 0$, the smallest value returned.
        ord: the norm's order, as `jnp.linalg.norm` takes it (None, a non-zero int, `inf`,
            `-inf`, `"fro"`, `"nuc"`).
        axis: as `jnp.linalg.norm`: None for the whole array (a vector or matrix norm), an
            int for vector norms along it, a pair for matrix norms.
        keepdims: keep the reduced axes as size-one dimensions.

    Raises:
        ValueError: when `min_norm` is a known negative number.
    """
    _check_lower_bound("safe_norm", "min_norm", min_norm)
    checks.check_bool("safe_norm", "keepdims", keepdims)
    x = jnp.asarray(x)
    norm = jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=True)
    small = norm <= min_norm
    x = jnp.where(small, jnp.ones_like(x), x)
    norm = norm if keepdims else jnp.squeeze(norm, axis=axis)
    masked = jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=keepdims)
    return jnp.where(norm <= min_norm, min_norm, masked)


def safe_root_mean_squares(x: ArrayLike, min_rms: ArrayLike) -> Array:
    r"""$\max\bigl(\sqrt{\operatorname{mean}(|x|^2)}, m\bigr)$ with the gradient 0 at small $x$.

    Args:
        x: the array.
        min_rms: $m \ge 0$, the smallest value returned.

    Raises:
        ValueError: when `min_rms` is a known negative number.
    """
    _check_lower_bound("safe_root_mean_squares", "min_rms", min_rms)
    x = jnp.asarray(x)
    rms = jnp.sqrt(jnp.mean(abs_sq(x)))
    x = jnp.where(rms <= min_rms, jnp.ones_like(x), x)
    return jnp.where(rms <= min_rms, min_rms, jnp.sqrt(jnp.mean(abs_sq(x))))


safe_increment = numerics.safe_increment
safe_int32_increment = numerics.safe_int32_increment
