r"""MADGRAD: momentumised, adaptive, dual-averaged gradient descent.

optax.contrib's `madgrad` and `scale_by_madgrad` (optax 0.2.8), same signatures, defaults and
state. Dual averaging keeps weighted sums of the gradients and of their squares from the
start; the point they define is $z$, and the iterate follows $z$ with momentum.

Reference: Defazio and Jelassi, *Adaptivity without Compromise: A Momentumized, Adaptive, Dual
Averaged Gradient Method for Stochastic Optimization*, 2021, https://arxiv.org/abs/2101.11075.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.contrib.dadapt import refuse_complex, safe_divide
from gradtx.weight_decay import add_decayed_weights

__all__ = ["MadgradState", "madgrad", "scale_by_madgrad"]


class MadgradState(NamedTuple):
    count: ArrayLike  # type: ignore[assignment]  # k, int32
    grad_sum_sq: PyTree  # G, the weighted sum of squared gradients
    s: PyTree  # s, the weighted sum of gradients
    x0: PyTree  # x_0, the initial point


def _check(fn: str, learning_rate, momentum, eps) -> None:
    checks.check_scalar_or_schedule(fn, "learning_rate", learning_rate)
    checks.check_range(fn, "momentum", momentum, 0.0, 1.0)
    checks.check_finite(fn, "eps", eps, 0.0, low_open=False)


@factory
def scale_by_madgrad(
    learning_rate: ScalarOrSchedule, momentum: float = 0.9, eps: float = 1e-6
) -> GradientTransformation:
    r"""MADGRAD's step, coordinate by coordinate, from step $k = 0$.

    $$\lambda_k = (\gamma_k + \epsilon) \sqrt{k + 1}, \quad G_{k+1} = G_k + \lambda_k g_k^2,
      \quad s_{k+1} = s_k + \lambda_k g_k,$$
    $$z_{k+1} = x_0 - \frac{s_{k+1}}{G_{k+1}^{1/3} + \epsilon}, \qquad
      u_k = (1 - \mu) z_{k+1} + \mu x_k - x_k.$$

    Emits $u_k$, the move to the new iterate (add it to the params); stores $k, G, s, x_0$.
    With `eps=0` a coordinate that has only seen zero gradients gets $z = x_0$ (optax has
    $0/0$ there).

    Args:
        learning_rate: $\gamma \geq 0$, a constant or a `count -> value` schedule.
        momentum: $\mu \in [0, 1]$, how much of the current iterate is kept.
        eps: $\epsilon \geq 0$, added to the rate and to the cube root.

    Returns:
        A `GradientTransformation` with state `MadgradState(count, grad_sum_sq, s, x0)`.

    Raises:
        ValueError: for a negative `learning_rate` or `eps`, a `momentum` outside $[0, 1]$.
        TypeError: at init for a complex parameter; at update when `params` is not passed.
    """
    fn = "scale_by_madgrad"
    _check(fn, learning_rate, momentum, eps)

    def init(params):
        params = numerics.as_arrays(params)
        refuse_complex(fn, params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return MadgradState(numerics.zero_count(), zeros, zeros, params)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        updates, params = numerics.as_arrays(updates), numerics.as_arrays(params)
        checks.check_state(fn, state, MadgradState)
        checks.check_tree_match(fn, updates, state.s)
        checks.check_tree_match(fn, updates, params, "updates", "params")
        cast = numerics.cast
        rate = numerics.evaluate(learning_rate, state.count)
        k1 = cast(state.count + 1, jnp.float32)

        def leaf(g, p, big_g, s, x0):
            dtype = numerics.compute_dtype(g, p, big_g, s, x0)
            lam = (cast(rate, dtype) + numerics.as_compute(eps, dtype)) * jnp.sqrt(cast(k1, dtype))
            mu = numerics.as_compute(momentum, dtype)
            x = cast(g, dtype)
            g_new = cast(big_g, dtype) + lam * (x * x)
            s_new = cast(s, dtype) + lam * x
            sigma = jnp.cbrt(g_new) + numerics.as_compute(eps, dtype)
            z = cast(x0, dtype) - safe_divide(s_new, sigma)
            theta = cast(p, dtype)
            u = ((1 - mu) * z + mu * theta) - theta
            return cast(u, g.dtype), cast(g_new, big_g.dtype), cast(s_new, s.dtype)

        out, grad_sum_sq, s = numerics.tree_map_multi(
            leaf, 3, updates, params, state.grad_sum_sq, state.s, state.x0
        )
        return out, MadgradState(numerics.safe_increment(state.count), grad_sum_sq, s, state.x0)

    return GradientTransformation(init, update)


def madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    eps: float = 1e-6,
) -> GradientTransformation:
    r"""MADGRAD with optional L2 weight decay (optax.contrib's `madgrad`).

    $$\tilde g_k = g_k + w x_k, \qquad u_k = \text{MADGRAD}(\tilde g_k)$$

    `chain(add_decayed_weights(weight_decay), scale_by_madgrad(learning_rate, momentum, eps))`.

    Args:
        learning_rate: $\gamma \geq 0$, a constant or a `count -> value` schedule.
        momentum: $\mu \in [0, 1]$, see `scale_by_madgrad`.
        weight_decay: $w \geq 0$, an L2 penalty added to the gradients.
        eps: $\epsilon \geq 0$, see `scale_by_madgrad`.

    Returns:
        A `GradientTransformation` (a chain of two; its state is a tuple of their states).

    Raises:
        ValueError: for a negative `learning_rate`, `weight_decay` or `eps`, a `momentum`
            outside $[0, 1]$.
    """
    checks.check_weight_decay("madgrad", "weight_decay", weight_decay)
    _check("madgrad", learning_rate, momentum, eps)
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_madgrad(learning_rate=learning_rate, momentum=momentum, eps=eps),
    )
