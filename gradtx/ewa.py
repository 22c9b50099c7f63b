r"""Exponentially weighted averages (IDEAS §2) and bias correction (IDEAS §3)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, factory


class EmaState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken, for `debias`
    ema: PyTree  # the average m_t: same tree as params, in `accumulator_dtype`


class BiasCorrectionState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken


def moment_update(decay: float, moment: Array, value: Array, order: int = 1) -> Array:
    r"""One EWA step $\beta m + (1 - \beta) x$ (order 1) or $\beta m + (1 - \beta)|x|^2$
    (order 2), in the moment's dtype.

    Computed in float32 or wider (`numerics.compute_dtype`) and stored back in the
    moment's dtype, so float32 moments of bfloat16 gradients get float32
    squares, and a bfloat16 moment meets a float32 `decay` under strict promotion.
    For complex `value` the first moment is complex and the second $|x|^2 = x \bar x$,
    real.
    """
    dtype = numerics.compute_dtype(moment, value)
    x = numerics.cast(value, dtype)
    if order == 2:
        x = numerics.abs_sq(x)
        dtype = numerics.compute_dtype(moment, x)  # real, unless the moment is complex
    beta = numerics.as_compute(decay, dtype)
    new = beta * numerics.cast(moment, dtype) + (1 - beta) * numerics.cast(x, dtype)
    return numerics.cast(new, moment.dtype)


def debias_factor(decay: Any, count: Array) -> Array:
    r"""$1 / (1 - \beta^t)$ as a float32 scalar, for $t \geq 1$."""
    return 1 / (1 - jnp.asarray(decay, jnp.float32) ** count.astype(jnp.float32))


def zeros_like_tree(
    params: PyTree,
    dtype: Any = None,
    fill: Any = 0,
    *,
    real: bool = False,
    fn: str = "",
    arg: str = "",
) -> PyTree:
    """Arrays shaped like `params`, in `dtype` (or each leaf's dtype), filled with `fill`.

    `real=True` is for second moments: a complex leaf's moment is stored in the real
    dtype of the same width. A real `dtype` for the first moment of a complex leaf
    would drop its imaginary part: refused, naming `fn` and `arg`.
    """

    def zeros(p):
        leaf_dtype = jnp.result_type(p)
        target = jnp.dtype(dtype) if dtype is not None else leaf_dtype
        if real:
            target = numerics.real_dtype(target)
        elif numerics.is_complex(leaf_dtype) and not numerics.is_complex(target):
            raise TypeError(
                f"{fn}: {arg}={target} is real but a parameter is {leaf_dtype}: storing its "
                f"moment as {target} would drop the imaginary part; pass a complex {arg} "
                f"(e.g. complex64) or None"
            )
        return jnp.full(jnp.shape(p), fill, target)

    return jax.tree.map(zeros, params)


@factory
def ema(
    decay: float, debias: bool = False, accumulator_dtype: DTypeLike | None = None
) -> GradientTransformation:
    r"""Exponentially weighted average of the updates.

    $$m_t = \beta m_{t-1} + (1 - \beta) g_t, \quad m_0 = 0$$

    The average spans roughly the last $1/(1-\beta)$ steps. Emits $m_t$, or
    $m_t / (1 - \beta^t)$ with `debias=True`; stores $m_t$ (never the debiased
    value) and the step count. `chain(ema(decay), bias_correction(decay))` is
    the same as `ema(decay, debias=True)`, written as two pieces.

    Unlike optax's `ema`, `debias` defaults to False: the course's EWA is the
    plain average, and bias correction is its own idea (`bias_correction`).

    Args:
        decay: $\beta$, in $[0, 1)$.
        debias: divide by $1 - \beta^t$ before emitting.
        accumulator_dtype: dtype of the stored $m$ (e.g. float32 for bfloat16
            params); None keeps each parameter's dtype. Emitted updates keep the
            dtype of the incoming updates.

    Returns:
        A `GradientTransformation` with state `EmaState(count, ema)` (optax's fields).

    Raises:
        ValueError: if `decay` is outside $[0, 1)$.
    """
    checks.check_decay("ema", "decay", decay)
    checks.check_bool("ema", "debias", debias)
    dtype = checks.canonicalize_dtype("ema", "accumulator_dtype", accumulator_dtype)

    def init(params):
        return EmaState(
            numerics.zero_count(),
            zeros_like_tree(params, dtype, fn="ema", arg="accumulator_dtype"),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state("ema", state, EmaState)
        checks.check_tree_match("ema", updates, state.ema)
        count = numerics.safe_increment(state.count)
        mean = jax.tree.map(lambda m, g: moment_update(decay, m, g), state.ema, updates)
        if debias:
            factor = debias_factor(decay, count)
            out = jax.tree.map(
                lambda m, g: numerics.scale_leaf(m, factor).astype(g.dtype), mean, updates
            )
        else:
            out = jax.tree.map(lambda m, g: m.astype(g.dtype), mean, updates)
        return out, EmaState(count, mean)

    return GradientTransformation(init, update)


@factory
def bias_correction(decay: float) -> GradientTransformation:
    r"""Divides the updates by $1 - \beta^t$, the bias of an EWA started at zero.

    $$\hat m_t = \frac{m_t}{1 - \beta^t}, \quad t = 1, 2, \dots$$

    Because $m_0 = 0$ the first averages are far too small ($m_1 = (1-\beta) g_1$);
    dividing by $1 - \beta^t$ fixes the start and fades out as $\beta^t \to 0$.
    Keeps its own step count, so it can follow any EWA in a chain:
    `chain(ema(0.9), bias_correction(0.9))`. Emits $\hat m_t$; stores $t$.

    Args:
        decay: the $\beta$ of the EWA being corrected, in $[0, 1)$.

    Returns:
        A `GradientTransformation` with state `BiasCorrectionState(count)`.

    Raises:
        ValueError: if `decay` is outside $[0, 1)$.
    """
    checks.check_decay("bias_correction", "decay", decay)

    def init(params):
        del params
        return BiasCorrectionState(numerics.zero_count())

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        count = numerics.safe_increment(state.count)
        factor = debias_factor(decay, count)
        out = jax.tree.map(lambda u: numerics.scale_leaf(u, factor), updates)
        return out, BiasCorrectionState(count)

    return GradientTransformation(init, update)
