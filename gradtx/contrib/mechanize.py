r"""Mechanic: learns the scale of any optimiser's steps, a learning-rate tuner by coin betting.

optax.contrib's `mechanize` (optax 0.2.8), same signature, defaults and state. The wrapped
optimiser's steps are summed into a direction $\Delta$ from the initial point; Mechanic bets on
how far to go along it, with several betting horizons $\beta_i$ at once.

Reference: Cutkosky, Defazio and Mehta, *Mechanic: A Learning Rate Tuner*, NeurIPS 2023,
https://arxiv.org/abs/2306.00144.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, OptState, PyTree, as_transformation, factory
from gradtx.contrib.dadapt import refuse_complex, scalar_dtype
from gradtx.tree_reductions import tree_norm, tree_vdot

__all__ = ["MechanicState", "mechanize"]


class MechanicState(NamedTuple):
    base_optimizer_state: OptState  # the wrapped optimiser's state
    count: ArrayLike  # type: ignore[assignment]  # t, int32
    r: ArrayLike  # the wealth won per beta, shape [num_betas]
    m: ArrayLike  # the running max of |h| per beta
    v: ArrayLike  # the discounted sum of h^2 per beta
    s: ArrayLike  # the scale bet per beta; the step scale is their sum
    x0: PyTree  # the initial point (the params at the first update)


@factory
def mechanize(
    base_optimizer: Any,
    weight_decay: ArrayLike = 1e-2,
    eps: ArrayLike = 1e-8,
    s_init: ArrayLike = 1e-6,
    num_betas: int = 6,
) -> GradientTransformation:
    r"""Mechanic around `base_optimizer`: learns the scale $\sum_i s_i$ of its steps.

    With $u_t$ the base optimiser's step, $S = \sum_i s_{t-1,i}$, $x_0$ the params at the
    first update and $\beta_i = 1 - 10^{-i}$ ($i = 1, \dots$, `num_betas`):

    $$\Delta_{t-1} = \frac{x_0 - x_t}{S + \epsilon}, \quad
      \tilde g_t = g_t + \lambda S \frac{\lVert g_t \rVert}{\lVert x_t \rVert + \epsilon} x_t,
      \quad h_t = \langle \tilde g_t, \Delta_{t-1} \rangle,$$
    $$m_{t,i} = \max(\beta_i m_{t-1,i}, |h_t| + \epsilon), \quad
      v_{t,i} = \beta_i^2 v_{t-1,i} + h_t^2, \quad
      r_{t,i} = \beta_i r_{t-1,i} + \text{clip}(h_t, \pm m_{t-1,i})\, s_{t-1,i},$$
    $$s_{t,i} = \frac{s_0 m_{t,i} / n + \max(r_{t,i}, 0)}{\sqrt{v_{t,i}} + \epsilon}, \qquad
      x_{t+1} = x_0 - \Big(\sum_i s_{t,i}\Big) (\Delta_{t-1} - u_t).$$

    Emits $x_{t+1} - x_t$ (add it to the params); stores the base optimiser's state, $t$,
    $r, m, v, s$ (vectors of `num_betas`) and $x_0$. Extra arguments (`value=`, ...) go to the
    base optimiser. $\epsilon > 0$ keeps every denominator positive: at the first step
    $h = 0$, so with $\epsilon = 0$ optax's $s$ is $0/0$ (refused here).

    Args:
        base_optimizer: the optimiser whose steps are scaled (gradtx's, optax's, any
            `init`/`update` pair); give it a base learning rate of 1.0 (or any constant,
            with or without a schedule).
        weight_decay: $\lambda \geq 0$, Mechanic's own weight decay on the gradients it bets
            with (not the base optimiser's).
        eps: $\epsilon > 0$.
        s_init: $s_0 \geq 0$, the initial scale of each bet.
        num_betas: $n \geq 1$, the number of betting horizons $\beta_i = 1 - 10^{-i}$.

    Returns:
        A `GradientTransformation` with state
        `MechanicState(base_optimizer_state, count, r, m, v, s, x0)`.

    Raises:
        TypeError: for a `base_optimizer` without `init`/`update`, a `num_betas` that is not
            an integer; at init for a complex parameter; at update when `params` is not
            passed.
        ValueError: for a negative `weight_decay` or `s_init`, a non-positive `eps`,
            `num_betas` below 1.
    """
    fn = "mechanize"
    inner = as_transformation(fn, "base_optimizer", base_optimizer)
    checks.check_finite(fn, "weight_decay", weight_decay, 0.0, low_open=False)
    checks.check_finite(fn, "eps", eps, 0.0, hint="without it the first step's scale is 0/0")
    checks.check_finite(fn, "s_init", s_init, 0.0, low_open=False)
    n = checks.check_int(fn, "num_betas", num_betas, 1)

    def init(params):
        params = numerics.as_arrays(params)
        refuse_complex(fn, params)
        dtype = scalar_dtype(params)
        zeros = jnp.zeros([n], dtype)
        return MechanicState(
            inner.init(params),
            numerics.zero_count(),
            zeros,
            zeros,
            zeros,
            jnp.ones([n], dtype) * numerics.cast(s_init, dtype),
            params,
        )

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        updates, params = numerics.as_arrays(updates), numerics.as_arrays(params)
        checks.check_state(fn, state, MechanicState)
        checks.check_tree_match(fn, updates, params, "updates", "params")
        cast = numerics.cast
        steps, base_state = inner.update(updates, state.base_optimizer_state, params, **extra_args)
        sdt = jnp.result_type(state.s)
        cdt = numerics.compute_dtype(state.s)
        first = state.count == 0
        x0 = jax.tree.map(lambda p, x: jnp.where(first, p, x), params, state.x0)
        e, wd = numerics.as_compute(eps, cdt), numerics.as_compute(weight_decay, cdt)
        s_old = cast(state.s, cdt)
        s_sum = jnp.sum(s_old)
        decay = wd * s_sum * cast(tree_norm(updates), cdt) / (cast(tree_norm(params), cdt) + e)

        def leaf(g, p, x0_, u):
            dtype = numerics.compute_dtype(g, p, x0_, u)
            x = cast(p, dtype)
            g_decayed = cast(g, dtype) + cast(decay, dtype) * x
            delta_prev = (cast(x0_, dtype) - x) / cast(s_sum + e, dtype)
            delta = delta_prev - cast(u, dtype)
            return (cast(g_decayed, g.dtype), cast(delta_prev, p.dtype), cast(delta, p.dtype))

        g_decayed, delta_prev, delta = numerics.tree_map_multi(leaf, 3, updates, params, x0, steps)
        h = cast(tree_vdot(g_decayed, delta_prev), cdt)
        m_old, v_old, r_old = cast(state.m, cdt), cast(state.v, cdt), cast(state.r, cdt)
        clipped_h = jax.lax.clamp(-m_old, jnp.ones_like(m_old) * h, m_old)
        betas = cast(jnp.array([1.0 - 0.1**i for i in range(1, n + 1)], sdt), cdt)
        m = jnp.maximum(betas * m_old, jnp.abs(h) + e)
        v = (betas**2) * v_old + h**2
        r = betas * r_old + clipped_h * s_old
        wealth = (numerics.as_compute(s_init, cdt) / n) * m + jnp.maximum(0.0, r)
        s = wealth / (jnp.sqrt(v) + e)
        scale = jnp.sum(s)

        def move(x0_, d, p):
            dtype = numerics.compute_dtype(x0_, d, p)
            new = cast(x0_, dtype) - cast(scale, dtype) * cast(d, dtype)
            return cast(new - cast(p, dtype), p.dtype)

        out = jax.tree.map(move, x0, delta, params)
        return out, MechanicState(
            base_state,
            numerics.safe_increment(state.count),
            cast(r, sdt),
            cast(m, sdt),
            cast(v, sdt),
            cast(s, sdt),
            x0,
        )

    return GradientTransformation(init, update)
