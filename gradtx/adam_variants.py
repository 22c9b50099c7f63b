r"""Adam's variants: Adam's momentum with one idea changed in the second moment or the step.

* `scale_by_belief` (AdaBelief): the EWA of the squared *prediction error* $g - m$.
* `scale_by_adamax` (AdaMax): an exponentially weighted *maximum* of $|g|$.
* `scale_by_yogi` (Yogi): an additive, sign-controlled second-moment update.
* `scale_by_radam` (RAdam): Adam's step rectified by the variance of its adaptive rate.
* `scale_by_novograd` (NovoGrad): one second moment per layer, momentum of normalised steps.

Each optimiser is its piece followed by `scale_by_learning_rate` (with `add_decayed_weights`
between for the `...w` forms); `nadamw` is `adamw(..., nesterov=True)`. The states are
optax's (`ScaleByAdamState` for AdaMax, Yogi and RAdam), so optax checkpoints restore.
Second moments of complex parameters are real ($|g|^2$, $|g|$).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike

from gradtx import checks, numerics
from gradtx.adam import ScaleByAdamState
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.ewa import debias_factor, zeros_like_tree
from gradtx.optimizers import adamw
from gradtx.scale import learning_rate_step as _lr
from gradtx.weight_decay import add_decayed_weights

__all__ = [
    "ScaleByBeliefState",
    "ScaleByNovogradState",
    "adabelief",
    "adamax",
    "adamaxw",
    "nadamw",
    "novograd",
    "radam",
    "scale_by_adamax",
    "scale_by_belief",
    "scale_by_novograd",
    "scale_by_radam",
    "scale_by_yogi",
    "yogi",
]

_cast = numerics.cast


def _debiased_momentum(b1: float, count: Array, nesterov: bool):
    r"""The leaf function $\hat m(m_t, g_t)$: $m_t / (1-\beta_1^t)$, or with Nesterov
    $\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)$ (as `scale_by_adam`)."""
    c1 = debias_factor(b1, count)
    c1_next = debias_factor(b1, numerics.safe_increment(count)) if nesterov else None

    def m_hat(m, g):
        dtype = m.dtype
        if c1_next is None:
            return m * _cast(c1, dtype)
        return b1 * (m * _cast(c1_next, dtype)) + (1 - b1) * (g * _cast(c1, dtype))

    return m_hat


# ----------------------------------------------------------------------------
# AdaBelief.


class ScaleByBeliefState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken
    mu: PyTree  # EWA of the gradients
    nu: PyTree  # EWA of the squared prediction error (plus eps_root), real


@factory
def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""AdaBelief's scaling: Adam whose second moment is that of the prediction error.

    $$m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
      s_t = \beta_2 s_{t-1} + (1-\beta_2) |g_t - m_t|^2 + \epsilon_{root},$$
    $$u_t = \frac{\hat m_t}{\sqrt{s_t / (1-\beta_2^t)} + \epsilon}, \qquad
      \hat m_t = \frac{m_t}{1-\beta_1^t}$$

    (with `nesterov=True`, $\hat m_t$ as in `scale_by_adam`). A gradient close to its
    prediction $m_t$ gets a large step, a surprising one a small step. Emits $u_t$; stores
    $t$, $m_t$, $s_t$.

    Args:
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the decay of the prediction error's EWA.
        eps: $\epsilon \geq 0$, added outside the root.
        eps_root: $\epsilon_{root} \geq 0$, added to $s_t$ at every step (and stored).
        nesterov: use Nesterov's look-ahead momentum.

    Returns:
        A `GradientTransformation` with state `ScaleByBeliefState(count, mu, nu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$ or negative `eps`/`eps_root`.
    """
    fn = "scale_by_belief"
    checks.check_moments(fn, b1, b2, eps, eps_root)
    checks.check_bool(fn, "nesterov", nesterov)

    def init(params):
        return ScaleByBeliefState(
            numerics.zero_count(), zeros_like_tree(params), zeros_like_tree(params, real=True)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByBeliefState)
        checks.check_tree_match(fn, updates, state.mu)
        count = numerics.safe_increment(state.count)
        m_hat = _debiased_momentum(b1, count, nesterov)
        c2 = debias_factor(b2, count)

        def leaf(g, m, s):
            dtype = numerics.compute_dtype(g, m, s)
            real = numerics.real_dtype(dtype)
            x = _cast(g, dtype)
            m_new = b1 * _cast(m, dtype) + (1 - b1) * x
            s_new = b2 * _cast(s, real) + (1 - b2) * numerics.abs_sq(x - m_new) + eps_root
            u = m_hat(m_new, x) / _cast(jnp.sqrt(s_new * _cast(c2, real)) + eps, dtype)
            return _cast(u, g.dtype), _cast(m_new, m.dtype), _cast(s_new, s.dtype)

        out, mu, nu = numerics.tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return out, ScaleByBeliefState(count, mu, nu)

    return GradientTransformation(init, update)


