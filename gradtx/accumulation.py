r"""Gradient accumulation: one optimiser step per $k$ micro-batches (IDEAS §1).

When the batch that should drive a step does not fit in device memory, split it into $k$
micro-batches, compute their gradients one at a time, and step on their mean:

$$\bar g = \frac{1}{k} \sum_{i=1}^{k} g_i = \nabla_\theta \frac{1}{k B} \sum_{x \in X} \ell(x)
\quad \text{for } k \text{ micro-batches of } B \text{ examples each,}$$

which is exactly the gradient of the mean loss on the concatenated batch of $kB$ examples.
optax calls the same idea `MultiSteps`; `accumulate` follows its semantics (running mean,
zero updates between steps, the inner state untouched until the $k$-th micro-batch).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import DTypeLike

from gradtx import numerics
from gradtx.base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    as_transformation,
    factory,
)
from gradtx.checks import canonicalize_dtype, check_int, check_tree_match
from gradtx.numerics import safe_increment, zero_count

__all__ = ["AccumulateState", "MultiStepsState", "accumulate", "has_updated"]


class MultiStepsState(NamedTuple):
    """The state of `accumulate`: optax's `MultiStepsState`, field for field.

    Attributes:
        mini_step: micro-batches accumulated since the last inner step, in $[0, k)$.
        gradient_step: inner steps taken so far (saturates instead of wrapping).
        inner_opt_state: the wrapped transformation's state, changed only on inner steps.
        acc_grads: the running mean of this cycle's micro-batch gradients (same tree as
            params, in the accumulator dtype).
        skip_state: the state of optax's `should_skip_update_fn`; `()` here.
    """

    mini_step: Array
    gradient_step: Array
    inner_opt_state: OptState
    acc_grads: Updates
    skip_state: Any = ()


AccumulateState = MultiStepsState  # gradtx's earlier name


@factory
def accumulate(
    inner: GradientTransformation, every_k: int, *, accumulator_dtype: DTypeLike | None = None
) -> GradientTransformation:
    r"""Applies `inner` once per `every_k` micro-batches, to the mean of their gradients.

    With $n$ = `mini_step` before the update and $g$ the incoming update,

    $$\bar g \leftarrow \bar g + \frac{g - \bar g}{n + 1}$$

    (a running mean, so $\bar g = \frac{1}{k}\sum_i g_i$ after $k$ micro-batches without ever
    forming the sum). On micro-batches $1, \dots, k-1$ of a cycle it emits zeros and leaves
    `inner`'s state alone; on the $k$-th it emits `inner.update(`$\bar g$`, ...)`, advances
    `inner`'s state and resets $\bar g$ to 0. `inner` runs inside a `lax.cond`, so it costs
    nothing on the other micro-steps. Same semantics as `optax.MultiSteps(inner, every_k)`
    (with `use_grad_mean=True`), whose `has_updated` is `has_updated` here.

    Args:
        inner: the transformation to apply to the mean gradient (gradtx or optax).
        every_k: $k \geq 1$, micro-batches per inner step.
        accumulator_dtype: dtype of the stored $\bar g$; `None` (default) keeps each param's
            dtype, as everywhere in gradtx. `jnp.float32` averages bfloat16 gradients in
            float32, as `optax.MultiSteps` does by default. $\bar g$ is cast back to the
            gradients' dtype before `inner` sees it.

    Returns:
        A transformation that prints as `accumulate(<inner>, every_k=k)`; its state is an
        `MultiStepsState` (optax's layout; `AccumulateState` is the same class).

    Raises:
        TypeError: when `inner` is not a gradient transformation or `every_k` not an int.
        ValueError: when `every_k < 1`.
    """
    fn = "accumulate"
    inner = as_transformation(fn, "inner", inner)
    check_int(fn, "every_k", every_k, 1)
    dtype = canonicalize_dtype(fn, "accumulator_dtype", accumulator_dtype)

    def acc_dtype(leaf: Any) -> jnp.dtype:
        return jnp.dtype(jnp.result_type(leaf)) if dtype is None else dtype

    def init(params: Params) -> AccumulateState:
        acc = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), acc_dtype(p)), params)
        return MultiStepsState(zero_count(), zero_count(), inner.init(params), acc, ())

    def update(
        updates: Updates, state: AccumulateState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, AccumulateState]:
        updates = numerics.as_arrays(updates)
        check_tree_match(fn, updates, state.acc_grads, "updates", "state.acc_grads")
        n = state.mini_step

        def running_mean(g: Array, a: Array) -> Array:
            return a + (g.astype(a.dtype) - a) / (n + 1).astype(a.dtype)

        acc = jax.tree.map(running_mean, updates, state.acc_grads)
        emit = n == every_k - 1

        def inner_update(mean: Updates, inner_state: OptState) -> tuple[Updates, OptState]:
            return inner.update(mean, inner_state, params, **extra_args)

        def step(acc: Updates, inner_state: OptState) -> tuple[Updates, OptState, Updates]:
            mean = jax.tree.map(lambda a, g: a.astype(jnp.result_type(g)), acc, updates)
            new_updates, new_inner = inner_update(mean, inner_state)
            new_inner = jax.tree.map(
                lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)),
                numerics.in_structure_of(new_inner, inner_state),
                inner_state,
            )
            return new_updates, new_inner, jax.tree.map(jnp.zeros_like, acc)

        def hold(acc: Updates, inner_state: OptState) -> tuple[Updates, OptState, Updates]:
            mean = jax.tree.map(lambda a, g: a.astype(jnp.result_type(g)), acc, updates)
            shapes, _ = jax.eval_shape(inner_update, mean, inner_state)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            return zeros, inner_state, acc

        new_updates, inner_state, acc = lax.cond(emit, step, hold, acc, state.inner_opt_state)
        new_state = MultiStepsState(
            mini_step=jnp.where(emit, jnp.zeros_like(n), n + 1),
            gradient_step=jnp.where(emit, safe_increment(state.gradient_step), state.gradient_step),
            inner_opt_state=inner_state,
            acc_grads=acc,
            skip_state=state.skip_state,
        )
        return new_updates, new_state

    return GradientTransformation(init, update)


def has_updated(state: AccumulateState) -> Array:
    """True right after an inner step: the last `update` emitted a real (non-zero) update.

    Args:
        state: the state of an `accumulate` transformation.
    """
    return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)
