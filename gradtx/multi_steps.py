r"""`MultiSteps`: optax's class for gradient accumulation, over `gradtx.accumulate`.

optax spells gradient accumulation as a class whose `gradient_transformation()` is the
transformation; gradtx spells it as the piece `accumulate` (IDEAS §1). `MultiSteps` is that
class, argument for argument, and every call goes to one `accumulate`:

```python
opt = gradtx.MultiSteps(gradtx.adam(1e-3), every_k_schedule=4)
tx = opt.gradient_transformation()   # accumulate(chain(scale_by_adam(...), ...), 4, ...)
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike, DTypeLike

from gradtx import base, checks
from gradtx.accumulation import MultiStepsState, accumulate, has_updated
from gradtx.base import GradientTransformation, Params, PyTree, Updates

__all__ = ["MultiSteps", "ShouldSkipUpdateFunction"]


class ShouldSkipUpdateFunction(Protocol):
    """`(updates, gradient_step, params) -> (skip, skip_state)`: whether `MultiSteps` drops
    a micro-batch, e.g. `skip_not_finite` or `functools.partial(skip_large_updates,
    max_squared_norm=...)`.

    `skip` is a bool scalar (True: as if the micro-batch never happened); `skip_state` is
    any pytree, stored in `MultiStepsState.skip_state` (for logging).
    """

    def __call__(
        self, updates: Updates, gradient_step: ArrayLike, params: Params | None
    ) -> tuple[ArrayLike, PyTree]: ...


class MultiSteps:
    r"""Accumulates the gradients of `every_k_schedule` micro-batches, then steps `opt` once.

    On the micro-batches of a cycle it emits zeros and leaves `opt`'s state alone; on the
    last one it emits `opt`'s update of the accumulated gradient

    $$\bar g = \frac{1}{k} \sum_{i=1}^{k} g_i \quad (\text{or } \textstyle\sum_i g_i
    \text{ with } \texttt{use\_grad\_mean=False})$$

    and starts a new cycle. Built on `gradtx.accumulate` (see it for the rule and the state);
    the state is `MultiStepsState(mini_step, gradient_step, inner_opt_state, acc_grads,
    skip_state)`, optax's layout, so an optax checkpoint restores into it.

    Args:
        opt: the wrapped optimiser (gradtx or optax).
        every_k_schedule: $k \geq 1$: an int, or a function `gradient_step -> k` that
            varies the number of micro-batches (the batch size) over training.
        use_grad_mean: average the micro-batch gradients (default) or sum them.
        should_skip_update_fn: optional `ShouldSkipUpdateFunction`; a micro-batch it rejects
            is dropped (zeros emitted, nothing but `skip_state` changes), e.g.
            `skip_not_finite`.
        accumulator_dtype: dtype of the accumulated gradients, float32 by default as in
            optax (`None` keeps each param's dtype; complex params get the complex dtype of
            the accumulator's width).

    Raises:
        TypeError: when `opt` is not a transformation, `every_k_schedule` neither an int nor
            a function, `use_grad_mean` not a bool or `should_skip_update_fn` not callable.
        ValueError: when an int `every_k_schedule` is below 1.
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[ArrayLike], ArrayLike],
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
        accumulator_dtype: DTypeLike | None = jnp.float32,
    ):
        fn = "MultiSteps"
        self._opt = base.as_transformation(fn, "opt", opt)
        if not callable(every_k_schedule):
            checks.check_int(fn, "every_k_schedule", every_k_schedule, 1)
        checks.check_bool(fn, "use_grad_mean", use_grad_mean)
        if should_skip_update_fn is not None and not callable(should_skip_update_fn):
            raise TypeError(
                f"{fn}: should_skip_update_fn must be None or a function (updates, "
                f"gradient_step, params) -> (skip, skip_state), got {should_skip_update_fn!r}"
            )
        self._tx = accumulate(
            self._opt,
            every_k_schedule,
            accumulator_dtype=accumulator_dtype,
            use_grad_mean=use_grad_mean,
            should_skip_update_fn=should_skip_update_fn,
        )

    @property
    def inner_opt(self) -> GradientTransformation:
        """The wrapped optimiser (as a transformation whose `update` takes extra arguments)."""
        return self._opt

    def init(self, params: Params) -> MultiStepsState:
        """The initial `MultiStepsState`: zero counters, `opt.init(params)`, zero
        accumulators, and `should_skip_update_fn`'s state on zero updates (or `()`).

        Args:
            params: the parameters.
        """
        return self._tx.init(params)

    def update(
        self,
        updates: Updates,
        state: MultiStepsState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, MultiStepsState]:
        """Accumulates `updates`; emits `opt`'s update on the last micro-batch of a cycle and
        zeros on the others. Extra keyword arguments reach `opt`.

        Args:
            updates: the micro-batch's gradients.
            state: the `MultiStepsState` from `init` or the last `update`.
            params: the parameters, passed on to `opt` and `should_skip_update_fn`.
            **extra_args: extra arguments for `opt`'s update (e.g. `value=`).
        """
        return self._tx.update(updates, state, params, **extra_args)

    def has_updated(self, state: MultiStepsState | PyTree) -> Array:
        """True right after a cycle ended: the last `update` emitted `opt`'s update.

        Args:
            state: a `MultiStepsState` (optax's restored one too).
        """
        return has_updated(state)

    def gradient_transformation(self) -> GradientTransformation:
        """The transformation itself: `accumulate(opt, every_k_schedule, ...)`, which prints
        as that call and exports with `gradtx.to_config`."""
        return self._tx
