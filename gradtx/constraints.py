r"""Constraints on the parameters, enforced through the update: $\theta + u \geq 0$."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradtx import base, checks, numerics
from gradtx.base import EmptyState, GradientTransformation, PyTree, factory

# optax's name: the constraint keeps no state.
NonNegativeParamsState = EmptyState


def _refuse_complex(fn: str, params: PyTree, what: str) -> None:
    """A sign constraint has no meaning for complex numbers: refuse them, naming the leaf."""
    for path, p in base.tree_leaves_with_none(params):
        if p is not None and numerics.is_complex(p):
            raise TypeError(
                f"{fn}: {what}{jax.tree_util.keystr(path)} is {jnp.result_type(p)}; "
                "non-negativity needs real parameters (constrain the real and imaginary "
                "parts as separate real parameters)"
            )


@factory
def keep_params_nonnegative() -> GradientTransformation:
    r"""Changes the update so that the parameters stay non-negative after it is applied.

    $$u_i = \begin{cases} -\theta_i & \theta_i + g_i < 0 \\ g_i & \text{otherwise}
      \end{cases}$$

    so $\theta + u \geq 0$ (a coordinate that would cross zero lands on it). Put it last
    in a chain: it must see the final update. A negative parameter is moved to 0. Emits
    $u$, in each update's dtype; stores nothing. A `None` parameter gives a `None` update.

    Returns:
        A stateless `GradientTransformation` (state `NonNegativeParamsState()`, an empty
        state as in optax).

    Raises:
        TypeError: at `init` and `update`, for complex parameters; in `update`, when
            `params` is not passed.
    """
    fn = "keep_params_nonnegative"

    def init(params):
        _refuse_complex(fn, params, "params")
        return NonNegativeParamsState()

    def leaf(p, g):
        if p is None or g is None:
            return None
        p, g = jnp.asarray(p), jnp.asarray(g)
        dtype = numerics.compute_dtype(p, g)
        theta, step = numerics.cast(p, dtype), numerics.cast(g, dtype)
        return numerics.cast(jnp.where(theta + step < 0, -theta, step), g.dtype)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        _refuse_complex(fn, params, "params")
        _refuse_complex(fn, updates, "updates")
        params = numerics.prune_like(updates, params)
        checks.check_tree_match(fn, updates, params, "updates", "params")
        return jax.tree.map(leaf, params, updates, is_leaf=lambda x: x is None), state

    return GradientTransformation(init, update)
