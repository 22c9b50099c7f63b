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

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.typing import ArrayLike, DTypeLike

from gradtx import numerics
from gradtx.base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    as_transformation,
    factory,
)
from gradtx.checks import canonicalize_dtype, check_bool, check_int, check_tree_match
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
    inner: GradientTransformation,
    every_k: int | Callable[[Array], ArrayLike],
    *,
    accumulator_dtype: DTypeLike | None = None,
    use_grad_mean: bool = True,
    should_skip_update_fn: Callable[[Updates, Array, Params | None], tuple[Array, Any]]
    | None = None,
) -> GradientTransformation:
    r"""Applies `inner` once per `every_k` micro-batches, to the mean of their gradients.

    With $n$ = `mini_step` before the update and $g$ the incoming update,

    $$\bar g \leftarrow \bar g + \frac{g - \bar g}{n + 1}$$

    (a running mean, so $\bar g = \frac{1}{k}\sum_i g_i$ after $k$ micro-batches without ever
    forming the sum). On micro-batches $1, \dots, k-1$ of a cycle it emits zeros and leaves
    `inner`'s state alone; on the $k$-th it emits `inner.update(`$\bar g$`, ...)`, advances
    `inner`'s state and resets $\bar g$ to 0. `inner` runs inside a `lax.cond`, so it costs
    nothing on the other micro-steps. Same semantics as `optax.MultiSteps(inner, every_k)`
    (`gradtx.MultiSteps` is that class, built on this piece), whose `has_updated` is
    `has_updated` here.

    With `use_grad_mean=False` the micro-batch gradients are summed instead,
    $\bar g \leftarrow \bar g + g$. With a `should_skip_update_fn`, a micro-batch it
    rejects is as if it never happened: zeros are emitted and nothing changes but
    `skip_state`, which stores the function's second output.

    Args:
        inner: the transformation to apply to the mean gradient (gradtx or optax).
        every_k: $k \geq 1$, micro-batches per inner step: an int, or a schedule
            `gradient_step -> k` (read at the start of each cycle, so the batch size can
            grow over training; a float result is rounded to the nearest integer).
        accumulator_dtype: dtype of the stored $\bar g$; `None` (default) keeps each param's
            dtype, as everywhere in gradtx. `jnp.float32` averages bfloat16 gradients in
            float32, as `optax.MultiSteps` does by default (complex leaves get the complex
            dtype of that width, so no imaginary part is dropped). $\bar g$ is cast back to
            the gradients' dtype before `inner` sees it.
        use_grad_mean: average the micro-batch gradients (default) or, with `False`, sum
            them.
        should_skip_update_fn: optional `(updates, gradient_step, params) -> (skip,
            skip_state)` (optax's `ShouldSkipUpdateFunction`, e.g. `skip_not_finite`), with
            `skip` a bool scalar; called at init on zero updates for the initial
            `skip_state`.

    Returns:
        A transformation that prints as `accumulate(<inner>, every_k=k)`; its state is an
        `MultiStepsState` (optax's layout; `AccumulateState` is the same class).

    Raises:
        TypeError: when `inner` is not a gradient transformation, `every_k` neither an int
            nor a schedule, `use_grad_mean` not a bool or `should_skip_update_fn` not
            callable.
        ValueError: when `every_k < 1`; at update, when `should_skip_update_fn` does not
            return a bool scalar.
    """
    fn = "accumulate"
    inner = as_transformation(fn, "inner", inner)
    if not callable(every_k):
        check_int(fn, "every_k", every_k, 1)
    dtype = canonicalize_dtype(fn, "accumulator_dtype", accumulator_dtype)
    check_bool(fn, "use_grad_mean", use_grad_mean)
    if should_skip_update_fn is not None and not callable(should_skip_update_fn):
        raise TypeError(
            f"{fn}: should_skip_update_fn must be None or a function (updates, "
            f"gradient_step, params) -> (skip, skip_state), got {should_skip_update_fn!r}"
        )

    def acc_dtype(leaf: Any) -> jnp.dtype:
        leaf_dtype = jnp.dtype(jnp.result_type(leaf))
        if dtype is None:
            return leaf_dtype
        if numerics.is_complex(leaf_dtype) and not numerics.is_complex(dtype):
            return numerics.compute_dtype(jnp.zeros((), dtype), jnp.zeros((), leaf_dtype))
        return dtype

    def k_at(gradient_step: Array) -> Array:
        """$k$ for the cycle that starts at `gradient_step`, as an int32 scalar."""
        if not callable(every_k):
            return jnp.asarray(every_k, jnp.int32)
        k = jnp.asarray(every_k(gradient_step))
        if not jnp.issubdtype(k.dtype, jnp.integer):
            k = jnp.round(k)
        return k.astype(jnp.int32)

    def skip_of(updates: Updates, gradient_step: Array, params: Params | None):
        if should_skip_update_fn is None:
            return None, ()
        skip, skip_state = should_skip_update_fn(updates, gradient_step, params)
        skip = jnp.asarray(skip)
        if (skip.dtype, skip.shape) != (jnp.bool_, ()):
            raise ValueError(
                f"{fn}: should_skip_update_fn must return a bool scalar as its first output, "
                f"got an array of dtype {skip.dtype} and shape {skip.shape}"
            )
        return skip, skip_state

    def init(params: Params) -> AccumulateState:
        acc = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), acc_dtype(p)), params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        _, skip_state = skip_of(zeros, zero_count(), params)
        return MultiStepsState(zero_count(), zero_count(), inner.init(params), acc, skip_state)

    def update(
        updates: Updates, state: AccumulateState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, AccumulateState]:
        updates = numerics.as_arrays(updates)
        check_tree_match(fn, updates, state.acc_grads, "updates", "state.acc_grads")
        n = state.mini_step
        skip, skip_state = skip_of(updates, state.gradient_step, params)

        def running_mean(g: Array, a: Array) -> Array:
            return a + (g.astype(a.dtype) - a) / (n + 1).astype(a.dtype)

        def running_sum(g: Array, a: Array) -> Array:
            return a + g.astype(a.dtype)

        acc = jax.tree.map(running_mean if use_grad_mean else running_sum, updates, state.acc_grads)
        emit = n == k_at(state.gradient_step) - 1
        if skip is not None:  # a rejected micro-batch leaves everything as it was
            acc = jax.tree.map(lambda new, old: jnp.where(skip, old, new), acc, state.acc_grads)
            emit = jnp.logical_and(emit, jnp.logical_not(skip))
            n_next = jnp.where(skip, n, n + 1)
        else:
            n_next = n + 1

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
            mini_step=jnp.where(emit, jnp.zeros_like(n), n_next),
            gradient_step=jnp.where(emit, safe_increment(state.gradient_step), state.gradient_step),
            inner_opt_state=inner_state,
            acc_grads=acc,
            skip_state=state.skip_state if should_skip_update_fn is None else skip_state,
        )
        return new_updates, new_state

    return GradientTransformation(init, update)


def has_updated(state: AccumulateState) -> Array:
    """True right after an inner step: the last `update` emitted a real (non-zero) update.

    Args:
        state: the state of an `accumulate` transformation.
    """
    return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)
