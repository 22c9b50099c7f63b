r"""Schedules that anneal from one value to another, and schedules joined from pieces (IDEAS §7).

Each anneals from a start $S$ to an end $E$ over $T$ steps with a weight $w$ that falls from 1
to 0: $\alpha_t = E + (S - E)\, w(\min(t / T, 1))$ — polynomial ($w(f) = (1 - f)^p$, linear
for $p = 1$) or cosine ($w(f) = [\tfrac12(1 + \cos \pi f)]^p$). Warmup and one-cycle
schedules are such segments joined end to end (`join_schedules`). The rules every schedule
follows are in `gradtx.schedules`, which re-exports these.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from gradtx import numerics
from gradtx.checks import check_finite, check_int, check_range
from gradtx.numerics import epochs_since, schedule_float
from gradtx.spec import recorded
from gradtx.typing import Schedule

__all__ = [
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "polynomial_schedule",
    "warmup_cosine_decay_schedule",
]

Weight = Callable[[Array], Array]


def _anneal(
    count: ArrayLike, start: ArrayLike, end: ArrayLike, steps: int, weight: Weight, begin: int = 0
) -> Array:
    r"""$E + (S - E)\,w(f)$, $f = \min(e, 1)$: $S$ until step $B$, $E$ from step $B + T$ on."""
    start, end = schedule_float(start), schedule_float(end)
    return end + (start - end) * weight(jnp.minimum(epochs_since(count, steps, begin), 1))


def _polynomial(power: ArrayLike) -> Weight:
    return lambda f: (1 - f) ** power


def _cosine(exponent: ArrayLike) -> Weight:
    return lambda f: (0.5 * (1 + jnp.cos(jnp.pi * f))) ** exponent


def _sequence(*segments: tuple[int, ArrayLike, ArrayLike, Weight]) -> Schedule:
    """Anneals through `(steps, start, end, weight)` segments in turn, then holds the last end.

    A segment of 0 steps is skipped (the value jumps); the last segment must have steps > 0.
    """
    segments = tuple(s for s in segments if s[0] > 0)

    def piece(steps, start, end, weight):
        return lambda count: _anneal(count, start, end, steps, weight)

    boundaries = list(itertools.accumulate(s[0] for s in segments[:-1]))
    return join_schedules([piece(*s) for s in segments], boundaries)


# ----------------------------------------------------------------------------
# Annealing from one value to another, and schedules built from pieces.


def _polynomial_schedule(fn, init_value, end_value, power, transition_steps, transition_begin):
    check_finite(fn, "init_value", init_value)
    check_finite(fn, "end_value", end_value)
    check_finite(fn, "power", power, 0.0)
    transition_steps = check_int(fn, "transition_steps", transition_steps, 1, whole_float=True)
    transition_begin = check_int(fn, "transition_begin", transition_begin, 0, whole_float=True)
    weight = _polynomial(power)
    return lambda count: _anneal(
        count, init_value, end_value, transition_steps, weight, transition_begin
    )


@recorded
def polynomial_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    power: ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Polynomial annealing: $\alpha_t = E + (I - E)(1 - f)^P$, $f = \min(\max(t - B, 0)/T, 1)$.

    Holds $I$ for the first $B$ steps, reaches $E$ at step $B + T$ and holds it after.

    Args:
        init_value: $I$.
        end_value: $E$.
        power: $P > 0$.
        transition_steps: $T > 0$ (optax's $T \le 0$ constant is `constant_schedule`).
        transition_begin: $B \ge 0$.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.
    """
    return _polynomial_schedule(
        "polynomial_schedule", init_value, end_value, power, transition_steps, transition_begin
    )


