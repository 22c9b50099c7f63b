r"""Conditional steps: run a transformation, or let updates through, only on some steps.

* `conditionally_transform(inner, should_transform_fn)`: `inner` where the condition holds,
  the updates unchanged (and `inner`'s state kept) elsewhere.
* `conditionally_mask(inner, should_transform_fn)`: the same, with zeros elsewhere.
* `apply_every(k)`: sums $k$ updates and emits the sum every $k$-th step, zeros between.
* `skip_not_finite`, `skip_large_updates`: the tests `MultiSteps` can be given
  (`should_skip_update_fn`) to drop a micro-batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import Array, lax

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, OptState, Params, PyTree, Updates, factory
from gradtx.spec import recorded

__all__ = [
    "ApplyEvery",
    "ConditionFn",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "apply_every",
    "conditionally_mask",
    "conditionally_transform",
    "every_k_steps",
    "skip_large_updates",
    "skip_not_finite",
]


class ConditionFn(Protocol):
    """`should_transform_fn(step, **extra_args) -> bool[]`: whether to run the inner step.

    `step` is the number of earlier `update` calls (an int32 scalar); the extra arguments of
    `update` are passed too when the wrapper is built with `forward_extra_args=True`.
    """

    def __call__(self, step: Array, **extra_args: Any) -> Array: ...


class ConditionallyTransformState(NamedTuple):
    """The state of `conditionally_transform` (optax's layout)."""

    inner_state: OptState  # the inner transformation's state, as of its last step
    step: Array  # update calls so far, int32


class ConditionallyMaskState(NamedTuple):
    """The state of `conditionally_mask` (optax's layout: the step comes first here)."""

    step: Array  # update calls so far, int32
    inner_state: OptState  # the inner transformation's state, as of its last step


def _condition(fn: str, should_transform_fn: Any, step: Array, extra_args: dict) -> Array:
    """The condition's value at `step`, checked to be a bool (or integer) scalar."""
    pred = jnp.asarray(should_transform_fn(step, **extra_args))
    if pred.shape != () or not (pred.dtype == jnp.bool_ or jnp.issubdtype(pred.dtype, jnp.integer)):
        raise TypeError(
            f"{fn}: should_transform_fn must return a bool scalar, got an array of dtype "
            f"{pred.dtype} and shape {pred.shape}; return e.g. `step % 2 == 0`"
        )
    return pred


def _conditional(fn: str, inner: Any, should_transform_fn: Any, forward_extra_args: bool, rest):
    """`(init, update)` running `inner` where the condition holds and `rest(updates)` (the
    updates passed on) elsewhere; the inner state is kept on the other steps."""
    tx = base.as_transformation(fn, "inner", inner)
    if not callable(should_transform_fn):
        raise TypeError(
            f"{fn}: should_transform_fn must be a function step -> bool, got "
            f"{type(should_transform_fn).__name__}"
        )
    checks.check_bool(fn, "forward_extra_args", forward_extra_args)

    def step_of(updates, inner_state, step, params, extra_args):
        pred = _condition(fn, should_transform_fn, step, extra_args if forward_extra_args else {})

        def transform(_):
            new_updates, new_inner = tx.update(updates, inner_state, params, **extra_args)
            new_inner = jax.tree.map(
                lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)),
                numerics.in_structure_of(new_inner, inner_state),
                inner_state,
            )
            return new_updates, new_inner

        def keep(_):
            return rest(updates), inner_state

        return lax.cond(pred, transform, keep, None)

    return tx, step_of


