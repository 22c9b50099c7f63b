r"""Adan (Xie et al., 2022): Adam's scaling of a Nesterov momentum estimated from gradients.

Nesterov's look-ahead needs the gradient at an extrapolated point; Adan replaces it with the
current gradient plus its change since the last step, $g_t + (1-\beta_2)(g_t - g_{t-1})$, and
averages the gradient, its change and the square of that look-ahead with three EWAs
(IDEAS §2-§6), each bias-corrected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import Array

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.ewa import debias_factor, zeros_like_tree
from gradtx.scale import scale_by_learning_rate
from gradtx.weight_decay import add_decayed_weights


class ScaleByAdanState(NamedTuple):
    m: PyTree  # EWA of the gradients
    v: PyTree  # EWA of their changes g_t - g_{t-1}
    n: PyTree  # EWA of the squared look-ahead (real for complex params)
    g: PyTree  # the last gradient g_{t-1}
    t: Array  # steps taken


def _check_adan_args(fn: str, b1, b2, b3, eps, eps_root) -> None:
    checks.check_decay(fn, "b1", b1)
    checks.check_decay(fn, "b2", b2)
    checks.check_decay(fn, "b3", b3)
    checks.check_non_negative(fn, "eps", eps)
    checks.check_non_negative(fn, "eps_root", eps_root)


@factory
def scale_by_adan(
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> GradientTransformation:
    r"""Adan's scaling: three bias-corrected EWAs of the gradient, its change and a square.

    With $\Delta_t = g_t - g_{t-1}$ ($\Delta_1 = 0$) and $x_t = g_t + (1-\beta_2)\Delta_t$:
    $$m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
      v_t = \beta_2 v_{t-1} + (1-\beta_2) \Delta_t, \quad
      n_t = \beta_3 n_{t-1} + (1-\beta_3) |x_t|^2,$$
    $$u_t = \frac{\hat m_t + (1-\beta_2)\hat v_t}{\sqrt{\hat n_t + \epsilon_{root}} + \epsilon},
      \qquad \hat y_t = \frac{y_t}{1 - \beta^t} \text{ for each EWA } y \text{ and its } \beta.$$

    These are optax's update rules (the paper writes the decays as $1 - \beta$). Computed in
    float32 or wider; emits $u_t$ in the updates' dtype; stores $m_t$, $v_t$, $n_t$, $g_t$
    and $t$.

    Args:
        b1: $\beta_1 \in [0, 1)$, the decay of the gradients' EWA.
        b2: $\beta_2 \in [0, 1)$, the decay of the changes' EWA.
        b3: $\beta_3 \in [0, 1)$, the decay of the squared look-ahead's EWA.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root (useful when differentiating
            through the update).

    Returns:
        A `GradientTransformation` with state `ScaleByAdanState(m, v, n, g, t)`.

    Raises:
        ValueError: for decays outside $[0, 1)$ or negative `eps`/`eps_root`.
    """
    fn = "scale_by_adan"
    _check_adan_args(fn, b1, b2, b3, eps, eps_root)

    def init(params):
        return ScaleByAdanState(
            m=zeros_like_tree(params),
            v=zeros_like_tree(params),
            n=zeros_like_tree(params, real=True),
            g=zeros_like_tree(params),
            t=numerics.zero_count(),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        checks.check_state(fn, state, ScaleByAdanState)
        updates = numerics.as_arrays(updates)
        checks.check_tree_match(fn, updates, state.m)
        first = state.t == 0
        t = numerics.safe_increment(state.t)
        c1, c2, c3 = (debias_factor(b, t) for b in (b1, b2, b3))

        def leaf(g, m, v, n, prev):
            cast = numerics.cast
            dtype = numerics.compute_dtype(g, m, v, n, prev)
            real = numerics.real_dtype(dtype)
            x = cast(g, dtype)
            diff = jnp.where(first, jnp.zeros_like(x), x - cast(prev, dtype))
            m_new = b1 * cast(m, dtype) + (1 - b1) * x
            v_new = b2 * cast(v, dtype) + (1 - b2) * diff
            look = x + (1 - b2) * diff
            n_new = b3 * cast(n, real) + (1 - b3) * numerics.abs_sq(look)
            num = m_new * cast(c1, dtype) + (1 - b2) * (v_new * cast(c2, dtype))
            den = jnp.sqrt(n_new * cast(c3, real) + eps_root) + eps
            u = num / cast(den, dtype)
            return (
                cast(u, g.dtype),
                cast(m_new, m.dtype),
                cast(v_new, v.dtype),
                cast(n_new, n.dtype),
                cast(x, prev.dtype),
            )

        out, m, v, n, g = numerics.tree_map_multi(
            leaf, 5, updates, state.m, state.v, state.n, state.g
        )
        return out, ScaleByAdanState(m=m, v=v, n=n, g=g, t=t)

    return GradientTransformation(init, update)


def adan(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[PyTree], Any] | None = None,
) -> GradientTransformation:
    r"""Adan: $W \leftarrow W - \alpha_t (u_t + \lambda W)$ with $u_t$ from `scale_by_adan`.

    `chain(scale_by_adan(b1, b2, b3, eps, eps_root), add_decayed_weights(weight_decay,
    mask), scale_by_learning_rate(learning_rate))`, optax's chain (decoupled weight decay
    inside the learning rate, as in `adamw`).

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the decay of the gradients' EWA.
        b2: $\beta_2 \in [0, 1)$, the decay of the changes' EWA.
        b3: $\beta_3 \in [0, 1)$, the decay of the squared look-ahead's EWA.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root (1e-8 here, 0 in
            `scale_by_adan`, as in optax).
        weight_decay: $\lambda \geq 0$, or a schedule.
        mask: which leaves to decay: a tree of bools like the params, or a function of the
            params returning one (see `masked`); None decays every leaf.

    Returns:
        A `GradientTransformation` with state
        `(ScaleByAdanState, EmptyState or MaskedState, EmptyState)`.

    Raises:
        ValueError: as the three pieces do.
    """
    checks.check_weight_decay("adan", "weight_decay", weight_decay)
    checks.check_scalar_or_schedule("adan", "learning_rate", learning_rate)
    return chain(
        scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
