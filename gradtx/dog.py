r"""Distance over gradients (DoG, Ivgi et al., 2023): a step size read off the run itself.

$$\eta_t = \frac{\max_{s \le t} \lVert \theta_s - \theta_0 \rVert}{\sqrt{\sum_{s \le t}
  \lVert g_s \rVert^2}}$$

The farther the iterates have gone from the start, the larger the step; the more gradient
has been seen, the smaller (Adagrad's denominator, IDEAS §5, taken per parameter array).
No learning rate to tune (IDEAS §7): only the size of the first step, $r_\epsilon$.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, OptState, factory


class ScaleByDistanceOverGradientsState(NamedTuple):
    max_dist: OptState  # per leaf, a scalar: the largest distance from the start so far
    grad_sum_of_squares: OptState  # per leaf, shape (1,): the sum of squared gradient norms
    init_params: OptState  # the parameters at init, in `param_dtype`


def _sq_norm(x: Any) -> jax.Array:
    r"""$\sum_i |x_i|^2$ of one leaf, in float32 or wider (real)."""
    x = jnp.asarray(x)
    return jnp.sum(numerics.abs_sq(numerics.cast(x, numerics.compute_dtype(x))))


@factory
def scale_by_distance_over_gradients(
    reps_rel: float = 1e-6,
    eps: float = 1e-8,
    param_dtype: DTypeLike | None = jnp.float32,
    global_scale: float = 1.0,
) -> GradientTransformation:
    r"""Layer-wise DoG (LDoG): each parameter array gets its own distance-over-gradients step.

    For each leaf, with $\theta_0$ the parameters given to `init`:
    $$r_0 = r_\epsilon (1 + \lVert \theta_0 \rVert), \quad
      r_t = \max(r_{t-1}, \lVert \theta_t - \theta_0 \rVert), \quad
      G_t = G_{t-1} + \lVert g_t \rVert^2, \quad G_0 = 0,$$
    $$u_t = c\, \frac{r_t}{\sqrt{G_t + \epsilon}}\, g_t,$$
    norms over the leaf's elements (complex ones by $|x|^2$). Emits $u_t$ in the updates'
    dtype (a sign flip comes from $c = -1$ or a following learning rate); stores $r_t$ (a
    scalar in the leaf's dtype), $G_t$ (shape `(1,)`, float32, optax's layout) and
    $\theta_0$. Where $G_t + \epsilon = 0$ (zero gradients with `eps=0`) it emits 0, not NaN.
    The authors recommend averaging the iterates (see `incremental_update`).

    Args:
        reps_rel: $r_\epsilon > 0$, the first step's distance relative to $1 + \lVert
            \theta_0 \rVert$: 1e-6 in general, 1e-4 for models with batch norm.
        eps: $\epsilon \geq 0$, inside the root.
        param_dtype: storage dtype of $\theta_0$; None keeps each parameter's dtype.
        global_scale: $c$, a factor on every step, typically 1.0 or -1.0.

    Returns:
        A `GradientTransformation` with state
        `ScaleByDistanceOverGradientsState(max_dist, grad_sum_of_squares, init_params)`;
        its `update` needs `params`.

    Raises:
        ValueError: for a non-positive `reps_rel`, a negative `eps`, a non-finite
            `global_scale` or a non-floating `param_dtype`.
        TypeError: in `init`, when `param_dtype` is real and a parameter complex (the
            imaginary part would be dropped); in `update`, when `params` is not passed.
    """
    fn = "scale_by_distance_over_gradients"
    checks.check_finite(fn, "reps_rel", reps_rel, 0.0)
    checks.check_finite(fn, "eps", eps, 0.0, low_open=False)
    checks.check_finite(fn, "global_scale", global_scale)
    dtype = checks.canonicalize_dtype(fn, "param_dtype", param_dtype)
    sos_dtype = jnp.result_type(float)  # optax's jnp.zeros(1)

    def start(p):
        p = jnp.asarray(p)
        if dtype is None:
            return p
        if numerics.is_complex(p) and not numerics.is_complex(dtype):
            raise TypeError(
                f"{fn}: param_dtype={dtype} is real but a parameter is {p.dtype}: storing the "
                "initial parameters so would drop the imaginary part; pass a complex "
                "param_dtype (e.g. complex64) or None"
            )
        return p.astype(dtype)

    def first_distance(p):
        p = jnp.asarray(p)
        real = numerics.real_dtype(p.dtype)
        r = reps_rel * (1 + jnp.sqrt(_sq_norm(p)))
        return numerics.cast(r, real)

    def init(params):
        return ScaleByDistanceOverGradientsState(
            max_dist=jax.tree.map(first_distance, params),
            grad_sum_of_squares=jax.tree.map(lambda p: jnp.zeros(1, sos_dtype), params),
            init_params=jax.tree.map(start, params),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        checks.check_state(fn, state, ScaleByDistanceOverGradientsState)
        updates = numerics.as_arrays(updates)
        checks.check_tree_match(fn, updates, state.init_params)
        checks.check_tree_match(fn, params, state.init_params, "params")

        def leaf(g, p, p0, r, sos):
            cast = numerics.cast
            p = jnp.asarray(p)
            wide = numerics.compute_dtype(p, p0)
            dist = jnp.sqrt(_sq_norm(cast(p, wide) - cast(p0, wide)))
            r_new = jnp.maximum(cast(r, dist.dtype), dist)
            sos_new = cast(sos, dist.dtype) + _sq_norm(g)
            den = jnp.sqrt(sos_new + eps)
            safe = jnp.where(den > 0, den, jnp.ones_like(den))
            eta = jnp.where(den > 0, global_scale * (r_new / safe), jnp.zeros_like(den))
            out = numerics.scale_leaf(g, eta[0])
            return out, cast(r_new, r.dtype), cast(sos_new, sos.dtype)

        out, max_dist, sos = numerics.tree_map_multi(
            leaf, 3, updates, params, state.init_params, state.max_dist, state.grad_sum_of_squares
        )
        return out, ScaleByDistanceOverGradientsState(max_dist, sos, state.init_params)

    return GradientTransformation(init, update)
