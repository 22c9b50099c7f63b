r"""Learning-rate decay: schedules map a step count to a value (IDEAS §7).

A schedule is a pure function `count -> value`. Pass one wherever a transformation takes a
learning rate (or any other `ScalarOrSchedule`); the transformation evaluates it at its own
step count. With a fixed, large $\alpha$ the iterates wander around the minimum; shrinking
$\alpha$ over time lets them settle. Tune with a fixed $\alpha$ first.

Every schedule here

- is jit- and vmap-safe: no Python branch depends on `count`;
- takes `count` as a Python int or an integer array (any shape; the result has that shape) and
  returns JAX's default float dtype (float32, or float64 under `jax_enable_x64`) whatever the
  count's dtype, so the value never changes dtype from one step to the next;
- counts epochs as $e = (t - B) / T$ with the integer part taken in the count's own dtype, so a
  staircase steps exactly at multiples of $T$ even past float32's integer range;
- checks its hyper-parameters when built and raises `ValueError`/`TypeError` naming the
  function, the argument and the value given. Where optax silently falls back to a constant
  schedule (`transition_steps <= 0`, `decay_rate == 0`) or to `transition_begin = 0`, gradtx
  raises instead.

Names, keywords and defaults follow `optax.schedules` where optax has the schedule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from gradtx.checks import as_float, check_bool, check_int, check_range
from gradtx.spec import recorded
from gradtx.typing import Schedule

Count = ArrayLike
Weight = Callable[[Array], Array]

# ----------------------------------------------------------------------------
# Shared work: checks, epochs, and annealing from one value to another.


def _check_finite(
    fn: str,
    name: str,
    value: ArrayLike,
    low: float = -math.inf,
    *,
    low_open: bool = True,
    hint: str = "",
) -> None:
    """`value` is a finite real number above `low` (at or above it with `low_open=False`)."""
    check_range(fn, name, value, low, math.inf, low_open=low_open, high_open=True, hint=hint)


def _float(x: ArrayLike) -> Array:
    return jnp.asarray(x, jnp.result_type(float))


def _epoch(count: Count, steps: int = 1, begin: int = 0, staircase: bool = False) -> Array:
    r"""$e = \max(t - B, 0) / T$ as a float, $\lfloor e \rfloor$ when `staircase`."""
    whole, part = jnp.divmod(jnp.maximum(jnp.asarray(count), begin) - begin, steps)
    return _float(whole) if staircase else _float(whole) + _float(part) / steps


def _anneal(
    count: Count, start: ArrayLike, end: ArrayLike, steps: int, weight: Weight, begin: int = 0
) -> Array:
    r"""$E + (S - E)\,w(f)$, $f = \min(e, 1)$: $S$ until step $B$, $E$ from step $B + T$ on."""
    start, end = _float(start), _float(end)
    return end + (start - end) * weight(jnp.minimum(_epoch(count, steps, begin), 1))


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
# Constant and the course's decays (IDEAS §7).


@recorded
def constant_schedule(value: ArrayLike) -> Schedule:
    r"""Holds one value: $\alpha_t = \alpha$.

    Args:
        value: $\alpha$, a finite real number.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: when `value` is not a finite real scalar.
    """
    _check_finite("constant_schedule", "value", value)
    return lambda count: jnp.full(jnp.shape(count), value, jnp.result_type(float))


@recorded
def exponential_decay(
    init_value: ArrayLike,
    transition_steps: int,
    decay_rate: ArrayLike,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    r"""Exponential decay: $\alpha_t = \rho^{e}\,\alpha_0$, with $e = \max(t - B, 0) / T$.

    $e$ counts transitions of `transition_steps` steps from `transition_begin`;
    `staircase=True` uses $\lfloor e \rfloor$. With `end_value` the result is clipped to
    $\max(\alpha_t, \alpha_{end})$ when $\rho < 1$ and $\min(\alpha_t, \alpha_{end})$ otherwise
    (the clip applies at every step, as in optax).

    Examples:
        The course's $\alpha = 0.95^{\text{epoch}}\,\alpha_0$ is epoch-based, while a
        transformation counts optimiser steps: one transition per epoch and a staircase make
        the exponent the number of whole epochs done.

        >>> lr = exponential_decay(0.1, transition_steps=100, decay_rate=0.95, staircase=True)
        >>> print(*(f"{lr(t):.5f}" for t in (0, 99, 100, 250)))
        0.10000 0.10000 0.09500 0.09025

    Args:
        init_value: $\alpha_0$.
        transition_steps: $T > 0$, steps per transition (e.g. mini-batches per epoch).
        decay_rate: $\rho > 0$; $\rho > 1$ grows and then needs `end_value` as its cap.
        transition_begin: $B \ge 0$; the value is held at $\alpha_0$ for the first $B$ steps.
        staircase: decay once per transition rather than continuously.
        end_value: lower bound when $\rho < 1$, upper bound otherwise; `None` for none.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument, including $\rho > 1$ without `end_value`
            (the value would overflow to inf).
    """
    fn = "exponential_decay"
    _check_finite(fn, "init_value", init_value)
    check_int(fn, "transition_steps", transition_steps, 1)
    _check_finite(fn, "decay_rate", decay_rate, 0.0, hint="for a constant use constant_schedule")
    check_int(fn, "transition_begin", transition_begin, 0)
    check_bool(fn, "staircase", staircase)
    if end_value is not None:
        _check_finite(fn, "end_value", end_value)
    elif (rate := as_float(fn, "decay_rate", decay_rate)) is not None and rate > 1:
        raise ValueError(
            f"{fn}: decay_rate > 1 grows without bound, got {decay_rate!r}; pass end_value "
            "as the upper bound"
        )

    def schedule(count):
        rate = _float(decay_rate)
        value = _float(init_value) * rate ** _epoch(
            count, transition_steps, transition_begin, staircase
        )
        if end_value is None:
            return value
        end = _float(end_value)
        return jnp.where(rate < 1, jnp.maximum(value, end), jnp.minimum(value, end))

    return schedule


@recorded
def inverse_time_decay(
    init_value: ArrayLike,
    decay_rate: ArrayLike,
    transition_steps: int = 1,
    staircase: bool = False,
) -> Schedule:
    r"""Inverse-time decay: $\alpha_t = \alpha_0 / (1 + \kappa\, e)$, with $e = t / T$.

    `staircase=True` uses $\lfloor e \rfloor$: with $T$ the steps per epoch, $e$ is the
    course's epoch number.

    Args:
        init_value: $\alpha_0$.
        decay_rate: $\kappa \ge 0$.
        transition_steps: $T > 0$, steps per epoch.
        staircase: decay once per epoch rather than continuously.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.
    """
    fn = "inverse_time_decay"
    _check_finite(fn, "init_value", init_value)
    _check_finite(fn, "decay_rate", decay_rate, 0.0, low_open=False)
    check_int(fn, "transition_steps", transition_steps, 1)
    check_bool(fn, "staircase", staircase)

    def schedule(count):
        epoch = _epoch(count, transition_steps, staircase=staircase)
        return _float(init_value) / (1 + _float(decay_rate) * epoch)

    return schedule


@recorded
def inverse_sqrt_decay(
    init_value: ArrayLike,
    k: ArrayLike = 1.0,
    transition_steps: int = 1,
    staircase: bool = False,
) -> Schedule:
    r"""Inverse square-root decay: $\alpha_t = k\,\alpha_0 / \sqrt{\max(e, 1)}$, $e = t / T$.

    The course's $k / \sqrt{\text{epoch}}\cdot\alpha_0$ (or $k/\sqrt{t}\cdot\alpha_0$ with
    $T = 1$) is infinite at epoch 0; here $e$ is raised to 1, so the first epoch ($e < 1$,
    including step 0) is held at $k\,\alpha_0$ and the decay starts, continuously, at $e = 1$.

    Args:
        init_value: $\alpha_0$.
        k: $k > 0$.
        transition_steps: $T > 0$, steps per epoch.
        staircase: decay once per epoch rather than continuously.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.
    """
    fn = "inverse_sqrt_decay"
    _check_finite(fn, "init_value", init_value)
    _check_finite(fn, "k", k, 0.0)
    check_int(fn, "transition_steps", transition_steps, 1)
    check_bool(fn, "staircase", staircase)

    def schedule(count):
        epoch = jnp.maximum(_epoch(count, transition_steps, staircase=staircase), 1)
        return _float(k) * _float(init_value) / jnp.sqrt(epoch)

    return schedule


@recorded
def piecewise_constant_schedule(
    init_value: ArrayLike, boundaries_and_scales: Mapping[int, ArrayLike] | None = None
) -> Schedule:
    r"""Discrete steps: $\alpha_t = \alpha_0 \prod_{i:\, t \ge b_i} s_i$.

    The course's staircase or manual decay: at each step $b_i$ the value is multiplied by $s_i$.

    Examples:
        >>> lr = piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.1})
        >>> print(*(f"{lr(t):.2f}" for t in (99, 100, 199, 200)))
        1.00 0.10 0.10 0.01

    Args:
        init_value: $\alpha_0$.
        boundaries_and_scales: `{b_i: s_i}`, steps $b_i \ge 0$ and scales $s_i \ge 0$;
            `None` or `{}` for a constant.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.
    """
    fn = "piecewise_constant_schedule"
    _check_finite(fn, "init_value", init_value)
    boundaries_and_scales = {} if boundaries_and_scales is None else boundaries_and_scales
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            f"{fn}: boundaries_and_scales must be a dict {{step: scale}} or None, "
            f"got {type(boundaries_and_scales).__name__}"
        )
    for boundary, scale in boundaries_and_scales.items():
        check_int(fn, "boundaries_and_scales key", boundary, 0)
        _check_finite(fn, f"boundaries_and_scales[{boundary!r}]", scale, 0.0, low_open=False)
    steps = sorted(boundaries_and_scales.items())

    def schedule(count):
        value = jnp.full(jnp.shape(count), init_value, jnp.result_type(float))
        for boundary, scale in steps:
            value = jnp.where(jnp.asarray(count) >= boundary, value * _float(scale), value)
        return value

    return schedule


# ----------------------------------------------------------------------------
# Annealing from one value to another, and schedules built from pieces.


def _polynomial_schedule(fn, init_value, end_value, power, transition_steps, transition_begin):
    _check_finite(fn, "init_value", init_value)
    _check_finite(fn, "end_value", end_value)
    _check_finite(fn, "power", power, 0.0)
    check_int(fn, "transition_steps", transition_steps, 1)
    check_int(fn, "transition_begin", transition_begin, 0)
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
    _check_finite(fn, "init_value", init_value)
    check_int(fn, "decay_steps", decay_steps, 1)
    check_range(fn, "alpha", alpha, 0.0, 1.0)
    _check_finite(fn, "exponent", exponent, 0.0)
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
    _check_finite(fn, "init_value", init_value)
    _check_finite(fn, "peak_value", peak_value)
    _check_finite(fn, "end_value", end_value)
    check_int(fn, "warmup_steps", warmup_steps, 0)
    check_int(fn, "decay_steps", decay_steps, 1)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"{fn}: decay_steps must exceed warmup_steps={warmup_steps}, got {decay_steps!r}; "
            "decay_steps counts the whole schedule, warmup included"
        )
    _check_finite(fn, "exponent", exponent, 0.0)
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
    for i, b in enumerate(boundaries):
        check_int(fn, f"boundaries[{i}]", b, 0)
    if any(a >= b for a, b in itertools.pairwise(boundaries)):
        raise ValueError(f"{fn}: boundaries must be strictly increasing, got {boundaries!r}")

    def schedule(count):
        value = schedules[0](count)
        for boundary, later in zip(boundaries, schedules[1:], strict=True):
            value = jnp.where(jnp.asarray(count) < boundary, value, later(count - boundary))
        return value

    return schedule


def _check_onecycle(fn, transition_steps, peak_value, pct_start, div_factor, final_div_factor):
    check_int(fn, "transition_steps", transition_steps, 1)
    _check_finite(fn, "peak_value", peak_value)
    check_range(fn, "pct_start", pct_start, 0.0, 1.0, high_open=True)
    _check_finite(fn, "div_factor", div_factor, 0.0)
    _check_finite(fn, "final_div_factor", final_div_factor, 0.0)


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
