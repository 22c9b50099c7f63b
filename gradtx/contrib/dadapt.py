r"""D-Adaptation (AdamW variant): AdamW whose learning rate estimates the distance to a solution.

optax.contrib's `dadapt_adamw` (optax 0.2.8), same signature, defaults and state. The step size
$d$ is a running lower bound on the distance from the initial point to a solution, in the
infinity norm: it only grows, and a schedule on top of it treats 1.0 as the base value.

Reference: Defazio and Mishchenko, *Learning-Rate-Free Learning by D-Adaptation*, ICML 2023,
https://arxiv.org/abs/2301.07733.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.tree_build import tree_dtype
from gradtx.tree_reductions import tree_sum, tree_vdot

__all__ = ["DAdaptAdamWState", "dadapt_adamw"]


class DAdaptAdamWState(NamedTuple):
    exp_avg: PyTree  # m, same tree as params
    exp_avg_sq: PyTree  # v, same tree as params
    grad_sum: PyTree  # s, the weighted sum of d-scaled gradients
    estim_lr: ArrayLike  # d, a scalar in the params' lowest dtype
    numerator_weighted: ArrayLike  # the weighted sum of <g, s / sqrt(v)>, a scalar
    count: ArrayLike  # type: ignore[assignment]  # t, int32


def refuse_complex(fn: str, params: PyTree) -> None:
    """Raises a TypeError naming the first complex leaf of `params`: the distance and coin
    estimates of the parameter-free methods (`dadapt_adamw`, `prodigy`, `cocob`, `madgrad`)
    are defined for real parameters only."""
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        if numerics.is_complex(jnp.result_type(p)):
            raise TypeError(
                f"{fn}: params{jax.tree_util.keystr(path)} is {jnp.result_type(p)}, but {fn} "
                "is defined for real parameters only; optimise the real and imaginary parts "
                "as separate real leaves, e.g. jnp.stack([z.real, z.imag])"
            )


def safe_divide(a: Any, b: Any) -> jax.Array:
    r"""$a / b$, and $0$ where $b = 0$ (where the parameter-free estimates have $0 / 0$)."""
    nonzero = b != 0
    return jnp.where(nonzero, a / jnp.where(nonzero, b, jnp.ones_like(b)), jnp.zeros_like(a))


def scalar_dtype(params: PyTree) -> Any:
    """The dtype of the scalar estimates: the lowest of the params' dtypes, as optax has it."""
    return tree_dtype(params, "lowest")


