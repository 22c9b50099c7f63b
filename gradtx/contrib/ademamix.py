r"""AdEMAMix: Adam's scaling of a mixture of a fast and a slow momentum (Pagliardini et al.,
2024), and its simplified form with one momentum (Morwani et al., 2025)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.ewa import debias_factor, zeros_like_tree
from gradtx.scale import scale_by_learning_rate
from gradtx.weight_decay import add_decayed_weights


class ScaleByAdemamixState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken (fast EMA, second moment)
    count_m2: Array  # steps taken by the slow EMA (the count `b3` and `alpha` are read at)
    m1: PyTree  # fast EMA of the gradients, in `mu_dtype`
    m2: PyTree  # slow EMA of the gradients, in `mu_dtype`
    nu: PyTree  # EMA of the squared gradients, in `mu_dtype` (real)


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    t: Array  # steps taken
    m: PyTree  # the heavy-ball sum of the gradients
    n: PyTree  # EMA of the squared gradients (real)


def _check_decay_or_schedule(fn: str, name: str, value) -> None:
    if not callable(value):
        checks.check_decay(fn, name, value)


@factory
def scale_by_ademamix(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 6.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""AdEMAMix's scaling: a bias-corrected fast EMA plus $\alpha$ times a slow one, over RMS.

    $$m^{(1)}_t = \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t, \quad
      m^{(2)}_t = \beta_3 m^{(2)}_{t-1} + (1-\beta_3) g_t, \quad
      \nu_t = \beta_2 \nu_{t-1} + (1-\beta_2) |g_t|^2,$$
    $$u_t = \frac{m^{(1)}_t / (1-\beta_1^t) + \alpha\, m^{(2)}_t}
      {\sqrt{\nu_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}.$$

    The slow EMA is not bias-corrected (it fills up slowly on purpose). $\beta_3$ and
    $\alpha$ may be schedules, read at `count_m2` before the step. Emits $u_t$; stores
    both counts, $m^{(1)}_t$, $m^{(2)}_t$ and $\nu_t$ (all in `mu_dtype`; $\nu$ real).

    Args:
        b1: $\beta_1 \in [0, 1)$, the fast EMA's decay.
        b2: $\beta_2 \in [0, 1)$, the second moment's decay.
        b3: $\beta_3 \in [0, 1)$, the slow EMA's decay, or a `count -> value` schedule.
        alpha: $\alpha \geq 0$, the slow EMA's weight, or a schedule.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of the three moments; None keeps each parameter's dtype.

    Returns:
        A `GradientTransformation` with state
        `ScaleByAdemamixState(count, count_m2, m1, m2, nu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$ or a negative `alpha`, `eps`, `eps_root`.
    """
    fn = "scale_by_ademamix"
    checks.check_decay(fn, "b1", b1)
    checks.check_decay(fn, "b2", b2)
    _check_decay_or_schedule(fn, "b3", b3)
    checks.check_scalar_or_schedule(fn, "alpha", alpha)
    checks.check_non_negative(fn, "eps", eps)
    checks.check_non_negative(fn, "eps_root", eps_root)
    mu_dt = checks.canonicalize_dtype(fn, "mu_dtype", mu_dtype)

    def init(params):
        return ScaleByAdemamixState(
            numerics.zero_count(),
            numerics.zero_count(),
            zeros_like_tree(params, mu_dt, fn=fn, arg="mu_dtype"),
            zeros_like_tree(params, mu_dt, fn=fn, arg="mu_dtype"),
            zeros_like_tree(params, mu_dt, real=True),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByAdemamixState)
        checks.check_tree_match(fn, updates, state.m1)
        beta3 = numerics.evaluate(b3, state.count_m2)
        mix = numerics.evaluate(alpha, state.count_m2)
        count = numerics.safe_increment(state.count)
        c1 = debias_factor(b1, count)
        c2 = debias_factor(b2, count)

        def leaf(g, m1, m2, v):
            cast = numerics.cast
            dtype = numerics.compute_dtype(g, m1, m2, v)
            real = numerics.real_dtype(dtype)
            x = cast(g, dtype)
            b3_ = numerics.as_compute(beta3, dtype)
            m1_new = b1 * cast(m1, dtype) + (1 - b1) * x
            m2_new = b3_ * cast(m2, dtype) + (1 - b3_) * x
            v_new = b2 * cast(v, real) + (1 - b2) * numerics.abs_sq(x)
            num = m1_new * cast(c1, dtype) + numerics.as_compute(mix, dtype) * m2_new
            u = num / cast(jnp.sqrt(v_new * cast(c2, real) + eps_root) + eps, dtype)
            return (
                cast(u, g.dtype),
                cast(m1_new, m1.dtype),
                cast(m2_new, m2.dtype),
                cast(v_new, v.dtype),
            )

        out, m1, m2, nu = numerics.tree_map_multi(leaf, 4, updates, state.m1, state.m2, state.nu)
        new_state = ScaleByAdemamixState(count, numerics.safe_increment(state.count_m2), m1, m2, nu)
        return out, new_state

    return GradientTransformation(init, update)


