r"""Moments of the updates on pytrees, as optimisers update them, and their bias correction.

$$m \leftarrow (1 - \beta)\, g^k + \beta\, m, \qquad
u \leftarrow \max(|g| + \epsilon, \beta u), \qquad \hat m = m / (1 - \beta^t)$$

`tree_update_moment`, `tree_update_infinity_moment`, `tree_update_moment_per_elem_norm` and
`tree_bias_correction` of `optax.tree_utils` (optax 0.2.8), all of them in `gradtx.tree_utils`
(the first three also as `gradtx.update_moment`, ...). A decay outside $[0, 1]$ raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.tree_arithmetic import check_scalar, leaf_rows
from gradtx.typing import PyTree

__all__ = [
    "tree_bias_correction",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
]


def _check_decay(fn: str, decay: Any) -> None:
    """A moment's decay is a real scalar in $[0, 1]$ (traced values are not checked)."""
    check_scalar(fn, "decay", decay)
    checks.check_range(fn, "decay", decay, 0.0, 1.0)


def _moment_map(fn: str, f: Callable, updates: PyTree, moments: PyTree) -> PyTree:
    names, trees = ("updates", "moments"), (updates, moments)
    rows, treedef, _ = leaf_rows(fn, names, trees, lambda v: v is None)
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
        return numerics.abs_sq(jnp.asarray(g)) ** (int(half) if float(half).is_integer() else half)

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
    check_scalar(fn, "decay", decay)
    checks.check_range(fn, "decay", decay, 0.0, 1.0, high_open=True)
    check_scalar(fn, "count", count)
    wide = numerics.common_dtype(jnp.result_type(decay), jnp.result_type(float))
    correction = 1 - jnp.asarray(decay, wide) ** jnp.asarray(count).astype(wide)
    return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)
