r"""ADOPT: Adam whose first moment averages gradients already scaled by the *previous* second
moment, so the scaling never sees the gradient it divides (Taniguchi et al., 2024)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradtx import checks, numerics
from gradtx.adam import ScaleByAdamState
from gradtx.base import GradientTransformation, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.ewa import zeros_like_tree
from gradtx.scale import scale_by_learning_rate


def fourth_root(count: jax.Array) -> jax.Array:
    r"""ADOPT's default clipping bound $c_t = t^{1/4}$ (optax's `lambda x: x**0.25`).

    Args:
        count: the step count $t$ (an integer array), the state's count before the step.

    Returns:
        $t^{1/4}$ as a float32 (float64 under x64) array.
    """
    return numerics.schedule_float(count) ** 0.25


@factory
def scale_by_adopt(
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = fourth_root,
) -> GradientTransformation:
    r"""ADOPT's scaling: normalise by the previous second moment, then average.

    With $t$ the steps taken before this one and $v_{t-1}$ the stored second moment,
    $$x_t = \operatorname{clip}\!\Big(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},
      -c_t, c_t\Big), \qquad c_t = \texttt{clip\_value\_fn}(t),$$
    $$m_t = \beta_1 m_{t-1} + (1-\beta_1) x_t, \qquad
      v_t = \beta_2 v_{t-1} + (1-\beta_2) |g_t|^2,$$
    except on the first step ($t = 0$), where $v_0 = |g_0|^2$ and $m$ stays 0 (so the
    first update is 0). Emits $m_t$, or with `nesterov=True`
    $\beta_1 m_t + (1-\beta_1) x_t$; stores $t$, $m_t$, $v_t$ in optax's
    `ScaleByAdamState(count, mu, nu)` ($v$ real: $|g|^2$ for complex $g$).

    Args:
        b1: $\beta_1 \in [0, 1)$, the decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, the decay of the second moment.
        eps: $\epsilon > 0$, the floor of $\sqrt{v}$ (gradtx refuses 0, which divides
            0 by 0 on the first step).
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nesterov: emit Nesterov's look-ahead $\beta_1 m_t + (1-\beta_1) x_t$.
        use_clipping: clip $x_t$ to $[-c_t, c_t]$ (recommended when training from scratch).
        clip_value_fn: $t \mapsto c_t$, called with the int32 step count;
            the default is `fourth_root`, $t^{1/4}$.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState(count, mu, nu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$ or `eps` $\le 0$.
        TypeError: for a non-callable `clip_value_fn`, or at init for complex params
            with `use_clipping=True` (a complex number has no interval to clip to).
    """
    fn = "scale_by_adopt"
    checks.check_decay(fn, "b1", b1)
    checks.check_decay(fn, "b2", b2)
    checks.check_positive(fn, "eps", eps)
    checks.check_bool(fn, "nesterov", nesterov)
    checks.check_bool(fn, "use_clipping", use_clipping)
    if not callable(clip_value_fn):
        raise TypeError(
            f"{fn}: clip_value_fn must be a function of the step count, got {clip_value_fn!r}"
        )
    mu_dt = checks.canonicalize_dtype(fn, "mu_dtype", mu_dtype)

    def init(params):
        if use_clipping:
            for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
                if numerics.is_complex(jnp.result_type(p)):
                    raise TypeError(
                        f"{fn}: params{jax.tree_util.keystr(path)} is complex, and clipping "
                        "a complex number to [-c, c] is undefined; pass use_clipping=False"
                    )
        return ScaleByAdamState(
            numerics.zero_count(),
            zeros_like_tree(params, mu_dt, fn=fn, arg="mu_dtype"),
            zeros_like_tree(params, real=True),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByAdamState)
        checks.check_tree_match(fn, updates, state.mu)
        started = state.count > 0
        beta1 = jnp.where(started, jnp.asarray(b1, jnp.float32), jnp.float32(1.0))
        beta2 = jnp.where(started, jnp.asarray(b2, jnp.float32), jnp.float32(0.0))
        bound = clip_value_fn(state.count) if use_clipping else None

        def leaf(g, m, v):
            cast = numerics.cast
            dtype = numerics.compute_dtype(g, m, v)
            real = numerics.real_dtype(dtype)
            x = cast(g, dtype)
            scaled = x / cast(jnp.maximum(jnp.sqrt(cast(v, real)), eps), dtype)
            if bound is not None:
                c = cast(bound, real)
                scaled = jnp.clip(scaled, -c, c)
            b1_, b2_ = cast(beta1, dtype), cast(beta2, real)
            m_new = b1_ * cast(m, dtype) + (1 - b1_) * scaled
            v_new = b2_ * cast(v, real) + (1 - b2_) * numerics.abs_sq(x)
            out = b1_ * m_new + (1 - b1_) * scaled if nesterov else m_new
            return cast(out, g.dtype), cast(m_new, m.dtype), cast(v_new, v.dtype)

        out, mu, nu = numerics.tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return out, ScaleByAdamState(numerics.safe_increment(state.count), mu, nu)

    return GradientTransformation(init, update)


def adopt(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = fourth_root,
) -> GradientTransformation:
    r"""ADOPT: $\theta \leftarrow \theta - \alpha_t m_t$ with $m_t$ from `scale_by_adopt`.

    `chain(scale_by_adopt(b1, b2, eps, mu_dtype, ...), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, the decay of the second moment.
        eps: $\epsilon > 0$, the floor of $\sqrt{v}$.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nesterov: Nesterov's look-ahead on the first moment.
        use_clipping: clip the normalised gradient to $[-c_t, c_t]$.
        clip_value_fn: $t \mapsto c_t$; the default is `fourth_root`, $t^{1/4}$.

    Returns:
        A `GradientTransformation`: the chain's tuple of states.
    """
    checks.check_scalar_or_schedule("adopt", "learning_rate", learning_rate)
    return chain(
        scale_by_adopt(
            b1,
            b2,
            eps,
            mu_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
        ),
        scale_by_learning_rate(learning_rate),
    )
