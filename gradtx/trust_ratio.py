r"""Trust ratios: rescale each layer's step to a fraction of that layer's weight norm.

* `scale_by_trust_ratio`: $u = \frac{c\,\lVert\theta\rVert}{\lVert g\rVert + \epsilon}\, g$,
  per leaf, the piece (its direction is kept).
* `lamb` = `scale_by_adam | add_decayed_weights | scale_by_trust_ratio | scale_by_learning_rate`
  (Adam's scaling, decay, trust ratio).
* `lars` = `add_decayed_weights | masked(scale_by_trust_ratio) | scale_by_learning_rate | trace`
  (decay, trust ratio, momentum).
* `fromage` = `scale_by_trust_ratio | scale_by_learning_rate | add_decayed_weights` with a
  negative decay $1/\sqrt{1+\alpha^2} - 1$ after the rate, which shrinks the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gradtx import checks, numerics
from gradtx.adam import scale_by_adam
from gradtx.base import EmptyState, GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain, masked
from gradtx.momentum import trace
from gradtx.safe_math import safe_norm
from gradtx.scale import scale_by_learning_rate
from gradtx.weight_decay import add_decayed_weights

__all__ = ["ScaleByTrustRatioState", "fromage", "lamb", "lars", "scale_by_trust_ratio"]

# optax's name: the trust ratio keeps no state.
ScaleByTrustRatioState = EmptyState


@factory
def scale_by_trust_ratio(
    min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0
) -> GradientTransformation:
    r"""Scales each leaf's update by its trust ratio: the ratio of the weight and step norms.

    $$u = r\, g, \qquad r = \begin{cases}
      \dfrac{c \, \max(\lVert\theta\rVert, n_{min})}{\max(\lVert g\rVert, n_{min}) + \epsilon}
        & \text{both norms} > 0 \\
      1 & \text{otherwise}
    \end{cases}$$

    per leaf (Frobenius norms over the whole leaf). $r \geq 0$, so the direction of $g$ is
    kept; a leaf with zero weights or a zero update is passed through (no NaN). Emits $u$;
    stores nothing.

    Args:
        min_norm: $n_{min} \geq 0$, the smallest norm used for $\theta$ and $g$.
        trust_coefficient: $c \geq 0$, a multiplier of the ratio.
        eps: $\epsilon \geq 0$, added to the update's norm.

    Returns:
        A stateless `GradientTransformation` (state `ScaleByTrustRatioState()`).

    Raises:
        ValueError: for a negative `min_norm`, `trust_coefficient` or `eps`.
        TypeError: in `update`, when `params` is not passed.
    """
    fn = "scale_by_trust_ratio"
    checks.check_non_negative(fn, "min_norm", min_norm)
    checks.check_non_negative(fn, "trust_coefficient", trust_coefficient)
    checks.check_non_negative(fn, "eps", eps)

    def init(params):
        del params
        return ScaleByTrustRatioState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        updates = jax.tree.map(
            lambda g: g if g is None or isinstance(g, jax.Array) else jnp.asarray(g),
            updates,
            is_leaf=lambda x: x is None,
        )
        params = numerics.prune_like(updates, params)
        checks.check_tree_match(fn, updates, params, "updates", "params")

        def leaf(g, p):
            if g is None:
                return None
            dtype = numerics.compute_dtype(g, p)
            real = numerics.real_dtype(dtype)
            x = numerics.cast(g, dtype)
            p_norm = safe_norm(numerics.cast(p, dtype), min_norm)
            g_norm = safe_norm(x, min_norm)
            coef = numerics.as_compute(trust_coefficient, real)
            ratio = coef * p_norm / (g_norm + numerics.as_compute(eps, real))
            ratio = jnp.where((p_norm == 0) | (g_norm == 0), jnp.ones([], real), ratio)
            return numerics.cast(x * numerics.cast(ratio, dtype), g.dtype)

        return jax.tree.map(leaf, updates, params, is_leaf=lambda x: x is None), state

    return GradientTransformation(init, update)


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> GradientTransformation:
    r"""LAMB: Adam's scaling, decoupled weight decay, then a per-layer trust ratio.

    $$\theta \leftarrow \theta - \alpha_t\, \frac{\lVert\theta\rVert}{\lVert v\rVert}\, v,
      \qquad v = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon} + \lambda\theta$$

    per leaf. `chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay,
    mask), scale_by_trust_ratio(), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        b1: $\beta_1 \in [0, 1)$, the momentum EWA's decay.
        b2: $\beta_2 \in [0, 1)$, the RMS EWA's decay.
        eps: $\epsilon \geq 0$, outside the root.
        eps_root: $\epsilon_{root} \geq 0$, inside the root.
        weight_decay: $\lambda \geq 0$, or a schedule.
        mask: which leaves to decay: a tree of bools like the params, or a function of the
            params returning one (see `masked`); None decays every leaf.

    Returns:
        A `GradientTransformation` with state
        `(ScaleByAdamState, <decay's>, ScaleByTrustRatioState(), <rate's>)`.

    Raises:
        ValueError: for a negative constant `weight_decay` or `learning_rate`.
    """
    checks.check_scalar_or_schedule("lamb", "learning_rate", learning_rate)
    checks.check_scalar_or_schedule("lamb", "weight_decay", weight_decay)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: PyTree | Callable[[PyTree], PyTree] = True,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""LARS: weight decay, a per-layer trust ratio, then heavy-ball momentum on the step.

    $$v \leftarrow \beta v + \alpha_t\, \frac{c \lVert\theta\rVert}{\lVert d\rVert + \epsilon}\,
      d, \qquad d = g + \lambda\theta, \qquad \theta \leftarrow \theta - v$$

    per leaf. `chain(add_decayed_weights(weight_decay, weight_decay_mask),
    masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
    trust_ratio_mask), scale_by_learning_rate(learning_rate), trace(momentum, nesterov))`.
    The masks default to `True` (every leaf), as in optax; pass a mask that is False on
    biases and norms to exclude them, as the paper does.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        weight_decay: $\lambda \geq 0$, or a schedule.
        weight_decay_mask: which leaves to decay: True (all), a tree of bools like the
            params (or a prefix of it), or a function of the params returning one.
        trust_coefficient: $c \geq 0$, the multiplier of the trust ratio.
        eps: $\epsilon \geq 0$, added to the norm of $d$.
        trust_ratio_mask: which leaves get the trust ratio, as `weight_decay_mask`.
        momentum: $\beta \in [0, 1)$, the decay of the heavy-ball momentum.
        nesterov: use Nesterov's look-ahead for that momentum.

    Returns:
        A `GradientTransformation` with state
        `(MaskedState(<decay's>), MaskedState(ScaleByTrustRatioState()), <rate's>, TraceState)`.

    Raises:
        ValueError: for a negative constant `weight_decay` or `learning_rate`, or a
            `momentum` outside $[0, 1)$.
    """
    checks.check_scalar_or_schedule("lars", "learning_rate", learning_rate)
    checks.check_scalar_or_schedule("lars", "weight_decay", weight_decay)
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        masked(
            scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
            trust_ratio_mask,
        ),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov),
    )


def fromage(learning_rate: ScalarOrSchedule, min_norm: float = 1e-6) -> GradientTransformation:
    r"""Fromage: a trust-ratio step of relative size $\alpha$, then the weights shrunk back.

    $$\theta \leftarrow \frac{1}{\sqrt{1+\alpha_t^2}}
      \Bigl(\theta - \alpha_t \frac{\lVert\theta\rVert}{\lVert g\rVert}\, g\Bigr)$$

    per leaf (norms at least `min_norm`): the step has norm $\alpha_t\lVert\theta\rVert$ and
    the shrink keeps $\lVert\theta\rVert$ from growing. With $\mu = 1 / \sqrt{1+\alpha^2}$:
    `chain(scale_by_trust_ratio(min_norm), scale_by_learning_rate(learning_rate * mu),
    add_decayed_weights(mu - 1))`, the decay $\mu - 1 \in (-1, 0]$ placed after the rate.
    With a schedule, both factors are schedules (which `to_config` cannot export).

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        min_norm: $n_{min} \geq 0$, the smallest norm used for $\theta$ and $g$.

    Returns:
        A `GradientTransformation` with state
        `(ScaleByTrustRatioState(), <rate's>, <decay's>)`.

    Raises:
        ValueError: for a negative constant `learning_rate` or `min_norm`.
    """
    checks.check_scalar_or_schedule("fromage", "learning_rate", learning_rate)
    if not callable(learning_rate):
        mult = 1 / (1 + learning_rate**2) ** 0.5
        return chain(
            scale_by_trust_ratio(min_norm),
            scale_by_learning_rate(learning_rate * mult),
            add_decayed_weights(mult - 1),
        )

    def mult_of(count):
        return 1 / (1 + learning_rate(count) ** 2) ** 0.5

    return chain(
        scale_by_trust_ratio(min_norm),
        scale_by_learning_rate(lambda count: mult_of(count) * learning_rate(count)),
        add_decayed_weights(lambda count: mult_of(count) - 1),
    )
