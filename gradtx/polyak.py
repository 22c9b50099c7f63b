r"""Polyak's step size: the step that would reach a known lower bound $f^\star$ on a line.

$$s_t = \min\left(\frac{f(\theta_t) - f^\star}{\lVert g_t \rVert^2 + \epsilon},\
  \gamma_{\max}\right)$$

is the step along $-g_t$ at which the linear model $f(\theta_t) - s \lVert g_t \rVert^2$ of
the loss reaches $f^\star$ (IDEAS §9, with the learning rate read off the loss). The piece
needs the loss at each step: `opt.update(grads, state, params, value=loss)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import EmptyState, GradientTransformation, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.optimizers import sgd

_VARIANTS = ("sps", "sps+")
_TINY = float(jnp.finfo(float).eps)  # optax's threshold on the denominator


def _squared_norm(tree) -> jax.Array:
    r"""$\lVert g \rVert^2 = \sum_i |g_i|^2$ over every leaf, in float32 or wider."""
    leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.zeros([], jnp.float32)
    dtype = numerics.real_dtype(numerics.compute_dtype(*leaves))
    parts = [jnp.sum(numerics.abs_sq(numerics.cast(x, numerics.compute_dtype(x)))) for x in leaves]
    total = numerics.cast(parts[0], dtype)
    for part in parts[1:]:
        total = total + numerics.cast(part, dtype)
    return total


@factory
def scale_by_polyak(
    f_min: ArrayLike = 0.0,
    max_learning_rate: ArrayLike = 1.0,
    eps: ArrayLike = 0.0,
    variant: str = "sps",
) -> GradientTransformation:
    r"""Scales the updates by Polyak's step size, computed from the loss `value`.

    $$s_t = \begin{cases} 0 & \lVert g_t \rVert^2 + \epsilon \le \epsilon_{mach} \\
      \min\left(\dfrac{\Delta_t}{\lVert g_t \rVert^2 + \epsilon},\ \gamma_{\max}\right)
      & \text{otherwise} \end{cases}, \qquad u_t = s_t\, g_t,$$

    with the gap $\Delta_t = f_t - f^\star$ (`variant='sps'`) or its positive part
    $\max(f_t - f^\star, 0)$ (`variant='sps+'`), $f_t$ the `value` passed to `update`,
    $\lVert g \rVert^2$ summed over every leaf (complex leaves by $|g|^2$) and
    $\epsilon_{mach}$ float64's machine epsilon, as in optax. Zero updates give $s_t = 0$.
    Emits $u_t$ in each leaf's dtype; stores nothing (`EmptyState()`, optax's state).

    Args:
        f_min: $f^\star$, a lower bound on the loss (0 for a model that can fit its data).
        max_learning_rate: $\gamma_{\max} \geq 0$, the largest step size used.
        eps: $\epsilon \geq 0$, added to the denominator.
        variant: `'sps'` (Loizou et al., 2021) or `'sps+'` (Garrigos et al., 2023).

    Returns:
        A `GradientTransformation` with state `EmptyState()`; its `update` needs `value=`,
        the loss at the current parameters: `opt.update(grads, state, params, value=loss)`.

    Raises:
        ValueError: for a negative `max_learning_rate` or `eps`, a non-finite `f_min` or an
            unknown `variant` (optax refuses it only when `update` runs).
        TypeError: in `update`, when `value` is not passed.
    """
    fn = "scale_by_polyak"
    checks.check_finite(fn, "f_min", f_min, low_open=True)
    checks.check_non_negative(fn, "max_learning_rate", max_learning_rate)
    checks.check_non_negative(fn, "eps", eps)
    if variant not in _VARIANTS:
        raise ValueError(f"{fn}: variant must be 'sps' or 'sps+', got {variant!r}")

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, value: ArrayLike | None = None, **extra_args):
        del params, extra_args
        if value is None:
            raise checks.missing_argument(
                fn,
                "value= (the loss at the current params)",
                "opt.update(grads, state, params, value=loss)",
            )
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{fn}: value must be the scalar loss, got an array of shape {jnp.shape(value)}"
            )
        updates = numerics.as_arrays(updates)
        sq_norm = _squared_norm(updates)
        dtype = sq_norm.dtype
        gap = numerics.cast(value, dtype) - numerics.cast(f_min, dtype)
        if variant == "sps+":
            gap = jnp.maximum(gap, 0)
        denom = sq_norm + numerics.as_compute(eps, dtype)
        tiny = denom <= _TINY
        step = jnp.where(
            tiny,
            jnp.zeros([], dtype),
            jnp.minimum(
                gap / jnp.where(tiny, jnp.ones([], dtype), denom),
                numerics.as_compute(max_learning_rate, dtype),
            ),
        )
        return jax.tree.map(lambda g: numerics.scale_leaf(g, step), updates), state

    return GradientTransformation(init, update)


def polyak_sgd(
    max_learning_rate: ArrayLike = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: ArrayLike = 0.0,
    eps: ArrayLike = 0.0,
    variant: str = "sps",
) -> GradientTransformation:
    r"""SGD with Polyak's step size (Loizou et al., 2021): see `scale_by_polyak`.

    `chain(sgd(scaling), scale_by_polyak(f_min, max_learning_rate, eps, variant))`, optax's
    chain. The step size is computed from the updates that reach it, $-s\,g_t$ for a
    constant `scaling` $s$, so the emitted update is
    $$u_t = -s\,g_t \min\left(\frac{\Delta_t}{s^2 \lVert g_t \rVert^2 + \epsilon},
      \gamma_{\max}\right),$$
    as in optax 0.2.8 (with $\epsilon = 0$ and no cap, $s$ divides the step rather than
    multiplying it). `update` needs the loss: `opt.update(grads, state, params, value=loss)`.

    Args:
        max_learning_rate: $\gamma_{\max} \geq 0$, the largest step size used.
        scaling: $s$, a constant $\geq 0$ or a `count -> value` schedule, applied as a
            learning rate before the step size is computed.
        f_min: $f^\star$, a lower bound on the loss.
        eps: $\epsilon \geq 0$, added to the denominator.
        variant: `'sps'` or `'sps+'` (the positive part of the gap).

    Returns:
        A `GradientTransformation` whose `update` needs `value=`.

    Raises:
        ValueError: as `sgd` and `scale_by_polyak` do.
    """
    return chain(
        sgd(learning_rate=scaling),
        scale_by_polyak(f_min=f_min, max_learning_rate=max_learning_rate, eps=eps, variant=variant),
    )
