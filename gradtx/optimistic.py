r"""Optimism: step with the current gradient and against the change since the last one.

$$u_t = (\alpha + \beta) g_t - \beta g_{t-1} = \alpha g_t + \beta (g_t - g_{t-1})$$

An extrapolation of the gradient one step ahead, which stops the cycling of plain gradient
descent on min-max games (GANs, saddle points; IDEAS §8). `optimistic_adam_v2` applies it to
Adam's ratio $\hat m_t / (\sqrt{\hat v_t} + \epsilon)$ instead of the raw gradient.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.adam import scale_by_adam
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.ewa import zeros_like_tree
from gradtx.scale import scale_by_learning_rate


class ScaleByOptimisticGradientState(NamedTuple):
    is_initial_step: Array  # a bool scalar: True until the first update
    previous_gradient: PyTree  # g_{t-1}, the updates of the last step


def _check_coefficient(fn: str, name: str, value: Any) -> None:
    """A finite real number (or traced); a schedule is refused with the reason."""
    if callable(value):
        raise TypeError(
            f"{fn}: {name} must be a number, got a schedule {value!r}; optax 0.2.8 takes only "
            f"a constant {name} here (the state has no step count); schedule the learning "
            "rate instead"
        )
    checks.check_finite(fn, name, value)


@factory
def scale_by_optimistic_gradient(
    alpha: ArrayLike = 1.0, beta: ArrayLike = 1.0
) -> GradientTransformation:
    r"""Generalised optimistic gradients: the current updates plus their last change.

    $$u_t = (\alpha + \beta)\, g_t - \beta\, g_{t-1}, \qquad g_0 := g_1,$$

    so the first step emits $\alpha g_1$ (optax's rule since issue 1082). Complex updates get
    the same complex arithmetic. Emits $u_t$ in the updates' dtype; stores $g_t$ (in the
    params' dtype) and whether the next step is the first.

    Args:
        alpha: $\alpha$, the coefficient of the current updates.
        beta: $\beta$, the coefficient of their change (the "negative momentum").

    Returns:
        A `GradientTransformation` with state
        `ScaleByOptimisticGradientState(is_initial_step, previous_gradient)`.

    Raises:
        ValueError: for a non-finite `alpha` or `beta`.
        TypeError: for a schedule (optax takes only constants here).
    """
    fn = "scale_by_optimistic_gradient"
    _check_coefficient(fn, "alpha", alpha)
    _check_coefficient(fn, "beta", beta)

    def init(params):
        return ScaleByOptimisticGradientState(
            is_initial_step=jnp.array(True), previous_gradient=zeros_like_tree(params)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        checks.check_state(fn, state, ScaleByOptimisticGradientState)
        updates = numerics.as_arrays(updates)
        checks.check_tree_match(fn, updates, state.previous_gradient)
        first = state.is_initial_step

        def leaf(g, prev):
            dtype = numerics.compute_dtype(g, prev)
            a = numerics.as_compute(alpha, dtype)
            b = numerics.as_compute(beta, dtype)
            x = numerics.cast(g, dtype)
            before = jnp.where(first, x, numerics.cast(prev, dtype))
            out = (a + b) * x - b * before
            return numerics.cast(out, g.dtype), numerics.cast(g, prev.dtype)

        out, previous = numerics.tree_map_multi(leaf, 2, updates, state.previous_gradient)
        return out, ScaleByOptimisticGradientState(jnp.array(False), previous)

    return GradientTransformation(init, update)


def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule,
    alpha: ArrayLike = 1.0,
    beta: ArrayLike = 1.0,
) -> GradientTransformation:
    r"""Optimistic gradient descent (Mokhtari et al., 2019), for min-max games.

    $$w_{t+1} = w_t - \eta_t \bigl((\alpha + \beta) g_t - \beta g_{t-1}\bigr)$$

    `chain(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\eta$, a constant $\geq 0$ or a `count -> value` schedule.
        alpha: $\alpha$, the coefficient of the current gradient (a constant; optax's type
            hint allows a schedule, which its code cannot take).
        beta: $\beta$, the coefficient of the gradient's change (a constant).

    Returns:
        A `GradientTransformation` with state
        `(ScaleByOptimisticGradientState, EmptyState)`.

    Raises:
        ValueError, TypeError: as `scale_by_optimistic_gradient` and
            `scale_by_learning_rate` do.
    """
    checks.check_scalar_or_schedule("optimistic_gradient_descent", "learning_rate", learning_rate)
    return chain(
        scale_by_optimistic_gradient(alpha=alpha, beta=beta),
        scale_by_learning_rate(learning_rate),
    )


def optimistic_adam_v2(
    learning_rate: ScalarOrSchedule,
    *,
    alpha: ArrayLike = 1.0,
    beta: ArrayLike = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-08,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    nesterov: bool = True,
) -> GradientTransformation:
    r"""Optimistic Adam (Daskalakis et al., 2017): optimism applied to Adam's ratio.

    $$r_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}, \qquad
      w_{t+1} = w_t - \eta_t \bigl((\alpha + \beta) r_t - \beta r_{t-1}\bigr)$$

    with $\hat m_t$, $\hat v_t$ as in `scale_by_adam` (Nesterov's by default, as in optax).

    `chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\eta$, a constant $\geq 0$ or a `count -> value` schedule.
        alpha: $\alpha$, the coefficient of the current ratio.
        beta: $\beta$, the coefficient of its change.
        b1: $\beta_1 \in [0, 1)$, the first moment's decay.
        b2: $\beta_2 \in [0, 1)$, the second moment's decay.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nesterov: Nesterov's look-ahead on the first moment.

    Returns:
        A `GradientTransformation` with state
        `(ScaleByAdamState, ScaleByOptimisticGradientState, EmptyState)`.

    Raises:
        ValueError, TypeError: as the three pieces do.
    """
    checks.check_scalar_or_schedule("optimistic_adam_v2", "learning_rate", learning_rate)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=alpha, beta=beta),
        scale_by_learning_rate(learning_rate),
    )


def optimistic_adam(
    learning_rate: ArrayLike,
    optimism: ArrayLike | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-08,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
) -> GradientTransformation:
    r"""optax's older Optimistic Adam: `learning_rate` is the optimism's $\alpha$.

    $$w_{t+1} = w_t - \bigl((\alpha + o) r_t - o\, r_{t-1}\bigr)$$

    with $r_t$ Adam's ratio (see `optimistic_adam_v2`), $\alpha$ = `learning_rate` and $o$ =
    `optimism` (`learning_rate` when None). Deprecated in optax, as here (a
    DeprecationWarning): `optimistic_adam_v2(1.0, alpha=lr, beta=o)` is the same optimiser.

    `chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_optimistic_gradient(learning_rate, optimism), scale_by_learning_rate(1.0))`.

    Args:
        learning_rate: $\alpha$, a constant (a schedule is refused, as in optax).
        optimism: $o$, a constant, or None for `learning_rate`.
        b1: $\beta_1 \in [0, 1)$, the first moment's decay.
        b2: $\beta_2 \in [0, 1)$, the second moment's decay.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nesterov: Nesterov's look-ahead on the first moment.

    Returns:
        A `GradientTransformation` with state
        `(ScaleByAdamState, ScaleByOptimisticGradientState, EmptyState)`.

    Raises:
        ValueError: for a schedule as `learning_rate` (as optax), and as the pieces do.
    """
    warnings.warn(
        "optimistic_adam is deprecated (as in optax); use optimistic_adam_v2, e.g. "
        "optimistic_adam_v2(1.0, alpha=learning_rate, beta=optimism)",
        DeprecationWarning,
        stacklevel=2,
    )
    if callable(learning_rate):
        raise ValueError(
            "optimistic_adam: learning_rate must be a number, got a schedule; "
            "optimistic_adam_v2 takes schedules"
        )
    if optimism is None:
        optimism = learning_rate
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism),
        scale_by_learning_rate(1.0),
    )
