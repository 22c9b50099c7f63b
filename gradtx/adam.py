r"""Adam (IDEAS §6): momentum combined with RMSprop, with bias correction."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, factory
from gradtx.ewa import debias_factor, zeros_like_tree


class ScaleByAdamState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken
    mu: PyTree  # first moment, in `mu_dtype`
    nu: PyTree  # second moment, in `nu_dtype`


class ScaleByAmsgradState(NamedTuple):
    count: Array  # type: ignore[assignment]
    mu: PyTree
    nu: PyTree
    nu_max: PyTree  # running maximum of the debiased second moment


@factory
def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Adam's scaling, fused: momentum over RMS scaling, both bias-corrected.

    $$m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
      v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,$$
    $$\hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
      u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}.$$

    With `nesterov=True` (NAdam), $\hat m_t$ is replaced by
    $\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)$.

    This is exactly `scale_by_adam_composed`, which builds the same update
    from `ema`, `bias_correction` and element-wise pieces; here it is one
    function per leaf, computed in float32 (or wider) whatever the storage
    dtypes. Emits $u_t$ in the updates' dtype; stores $t$, $m_t$, $v_t$.

    Args:
        b1: $\beta_1$, the momentum EWA's decay, in $[0, 1)$.
        b2: $\beta_2$, the RMS EWA's decay, in $[0, 1)$.
        eps: $\epsilon \geq 0$, added outside the root.
        eps_root: $\epsilon_{root} \geq 0$, added inside the root (useful when
            differentiating through the update).
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nu_dtype: storage dtype of $v$ (gradtx only; optax stores $v$ in the
            params' dtype). Large models keep bfloat16 $m$ and float32 $v$.
        nesterov: use Nesterov's look-ahead momentum (NAdam).

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState(count, mu, nu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$ or negative `eps`/`eps_root`.
    """
    fn = "scale_by_adam"
    checks.check_moments(fn, b1, b2, eps, eps_root)
    checks.check_bool(fn, "nesterov", nesterov)
    mu_dt = checks.canonicalize_dtype(fn, "mu_dtype", mu_dtype)
    nu_dt = checks.canonicalize_dtype(fn, "nu_dtype", nu_dtype)

    def init(params):
        return ScaleByAdamState(
            numerics.zero_count(),
            zeros_like_tree(params, mu_dt, fn=fn, arg="mu_dtype"),
            zeros_like_tree(params, nu_dt, real=True),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByAdamState)
        checks.check_tree_match(fn, updates, state.mu)
        count = numerics.safe_increment(state.count)
        c1 = debias_factor(b1, count)
        c2 = debias_factor(b2, count)
        c1_next = debias_factor(b1, numerics.safe_increment(count)) if nesterov else None

        def leaf(g, m, v):
            cast = numerics.cast
            dtype = numerics.compute_dtype(g, m, v)
            real = numerics.real_dtype(dtype)  # v is real: |g|^2 for complex g
            x = cast(g, dtype)
            m_new = b1 * cast(m, dtype) + (1 - b1) * x
            v_new = b2 * cast(v, real) + (1 - b2) * numerics.abs_sq(x)
            if c1_next is not None:  # Nesterov
                m_hat = b1 * (m_new * cast(c1_next, dtype)) + (1 - b1) * (x * cast(c1, dtype))
            else:
                m_hat = m_new * cast(c1, dtype)
            v_hat = v_new * cast(c2, real)
            u = m_hat / cast(jnp.sqrt(v_hat + eps_root) + eps, dtype)
            return cast(u, g.dtype), cast(m_new, m.dtype), cast(v_new, v.dtype)

        out, mu, nu = numerics.tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return out, ScaleByAdamState(count, mu, nu)

    return GradientTransformation(init, update)


def scale_by_adam_composed(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Adam written literally as "momentum over RMSprop", from the library's pieces.

    ```python
    divide(
        chain(ema(b1), bias_correction(b1)),                       # m̂: momentum
        chain(square(), ema(b2), bias_correction(b2),              # v̂: RMS
              add_constant(eps_root), sqrt(), add_constant(eps)),
    )
    ```

    Both branches see the same updates; the result is
    $\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$, equal to
    `scale_by_adam` to float32 round-off and as fast once jitted.

    Args:
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the RMS EWA's decay.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nu_dtype: storage dtype of $v$; None keeps each parameter's dtype.

    Returns:
        A `GradientTransformation` with state `DivideState(numerator, denominator)`.
    """
    from gradtx.combine import chain, divide
    from gradtx.elementwise import add_constant, sqrt, square
    from gradtx.ewa import bias_correction, ema

    checks.check_moments("scale_by_adam_composed", b1, b2, eps, eps_root)
    return divide(
        chain(ema(b1, accumulator_dtype=mu_dtype), bias_correction(b1)),
        chain(
            square(),
            ema(b2, accumulator_dtype=nu_dtype),
            bias_correction(b2),
            add_constant(eps_root),
            sqrt(),
            add_constant(eps),
        ),
    )


@factory
def scale_by_amsgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""AMSGrad: Adam whose denominator never shrinks.

    $$\hat v^{max}_t = \max(\hat v^{max}_{t-1}, \hat v_t), \qquad
      u_t = \frac{\hat m_t}{\sqrt{\hat v^{max}_t + \epsilon_{root}} + \epsilon}$$

    with $\hat m_t$, $\hat v_t$ as in `scale_by_adam`. Emits $u_t$; stores $t$,
    $m_t$, $v_t$ and $\hat v^{max}_t$.

    Args:
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the RMS EWA's decay.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.

    Returns:
        A `GradientTransformation` with state `ScaleByAmsgradState(count, mu, nu, nu_max)`.
    """
    fn = "scale_by_amsgrad"
    checks.check_moments(fn, b1, b2, eps, eps_root)
    mu_dt = checks.canonicalize_dtype(fn, "mu_dtype", mu_dtype)

    def init(params):
        return ScaleByAmsgradState(
            numerics.zero_count(),
            zeros_like_tree(params, mu_dt, fn=fn, arg="mu_dtype"),
            zeros_like_tree(params, real=True),
            zeros_like_tree(params, real=True),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByAmsgradState)
        checks.check_tree_match(fn, updates, state.mu)
        count = numerics.safe_increment(state.count)
        c1 = debias_factor(b1, count)
        c2 = debias_factor(b2, count)

        def leaf(g, m, v, v_max):
            dtype = numerics.compute_dtype(g, m, v, v_max)
            real = numerics.real_dtype(dtype)
            x = g.astype(dtype)
            m_new = b1 * m.astype(dtype) + (1 - b1) * x
            v_new = b2 * v.astype(real) + (1 - b2) * numerics.abs_sq(x)
            v_max_new = jnp.maximum(v_max.astype(real), v_new * c2.astype(real))
            u = m_new * c1.astype(dtype) / (jnp.sqrt(v_max_new + eps_root) + eps).astype(dtype)
            return (
                u.astype(g.dtype),
                m_new.astype(m.dtype),
                v_new.astype(v.dtype),
                v_max_new.astype(v_max.dtype),
            )

        out, mu, nu, nu_max = numerics.tree_map_multi(
            leaf, 4, updates, state.mu, state.nu, state.nu_max
        )
        return out, ScaleByAmsgradState(count, mu, nu, nu_max)

    return GradientTransformation(init, update)