@factory
def conditionally_transform(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformation:
    r"""Runs `inner` on the steps where `should_transform_fn(step)` holds; elsewhere passes
    the updates through unchanged and keeps `inner`'s state.

    $$u_t = \begin{cases} \text{inner}(g_t) & c(t) \\ g_t & \text{otherwise} \end{cases}$$

    with $t$ the number of earlier `update` calls. Emits $u_t$; stores $t + 1$ and `inner`'s
    state, advanced only on the steps that ran it (inside a `lax.cond`, so the other steps
    cost nothing). For zeros on the other steps use `conditionally_mask`.

    Args:
        inner: the transformation to run on some steps (gradtx or optax).
        should_transform_fn: `step -> bool[]` (a `ConditionFn`), jittable.
        forward_extra_args: also pass `update`'s extra keyword arguments to
            `should_transform_fn`.

    Returns:
        A `GradientTransformation` with state `ConditionallyTransformState(inner_state,
        step)`.

    Raises:
        TypeError: when `inner` is not a transformation, `should_transform_fn` is not callable,
            `forward_extra_args` is not a bool, or (at update) the condition is not a bool
            scalar.
    """
    tx, step_of = _conditional(
        "conditionally_transform", inner, should_transform_fn, forward_extra_args, lambda u: u
    )

    def init(params: Params) -> ConditionallyTransformState:
        return ConditionallyTransformState(tx.init(params), numerics.zero_count())

    def update(
        updates: Updates,
        state: ConditionallyTransformState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ConditionallyTransformState]:
        new_updates, inner_state = step_of(
            updates, state.inner_state, state.step, params, extra_args
        )
        step = numerics.safe_increment(state.step)
        return new_updates, ConditionallyTransformState(inner_state, step)

    return GradientTransformation(init, update)


@factory
def conditionally_mask(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformation:
    r"""Runs `inner` on the steps where `should_transform_fn(step)` holds; elsewhere emits
    zeros and keeps `inner`'s state.

    $$u_t = \begin{cases} \text{inner}(g_t) & c(t) \\ 0 & \text{otherwise} \end{cases}$$

    with $t$ the number of earlier `update` calls. Emits $u_t$; stores $t + 1$ and `inner`'s
    state, advanced only on the steps that ran it (inside a `lax.cond`). To pass the updates
    through unchanged instead, use `conditionally_transform`.

    Args:
        inner: the transformation to run on some steps (gradtx or optax).
        should_transform_fn: `step -> bool[]` (a `ConditionFn`), jittable.
        forward_extra_args: also pass `update`'s extra keyword arguments to
            `should_transform_fn`.

    Returns:
        A `GradientTransformation` with state `ConditionallyMaskState(step, inner_state)`.

    Raises:
        TypeError: when `inner` is not a transformation, `should_transform_fn` is not callable,
            `forward_extra_args` is not a bool, or (at update) the condition is not a bool
            scalar.
    """
    tx, step_of = _conditional(
        "conditionally_mask",
        inner,
        should_transform_fn,
        forward_extra_args,
        lambda u: jax.tree.map(jnp.zeros_like, u),
    )

    def init(params: Params) -> ConditionallyMaskState:
        return ConditionallyMaskState(numerics.zero_count(), tx.init(params))

    def update(
        updates: Updates,
        state: ConditionallyMaskState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ConditionallyMaskState]:
        new_updates, inner_state = step_of(
            updates, state.inner_state, state.step, params, extra_args
        )
        step = numerics.safe_increment(state.step)
        return new_updates, ConditionallyMaskState(step, inner_state)

    return GradientTransformation(init, update)


class ApplyEvery(NamedTuple):
    """The state of `apply_every` (optax's name and layout)."""

    count: Array  # type: ignore[assignment]  # steps into the current cycle, in [0, k)
    grad_acc: Updates  # the sum of this cycle's updates (same tree and dtypes as params)


@factory
def apply_every(k: int = 1) -> GradientTransformation:
    r"""Sums the updates of $k$ steps and emits the sum on every $k$-th step, zeros between.

    With $c = t \bmod k$,

    $$A_t = \begin{cases} g_t & c = 0 \\ A_{t-1} + g_t & \text{otherwise} \end{cases}
    \qquad u_t = \begin{cases} A_t & c = k - 1 \\ 0 & \text{otherwise} \end{cases}$$

    Emits $u_t$; stores $c + 1 \bmod k$ and $A_t$. Only this piece waits: pieces chained
    before it still step every time, so `chain(adam(...), apply_every(2))` is not Adam on
    twice the batch; for that use `MultiSteps` (or `accumulate`), which steps the inner
    optimiser once per $k$ micro-batches on their mean.

    Args:
        k: $k \geq 1$, steps per emitted sum (an int; a traced one from `inject_hyperparams`
            is taken as it is).

    Returns:
        A `GradientTransformation` with state `ApplyEvery(count, grad_acc)`.

    Raises:
        TypeError, ValueError: when `k` is not an integer $\geq 1$.
    """
    k = checks.check_int("apply_every", "k", k, 1, traced=True)

    def init(params: Params) -> ApplyEvery:
        acc = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
        return ApplyEvery(numerics.zero_count(), acc)

    def update(
        updates: Updates, state: ApplyEvery, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, ApplyEvery]:
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_tree_match("apply_every", updates, state.grad_acc, "updates", "state.grad_acc")
        c = state.count % k
        grad_acc = jax.tree.map(
            lambda g, a: jnp.where(c != 0, a.astype(g.dtype) + g, g), updates, state.grad_acc
        )
        emit = c == k - 1
        out = jax.tree.map(lambda a: jnp.where(emit, a, jnp.zeros_like(a)), grad_acc)
        count = numerics.safe_increment(state.count) % k
        return out, ApplyEvery(count.astype(jnp.int32), grad_acc)

    return GradientTransformation(init, update)


def skip_not_finite(
    updates: Updates, gradient_step: Array, params: Params | None
) -> tuple[Array, PyTree]:
    r"""Whether `updates` hold a NaN or an Inf: a `should_skip_update_fn` for `MultiSteps`.

    $$\text{skip} = \big(\#\{i : g_i \notin \mathbb{R}\} > 0\big)$$

    (for complex leaves, a NaN or Inf in either part).

    Args:
        updates: the micro-batch's updates.
        gradient_step: the inner steps taken so far (unused).
        params: the params, if given (unused).

    Returns:
        `(should_skip, {"should_skip": should_skip, "num_not_finite": n})`: a bool scalar and
        what `MultiSteps` stores as `skip_state` (`n` an int32 scalar).
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(g)).astype(jnp.int32) for g in jax.tree.leaves(updates)]
    num_not_finite = jnp.sum(jnp.stack(counts)) if counts else jnp.zeros([], jnp.int32)
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


def skip_large_updates(
    updates: Updates, gradient_step: Array, params: Params | None, max_squared_norm: Any
) -> tuple[Array, PyTree]:
    r"""Whether $\|g\|^2 \geq$ `max_squared_norm` (or is NaN): a `should_skip_update_fn` for
    `MultiSteps`, e.g. `functools.partial(skip_large_updates, max_squared_norm=42.0)`.

    $$\|g\|^2 = \sum_i |g_i|^2, \qquad \text{skip} = \lnot\big(\|g\|^2 < M\big)$$

    The sum is taken in float32 (float64 for 64-bit leaves), and with $|g_i|^2$ for complex
    leaves (optax squares them, which is complex).

    Args:
        updates: the micro-batch's updates.
        gradient_step: the inner steps taken so far (unused).
        params: the params, if given (unused).
        max_squared_norm: $M$, the largest squared global norm accepted.

    Returns:
        `(should_skip, {"should_skip": should_skip, "norm_squared": n})`: a bool scalar and
        what `MultiSteps` stores as `skip_state`.

    Raises:
        TypeError: when `max_squared_norm` is not a real number.
    """
    del gradient_step, params
    checks.as_float("skip_large_updates", "max_squared_norm", max_squared_norm)
    leaves = jax.tree.leaves(updates)
    dtype = numerics.real_dtype(numerics.compute_dtype(*leaves)) if leaves else jnp.float32
    sums = [jnp.sum(numerics.abs_sq(numerics.cast(g, numerics.compute_dtype(g)))) for g in leaves]
    norm_sq = jnp.sum(jnp.stack([s.astype(dtype) for s in sums])) if sums else jnp.zeros([], dtype)
    should_skip = jnp.logical_not(norm_sq < numerics.as_compute(max_squared_norm, dtype))
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


@recorded
def every_k_steps(k: int, offset: int = 0) -> ConditionFn:
    r"""The condition $t \bmod k = \text{offset}$, for `conditionally_transform` and
    `conditionally_mask`: `every_k_steps(4)` holds on steps 0, 4, 8, ...

    The same as `lambda step: step % k == offset`, but printable and exported by
    `gradtx.to_config` (a lambda has no config).

    Args:
        k: $k \geq 1$, the period in steps.
        offset: the step in each period where the condition holds, in $[0, k)$.

    Returns:
        A `ConditionFn` `step -> bool[]` (extra keyword arguments are ignored).

    Raises:
        TypeError, ValueError: when `k` is not an integer $\geq 1$ or `offset` not one in
            $[0, k)$.
    """
    fn = "every_k_steps"
    k = checks.check_int(fn, "k", k, 1)
    offset = checks.check_int(fn, "offset", offset, 0)
    if offset >= k:
        raise ValueError(f"{fn}: offset must be an integer in [0, {k}), got {offset}")

    def condition(step: Array, **extra_args: Any) -> Array:
        del extra_args
        return jnp.asarray(step) % k == offset

    return condition
