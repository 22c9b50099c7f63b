r"""Step sizes: scaling by a constant, a learning rate, or a schedule (IDEAS §7, §9)."""

from __future__ import annotations

from typing import NamedTuple

import jax
from jax import Array

from gradtx import base, checks, numerics
from gradtx.base import EmptyState, GradientTransformation, ScalarOrSchedule, Schedule, factory


class ScaleByScheduleState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken; the schedule is evaluated at this count


@factory
def scale(step_size: float) -> GradientTransformation:
    r"""$u = s \cdot g$ with a constant $s$. Stores nothing.

    Args:
        step_size: $s$, any real number (negative for descent; see
            `scale_by_learning_rate`).
    """
    checks.check_range("scale", "step_size", step_size)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g: numerics.scale_leaf(g, step_size), updates), state

    return GradientTransformation(init, update)


@factory
def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    r"""$u_t = s(t) \cdot g_t$ with $s$ a schedule evaluated at the step count $t = 0, 1, \dots$

    Emits the scaled updates; stores $t$.

    Args:
        step_size_fn: a `count -> value` function, such as those in `gradtx.schedules`.
    """
    if not callable(step_size_fn):
        raise TypeError(
            f"scale_by_schedule: step_size_fn must be a callable count -> value, "
            f"got {type(step_size_fn).__name__}; use scale(...) for a constant"
        )

    def init(params):
        del params
        return ScaleByScheduleState(numerics.zero_count())

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        step_size = step_size_fn(state.count)
        out = jax.tree.map(lambda g: numerics.scale_leaf(g, step_size), updates)
        return out, ScaleByScheduleState(numerics.safe_increment(state.count))

    return GradientTransformation(init, update)


@factory
def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule | None, *, flip_sign: bool = True
) -> GradientTransformation:
    r"""$u_t = -\alpha_t g_t$: the descent step of gradient descent.

    `learning_rate` is a constant $\alpha$ or a schedule $\alpha(t)$. With
    `flip_sign=False` the sign is kept (ascent, or a rate applied elsewhere).
    `None` means no scaling at all, $u_t = g_t$, as in optax (where it is the default;
    here it is passed explicitly, so that `scale_by_learning_rate(0.1)` prints as such).

    Args:
        learning_rate: $\alpha \geq 0$, a `count -> value` schedule, or None for none.
        flip_sign: negate (descent), as optax does by default.

    Raises:
        ValueError: for a negative constant rate.
    """
    checks.check_bool("scale_by_learning_rate", "flip_sign", flip_sign)
    if learning_rate is None:
        return base.stateless_pair(lambda updates, params: updates)
    checks.check_scalar_or_schedule("scale_by_learning_rate", "learning_rate", learning_rate)
    sign = -1 if flip_sign else 1
    if callable(learning_rate):
        inner = scale_by_schedule(lambda count: sign * learning_rate(count))
    else:
        inner = scale(sign * learning_rate)
    return GradientTransformation(inner.init, inner.update)


def learning_rate_step(fn: str, learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """`scale_by_learning_rate(learning_rate)` for the optimiser `fn`, its rate checked first.

    The last piece of every optimiser (a constant $\\geq 0$ or a schedule); an error names `fn`.
    """
    checks.check_scalar_or_schedule(fn, "learning_rate", learning_rate)
    return scale_by_learning_rate(learning_rate)
