r"""Sign-based methods: step along the sign of a (momentum) direction, with unit size per entry.

* `scale_by_sign`: $u = \operatorname{sign}(g)$, the piece.
* `sign_sgd` = `scale_by_sign | scale_by_learning_rate`.
* `signum` = `ema | scale_by_sign | scale_by_learning_rate` (the sign of momentum).
* `scale_by_lion`: the sign of an interpolation of the momentum and the gradient;
  `lion` = `scale_by_lion | add_decayed_weights | scale_by_learning_rate`.

For a complex entry the sign is $g / |g|$ (unit modulus, the direction kept), as
`jnp.sign` takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.ewa import ema, zeros_like_tree
from gradtx.scale import scale_by_learning_rate
from gradtx.weight_decay import add_decayed_weights

__all__ = ["ScaleByLionState", "lion", "scale_by_lion", "scale_by_sign", "sign_sgd", "signum"]


@factory
def scale_by_sign() -> GradientTransformation:
    r"""The sign of each entry: $u_i = \operatorname{sign}(g_i) \in \{-1, 0, 1\}$.

    For complex $g_i \neq 0$, $u_i = g_i / |g_i|$. Emits $u$ in the updates' dtype; stores
    nothing.

    Returns:
        A stateless `GradientTransformation` (state `EmptyState()`).
    """
    return base.stateless_pair(lambda updates, params: jax.tree.map(jnp.sign, updates))


def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    r"""signSGD: $\theta \leftarrow \theta - \alpha_t \operatorname{sign}(g_t)$.

    `chain(scale_by_sign(), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.

    Returns:
        A `GradientTransformation` with state `(EmptyState(), <the rate's state>)`.

    Raises:
        ValueError: for a negative constant `learning_rate`.
    """
    checks.check_scalar_or_schedule("sign_sgd", "learning_rate", learning_rate)
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


def signum(
    learning_rate: ScalarOrSchedule,
    beta: float = 0.9,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Signum: the sign of momentum.

    $$m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad
      \theta \leftarrow \theta - \alpha_t \operatorname{sign}(m_t)$$

    `chain(ema(beta), scale_by_sign(), scale_by_learning_rate(learning_rate))`; the EWA is
    not debiased ($1 - \beta^t > 0$ does not change a sign).

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        beta: $\beta \in [0, 1)$, the momentum's decay.
        accumulator_dtype: storage dtype of $m$; None keeps each parameter's dtype.

    Returns:
        A `GradientTransformation` with state `(EmaState, EmptyState(), <the rate's state>)`.

    Raises:
        ValueError: for `beta` outside $[0, 1)$ or a negative constant `learning_rate`.
    """
    checks.check_scalar_or_schedule("signum", "learning_rate", learning_rate)
    return chain(
        ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
        scale_by_sign(),
        scale_by_learning_rate(learning_rate),
    )


class ScaleByLionState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken
    mu: PyTree  # the momentum m, in `mu_dtype`


_LION_MODES = ("hard", "smooth", "refined")


def _lion_sign(mode: str, smooth_beta: float) -> Callable[[Array], Array]:
    """The sign variant of `scale_by_lion`, for real and complex entries."""

    def hard(x):
        return jnp.sign(x)

    def smooth(x):
        if numerics.is_complex(x):  # tanh of the modulus, along the direction
            return numerics.cast(jnp.tanh(smooth_beta * jnp.abs(x)), x.dtype) * jnp.sign(x)
        return jnp.tanh(numerics.as_compute(smooth_beta, x.dtype) * x)

    def refined(x):
        return jnp.where(jnp.abs(x) < 1.0, x, jnp.sign(x))

    return {"hard": hard, "smooth": smooth, "refined": refined}[mode]


@factory
def scale_by_lion(
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: DTypeLike | None = None,
    *,
    mode: Literal["hard", "smooth", "refined"] = "hard",
    smooth_beta: float = 1.0,
) -> GradientTransformation:
    r"""Lion's scaling: the sign of an interpolation of the momentum and the gradient.

    $$c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad u_t = \sigma(c_t), \qquad
      m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t, \quad m_0 = 0$$

    with $\sigma = \operatorname{sign}$ (`mode="hard"`), $\sigma(x) = \tanh(\beta_s x)$
    (`"smooth"`, $\beta_s$ = `smooth_beta`; $\tanh(\beta_s |x|)\, x / |x|$ for complex $x$),
    or $\sigma(x) = x$ for $|x| < 1$ and $\operatorname{sign}(x)$ beyond (`"refined"`).
    Emits $u_t$ in the updates' dtype; stores $t$ and $m_t$.

    Args:
        b1: $\beta_1 \in [0, 1)$, the weight of the momentum in the interpolation.
        b2: $\beta_2 \in [0, 1)$, the momentum EWA's decay.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        mode: `"hard"`, `"smooth"` or `"refined"`, the sign variant $\sigma$.
        smooth_beta: $\beta_s > 0$, the slope of `"smooth"`'s tanh at 0.

    Returns:
        A `GradientTransformation` with state `ScaleByLionState(count, mu)`.

    Raises:
        ValueError: for decays outside $[0, 1)$, an unknown `mode` or a `smooth_beta`
            that is not positive and finite.
    """
    fn = "scale_by_lion"
    checks.check_decay(fn, "b1", b1)
    checks.check_decay(fn, "b2", b2)
    if mode not in _LION_MODES:
        raise ValueError(f"{fn}: mode must be one of {list(_LION_MODES)}, got {mode!r}")
    checks.check_finite(fn, "smooth_beta", smooth_beta, 0.0)
    mu_dt = checks.canonicalize_dtype(fn, "mu_dtype", mu_dtype)
    sign = _lion_sign(mode, smooth_beta)

    def init(params):
        return ScaleByLionState(
            numerics.zero_count(), zeros_like_tree(params, mu_dt, fn=fn, arg="mu_dtype")
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByLionState)
        checks.check_tree_match(fn, updates, state.mu)

        def leaf(g, m):
            cast = numerics.cast
            dtype = numerics.compute_dtype(g, m)
            x, m_old = cast(g, dtype), cast(m, dtype)
            c = (1 - b1) * x + b1 * m_old
            m_new = b2 * m_old + (1 - b2) * x
            return cast(sign(c), g.dtype), cast(m_new, m.dtype)

        out, mu = numerics.tree_map_multi(leaf, 2, updates, state.mu)
        return out, ScaleByLionState(numerics.safe_increment(state.count), mu)

    return GradientTransformation(init, update)


def lion(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: DTypeLike | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> GradientTransformation:
    r"""Lion: the sign of interpolated momentum, plus decoupled weight decay.

    $$\theta \leftarrow \theta - \alpha_t \bigl(\operatorname{sign}(\beta_1 m_{t-1} +
      (1-\beta_1) g_t) + \lambda \theta\bigr)$$

    with $m$ as in `scale_by_lion`. `chain(scale_by_lion(b1, b2, mu_dtype),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))`.
    Its rate is typically 3-10x smaller than AdamW's and its decay as much larger.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the weight of the momentum in the interpolation.
        b2: $\beta_2 \in [0, 1)$, the momentum EWA's decay.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        weight_decay: $\lambda \geq 0$, or a schedule; multiplied by the learning rate.
        mask: which leaves to decay: a tree of bools like the params, or a function of the
            params returning one (see `masked`); None decays every leaf.

    Returns:
        A `GradientTransformation` with state `(ScaleByLionState, <decay's>, <rate's>)`.

    Raises:
        ValueError: for decays outside $[0, 1)$, a negative constant rate or weight decay.
    """
    checks.check_scalar_or_schedule("lion", "learning_rate", learning_rate)
    checks.check_scalar_or_schedule("lion", "weight_decay", weight_decay)
    return chain(
        scale_by_lion(b1, b2, mu_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
