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

Names, keywords and defaults follow `optax.schedules` where optax has the schedule. This module
holds the course's decays and is the namespace of every schedule; the ones that anneal from
one value to another (polynomial, linear, cosine, warmup, one-cycle, `join_schedules`) live in
`gradtx.annealing`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import numerics
from gradtx.annealing import (
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    polynomial_schedule,
    warmup_cosine_decay_schedule,
)
from gradtx.checks import check_bool, check_finite, check_int
from gradtx.hyperparams import (
    InjectHyperparamsState,
    InjectStatefulHyperparamsState,
    StatefulSchedule,
    WrappedSchedule,
    WrappedScheduleState,
    inject_hyperparams,
    inject_stateful_hyperparams,
)
from gradtx.numerics import epochs_since, schedule_float
from gradtx.spec import recorded
from gradtx.typing import Schedule
from gradtx.warmup import (
    piecewise_interpolate_schedule,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_exponential_decay_schedule,
)

__all__ = [
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "inverse_sqrt_decay",
    "inverse_time_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "warmup_cosine_decay_schedule",
    "piecewise_interpolate_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_exponential_decay_schedule",
    # as in optax.schedules: the injection of (scheduled) hyper-parameters
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "StatefulSchedule",
    "WrappedSchedule",
    "WrappedScheduleState",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "Schedule",  # the type, as optax.schedules exports it
]


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
    check_finite("constant_schedule", "value", value)
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
        decay_rate: $\rho > 0$; $\rho > 1$ grows (e.g. a learning-rate range test), without
            bound unless `end_value` caps it (it overflows to inf eventually).
        transition_begin: $B \ge 0$; the value is held at $\alpha_0$ for the first $B$ steps.
        staircase: decay once per transition rather than continuously.
        end_value: lower bound when $\rho < 1$, upper bound otherwise; `None` for none.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError, TypeError: for a bad argument.
    """
    fn = "exponential_decay"
    check_finite(fn, "init_value", init_value)
    transition_steps = check_int(fn, "transition_steps", transition_steps, 1, whole_float=True)
    check_finite(fn, "decay_rate", decay_rate, 0.0, hint="for a constant use constant_schedule")
    transition_begin = check_int(fn, "transition_begin", transition_begin, 0, whole_float=True)
    check_bool(fn, "staircase", staircase)
    if end_value is not None:
        check_finite(fn, "end_value", end_value)

    def schedule(count):
        rate = schedule_float(decay_rate)
        value = schedule_float(init_value) * rate ** epochs_since(
            count, transition_steps, transition_begin, staircase
        )
        if end_value is None:
            return value
        end = schedule_float(end_value)
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
    check_finite(fn, "init_value", init_value)
    check_finite(fn, "decay_rate", decay_rate, 0.0, low_open=False)
    transition_steps = check_int(fn, "transition_steps", transition_steps, 1, whole_float=True)
    check_bool(fn, "staircase", staircase)

    def schedule(count):
        epoch = epochs_since(count, transition_steps, staircase=staircase)
        return schedule_float(init_value) / (1 + schedule_float(decay_rate) * epoch)

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
    check_finite(fn, "init_value", init_value)
    check_finite(fn, "k", k, 0.0)
    transition_steps = check_int(fn, "transition_steps", transition_steps, 1, whole_float=True)
    check_bool(fn, "staircase", staircase)

    def schedule(count):
        epoch = jnp.maximum(epochs_since(count, transition_steps, staircase=staircase), 1)
        return schedule_float(k) * schedule_float(init_value) / jnp.sqrt(epoch)

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
    check_finite(fn, "init_value", init_value)
    boundaries_and_scales = {} if boundaries_and_scales is None else boundaries_and_scales
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            f"{fn}: boundaries_and_scales must be a dict {{step: scale}} or None, "
            f"got {type(boundaries_and_scales).__name__}"
        )
    steps = []
    for boundary, scale in boundaries_and_scales.items():
        check_finite(fn, f"boundaries_and_scales[{boundary!r}]", scale, 0.0, low_open=False)
        steps.append(
            (check_int(fn, "boundaries_and_scales key", boundary, 0, whole_float=True), scale)
        )
    steps.sort()

    def schedule(count):
        value = jnp.full(jnp.shape(count), init_value, jnp.result_type(float))
        for boundary, scale in steps:
            step = numerics.as_step(count, boundary)
            value = jnp.where(step >= boundary, value * schedule_float(scale), value)
        return value

    return schedule
