r"""Non-finite guards: keep NaN and Inf out of the parameters and the optimiser's moments.

* `apply_if_finite(inner, max_consecutive_errors)`: a step whose updates hold a
  NaN or an Inf is skipped whole (zero update, inner state kept), and counted.
* `zero_nans()`: replaces NaN coordinates by zero and flags the leaves that had any.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from gradtx import base, numerics
from gradtx.base import GradientTransformation, PyTree, factory


class ApplyIfFiniteState(NamedTuple):
    notfinite_count: Array  # non-finite steps in a row
    last_finite: Array  # whether the last step was finite
    total_notfinite: Array  # non-finite steps in all
    inner_state: PyTree  # the inner optimiser's state, as of the last applied step


class ZeroNansState(NamedTuple):
    found_nan: PyTree  # per leaf: whether the last updates had a NaN there


def all_finite(tree: PyTree) -> Array:
    """True when no leaf of `tree` holds a NaN or an Inf (True for an empty tree).

    Args:
        tree: a pytree of arrays.
    """
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


@factory
def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    r"""Runs `inner`, but skips any step whose updates are not all finite.

    A step is bad when the incoming updates $g_t$ or the updates emitted by
    `inner` hold a NaN or an Inf. A bad step emits zeros and keeps the inner
    state of the last good step, so nothing from it reaches the parameters or
    the moments. With $k$ the number of bad steps in a row:

    $$u_t = \begin{cases} \text{inner}(g_t) & \text{finite, or } k > K \\
        0 & \text{otherwise} \end{cases}$$

    After more than $K$ = `max_consecutive_errors` bad steps in a row the
    optimiser gives up and applies the step anyway (as optax does), so a run
    that has really diverged shows it. Stores $k$, whether the last step was
    finite, the total number of bad steps (applied or not) and the inner state;
    the fields are those of optax's `ApplyIfFiniteState`.

    Unlike optax, which checks the incoming updates only, the emitted updates
    are checked too (e.g. $0/0$ inside `inner`). The inner update is always
    computed and then selected, so the piece also works under `vmap`.

    Args:
        inner: the transformation to guard, e.g. `adam(1e-3)`.
        max_consecutive_errors: $K \geq 0$, bad steps in a row to skip.

    Returns:
        A `GradientTransformation` with state
        `ApplyIfFiniteState(notfinite_count, last_finite, total_notfinite, inner_state)`.

    Raises:
        TypeError, ValueError: if `max_consecutive_errors` is not an integer >= 0.
    """
    fn = "apply_if_finite"
    if isinstance(max_consecutive_errors, bool) or not isinstance(
        max_consecutive_errors, numbers.Integral
    ):
        raise TypeError(
            f"{fn}: max_consecutive_errors must be an integer >= 0, got {max_consecutive_errors!r}"
        )
    if max_consecutive_errors < 0:
        raise ValueError(
            f"{fn}: max_consecutive_errors must be an integer >= 0, got {max_consecutive_errors!r}"
        )
    tx = base.as_transformation(fn, "inner", inner)

    def init(params):
        return ApplyIfFiniteState(
            notfinite_count=numerics.zero_count(),
            last_finite=jnp.asarray(True),
            total_notfinite=numerics.zero_count(),
            inner_state=tx.init(params),
        )

    def update(updates, state, params=None, **extra_args):
        new_updates, new_inner = tx.update(updates, state.inner_state, params, **extra_args)
        finite = jnp.logical_and(all_finite(updates), all_finite(new_updates))
        notfinite_count = jnp.where(finite, 0, numerics.safe_increment(state.notfinite_count))
        accept = jnp.logical_or(finite, notfinite_count > max_consecutive_errors)
        out = jax.tree.map(lambda u: jnp.where(accept, u, jnp.zeros_like(u)), new_updates)
        inner_state = jax.tree.map(
            lambda new, old: jnp.where(accept, new, old),
            numerics.in_structure_of(new_inner, state.inner_state),
            state.inner_state,
        )
        total = jnp.where(
            finite, state.total_notfinite, numerics.safe_increment(state.total_notfinite)
        )
        return out, ApplyIfFiniteState(
            notfinite_count=notfinite_count.astype(jnp.int32),
            last_finite=finite,
            total_notfinite=total,
            inner_state=inner_state,
        )

    return GradientTransformation(init, update)


@factory
def zero_nans() -> GradientTransformation:
    r"""Replaces NaN coordinates by zero: $u_i = 0$ where $g_i$ is NaN, else $g_i$.

    Infs pass through (clip them, or guard the step with `apply_if_finite`).
    Emits the cleaned updates; stores, per leaf, whether the last updates had a
    NaN there (for logging; the update does not read it).

    Returns:
        A `GradientTransformation` with state `ZeroNansState(found_nan)`, the
        params' tree of boolean scalars (optax's `zero_nans`).
    """

    def init(params):
        return ZeroNansState(jax.tree.map(lambda p: jnp.asarray(False), params))

    def update(updates, state, params=None, **extra_args):
        del state, params, extra_args
        found = jax.tree.map(lambda g: jnp.any(jnp.isnan(g)), updates)
        out = jax.tree.map(lambda g: jnp.where(jnp.isnan(g), jnp.zeros_like(g), g), updates)
        return out, ZeroNansState(found)

    return GradientTransformation(init, update)
