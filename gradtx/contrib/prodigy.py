r"""Prodigy: D-Adaptation's AdamW with a distance estimate that weights recent gradients more.

optax.contrib's `prodigy` (optax 0.2.8), same signature, defaults and state; see
`gradtx.contrib.dadapt_adamw` for the idea it refines.

Reference: Mishchenko and Defazio, *Prodigy: An Expeditiously Adaptive Parameter-Free
Learner*, 2023, https://arxiv.org/abs/2306.06101.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.contrib.dadapt import check_betas, refuse_complex, safe_divide, scalar_dtype
from gradtx.tree_reductions import tree_sum, tree_vdot

__all__ = ["ProdigyState", "prodigy"]


class ProdigyState(NamedTuple):
    exp_avg: PyTree  # m, same tree as params
    exp_avg_sq: PyTree  # v, same tree as params
    grad_sum: PyTree  # s, the weighted sum of d-scaled gradients
    params0: PyTree  # theta_0, the initial point
    estim_lr: ArrayLike  # d, a scalar in the params' lowest dtype
    numerator_weighted: ArrayLike  # r, the weighted sum of <g, theta_0 - theta>, a scalar
    count: ArrayLike  # type: ignore[assignment]  # t, int32


@factory
def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[ArrayLike, ArrayLike] = (0.9, 0.999),
    beta3: ArrayLike | None = None,
    eps: ArrayLike = 1e-8,
    estim_lr0: ArrayLike = 1e-6,
    estim_lr_coef: ArrayLike = 1.0,
    weight_decay: ArrayLike = 0.0,
    safeguard_warmup: bool = False,
) -> GradientTransformation:
    r"""Learning-rate-free AdamW with Prodigy's estimate of $d$ (optax.contrib's `prodigy`).

    With $\gamma_t$ the schedule (at the step count $t-1$), $d = d_{t-1}$ and
    $\lambda_t = d \gamma_t \sqrt{1 - \beta_2^t} / (1 - \beta_1^t)$:

    $$m_t = \beta_1 m_{t-1} + (1 - \beta_1) d g_t, \qquad
      v_t = \beta_2 v_{t-1} + (1 - \beta_2) d^2 g_t^2,$$
    $$s_t = \beta_3 s_{t-1} + \frac{\lambda_t}{d_0} d g_t \quad
      (\tfrac{d}{d_0} d g_t \text{ with `safeguard_warmup`}), \qquad
      r_t = \beta_3 r_{t-1} + \frac{d}{d_0} \lambda_t \langle g_t, \theta_0 - \theta_t \rangle,$$
    $$d_t = \max\Big(d_{t-1}, c \frac{r_t}{\lVert s_t \rVert_1}\Big), \qquad
      u_t = -\lambda_t w \theta_t - \frac{\lambda_t m_t}{\sqrt{v_t} + d_t \epsilon}.$$

    Emits $u_t$ (the step itself: add it to the params); stores $m, v, s, \theta_0, d, r, t$
    with $d_0$ = `estim_lr0`. One fused piece, since every leaf's step depends on $d$, a
    reduction over the whole tree. Where optax has $0/0$ (zero gradients so far: $s = 0$,
    $r = 0$), $d$ keeps its value, and with `eps=0` a leaf whose $v$ is zero gets zero: no
    NaN from finite inputs.

    Args:
        learning_rate: $\gamma$, a constant $\geq 0$ or a `count -> value` schedule; 1.0 is the
            base value (e.g. a linear decay from 1.0 to 0 after a short warmup).
        betas: $(\beta_1, \beta_2)$, AdamW's decays, each in $[0, 1)$.
        beta3: $\beta_3 \in [0, 1)$, the decay of $s$ and $r$; None for $\sqrt{\beta_2}$.
        eps: $\epsilon \geq 0$, added to $\sqrt{v}$ (scaled by $d_t$).
        estim_lr0: $d_0 > 0$, the initial (under-)estimate of the learning rate.
        estim_lr_coef: $c \geq 0$, multiplies every estimate of $d$.
        weight_decay: $w \geq 0$, decoupled (AdamW) weight decay, scaled by $\lambda_t$.
        safeguard_warmup: leave $\gamma_t$ out of $s$, which keeps $d$ from being
            underestimated while a warmup holds $\gamma$ small.

    Returns:
        A `GradientTransformation` with state `ProdigyState(exp_avg, exp_avg_sq, grad_sum,
        params0, estim_lr, numerator_weighted, count)`.

    Raises:
        ValueError: for decays outside $[0, 1)$, a negative `learning_rate`, `eps`,
            `estim_lr_coef` or `weight_decay`, a non-positive `estim_lr0`.
        TypeError: for `betas` that is not a pair or a non-bool `safeguard_warmup`; at init for
            a complex parameter; at update when `params` is not passed.
    """
    fn = "prodigy"
    checks.check_scalar_or_schedule(fn, "learning_rate", learning_rate)
    beta1, beta2 = check_betas(fn, betas)
    if beta3 is not None:
        checks.check_decay(fn, "beta3", beta3)
    checks.check_non_negative(fn, "eps", eps)
    checks.check_finite(fn, "estim_lr0", estim_lr0, 0.0)
    checks.check_finite(fn, "estim_lr_coef", estim_lr_coef, 0.0, low_open=False)
    checks.check_non_negative(fn, "weight_decay", weight_decay)
    checks.check_bool(fn, "safeguard_warmup", safeguard_warmup)

    def init(params):
        params = numerics.as_arrays(params)
        refuse_complex(fn, params)
        dtype = scalar_dtype(params)
        return ProdigyState(
            jax.tree.map(jnp.zeros_like, params),
            jax.tree.map(jnp.zeros_like, params),
            jax.tree.map(jnp.zeros_like, params),
            params,
            jnp.asarray(estim_lr0, dtype),
            jnp.zeros([], dtype),
            numerics.zero_count(),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        updates, params = numerics.as_arrays(updates), numerics.as_arrays(params)
        checks.check_state(fn, state, ProdigyState)
        checks.check_tree_match(fn, updates, state.exp_avg)
        checks.check_tree_match(fn, updates, params, "updates", "params")
        cast = numerics.cast
        sdt = jnp.result_type(state.estim_lr)
        cdt = numerics.compute_dtype(state.estim_lr)
        b1, b2 = numerics.as_compute(beta1, cdt), numerics.as_compute(beta2, cdt)
        b3 = b2**0.5 if beta3 is None else numerics.as_compute(beta3, cdt)
        d0 = numerics.as_compute(estim_lr0, cdt)
        count = numerics.safe_increment(state.count)
        t = cast(count, cdt)
        gamma = cast(numerics.evaluate(learning_rate, state.count), cdt)
        d = cast(state.estim_lr, cdt)
        bc = (1 - b2**t) ** 0.5 / (1 - b1**t)
        dlr = cast(cast(d * gamma * bc, sdt), cdt)
        grad_scale = d if safeguard_warmup else dlr

        def diff(p0, p):
            dtype = numerics.compute_dtype(p0, p)
            return cast(cast(p0, dtype) - cast(p, dtype), p.dtype)

        numerator_acum = cast(tree_vdot(updates, jax.tree.map(diff, state.params0, params)), cdt)

        def moments(g, m, v, s):
            dtype = numerics.compute_dtype(g, m, v, s)
            dg = cast(d, dtype) * cast(g, dtype)
            m_new = b1 * cast(m, dtype) + (1 - b1) * dg
            v_new = b2 * cast(v, dtype) + (1 - b2) * dg * dg
            s_new = b3 * cast(s, dtype) + cast(grad_scale, dtype) * dg / d0
            return cast(m_new, m.dtype), cast(v_new, v.dtype), cast(s_new, s.dtype)

        exp_avg, exp_avg_sq, grad_sum = numerics.tree_map_multi(
            moments, 3, updates, state.exp_avg, state.exp_avg_sq, state.grad_sum
        )
        numerator = b3 * cast(state.numerator_weighted, cdt)
        numerator = numerator + (d / d0) * dlr * numerator_acum
        l1 = cast(tree_sum(jax.tree.map(jnp.abs, grad_sum)), cdt)
        lr_estimate = safe_divide(numerics.as_compute(estim_lr_coef, cdt) * numerator, l1)
        estim_lr = jnp.maximum(d, lr_estimate)
        wd = numerics.as_compute(weight_decay, cdt)
        e = numerics.as_compute(eps, cdt)

        def step(m, v, p):
            dtype = numerics.compute_dtype(m, v, p)
            lam = cast(dlr, dtype)
            denom = jnp.sqrt(cast(v, dtype)) + cast(estim_lr, dtype) * e
            u = -(wd * lam * cast(p, dtype)) - safe_divide(lam * cast(m, dtype), denom)
            return cast(u, p.dtype)

        out = jax.tree.map(step, exp_avg, exp_avg_sq, params)
        return out, ProdigyState(
            exp_avg,
            exp_avg_sq,
            grad_sum,
            state.params0,
            cast(estim_lr, sdt),
            cast(numerator, jnp.result_type(state.numerator_weighted)),
            count,
        )

    return GradientTransformation(init, update)