def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> GradientTransformation:
    r"""AdEMAMix: $\theta \leftarrow \theta - \alpha_t (u_t + \lambda\theta)$, $u_t$ from
    `scale_by_ademamix` (note optax's default mixing weight here is 5, there 6).

    `chain(scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: the step size, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the fast EMA's decay.
        b2: $\beta_2 \in [0, 1)$, the second moment's decay.
        b3: $\beta_3 \in [0, 1)$, the slow EMA's decay, or a schedule.
        alpha: $\alpha \geq 0$, the slow EMA's weight, or a schedule.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of the moments; None keeps each parameter's dtype.
        weight_decay: $\lambda \geq 0$ (multiplied by the learning rate), or a schedule.
        mask: which leaves to decay: a tree of bools like the params or a function of
            the params returning one; None decays every leaf.

    Returns:
        A `GradientTransformation`: the chain's tuple of states.
    """
    checks.check_weight_decay("ademamix", "weight_decay", weight_decay)
    checks.check_scalar_or_schedule("ademamix", "learning_rate", learning_rate)
    return chain(
        scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@factory
def scale_by_simplified_ademamix(
    b1: float = 0.99,
    b2: float = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> GradientTransformation:
    r"""Simplified AdEMAMix's scaling: a heavy-ball sum plus $\alpha$ times the gradient,
    over RMS.

    $$m_t = \beta_1 m_{t-1} + g_t, \qquad n_t = \beta_2 n_{t-1} + (1-\beta_2) |g_t|^2,
      \qquad u_t = \frac{m_t + \alpha g_t}{\sqrt{n_t / (1-\beta_2^t) + \epsilon_{root}}
      + \epsilon}.$$

    $\alpha$ may be a schedule, read at $t$ before the step. Emits $u_t$; stores $t$,
    $m_t$, $n_t$ (in each parameter's dtype; $n$ real).

    Args:
        b1: $\beta_1 \in [0, 1)$, the decay of the sum.
        b2: $\beta_2 \in [0, 1)$, the second moment's decay.
        alpha: $\alpha \geq 0$, the weight of the current gradient, or a schedule.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.

    Returns:
        A `GradientTransformation` with state `ScaleBySimplifiedAdEMAMixState(t, m, n)`.

    Raises:
        ValueError: for decays outside $[0, 1)$ or a negative `alpha`, `eps`, `eps_root`.
    """
    fn = "scale_by_simplified_ademamix"
    checks.check_decay(fn, "b1", b1)
    checks.check_decay(fn, "b2", b2)
    checks.check_scalar_or_schedule(fn, "alpha", alpha)
    checks.check_non_negative(fn, "eps", eps)
    checks.check_non_negative(fn, "eps_root", eps_root)

    def init(params):
        return ScaleBySimplifiedAdEMAMixState(
            numerics.zero_count(), zeros_like_tree(params), zeros_like_tree(params, real=True)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleBySimplifiedAdEMAMixState)
        checks.check_tree_match(fn, updates, state.m)
        mix = numerics.evaluate(alpha, state.t)
        t = numerics.safe_increment(state.t)
        c2 = debias_factor(b2, t)

        def leaf(g, m, n):
            cast = numerics.cast
            dtype = numerics.compute_dtype(g, m, n)
            real = numerics.real_dtype(dtype)
            x = cast(g, dtype)
            m_new = b1 * cast(m, dtype) + x
            n_new = b2 * cast(n, real) + (1 - b2) * numerics.abs_sq(x)
            num = m_new + numerics.as_compute(mix, dtype) * x
            u = num / cast(jnp.sqrt(n_new * cast(c2, real) + eps_root) + eps, dtype)
            return cast(u, g.dtype), cast(m_new, m.dtype), cast(n_new, n.dtype)

        out, m, n = numerics.tree_map_multi(leaf, 3, updates, state.m, state.n)
        return out, ScaleBySimplifiedAdEMAMixState(t, m, n)

    return GradientTransformation(init, update)


def simplified_ademamix(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.99,
    b2: float = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> GradientTransformation:
    r"""Simplified AdEMAMix: $\theta \leftarrow \theta - \alpha_t (u_t + \lambda\theta)$,
    $u_t$ from `scale_by_simplified_ademamix`.

    `chain(scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: the step size, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the decay of the sum.
        b2: $\beta_2 \in [0, 1)$, the second moment's decay.
        alpha: $\alpha \geq 0$, the weight of the current gradient, or a schedule.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        weight_decay: $\lambda \geq 0$ (multiplied by the learning rate), or a schedule.
        mask: which leaves to decay: a tree of bools like the params or a function of
            the params returning one; None decays every leaf.

    Returns:
        A `GradientTransformation`: the chain's tuple of states.
    """
    checks.check_weight_decay("simplified_ademamix", "weight_decay", weight_decay)
    checks.check_scalar_or_schedule("simplified_ademamix", "learning_rate", learning_rate)
    return chain(
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
