r"""Adadelta: RMS scaling whose numerator is the RMS of the past steps, so units match."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.ewa import moment_update, zeros_like_tree
from gradtx.scale import scale_by_learning_rate
from gradtx.weight_decay import add_decayed_weights


class ScaleByAdaDeltaState(NamedTuple):
    e_g: PyTree  # EWA of squared updates (real)
    e_x: PyTree  # EWA of squared emitted steps (real)


@factory
def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> GradientTransformation:
    r"""Adadelta's scaling: the RMS of past steps over the RMS of the gradients.

    $$E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho)|g_t|^2, \qquad
      u_t = \frac{\sqrt{E[\Delta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t, \qquad
      E[\Delta^2]_t = \rho E[\Delta^2]_{t-1} + (1-\rho)|u_t|^2$$

    with both averages starting at 0, so the first steps have size about
    $\sqrt{\epsilon / (1-\rho)}$ and grow as the steps' own average does. Emits $u_t$;
    stores $E[g^2]_t$ and $E[\Delta^2]_t$ (real, also for complex leaves).

    Args:
        rho: $\rho \in [0, 1)$, the decay of both averages.
        eps: $\epsilon > 0$, inside both roots; it also sets the size of the first steps
            ($\epsilon = 0$ would leave every step 0).

    Returns:
        A `GradientTransformation` with state `ScaleByAdaDeltaState(e_g, e_x)`.

    Raises:
        ValueError: for `rho` outside $[0, 1)$ or `eps` $\leq 0$.
    """
    fn = "scale_by_adadelta"
    checks.check_decay(fn, "rho", rho)
    checks.check_positive(fn, "eps", eps)

    def init(params):
        params = numerics.as_arrays(params)
        return ScaleByAdaDeltaState(
            zeros_like_tree(params, real=True), zeros_like_tree(params, real=True)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByAdaDeltaState)
        checks.check_tree_match(fn, updates, state.e_g)

        def leaf(g, e_g, e_x):
            e_g = moment_update(rho, e_g, g, order=2)
            real = numerics.compute_dtype(e_g, e_x)
            e = numerics.as_compute(eps, real)
            ratio = jnp.sqrt(numerics.cast(e_x, real) + e) / jnp.sqrt(numerics.cast(e_g, real) + e)
            u = numerics.scale_leaf(g, ratio)
            return u, e_g, moment_update(rho, e_x, u, order=2)

        out, e_g, e_x = numerics.tree_map_multi(leaf, 3, updates, state.e_g, state.e_x)
        return out, ScaleByAdaDeltaState(e_g, e_x)

    return GradientTransformation(init, update)


def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> GradientTransformation:
    r"""Adadelta (Zeiler, 2012): $\theta \leftarrow \theta - \alpha\, u_t$, with $u_t$ from
    `scale_by_adadelta` applied to $g_t + \lambda \theta$.

    $$\theta \leftarrow \theta - \alpha
      \frac{\sqrt{E[\Delta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}(g_t + \lambda\theta)$$

    `chain(add_decayed_weights(weight_decay, weight_decay_mask), scale_by_adadelta(rho, eps),
    scale_by_learning_rate(learning_rate))`, with `learning_rate=None` meaning $\alpha = 1$
    (the paper's method; optax's None skips the sign flip too and so ascends).

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule; None for
            $\alpha = 1$.
        rho: $\rho \in [0, 1)$, the decay of both averages.
        eps: $\epsilon > 0$, inside both roots.
        weight_decay: $\lambda \geq 0$ (or a schedule), added to the gradient before scaling.
        weight_decay_mask: which leaves to decay: a tree of bools like the params or a
            function of the params (see `masked`); None decays every leaf.

    Returns:
        The chain above, a `GradientTransformation`.

    Raises:
        ValueError: for a negative `learning_rate` or `weight_decay`, `rho` outside
            $[0, 1)$ or `eps` $\leq 0$.
    """
    checks.check_weight_decay("adadelta", "weight_decay", weight_decay)
    if learning_rate is None:
        learning_rate = 1.0
    checks.check_scalar_or_schedule("adadelta", "learning_rate", learning_rate)
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(learning_rate),
    )
