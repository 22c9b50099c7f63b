r"""Reduce on plateau: shrink the step when a monitored metric stops improving (IDEAS §7, §8).

Manual decay, automated: a plateau of the validation loss is the signal to lower
$\alpha$. Put the piece last in a chain, after the learning rate, so it scales
the whole step, schedule included:

```python
opt = chain(adam(warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000)),
            reduce_on_plateau(patience=5, cooldown=2))
updates, state = opt.update(grads, state, params, value=loss)
```

`gradtx.chain` hands `value` to every piece whose `update` takes `**extra_args`.
`optax.chain` hands extra arguments only to its own `GradientTransformationExtraArgs`
class: there, wrap the piece as `optax.GradientTransformationExtraArgs(*reduce_on_plateau())`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, factory


class ReduceOnPlateauState(NamedTuple):  # optax.contrib.ReduceLROnPlateauState
    scale: Array  # s, the factor applied to the updates
    best_value: Array  # best (accumulated) metric so far
    plateau_count: Array  # decisions in a row without improvement
    cooldown_count: Array  # decisions left before counting plateaus again
    count: Array  # type: ignore[assignment]  # values accumulated towards the next decision
    avg_value: Array  # mean of those values


ReduceLROnPlateauState = ReduceOnPlateauState  # optax.contrib's name


@factory
def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
    *,
    mode: str = "min",
) -> GradientTransformation:
    r"""Scales the updates by $s$, multiplied by `factor` when the metric plateaus.

    `update(..., value=v)` takes the monitored metric. Every `accumulation_size`
    calls, the mean $\bar v$ of the values since the last decision is compared
    with the best so far, $b$ (in `mode='max'` read $<$ as $>$ and $-$ as $+$):

    $$\text{improved} \iff \bar v < b - (r\,|b| + a), \qquad b_0 = +\infty$$

    An improvement sets $b \leftarrow \bar v$ and the plateau count $n \leftarrow 0$;
    otherwise $n \leftarrow n + 1$. During a cooldown ($c > 0$): $n \leftarrow 0$,
    $c \leftarrow c - 1$. Otherwise, when $n$ reaches `patience`:
    $s \leftarrow \max(s \cdot \text{factor}, s_{min})$, $n \leftarrow 0$ and
    $c \leftarrow$ `cooldown`. Emits $u_t = s_t g_t$ with the scale after this
    step's decision; stores $s$, $b$, $n$, $c$ and the running mean of the values
    (all scalars, metrics in float32).

    The tolerance uses $|b|$, so a negative metric (a log-likelihood, an ELBO)
    plateaus as a positive one does; optax 0.2.8's `contrib.reduce_on_plateau`
    uses $(1 - r)\,b$, which for $b < 0$ counts a constant metric as improving
    and never reduces. For positive metrics in `mode='min'` the two agree, and
    the state has optax's fields. A NaN metric never improves.

    torch's `ReduceLROnPlateau` reduces at the `patience + 1`-th decision without
    improvement, this piece (as optax) at the `patience`-th: pass
    `patience=p + 1` to reproduce torch's `patience=p`; `rtol`/`atol` play the
    role of torch's `threshold` in its `'rel'`/`'abs'` modes.

    Args:
        factor: multiplier applied at a plateau, in $(0, 1)$.
        patience: decisions without improvement before reducing, an integer $\geq 1$.
        rtol: $r \geq 0$, relative tolerance for an improvement.
        atol: $a \geq 0$, absolute tolerance (with both zero, any strict improvement counts).
        cooldown: decisions to wait after a reduction before counting again, $\geq 0$.
        accumulation_size: values averaged per decision, $\geq 1$ (1 for a
            validation metric; more for a noisy mini-batch loss).
        min_scale: $s_{min} \in [0, 1]$, the scale never goes below it.
        mode: `'min'` for a loss, `'max'` for an accuracy or a likelihood.

    Returns:
        A `GradientTransformation` with state `ReduceOnPlateauState(scale, best_value,
        plateau_count, cooldown_count, count, avg_value)`; its `update` needs `value=`.

    Raises:
        ValueError, TypeError: for an argument out of range or of the wrong kind.
    """
    fn = "reduce_on_plateau"
    checks.check_range(fn, "factor", factor, 0.0, 1.0, low_open=True, high_open=True)
    checks.check_int(fn, "patience", patience, 1, traced=True)
    checks.check_non_negative(fn, "rtol", rtol)
    checks.check_non_negative(fn, "atol", atol)
    checks.check_int(fn, "cooldown", cooldown, 0, traced=True)
    checks.check_int(fn, "accumulation_size", accumulation_size, 1, traced=True)
    checks.check_range(fn, "min_scale", min_scale, 0.0, 1.0)
    if mode not in ("min", "max"):
        raise ValueError(f"{fn}: mode must be 'min' or 'max', got {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    f32 = jnp.float32

    def init(params):
        del params
        return ReduceOnPlateauState(
            scale=jnp.ones([], f32),
            best_value=jnp.asarray(sign * jnp.inf, f32),
            plateau_count=numerics.zero_count(),
            cooldown_count=numerics.zero_count(),
            count=numerics.zero_count(),
            avg_value=jnp.zeros([], f32),
        )

    def decide(state: ReduceOnPlateauState) -> ReduceOnPlateauState:
        value, best = state.avg_value, state.best_value
        tolerance = jnp.asarray(rtol, f32) * jnp.abs(best) + jnp.asarray(atol, f32)
        bar = jnp.where(jnp.isinf(best), best, best - sign * tolerance)
        improved = sign * value < sign * bar
        best = jnp.where(improved, value, best)
        plateau = jnp.where(improved, 0, numerics.safe_increment(state.plateau_count))
        cooling = state.cooldown_count > 0
        reduce = jnp.logical_and(jnp.logical_not(cooling), plateau >= patience)
        reduced = jnp.maximum(state.scale * jnp.asarray(factor, f32), jnp.asarray(min_scale, f32))
        return state._replace(  # keeps the caller's class (optax's state is accepted)
            scale=jnp.where(reduce, reduced, state.scale),
            best_value=best,
            plateau_count=jnp.where(cooling | reduce, 0, plateau).astype(jnp.int32),
            cooldown_count=jnp.where(
                cooling, state.cooldown_count - 1, jnp.where(reduce, cooldown, 0)
            ).astype(jnp.int32),
            count=numerics.zero_count(),
            avg_value=jnp.zeros([], f32),
        )

    def update(updates, state, params=None, *, value: ArrayLike | None = None, **extra_args):
        del params, extra_args
        if value is None:
            raise checks.missing_argument(
                fn, "the monitored metric value", "opt.update(grads, state, params, value=loss)"
            )
        if jnp.ndim(value) != 0:
            raise ValueError(f"{fn}: value must be a scalar, got shape {jnp.shape(value)}")
        checks.check_state(fn, state, ReduceOnPlateauState)
        count = numerics.safe_increment(state.count)
        total = state.count.astype(f32) * state.avg_value + jnp.asarray(value).astype(f32)
        mean = total / count.astype(f32)
        state = state._replace(count=count, avg_value=mean)
        ready = count >= accumulation_size
        decided = decide(state)
        state = jax.tree.map(lambda d, s: jnp.where(ready, d, s), decided, state)
        out = jax.tree.map(lambda g: numerics.scale_leaf(g, state.scale), updates)
        return out, state

    return GradientTransformation(init, update)