def check_betas(fn: str, betas: Any) -> tuple[Any, Any]:
    """`betas` is a pair $(\\beta_1, \\beta_2)$ of decays in $[0, 1)$; returns it."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(
            f"{fn}: betas must be a pair (beta1, beta2), e.g. (0.9, 0.999), got {betas!r}"
        )
    checks.check_decay(fn, "betas[0]", betas[0])
    checks.check_decay(fn, "betas[1]", betas[1])
    return betas[0], betas[1]


@factory
def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[ArrayLike, ArrayLike] = (0.9, 0.999),
    eps: ArrayLike = 1e-8,
    estim_lr0: ArrayLike = 1e-6,
    weight_decay: ArrayLike = 0.0,
) -> GradientTransformation:
    r"""Learning-rate-free AdamW by D-Adaptation (optax.contrib's `dadapt_adamw`).

    With $\gamma_t$ the schedule (at the step count $t-1$), $\sqrt{\beta_2} = r$ and
    $\lambda_t = d_{t-1} \gamma_t \sqrt{1 - \beta_2^t} / (1 - \beta_1^t)$:

    $$m_t = \beta_1 m_{t-1} + (1 - \beta_1) \lambda_t g_t, \qquad
      v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,$$
    $$s_t = r s_{t-1} + (1 - r) \lambda_t g_t, \qquad
      n_t = r n_{t-1} + (1 - r) \lambda_t \Big\langle g_t, \frac{s_{t-1}}{\sqrt{v_{t-1}} +
      \epsilon} \Big\rangle,$$
    $$d_t = \max\Big(d_{t-1}, \frac{n_t}{(1 - r) \lVert s_t \rVert_1}\Big), \qquad
      u_t = -\lambda_t w \theta_t - \frac{m_t}{\sqrt{v_t} + \epsilon}.$$

    Emits $u_t$ (the step itself: add it to the params); stores $m, v, s, d, n, t$ with $d_0$ =
    `estim_lr0`. One fused piece, since every leaf's step depends on $d$, a reduction over the
    whole tree. Where optax has $0/0$ (zero gradients so far: $s = 0$, $n = 0$), $d$ keeps its
    value, and with `eps=0` a leaf whose $v$ is zero gets zero: no NaN from finite inputs.

    Args:
        learning_rate: $\gamma$, a constant $\geq 0$ or a `count -> value` schedule; 1.0 is the
            base value (e.g. a linear decay from 1.0 to 0 after a short warmup).
        betas: $(\beta_1, \beta_2)$, AdamW's decays, each in $[0, 1)$.
        eps: $\epsilon \geq 0$, added to $\sqrt{v}$.
        estim_lr0: $d_0 > 0$, the initial (under-)estimate of the learning rate.
        weight_decay: $w \geq 0$, decoupled (AdamW) weight decay, scaled by $\lambda_t$.

    Returns:
        A `GradientTransformation` with state
        `DAdaptAdamWState(exp_avg, exp_avg_sq, grad_sum, estim_lr, numerator_weighted, count)`.

    Raises:
        ValueError: for decays outside $[0, 1)$, a negative `learning_rate`, `eps` or
            `weight_decay`, a non-positive `estim_lr0`.
        TypeError: for `betas` that is not a pair; at init for a complex parameter; at update
            when `params` is not passed.
    """
    fn = "dadapt_adamw"
    checks.check_scalar_or_schedule(fn, "learning_rate", learning_rate)
    beta1, beta2 = check_betas(fn, betas)
    checks.check_non_negative(fn, "eps", eps)
    checks.check_finite(fn, "estim_lr0", estim_lr0, 0.0)
    checks.check_non_negative(fn, "weight_decay", weight_decay)

    def init(params):
        params = numerics.as_arrays(params)
        refuse_complex(fn, params)
        dtype = scalar_dtype(params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return DAdaptAdamWState(
            zeros,
            jax.tree.map(jnp.zeros_like, params),
            jax.tree.map(jnp.zeros_like, params),
            jnp.asarray(estim_lr0, dtype),
            jnp.zeros([], dtype),
            numerics.zero_count(),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        updates, params = numerics.as_arrays(updates), numerics.as_arrays(params)
        checks.check_state(fn, state, DAdaptAdamWState)
        checks.check_tree_match(fn, updates, state.exp_avg)
        checks.check_tree_match(fn, updates, params, "updates", "params")
        cast = numerics.cast
        sdt = jnp.result_type(state.estim_lr)
        cdt = numerics.compute_dtype(state.estim_lr)
        b1, b2 = numerics.as_compute(beta1, cdt), numerics.as_compute(beta2, cdt)
        sb2 = b2**0.5
        count = numerics.safe_increment(state.count)
        t = cast(count, cdt)
        gamma = cast(numerics.evaluate(learning_rate, state.count), cdt)
        bc = (1 - b2**t) ** 0.5 / (1 - b1**t)
        dlr = cast(cast(cast(state.estim_lr, cdt) * gamma * bc, sdt), cdt)
        e = numerics.as_compute(eps, cdt)

        def s_weighted(s, v):
            dtype = numerics.compute_dtype(s, v)
            return safe_divide(cast(s, dtype), jnp.sqrt(cast(v, dtype)) + e)

        numerator_acum = tree_vdot(
            updates, jax.tree.map(s_weighted, state.grad_sum, state.exp_avg_sq)
        )

        def moments(g, m, v, s):
            dtype = numerics.compute_dtype(g, m, v, s)
            x, lam = cast(g, dtype), cast(dlr, dtype)
            m_new = b1 * cast(m, dtype) + (1 - b1) * lam * x
            v_new = b2 * cast(v, dtype) + (1 - b2) * x * x
            s_new = sb2 * cast(s, dtype) + (1 - sb2) * lam * x
            return cast(m_new, m.dtype), cast(v_new, v.dtype), cast(s_new, s.dtype)

        exp_avg, exp_avg_sq, grad_sum = numerics.tree_map_multi(
            moments, 3, updates, state.exp_avg, state.exp_avg_sq, state.grad_sum
        )
        l1 = cast(tree_sum(jax.tree.map(jnp.abs, grad_sum)), cdt)
        numerator = sb2 * cast(state.numerator_weighted, cdt) + (1 - sb2) * dlr * cast(
            numerator_acum, cdt
        )
        d_estimate = safe_divide(numerator, (1 - sb2) * l1)
        estim_lr = jnp.maximum(cast(state.estim_lr, cdt), d_estimate)
        wd = numerics.as_compute(weight_decay, cdt)

        def step(m, v, p):
            dtype = numerics.compute_dtype(m, v, p)
            x = cast(p, dtype)
            decay = -(wd * cast(dlr, dtype) * x)
            u = decay - safe_divide(cast(m, dtype), jnp.sqrt(cast(v, dtype)) + e)
            return cast(u, p.dtype)

        out = jax.tree.map(step, exp_avg, exp_avg_sq, params)
        return out, DAdaptAdamWState(
            exp_avg,
            exp_avg_sq,
            grad_sum,
            cast(estim_lr, sdt),
            cast(numerator, jnp.result_type(state.numerator_weighted)),
            count,
        )

    return GradientTransformation(init, update)
