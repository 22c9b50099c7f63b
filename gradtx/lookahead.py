r"""Lookahead: $k$ steps forward with a fast optimiser, one step back towards slow weights.

Zhang et al., *Lookahead Optimizer: k steps forward, 1 step back* (2019),
https://arxiv.org/abs/1907.08610. The params are a pair `LookaheadParams(fast, slow)`:
gradients are taken at `fast`, evaluation uses `slow`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, OptState, Params, Updates, factory

__all__ = ["LookaheadParams", "LookaheadState", "lookahead"]


class LookaheadState(NamedTuple):
    """The state of `lookahead` (optax's layout)."""

    fast_state: OptState  # the fast optimiser's state
    steps_since_sync: Array  # fast steps since the last synchronisation, in [0, k)


class LookaheadParams(NamedTuple):
    """The pair of parameters lookahead moves: take gradients at `fast`, evaluate `slow`.

    Attributes:
        fast: the fast parameters (compute the gradients with these).
        slow: the slow parameters (use these for evaluation and inference).
    """

    fast: Params
    slow: Params

    @classmethod
    def init_synced(cls, params: Params) -> LookaheadParams:
        """Both fast and slow parameters equal to `params`.

        Args:
            params: the initial parameters.
        """
        return cls(slow=params, fast=params)


@factory
def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Steps `fast` with `fast_optimizer`; every `sync_period` steps pulls `slow` towards
    `fast` and restarts `fast` from `slow`.

    With $\Delta_t$ = `fast_optimizer`'s update at $\phi_t$ (fast), $\theta_t$ (slow),
    $\alpha$ = `slow_step_size`, and $s_t = 1$ on every $k$-th step (else 0),
    $d_t = \phi_t + \Delta_t - \theta_t$:

    $$u^{\text{slow}}_t = s_t\, \alpha\, d_t, \qquad
    u^{\text{fast}}_t = \Delta_t - s_t (1 - \alpha)\, d_t$$

    so between synchronisations $\phi$ moves by $\Delta$ and $\theta$ stays; on a
    synchronisation $\theta \leftarrow \theta + \alpha(\phi + \Delta - \theta)$ and
    $\phi \leftarrow \theta$. Emits `LookaheadParams(fast=`$u^{\text{fast}}$`, slow=`
    $u^{\text{slow}}$`)` (in the class of `params`, optax's `LookaheadParams` included), to be
    added to the params unchanged by `apply_updates`; stores the
    fast optimiser's state and the steps since the last synchronisation. With
    `reset_state=True` the fast state is set back to `fast_optimizer.init(fast)` on each
    synchronisation. Extra keyword arguments of `update` reach `fast_optimizer`.

    Args:
        fast_optimizer: the inner optimiser, run on the fast params (gradtx or optax).
        sync_period: $k \geq 1$, fast steps per synchronisation.
        slow_step_size: $\alpha$, a finite real number (the paper uses $(0, 1]$).
        reset_state: reinitialise the fast optimiser's state on each synchronisation.

    Returns:
        A `GradientTransformation` with state `LookaheadState(fast_state, steps_since_sync)`;
        its `update` takes the gradients at `params.fast` and `params` as a
        `LookaheadParams`.

    Raises:
        TypeError, ValueError: when `sync_period` is not an integer $\geq 1$,
            `slow_step_size` not a finite real number, or `reset_state` not a bool; at update,
            when `params` is not a `LookaheadParams`.
    """
    fn = "lookahead"
    tx = base.as_transformation(fn, "fast_optimizer", fast_optimizer)
    sync_period = checks.check_int(fn, "sync_period", sync_period, 1, traced=True)
    checks.check_range(fn, "slow_step_size", slow_step_size)
    x = checks.as_float(fn, "slow_step_size", slow_step_size)
    if x is not None and not math.isfinite(x):
        raise ValueError(f"{fn}: slow_step_size must be a finite real number, got {x!r}")
    checks.check_bool(fn, "reset_state", reset_state)

    def init(params: Params) -> LookaheadState:
        # Plain params are taken as the fast ones (as optax does, without its log warning).
        fast = getattr(params, "fast", None)
        return LookaheadState(tx.init(params if fast is None else fast), numerics.zero_count())

    def update(
        updates: Updates,
        state: LookaheadState,
        params: LookaheadParams | None = None,
        **extra_args: Any,
    ) -> tuple[LookaheadParams, LookaheadState]:
        if params is None or not (hasattr(params, "fast") and hasattr(params, "slow")):
            raise checks.missing_argument(
                fn,
                "params as a LookaheadParams(fast, slow)",
                "opt.update(grads, state, params) with params = "
                "LookaheadParams.init_synced(params) at the start",
            )
        fast_updates, fast_state = tx.update(updates, state.fast_state, params.fast, **extra_args)
        sync = state.steps_since_sync == sync_period - 1

        def difference(f: Array, u: Array, s: Array) -> Array:
            return f + u - s

        def slow_update(d: Array) -> Array:
            alpha = numerics.as_compute(slow_step_size, d.dtype)
            return jnp.where(sync, alpha * d, jnp.zeros_like(d))

        def fast_update(u: Array, d: Array) -> Array:
            beta = 1 - numerics.as_compute(slow_step_size, d.dtype)
            return u - jnp.where(sync, beta * d, jnp.zeros_like(d))

        diff = jax.tree.map(difference, params.fast, fast_updates, params.slow)
        fast_u = jax.tree.map(fast_update, fast_updates, diff)
        slow_u = jax.tree.map(slow_update, diff)
        # In the params' own pair class (optax's `LookaheadParams` too), so they add up.
        pair = params._replace if hasattr(params, "_replace") else LookaheadParams
        new_updates = pair(fast=fast_u, slow=slow_u)
        if reset_state:
            initial = tx.init(params.fast)
            fast_state = jax.tree.map(
                lambda current, start: jnp.where(sync, start, current).astype(current.dtype),
                numerics.in_structure_of(fast_state, state.fast_state),
                numerics.in_structure_of(initial, state.fast_state),
            )
        steps = (state.steps_since_sync + 1) % sync_period
        return new_updates, LookaheadState(fast_state, steps.astype(jnp.int32))

    return GradientTransformation(init, update)
