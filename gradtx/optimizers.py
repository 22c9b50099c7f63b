r"""Optimisers: each a short `chain` of the pieces, with optax's names and defaults.

Every `learning_rate` is a constant $\alpha \geq 0$ or a `count -> value`
schedule (`gradtx.schedules`), applied last as $u = -\alpha_t \cdot (\dots)$.
"""

from __future__ import annotations

from collections.abc import Callable

from jax.typing import DTypeLike

from gradtx import checks
from gradtx.adam import scale_by_adam, scale_by_amsgrad
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, identity
from gradtx.combine import chain
from gradtx.ewa import bias_correction, ema
from gradtx.momentum import trace
from gradtx.rms import scale_by_rms, scale_by_rss, scale_by_stddev
from gradtx.scale import learning_rate_step as _lr
from gradtx.weight_decay import add_decayed_weights


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Gradient descent, optionally with heavy-ball momentum (IDEAS §4, §9).

    $W \leftarrow W - \alpha g$, or with momentum $\beta$:
    $v \leftarrow \beta v + g,\ W \leftarrow W - \alpha v$ (see `trace`; for the
    course's EWA form use `momentum_ewa`).

    `chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))`, with
    `identity()` in place of `trace` without momentum (optax's state layout).

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        momentum: $\beta \in [0, 1)$, or None for plain gradient descent.
        nesterov: use Nesterov's look-ahead $g + \beta v$ (needs a `momentum`).
        accumulator_dtype: storage dtype of $v$; None keeps each parameter's dtype.
    """
    if momentum is None:
        if nesterov:
            raise ValueError(
                "sgd: nesterov=True needs a momentum, got momentum=None; pass e.g. momentum=0.9"
            )
        return chain(identity(), _lr("sgd", learning_rate))
    return chain(trace(momentum, nesterov, accumulator_dtype), _lr("sgd", learning_rate))


def momentum_ewa(
    learning_rate: ScalarOrSchedule,
    beta: float = 0.9,
    debias: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""The course's momentum: an EWA of the gradients, then the step (IDEAS §4).

    $$v_t = \beta v_{t-1} + (1-\beta) g_t, \qquad W \leftarrow W - \alpha_t v_t$$

    Equals `sgd(learning_rate * (1 - beta), momentum=beta)`; the two forms and
    how they relate under a schedule are explained in `trace`.

    `chain(ema(beta), [bias_correction(beta)], scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        beta: $\beta \in [0, 1)$, the EWA's decay.
        debias: add bias correction $v_t / (1 - \beta^t)$ (rarely used for momentum).
        accumulator_dtype: storage dtype of $v$; None keeps each parameter's dtype.
    """
    pieces = [ema(beta, accumulator_dtype=accumulator_dtype)]
    if debias:
        pieces.append(bias_correction(beta))
    return chain(*pieces, _lr("momentum_ewa", learning_rate))


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""RMSprop (IDEAS §5): $W \leftarrow W - \alpha\, g / \sqrt{S + \epsilon}$.

    `chain(scale_by_rms(...), scale_by_learning_rate(learning_rate), trace(momentum,
    nesterov))`, with `scale_by_stddev` in place of `scale_by_rms` when `centered` and
    `identity()` in place of `trace` without momentum; momentum is applied after the
    rate, and the state has optax's layout.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        decay: $\beta \in [0, 1)$, the decay of the mean square $S$.
        eps: $\epsilon \geq 0$.
        initial_scale: $S_0 \geq 0$.
        eps_in_sqrt: $\epsilon$ inside the root (optax's default) or outside (the course's).
        centered: divide by an estimate of the standard deviation, $\sqrt{S - m^2}$, where
            $m$ is an EWA of the gradients (`scale_by_stddev`).
        momentum: $\beta_m \in [0, 1)$ for heavy-ball momentum on the scaled step, or None.
        nesterov: Nesterov's look-ahead for that momentum (needs a `momentum`).
        bias_correction: divide $S$ (and $m$) by $1 - \beta^t$.
        accumulator_dtype: storage dtype of the moments (gradtx only), e.g. float32 for
            bfloat16 params; None keeps each parameter's dtype.
    """
    scaler = scale_by_stddev if centered else scale_by_rms
    pieces = [
        scaler(decay, eps, initial_scale, eps_in_sqrt, bias_correction, accumulator_dtype),
        _lr("rmsprop", learning_rate),
    ]
    if momentum is not None:
        pieces.append(trace(momentum, nesterov, accumulator_dtype))
    elif nesterov:
        raise ValueError(
            "rmsprop: nesterov=True needs a momentum, got momentum=None; pass e.g. momentum=0.9"
        )
    else:
        pieces.append(identity())
    return chain(*pieces)


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Adagrad: $W \leftarrow W - \alpha\, g_t / \sqrt{\sum_{s \le t} g_s^2 + \epsilon}$.

    `chain(scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        initial_accumulator_value: the sum's start $G_0 \geq 0$.
        eps: $\epsilon \geq 0$.
        accumulator_dtype: storage dtype of the sum (gradtx only); None keeps each
            parameter's dtype.
    """
    return chain(
        scale_by_rss(initial_accumulator_value, eps, accumulator_dtype),
        _lr("adagrad", learning_rate),
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Adam (IDEAS §6) = momentum + RMSprop, bias-corrected.

    $W \leftarrow W - \alpha_t \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$;
    see `scale_by_adam` for the moments.

    `chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype), scale_by_learning_rate(lr))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the RMS EWA's decay.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nu_dtype: storage dtype of $v$ (gradtx only).
        nesterov: Nesterov's look-ahead on the first moment (NAdam).
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype, nesterov=nesterov),
        _lr("adam", learning_rate),
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""NAdam: `adam(..., nesterov=True)` (Nesterov look-ahead on the first moment).

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$.
        b2: $\beta_2 \in [0, 1)$.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nu_dtype: storage dtype of $v$ (gradtx only).
    """
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nu_dtype, nesterov=True)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""AdamW: Adam with decoupled weight decay.

    $W \leftarrow W - \alpha_t (\hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda W)$.

    `chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(lr))`.

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
        nesterov: Nesterov's look-ahead on the first moment (NAdamW).
        nu_dtype: storage dtype of $v$ (gradtx only).
    """
    # add_decayed_weights admits factors in (-1, 0) (fromage's shrink); AdamW's decay is >= 0
    checks.check_scalar_or_schedule("adamw", "weight_decay", weight_decay)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        _lr("adamw", learning_rate),
    )


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""AMSGrad: Adam with a never-decreasing second moment (see `scale_by_amsgrad`).

    `chain(scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype), scale_by_learning_rate(lr))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$.
        b2: $\beta_2 \in [0, 1)$.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
    """
    return chain(scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype), _lr("amsgrad", learning_rate))