def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""AdaBelief: $\theta \leftarrow \theta - \alpha_t u_t$ with $u_t$ from `scale_by_belief`.

    `chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov),
    scale_by_learning_rate(learning_rate))`. (The paper's epsilons are `eps=1e-8`,
    `eps_root=0`; these defaults are optax's.)

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the decay of the prediction error's EWA.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, added to the second moment.
        nesterov: use Nesterov's look-ahead momentum.

    Returns:
        A `GradientTransformation` with state `(ScaleByBeliefState, <the rate's state>)`.
    """
    return chain(
        scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov), _lr("adabelief", learning_rate)
    )


# ----------------------------------------------------------------------------
# AdaMax.


@factory
def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    r"""AdaMax's scaling: Adam with the $L^\infty$ norm in place of the RMS.

    $$m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
      v_t = \max(|g_t| + \epsilon,\ \beta_2 v_{t-1}), \qquad
      u_t = \frac{m_t / (1-\beta_1^t)}{v_t}$$

    $v_t$ needs no bias correction. Emits $u_t$; stores $t$, $m_t$, $v_t$ (real).
    With `eps=0` a leaf whose gradients have all been zero divides 0 by 0.

    Args:
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the decay of the weighted maximum.
        eps: $\epsilon \geq 0$, added to $|g_t|$.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState(count, mu, nu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$ or a negative `eps`.
    """
    fn = "scale_by_adamax"
    checks.check_moments(fn, b1, b2, eps)

    def init(params):
        return ScaleByAdamState(
            numerics.zero_count(), zeros_like_tree(params), zeros_like_tree(params, real=True)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByAdamState)
        checks.check_tree_match(fn, updates, state.mu)
        count = numerics.safe_increment(state.count)
        m_hat = _debiased_momentum(b1, count, False)

        def leaf(g, m, v):
            dtype = numerics.compute_dtype(g, m, v)
            real = numerics.real_dtype(dtype)
            x = _cast(g, dtype)
            m_new = b1 * _cast(m, dtype) + (1 - b1) * x
            v_new = jnp.maximum(jnp.abs(x) + eps, b2 * _cast(v, real))
            u = m_hat(m_new, x) / _cast(v_new, dtype)
            return _cast(u, g.dtype), _cast(m_new, m.dtype), _cast(v_new, v.dtype)

        out, mu, nu = numerics.tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return out, ScaleByAdamState(count, mu, nu)

    return GradientTransformation(init, update)


def adamax(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    r"""AdaMax: $\theta \leftarrow \theta - \alpha_t u_t$ with $u_t$ from `scale_by_adamax`.

    `chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the decay of the weighted maximum.
        eps: $\epsilon \geq 0$, added to $|g_t|$.

    Returns:
        A `GradientTransformation` with state `(ScaleByAdamState, <the rate's state>)`.
    """
    return chain(scale_by_adamax(b1, b2, eps), _lr("adamax", learning_rate))


def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> GradientTransformation:
    r"""AdaMaxW: AdaMax with decoupled weight decay.

    $\theta \leftarrow \theta - \alpha_t (u_t + \lambda \theta)$, $u_t$ from `scale_by_adamax`:
    `chain(scale_by_adamax(b1, b2, eps), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the decay of the weighted maximum.
        eps: $\epsilon \geq 0$, added to $|g_t|$.
        weight_decay: $\lambda \geq 0$, or a schedule.
        mask: which leaves to decay: a tree of bools like the params, or a function of the
            params returning one (see `masked`); None decays every leaf.

    Returns:
        A `GradientTransformation` with state `(ScaleByAdamState, <decay's>, <rate's>)`.

    Raises:
        ValueError: for a negative constant `weight_decay` or `learning_rate`.
    """
    checks.check_scalar_or_schedule("adamaxw", "weight_decay", weight_decay)
    return chain(
        scale_by_adamax(b1, b2, eps),
        add_decayed_weights(weight_decay, mask),
        _lr("adamaxw", learning_rate),
    )


# ----------------------------------------------------------------------------
# Yogi.


@factory
def scale_by_yogi(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
) -> GradientTransformation:
    r"""Yogi's scaling: Adam whose second moment moves by at most $(1-\beta_2) g^2$ a step.

    $$m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
      v_t = v_{t-1} - (1-\beta_2)\, \operatorname{sign}(v_{t-1} - |g_t|^2)\, |g_t|^2,$$
    $$u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon},
      \qquad m_0 = v_0 = v_{init}$$

    Adam's $v$ forgets a large $v_{t-1}$ multiplicatively; Yogi's additive update keeps
    it from collapsing after a few small gradients. $v_t$ stays $\geq 0$. Emits $u_t$;
    stores $t$, $m_t$, $v_t$.

    Args:
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the rate of the second moment's moves.
        eps: $\epsilon \geq 0$, added outside the root.
        eps_root: $\epsilon_{root} \geq 0$, added inside the root.
        initial_accumulator_value: $v_{init} \geq 0$, the start of both moments.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState(count, mu, nu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$ or negative `eps`, `eps_root` or
            `initial_accumulator_value` (a negative $v$ has no root).
    """
    fn = "scale_by_yogi"
    checks.check_moments(fn, b1, b2, eps, eps_root)
    checks.check_non_negative(fn, "initial_accumulator_value", initial_accumulator_value)

    def init(params):
        fill = initial_accumulator_value
        return ScaleByAdamState(
            numerics.zero_count(),
            zeros_like_tree(params, fill=fill),
            zeros_like_tree(params, fill=fill, real=True),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByAdamState)
        checks.check_tree_match(fn, updates, state.mu)
        count = numerics.safe_increment(state.count)
        m_hat = _debiased_momentum(b1, count, False)
        c2 = debias_factor(b2, count)

        def leaf(g, m, v):
            dtype = numerics.compute_dtype(g, m, v)
            real = numerics.real_dtype(dtype)
            x = _cast(g, dtype)
            g2 = numerics.abs_sq(x)
            v_old = _cast(v, real)
            m_new = b1 * _cast(m, dtype) + (1 - b1) * x
            v_new = v_old - (1 - b2) * jnp.sign(v_old - g2) * g2
            u = m_hat(m_new, x) / _cast(jnp.sqrt(v_new * _cast(c2, real) + eps_root) + eps, dtype)
            return _cast(u, g.dtype), _cast(m_new, m.dtype), _cast(v_new, v.dtype)

        out, mu, nu = numerics.tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return out, ScaleByAdamState(count, mu, nu)

    return GradientTransformation(init, update)


def yogi(
    learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3
) -> GradientTransformation:
    r"""Yogi: $\theta \leftarrow \theta - \alpha_t u_t$ with $u_t$ from `scale_by_yogi`.

    `chain(scale_by_yogi(b1, b2, eps), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the rate of the second moment's moves.
        eps: $\epsilon \geq 0$, added outside the root.

    Returns:
        A `GradientTransformation` with state `(ScaleByAdamState, <the rate's state>)`.
    """
    return chain(scale_by_yogi(b1, b2, eps), _lr("yogi", learning_rate))


# ----------------------------------------------------------------------------
# RAdam.


@factory
def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Rectified Adam's scaling: Adam's step once its adaptive rate's variance is tractable.

    With $\hat m_t$, $\hat v_t$ as in `scale_by_adam`, $\rho_\infty = 2 / (1-\beta_2) - 1$
    and $\rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t)$:

    $$u_t = \begin{cases}
      r_t \dfrac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon} & \rho_t \geq \tau \\
      \hat m_t & \text{otherwise (momentum SGD)}
    \end{cases}, \qquad
    r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
      {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}$$

    The rectified step is taken only where $r_t$ is real ($\rho_\infty > 4$, i.e.
    $\beta_2 > 0.6$). Emits $u_t$; stores $t$, $m_t$, $v_t$.

    Args:
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the RMS EWA's decay.
        eps: $\epsilon \geq 0$, added outside the root.
        eps_root: $\epsilon_{root} \geq 0$, added inside the root.
        threshold: $\tau \geq 4$, the $\rho_t$ from which the rectified step is taken
            (the paper uses 4, optax and PyTorch 5).
        nesterov: use Nesterov's look-ahead momentum.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState(count, mu, nu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$, negative `eps`/`eps_root`, or a
            `threshold` below 4 (where $r_t$ is the root of a negative number).
    """
    fn = "scale_by_radam"
    checks.check_moments(fn, b1, b2, eps, eps_root)
    checks.check_finite(
        fn,
        "threshold",
        threshold,
        4.0,
        low_open=False,
        hint="below 4 the rectification r_t is the root of a negative number",
    )
    checks.check_bool(fn, "nesterov", nesterov)
    ro_inf = 2.0 / (1.0 - b2) - 1.0

    def init(params):
        return ScaleByAdamState(
            numerics.zero_count(), zeros_like_tree(params), zeros_like_tree(params, real=True)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByAdamState)
        checks.check_tree_match(fn, updates, state.mu)
        count = numerics.safe_increment(state.count)
        m_hat = _debiased_momentum(b1, count, nesterov)
        c2 = debias_factor(b2, count)
        t = count.astype(jnp.float32)
        b2t = jnp.asarray(b2, jnp.float32) ** t
        ro = ro_inf - 2 * t * b2t / (1 - b2t)
        rectified = (ro >= threshold) & (ro_inf > 4.0)
        # r is read only where rectified; elsewhere it is given a harmless argument.
        ratio = (ro - 4.0) * (ro - 2.0) * ro_inf / ((ro_inf - 4.0) * (ro_inf - 2.0) * ro)
        r = jnp.sqrt(jnp.where(rectified, ratio, 1.0))

        def leaf(g, m, v):
            dtype = numerics.compute_dtype(g, m, v)
            real = numerics.real_dtype(dtype)
            x = _cast(g, dtype)
            m_new = b1 * _cast(m, dtype) + (1 - b1) * x
            v_new = b2 * _cast(v, real) + (1 - b2) * numerics.abs_sq(x)
            mh = m_hat(m_new, x)
            root = jnp.sqrt(v_new * _cast(c2, real) + eps_root) + eps
            step = _cast(r, dtype) * mh / _cast(root, dtype)
            u = jnp.where(rectified, step, mh)
            return _cast(u, g.dtype), _cast(m_new, m.dtype), _cast(v_new, v.dtype)

        out, mu, nu = numerics.tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return out, ScaleByAdamState(count, mu, nu)

    return GradientTransformation(init, update)


def radam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""RAdam: $\theta \leftarrow \theta - \alpha_t u_t$ with $u_t$ from `scale_by_radam`.

    `chain(scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov),
    scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the RMS EWA's decay.
        eps: $\epsilon \geq 0$, added outside the root.
        eps_root: $\epsilon_{root} \geq 0$, added inside the root.
        threshold: $\tau \geq 4$, the $\rho_t$ from which the rectified step is taken.
        nesterov: use Nesterov's look-ahead momentum.

    Returns:
        A `GradientTransformation` with state `(ScaleByAdamState, <the rate's state>)`.
    """
    return chain(
        scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov),
        _lr("radam", learning_rate),
    )


# ----------------------------------------------------------------------------
# NAdamW.


def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""NAdamW: AdamW with Nesterov's look-ahead momentum, `adamw(..., nesterov=True)`.

    $\theta \leftarrow \theta - \alpha_t (u_t + \lambda \theta)$ with $u_t$ from
    `scale_by_adam(..., nesterov=True)`: `chain(scale_by_adam(..., nesterov=True),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))`.
    optax's `nadamw` is `functools.partial(adamw, nesterov=True)`: the same signature.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$.
        b2: $\beta_2 \in [0, 1)$.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        weight_decay: $\lambda \geq 0$, or a schedule.
        mask: which leaves to decay: a tree of bools like the params, or a function of the
            params returning one (see `masked`); None decays every leaf.
        nesterov: Nesterov's look-ahead (True; False gives `adamw`).
        nu_dtype: storage dtype of $v$ (gradtx only).

    Returns:
        A `GradientTransformation` with state `(ScaleByAdamState, <decay's>, <rate's>)`.

    Raises:
        ValueError: for a negative constant `weight_decay` or `learning_rate`.
    """
    checks.check_scalar_or_schedule("nadamw", "weight_decay", weight_decay)
    checks.check_scalar_or_schedule("nadamw", "learning_rate", learning_rate)
    return adamw(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        weight_decay,
        mask,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
    )


# ----------------------------------------------------------------------------
# NovoGrad.


class ScaleByNovogradState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken
    mu: PyTree  # momentum of the normalised steps, in `mu_dtype`
    nu: PyTree  # one scalar per leaf: EWA of the squared norm of its gradient (real)


@factory
def scale_by_novograd(
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""NovoGrad's scaling: one second moment per leaf (layer), momentum of normalised steps.

    For each leaf, with $n_t = \lVert g_t \rVert^2$ (the whole leaf's squared norm):

    $$v_t = \beta_2 v_{t-1} + (1-\beta_2) n_t, \qquad
      a_t = \frac{g_t}{\sqrt{v_t + \epsilon_{root}} + \epsilon} + \lambda \theta_t, \qquad
      m_t = \beta_1 m_{t-1} + a_t,$$

    except at the first step, where $v_1 = n_1$ and $m_1 = a_1$. Emits $u_t = m_t$;
    stores $t$, $m_t$ and the scalars $v_t$.

    Args:
        b1: $\beta_1 \in [0, 1)$, the momentum's decay.
        b2: $\beta_2 \in [0, 1)$, the decay of the squared norms' EWA.
        eps: $\epsilon \geq 0$, added outside the root.
        eps_root: $\epsilon_{root} \geq 0$, added inside the root.
        weight_decay: $\lambda \geq 0$, a number (not a schedule), added inside the momentum.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.

    Returns:
        A `GradientTransformation` with state `ScaleByNovogradState(count, mu, nu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$, or negative `eps`, `eps_root` or
            `weight_decay`.
        TypeError: for a schedule as `weight_decay`; in `update`, when `params` is not
            passed and `weight_decay` is not 0.
    """
    fn = "scale_by_novograd"
    checks.check_moments(fn, b1, b2, eps, eps_root)
    if callable(weight_decay):
        raise TypeError(
            f"{fn}: weight_decay must be a number, got the schedule {weight_decay!r}; "
            "NovoGrad adds the decay inside its momentum, where optax takes a constant"
        )
    checks.check_non_negative(fn, "weight_decay", weight_decay)
    mu_dt = checks.canonicalize_dtype(fn, "mu_dtype", mu_dtype)
    decays = not (checks.is_concrete(weight_decay) and float(weight_decay) == 0.0)

    def init(params):
        nu = jax.tree.map(lambda p: jnp.zeros([], numerics.real_dtype(jnp.result_type(p))), params)
        return ScaleByNovogradState(
            numerics.zero_count(), zeros_like_tree(params, mu_dt, fn=fn, arg="mu_dtype"), nu
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByNovogradState)
        checks.check_tree_match(fn, updates, state.mu)
        if decays and params is None:
            raise checks.missing_argument(
                fn, "params (weight_decay is not 0)", "opt.update(grads, state, params)"
            )
        count = numerics.safe_increment(state.count)
        first = count == 1
        params = updates if params is None else numerics.as_arrays(params)

        def leaf(g, m, v, p):
            dtype = numerics.compute_dtype(g, m, v, p)
            real = numerics.real_dtype(dtype)
            x = _cast(g, dtype)
            n = jnp.sum(numerics.abs_sq(x))
            v_new = jnp.where(first, n, b2 * _cast(v, real) + (1 - b2) * n)
            a = x / _cast(jnp.sqrt(v_new + eps_root) + eps, dtype)
            if decays:
                a = a + numerics.as_compute(weight_decay, dtype) * _cast(p, dtype)
            m_new = jnp.where(first, a, b1 * _cast(m, dtype) + a)
            return _cast(m_new, g.dtype), _cast(m_new, m.dtype), _cast(v_new, v.dtype)

        out, mu, nu = numerics.tree_map_multi(leaf, 3, updates, state.mu, state.nu, params)
        return out, ScaleByNovogradState(count, mu, nu)

    return GradientTransformation(init, update)


def novograd(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
) -> GradientTransformation:
    r"""NovoGrad: $\theta \leftarrow \theta - \alpha_t m_t$ with $m_t$ from `scale_by_novograd`.

    `chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay),
    scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the momentum's decay.
        b2: $\beta_2 \in [0, 1)$, the decay of the squared norms' EWA.
        eps: $\epsilon \geq 0$, added outside the root.
        eps_root: $\epsilon_{root} \geq 0$, added inside the root.
        weight_decay: $\lambda \geq 0$, a number (optax's piece takes no schedule).

    Returns:
        A `GradientTransformation` with state `(ScaleByNovogradState, <the rate's state>)`.
    """
    return chain(
        scale_by_novograd(b1, b2, eps, eps_root, weight_decay), _lr("novograd", learning_rate)
    )