@recorded
def linear_schedule(
    init_value: ArrayLike,
    end_value: ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Linear annealing: `polynomial_schedule` with $P = 1$, $\alpha_t = E + (I - E)(1 - f)$.

    Args:
        init_value: $I$.
        end_value: $E$.
        transition_steps: $T > 0$.
        transition_begin: $B \ge 0$.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.
    """
    return _polynomial_schedule(
        "linear_schedule", init_value, end_value, 1.0, transition_steps, transition_begin
    )


@recorded
def cosine_decay_schedule(
    init_value: ArrayLike,
    decay_steps: int,
    alpha: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> Schedule:
    r"""Cosine decay: $\alpha_t = I\,[a + (1 - a)\,c^p]$, $c = \tfrac12(1 + \cos(\pi f))$.

    $f = \min(t / T, 1)$: the value falls from $I$ to $a I$ over $T$ steps and holds there.

    Args:
        init_value: $I$.
        decay_steps: $T > 0$.
        alpha: $a \in [0, 1]$, the final value as a fraction of $I$.
        exponent: $p > 0$.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.

    References:
        Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, 2017.
    """
    fn = "cosine_decay_schedule"
    check_finite(fn, "init_value", init_value)
    decay_steps = check_int(fn, "decay_steps", decay_steps, 1, whole_float=True)
    check_range(fn, "alpha", alpha, 0.0, 1.0)
    check_finite(fn, "exponent", exponent, 0.0)
    weight = _cosine(exponent)
    return lambda count: _anneal(count, init_value, alpha * init_value, decay_steps, weight)


@recorded
def warmup_cosine_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: ArrayLike = 0.0,
    exponent: ArrayLike = 1.0,
) -> Schedule:
    r"""Linear warmup from $I$ to $P$ over $W$ steps, then cosine decay to $E$ at step $D$.

    $$\alpha_t = \begin{cases} I + (P - I)\, t / W & t < W \\
        E + (P - E)\,[\tfrac12(1 + \cos(\pi f))]^p,\ f = \min(\tfrac{t - W}{D - W}, 1)
        & t \ge W \end{cases}$$

    As in optax, `decay_steps` counts the whole schedule, warmup included. (optax holds 0
    when `peak_value == 0`; here the decay still runs from $P$ to $E$.)

    Args:
        init_value: $I$.
        peak_value: $P$, reached at step $W$.
        warmup_steps: $W \ge 0$.
        decay_steps: $D > W$, the total length.
        end_value: $E$.
        exponent: $p > 0$.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.
    """
    fn = "warmup_cosine_decay_schedule"
    check_finite(fn, "init_value", init_value)
    check_finite(fn, "peak_value", peak_value)
    check_finite(fn, "end_value", end_value)
    warmup_steps = check_int(fn, "warmup_steps", warmup_steps, 0, whole_float=True)
    decay_steps = check_int(fn, "decay_steps", decay_steps, 1, whole_float=True)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"{fn}: decay_steps must exceed warmup_steps={warmup_steps}, got {decay_steps!r}; "
            "decay_steps counts the whole schedule, warmup included"
        )
    check_finite(fn, "exponent", exponent, 0.0)
    return _sequence(
        (warmup_steps, init_value, peak_value, _polynomial(1.0)),
        (decay_steps - warmup_steps, peak_value, end_value, _cosine(exponent)),
    )


@recorded
def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""Runs `schedules` one after another, each restarting the count at its boundary.

    $$\alpha_t = \alpha^{(i)}_{t - b_i} \quad\text{for } b_i \le t < b_{i+1},\ b_0 = 0$$

    Args:
        schedules: $n \ge 1$ schedules.
        boundaries: $n - 1$ strictly increasing steps $b_1 < \dots < b_{n-1}$, each $\ge 0$.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.
    """
    fn = "join_schedules"
    schedules, boundaries = tuple(schedules), tuple(boundaries)
    if not schedules:
        raise ValueError(f"{fn}: schedules must hold at least one schedule, got none")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{fn}: schedules[{i}] must be callable, got {type(s).__name__}")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"{fn}: boundaries must hold one step fewer than schedules ({len(schedules) - 1}), "
            f"got {len(boundaries)}: {boundaries!r}"
        )
    boundaries = tuple(
        check_int(fn, f"boundaries[{i}]", b, 0, whole_float=True) for i, b in enumerate(boundaries)
    )
    if any(a >= b for a, b in itertools.pairwise(boundaries)):
        raise ValueError(f"{fn}: boundaries must be strictly increasing, got {boundaries!r}")

    def schedule(count):
        value = schedules[0](count)
        for boundary, later in zip(boundaries, schedules[1:], strict=True):
            step = numerics.as_step(count, boundary)
            value = jnp.where(step < boundary, value, later(step - boundary))
        return value

    return schedule


