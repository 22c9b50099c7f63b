r"""Weight decay: add $\lambda \theta$ to the updates (decoupled, as in AdamW)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
from jaxtyping import Array, Int

from gradtx import base
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule


class AddDecayedWeightsState(NamedTuple):
    count: Int[Array, ""]  # steps taken, for a scheduled `weight_decay`


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> GradientTransformation:
    r"""Adds the decayed parameters to the updates: $u_t = g_t + \lambda_t \theta_t$.

    Placed before the learning rate (as in `adamw`), this is decoupled weight
    decay: $\theta \leftarrow \theta - \alpha(\hat u + \lambda \theta)$.

    Args:
        weight_decay: $\lambda \geq 0$, or a `count -> value` schedule.
        mask: a tree of bools (or a function of the params) choosing the leaves
            to decay, e.g. to leave biases and norms alone; see `masked`.

    Raises:
        ValueError: for a negative `weight_decay`, or (in `update`) when `params`
            is not passed.
    """
    base.check_scalar_or_schedule("add_decayed_weights", "weight_decay", weight_decay)

    def init(params):
        del params
        return AddDecayedWeightsState(base.zero_count())

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "add_decayed_weights: update needs params (call opt.update(grads, state, params))"
            )
        base.check_tree_match("add_decayed_weights", updates, params, "updates", "params")
        wd = base.evaluate(weight_decay, state.count)
        out = jax.tree.map(lambda g, p: g + base.scale_leaf(p, wd).astype(g.dtype), updates, params)
        return out, AddDecayedWeightsState(base.safe_increment(state.count))

    tx = base.transformation("add_decayed_weights", init, update, weight_decay=weight_decay)
    if mask is None:
        return tx
    from gradtx.combine import masked

    return masked(tx, mask)
