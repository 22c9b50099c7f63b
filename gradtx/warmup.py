r"""Warmup, restarts and interpolated steps: schedules built from the decays (IDEAS §7).

A warmup ramps the rate up linearly before a decay takes over; SGDR restarts a cosine decay
several times (learning-rate decay with restarts); `piecewise_interpolate_schedule` moves
smoothly between the values a `piecewise_constant_schedule` would jump to. All keep
optax 0.2.8's names, signatures and values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx.annealing import join_schedules, linear_schedule, warmup_cosine_decay_schedule
from gradtx.checks import check_finite, check_int
from gradtx.numerics import as_step, schedule_float
from gradtx.spec import recorded
from gradtx.typing import Schedule

__all__ = [
    "piecewise_interpolate_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_exponential_decay_schedule",
]


@recorded
def warmup_constant_schedule(
    init_value: ArrayLike, peak_value: ArrayLike, warmup_steps: int
) -> Schedule:
    r"""Linear warmup from $I$ to $P$ over $W$ steps, then $P$ for ever.

    $$\alpha_t = I + (P - I)\min(t / W, 1)$$

    Args:
        init_value: $I$, the value at step 0.
        peak_value: $P$, reached at step $W$ and kept.
        warmup_steps: $W > 0$.

    Returns:
        A schedule `count -> value`.
    """
    return linear_schedule(init_value, peak_value, warmup_steps)


@recorded
def warmup_exponential_decay_schedule(
    init_value: ArrayLike,
    peak_value: ArrayLike,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: ArrayLike,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: ArrayLike | None = None,
) -> Schedule:
    r"""Linear warmup from $I$ to $P$ over $W$ steps, then `exponential_decay` from $P$.

    $$\alpha_t = \begin{cases} I + (P - I)\, t / W & t < W \\
        P \rho^{\,\max(t - W - B, 0) / T} & t \ge W \end{cases}$$

    (floored exponent with `staircase`, clipped at $E$ with `end_value`).

    Args:
        init_value: $I$, the value at step 0.
        peak_value: $P$, reached at step $W$.
        warmup_steps: $W > 0$.
        transition_steps: $T > 0$, steps per decay by $\rho$.
        decay_rate: $\rho > 0$.
        transition_begin: $B \ge 0$ steps at $P$ after the warmup before the decay starts.
        staircase: decay once per $T$ steps rather than continuously.
        end_value: the bound $E$ of the decay, or None.

    Returns:
        A schedule `count -> value`.
    """
    from gradtx.schedules import exponential_decay  # schedules.py gathers this module's names

    warmup_steps = check_int(
        "warmup_exponential_decay_schedule", "warmup_steps", warmup_steps, 1, whole_float=True
    )
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            exponential_decay(
                peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
            ),
        ],
        [warmup_steps],
    )


@recorded
def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, ArrayLike]]) -> Schedule:
    r"""Stochastic gradient descent with warm restarts: warmup-cosine cycles one after another.

    Cycle $k$ is `warmup_cosine_decay_schedule(**cosine_kwargs[k])` and lasts its
    `decay_steps` $D_k$; at $t = D_1 + \dots + D_k$ the next cycle restarts from its own
    `init_value`.

    Args:
        cosine_kwargs: one dict of `warmup_cosine_decay_schedule` arguments per cycle
            (`init_value`, `peak_value`, `warmup_steps`, `decay_steps`, ...).

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError: for no cycle, or a cycle without `decay_steps`.

    References:
        Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, 2017.
    """
    fn = "sgdr_schedule"
    cycles = [dict(kwargs) for kwargs in cosine_kwargs]
    if not cycles:
        raise ValueError(f"{fn}: cosine_kwargs must hold at least one cycle, got none")
    schedules, boundaries, step = [], [], 0
    for i, kwargs in enumerate(cycles):
        if "decay_steps" not in kwargs:
            raise ValueError(
                f"{fn}: cosine_kwargs[{i}] has no decay_steps (the cycle's length); it has "
                f"{sorted(kwargs)}"
            )
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += check_int(
            fn, f"cosine_kwargs[{i}]['decay_steps']", kwargs["decay_steps"], 1, whole_float=True
        )
        boundaries.append(step)
    return join_schedules(schedules, boundaries[:-1])


@recorded
def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: ArrayLike,
    boundaries_and_scales: Mapping[int, ArrayLike] | None = None,
) -> Schedule:
    r"""Moves linearly or along a half cosine between accumulated scales at given steps.

    With boundaries $b_1 < \dots < b_n$ (and $b_0 = 0$) and values $v_0 = I$,
    $v_k = v_{k-1} s_k$, for $b_{k-1} \le t < b_k$ and $f = (t - b_{k-1}) / (b_k - b_{k-1})$:

    $$\alpha_t = v_{k-1} + (v_k - v_{k-1}) f \quad\text{(linear)}, \qquad
      \alpha_t = v_k + \tfrac12 (v_{k-1} - v_k)(1 + \cos \pi f) \quad\text{(cosine)}$$

    and $\alpha_t = v_n$ from $b_n$ on. Before $b_1$ the value moves from $v_0$ towards
    $v_1$, as in optax.

    Args:
        interpolate_type: `"linear"` or `"cosine"`.
        init_value: $I$.
        boundaries_and_scales: `{step: scale}` with steps $\ge 0$ and scales $s_k \ge 0$;
            None or `{}` for the constant $I$.

    Returns:
        A schedule `count -> value`.

    Raises:
        ValueError: for another `interpolate_type` or a negative scale.
    """
    fn = "piecewise_interpolate_schedule"
    if interpolate_type not in ("linear", "cosine"):
        raise ValueError(
            f"{fn}: interpolate_type must be 'linear' or 'cosine', got {interpolate_type!r}"
        )
    check_finite(fn, "init_value", init_value)
    pairs = sorted(
        (check_int(fn, "boundaries_and_scales key", b, 0, whole_float=True), s)
        for b, s in (boundaries_and_scales or {}).items()
    )
    for b, s in pairs:
        check_finite(fn, f"boundaries_and_scales[{b}]", s, 0.0, low_open=False)
    cosine = interpolate_type == "cosine"

    def schedule(count):
        step = as_step(count, *(b for b, _ in pairs))
        value = schedule_float(init_value)
        out = jnp.broadcast_to(value, jnp.shape(step))
        start = 0
        for b, s in pairs:
            end_value = value * schedule_float(s)
            f = (step - start) / max(b - start, 1)
            f = jnp.asarray(f).astype(value.dtype)
            if cosine:
                between = end_value + (value - end_value) / 2 * (jnp.cos(jnp.pi * f) + 1)
            else:
                between = value + (end_value - value) * f
            out = jnp.where(step < start, out, jnp.where(step < b, between, end_value))
            value, start = end_value, b
        return out

    return schedule