def _check_onecycle(fn, transition_steps, peak_value, pct_start, div_factor, final_div_factor):
    transition_steps = check_int(fn, "transition_steps", transition_steps, 1, whole_float=True)
    check_finite(fn, "peak_value", peak_value)
    check_range(fn, "pct_start", pct_start, 0.0, 1.0, high_open=True)
    check_finite(fn, "div_factor", div_factor, 0.0)
    check_finite(fn, "final_div_factor", final_div_factor, 0.0)


@recorded
def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: ArrayLike,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    r"""One cycle (Smith): cosine from $P/d$ up to $P$, then cosine down to $P/(d\,d_f)$.

    The rise takes $\lfloor p_s T \rfloor$ steps, the fall the rest of the $T$; each half has
    the shape $E + (S - E)\,\tfrac12(1 + \cos(\pi f))$ and the end value is held after $T$.

    Args:
        transition_steps: $T > 0$, the length of the cycle.
        peak_value: $P$.
        pct_start: $p_s \in [0, 1)$, the fraction of the cycle spent rising.
        div_factor: $d > 0$; the cycle starts at $P / d$.
        final_div_factor: $d_f > 0$; the cycle ends at $P / (d\,d_f)$.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.

    References:
        Smith & Topin, Super-Convergence: Very Fast Training of Neural Networks Using Large
        Learning Rates, 2017.
    """
    fn = "cosine_onecycle_schedule"
    _check_onecycle(fn, transition_steps, peak_value, pct_start, div_factor, final_div_factor)
    rise, start = int(pct_start * transition_steps), peak_value / div_factor
    return _sequence(
        (rise, start, peak_value, _cosine(1.0)),
        (transition_steps - rise, peak_value, start / final_div_factor, _cosine(1.0)),
    )


@recorded
def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: ArrayLike,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    r"""One cycle, linear: $P/d \to P \to P/d \to P/(d\,d_f)$ in three linear phases.

    The phases end at steps $\lfloor p_s T \rfloor$, $\lfloor p_f T \rfloor$ and $T$; the end
    value is held after $T$. A phase that floors to 0 steps becomes a jump.

    Args:
        transition_steps: $T > 0$, the length of the cycle.
        peak_value: $P$.
        pct_start: $p_s \in [0, 1)$, the fraction of the cycle spent rising.
        pct_final: $p_f \in (p_s, 1)$, the fraction spent rising and falling back to $P/d$.
        div_factor: $d > 0$; the cycle starts at $P / d$.
        final_div_factor: $d_f > 0$; the cycle ends at $P / (d\,d_f)$.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.

    References:
        Smith & Topin, Super-Convergence: Very Fast Training of Neural Networks Using Large
        Learning Rates, 2017.
    """
    fn = "linear_onecycle_schedule"
    _check_onecycle(fn, transition_steps, peak_value, pct_start, div_factor, final_div_factor)
    check_range(fn, "pct_final", pct_final, pct_start, 1.0, low_open=True, high_open=True)
    rise, fall = int(pct_start * transition_steps), int(pct_final * transition_steps)
    start, linear = peak_value / div_factor, _polynomial(1.0)
    return _sequence(
        (rise, start, peak_value, linear),
        (fall - rise, peak_value, start, linear),
        (transition_steps - fall, start, start / final_div_factor, linear),
    )
