r"""COCOB: continuous coin betting, gradient descent without a learning rate.

optax.contrib's `cocob` and `scale_by_cocob` (optax 0.2.8), same signatures, defaults and
state. Each coordinate bets a fraction of the wealth it has won so far on the sign of the
negative gradient; the step size comes out of the betting strategy.

Reference: Orabona and Tommasi, *Training Deep Networks without Learning Rates Through Coin
Betting*, NeurIPS 2017 (Algorithm 2), https://arxiv.org/abs/1705.07795.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.contrib.dadapt import refuse_complex, safe_divide
from gradtx.scale import scale_by_learning_rate
from gradtx.weight_decay import add_decayed_weights

__all__ = ["COCOBState", "cocob", "scale_by_cocob"]


class COCOBState(NamedTuple):
    init_particles: PyTree  # theta_0, the initial point
    cumulative_gradients: PyTree  # C, minus the sum of the gradients
    scale: PyTree  # L, the largest |g| seen (at least eps)
    subgradients: PyTree  # G, the sum of |g|
    reward: PyTree  # R, the wealth won


@factory
def scale_by_cocob(alpha: ArrayLike = 100.0, eps: ArrayLike = 1e-8) -> GradientTransformation:
    r"""COCOB-Backprop's step (Algorithm 2 of the paper), coordinate by coordinate.

    $$L_t = \max(L_{t-1}, |g_t|), \quad G_t = G_{t-1} + |g_t|, \quad
      R_t = \max\big(R_{t-1} - g_t (\theta_t - \theta_0), 0\big), \quad C_t = C_{t-1} - g_t,$$
    $$u_t = \theta_0 + \frac{C_t}{L_t \max(G_t + L_t, \alpha L_t)} (L_t + R_t) - \theta_t,$$

    from $L_0 = \epsilon$, $G_0 = R_0 = C_0 = 0$. Emits $u_t$, the move to the new point (add
    it to the params); stores $\theta_0, C, L, G, R$. With `eps=0` a coordinate that has only
    seen zero gradients gets a zero step (optax has $0/0$ there).

    Args:
        alpha: $\alpha \geq 0$, bounds the fraction of the wealth bet early on.
        eps: $\epsilon \geq 0$, the initial $L$, which keeps the first division finite.

    Returns:
        A `GradientTransformation` with state
        `COCOBState(init_particles, cumulative_gradients, scale, subgradients, reward)`.

    Raises:
        ValueError: for a negative `alpha` or `eps`.
        TypeError: at init for a complex parameter; at update when `params` is not passed.
    """
    fn = "scale_by_cocob"
    checks.check_finite(fn, "alpha", alpha, 0.0, low_open=False)
    checks.check_finite(fn, "eps", eps, 0.0, low_open=False)

    def init(params):
        params = numerics.as_arrays(params)
        refuse_complex(fn, params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        scale = jax.tree.map(lambda p: numerics.cast(eps, p.dtype) * jnp.ones_like(p), params)
        return COCOBState(params, zeros, scale, zeros, zeros)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        updates, params = numerics.as_arrays(updates), numerics.as_arrays(params)
        checks.check_state(fn, state, COCOBState)
        checks.check_tree_match(fn, updates, state.scale)
        checks.check_tree_match(fn, updates, params, "updates", "params")
        cast = numerics.cast

        def leaf(g, p, p0, c, scale, big_g, r):
            dtype = numerics.compute_dtype(g, p, p0, c, scale, big_g, r)
            x, theta, theta0 = cast(g, dtype), cast(p, dtype), cast(p0, dtype)
            a = numerics.as_compute(alpha, dtype)
            scale_new = jnp.maximum(cast(scale, dtype), jnp.abs(x))
            g_new = cast(big_g, dtype) + jnp.abs(x)
            r_new = jnp.maximum(cast(r, dtype) - x * (theta - theta0), 0)
            c_new = cast(c, dtype) - x
            bet = safe_divide(c_new, scale_new * jnp.maximum(g_new + scale_new, a * scale_new))
            u = -theta + (theta0 + bet * (scale_new + r_new))
            return (
                cast(u, g.dtype),
                cast(c_new, c.dtype),
                cast(scale_new, scale.dtype),
                cast(g_new, big_g.dtype),
                cast(r_new, r.dtype),
            )

        out, c, scale, big_g, r = numerics.tree_map_multi(
            leaf,
            5,
            updates,
            params,
            state.init_particles,
            state.cumulative_gradients,
            state.scale,
            state.subgradients,
            state.reward,
        )
        return out, COCOBState(state.init_particles, c, scale, big_g, r)

    return GradientTransformation(init, update)


def cocob(
    learning_rate: ScalarOrSchedule = 1.0,
    alpha: ArrayLike = 100.0,
    eps: ArrayLike = 1e-8,
    weight_decay: ArrayLike = 0.0,
    mask: Any | Callable[[PyTree], Any] | None = None,
) -> GradientTransformation:
    r"""COCOB-Backprop with optional L2 weight decay (optax.contrib's `cocob`).

    $$\tilde g_t = \gamma_t (g_t + w \theta_t), \qquad u_t = \text{COCOB}(\tilde g_t)$$

    `chain(add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate,
    flip_sign=False), scale_by_cocob(alpha, eps))`: the rate $\gamma$ scales the gradients
    the bets see (1.0, the default, leaves them alone), not the step.

    Args:
        learning_rate: $\gamma \geq 0$, or a `count -> value` schedule, on the gradients.
        alpha: $\alpha \geq 0$, see `scale_by_cocob`.
        eps: $\epsilon \geq 0$, see `scale_by_cocob`.
        weight_decay: $w \geq 0$, an L2 penalty added to the gradients.
        mask: a tree of bools (or a function of the params) choosing the leaves to decay.

    Returns:
        A `GradientTransformation` (a chain of three; its state is a tuple of their states).

    Raises:
        ValueError: for a negative `learning_rate`, `alpha`, `eps` or `weight_decay`.
    """
    checks.check_weight_decay("cocob", "weight_decay", weight_decay)
    checks.check_scalar_or_schedule("cocob", "learning_rate", learning_rate)
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps),
    )
