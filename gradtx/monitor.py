r"""Monitoring: record the sizes of gradients, updates and parameters in the state, for logging.

The update-to-parameter ratio $\lVert u \rVert / \lVert \theta \rVert$ is the quick
health check of a learning rate (around $10^{-3}$ per step is typical; far above
it the run is unstable, far below it barely moves).

```python
opt = monitor_norms(adam(1e-3))
updates, state = opt.update(grads, state, params)
log(grad_norm=state.grad_norm, update_ratio=state.update_param_ratio)
```
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from gradtx import base, numerics
from gradtx.base import GradientTransformation, PyTree, factory
from gradtx.clipping import global_norm


class MonitorNormsState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps seen
    grad_norm: Array  # ||g_t||, the incoming updates
    update_norm: Array  # ||u_t||, the updates emitted
    param_norm: Array  # ||theta_t||, NaN when update gets no params
    grad_param_ratio: Array  # ||g_t|| / ||theta_t||
    update_param_ratio: Array  # ||u_t|| / ||theta_t||
    inner_state: PyTree  # the inner transformation's state


@factory
def monitor_norms(inner: GradientTransformation | None = None) -> GradientTransformation:
    r"""Passes `inner`'s updates through unchanged and records global norms in the state.

    $$\lVert g_t \rVert, \quad \lVert u_t \rVert, \quad \lVert \theta_t \rVert, \quad
      \frac{\lVert g_t \rVert}{\lVert \theta_t \rVert}, \quad
      \frac{\lVert u_t \rVert}{\lVert \theta_t \rVert}$$

    with $g_t$ the incoming updates (the gradients, when `monitor_norms` wraps the
    whole optimiser), $u_t = \text{inner}(g_t)$ the emitted ones, $\theta_t$ the
    params passed to `update` (before this step's update) and
    $\lVert x \rVert = \sqrt{\sum_i x_i^2}$ over all leaves (`global_norm`),
    stored in float32. Emits $u_t$ exactly as `inner` does; stores the five
    norms, the step count and `inner`'s state. Without params the parameter norm
    and the ratios are NaN; without `inner`, $u_t = g_t$ and the piece records
    the updates reaching it in a chain.

    Args:
        inner: the transformation to watch, e.g. `adam(1e-3)`; None for the identity.

    Returns:
        A `GradientTransformation` with state `MonitorNormsState(count, grad_norm,
        update_norm, param_norm, grad_param_ratio, update_param_ratio, inner_state)`.
    """
    fn = "monitor_norms"
    tx = base.identity() if inner is None else base.as_transformation(fn, "inner", inner)

    def init(params):
        zero = jnp.zeros([], jnp.float32)
        return MonitorNormsState(
            numerics.zero_count(), zero, zero, zero, zero, zero, tx.init(params)
        )

    def update(updates, state, params=None, **extra_args):
        new_updates, inner_state = tx.update(updates, state.inner_state, params, **extra_args)
        grad_norm = global_norm(updates).astype(jnp.float32)
        update_norm = global_norm(new_updates).astype(jnp.float32)
        if params is None:
            param_norm = jnp.full([], jnp.nan, jnp.float32)
        else:
            param_norm = global_norm(params).astype(jnp.float32)
        return new_updates, MonitorNormsState(
            count=numerics.safe_increment(state.count),
            grad_norm=grad_norm,
            update_norm=update_norm,
            param_norm=param_norm,
            grad_param_ratio=grad_norm / param_norm,
            update_param_ratio=update_norm / param_norm,
            inner_state=inner_state,
        )

    return GradientTransformation(init, update)
