r"""DoG and DoWG: gradient descent whose step is the distance travelled over the gradients seen.

optax.contrib's `dog`, `scale_by_dog`, `dowg` and `scale_by_dowg` (optax 0.2.8), same
signatures, defaults and states. The step size is a ratio of two running quantities: the
largest distance from the initial point so far over the root of the summed squared gradient
norms (DoG), or the same with each gradient weighted by the squared distance (DoWG).

References: Ivgi, Hinder and Carmon, *DoG is SGD's Best Friend: A Parameter-Free Dynamic Step
Size Schedule*, ICML 2023, https://arxiv.org/abs/2302.12022; Khaled, Mishchenko and Jin, *DoWG
Unleashed: An Efficient Universal Parameter-Free Gradient Descent Method*, NeurIPS 2023,
https://arxiv.org/abs/2305.16284.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory, identity
from gradtx.combine import chain
from gradtx.contrib.dadapt import refuse_complex, safe_divide, scalar_dtype
from gradtx.scale import scale_by_learning_rate
from gradtx.tree_reductions import tree_norm
from gradtx.weight_decay import add_decayed_weights

__all__ = ["DoGState", "DoWGState", "dog", "dowg", "scale_by_dog", "scale_by_dowg"]

_INIT_STEPS = ("distance", "learning_rate", "heuristic")


class DoGState(NamedTuple):
    is_init_step: ArrayLike  # True before the first update
    init_params: PyTree  # x_0
    max_dist: ArrayLike  # the largest |x_t - x_0| so far (from r_eps)
    sum_sq_norm_grads: ArrayLike  # G_t, the sum of |g|^2


class DoWGState(NamedTuple):
    init_params: PyTree  # x_0
    weighted_sq_norm_grads: ArrayLike  # v_t, the sum of r_k^2 |g_k|^2
    estim_sq_dist: ArrayLike  # r_t^2, the largest |x_t - x_0|^2 so far


def _distance_sq(fn: str, init_params: PyTree, params: PyTree) -> jax.Array:
    r"""$\lVert x_t - x_0 \rVert^2$, each leaf's difference taken in float32 or wider."""

    def diff(p0, p):
        dtype = numerics.compute_dtype(p0, p)
        return numerics.cast(p0, dtype) - numerics.cast(p, dtype)

    return jnp.asarray(tree_norm(jax.tree.map(diff, init_params, params), squared=True))


def _scaled(updates: PyTree, rate: jax.Array) -> PyTree:
    return jax.tree.map(lambda g: numerics.scale_leaf(g, rate), updates)


def _needs_params(fn: str, updates: PyTree, params: PyTree | None) -> tuple[PyTree, PyTree]:
    if params is None:
        raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
    updates, params = numerics.as_arrays(updates), numerics.as_arrays(params)
    checks.check_tree_match(fn, updates, params, "updates", "params")
    return updates, params


@factory
def scale_by_dog(
    init_step: tuple[Literal["distance", "learning_rate", "heuristic"], ArrayLike],
    eps: ArrayLike = 1e-8,
) -> GradientTransformation:
    r"""DoG's step size: the largest distance travelled over the root of the gradients seen.

    $$\bar r_t = \max(\bar r_{t-1}, \lVert x_t - x_0 \rVert), \quad
      G_t = G_{t-1} + \lVert g_t \rVert^2, \quad
      u_t = \frac{\bar r_t}{\sqrt{G_t + \epsilon}} g_t,$$

    from $\bar r_0 = r_\epsilon$ and $G_0 = 0$, where `init_step = (tag, value)` sets
    $r_\epsilon$ = value (`"distance"`), $r_\epsilon$ = value $(1 + \lVert x_0 \rVert)$
    (`"heuristic"`: pass the real params to `init`), or the first step's rate to value and
    $r_\epsilon = 0$ (`"learning_rate"`). Emits $u_t$ (a descent direction: follow with a
    negative learning rate, as `dog` does); stores the flag of the first step, $x_0$,
    $\bar r_t$ and $G_t$. With `eps=0` and only zero gradients the rate is 0 (optax's $0/0$).

    Args:
        init_step: `(tag, value)`, tag one of `"distance"`, `"learning_rate"`,
            `"heuristic"`, value $> 0$.
        eps: $\epsilon \geq 0$, added to $G_t$ under the root.

    Returns:
        A `GradientTransformation` with state
        `DoGState(is_init_step, init_params, max_dist, sum_sq_norm_grads)`.

    Raises:
        ValueError: for an unknown tag, a non-positive value or a negative `eps`.
        TypeError: for an `init_step` that is not a `(tag, value)` pair; at init for a
            complex parameter; at update when `params` is not passed.
    """
    fn = "scale_by_dog"
    if not isinstance(init_step, (tuple, list)) or len(init_step) != 2:
        raise TypeError(
            f"{fn}: init_step must be a pair (tag, value), e.g. ('heuristic', 1e-6), "
            f"got {init_step!r}"
        )
    tag, value = init_step
    if tag not in _INIT_STEPS:
        raise ValueError(
            f"{fn}: init_step's tag must be one of 'distance', 'learning_rate', 'heuristic', "
            f"got {tag!r}"
        )
    checks.check_finite(fn, "init_step's value", value, 0.0)
    checks.check_finite(fn, "eps", eps, 0.0, low_open=False)

    def init(params):
        params = numerics.as_arrays(params)
        refuse_complex(fn, params)
        dtype = scalar_dtype(params)
        if tag == "distance":
            r_eps: Any = value
        elif tag == "heuristic":
            norm = numerics.cast(tree_norm(params), jnp.float32)
            r_eps = numerics.as_compute(value, jnp.float32) * (1 + norm)
        else:
            r_eps = 0.0
        return DoGState(
            jnp.asarray(True),
            params,
            numerics.cast(r_eps, dtype),
            jnp.zeros([], dtype),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        updates, params = _needs_params(fn, updates, params)
        checks.check_state(fn, state, DoGState)
        cast = numerics.cast
        sdt = jnp.result_type(state.max_dist)
        cdt = numerics.compute_dtype(state.max_dist)
        dist = jnp.sqrt(cast(_distance_sq(fn, state.init_params, params), cdt))
        max_dist = jnp.maximum(cast(state.max_dist, cdt), dist)
        sum_sq = cast(state.sum_sq_norm_grads, cdt) + cast(tree_norm(updates, squared=True), cdt)
        rate = safe_divide(max_dist, jnp.sqrt(sum_sq + numerics.as_compute(eps, cdt)))
        if tag == "learning_rate":
            rate = jnp.where(state.is_init_step, cast(value, cdt), rate)
        return _scaled(updates, rate), DoGState(
            jnp.asarray(False), state.init_params, cast(max_dist, sdt), cast(sum_sq, sdt)
        )

    return GradientTransformation(init, update)


def _decay(weight_decay, mask) -> GradientTransformation:
    return identity() if weight_decay is None else add_decayed_weights(weight_decay, mask)


def dog(
    learning_rate: ScalarOrSchedule = 1.0,
    init_step: tuple[Literal["distance", "learning_rate", "heuristic"], ArrayLike] = (
        "heuristic",
        1e-6,
    ),
    eps: ArrayLike = 1e-8,
    weight_decay: ArrayLike | None = None,
    mask: Any | Callable[[PyTree], Any] | None = None,
) -> GradientTransformation:
    r"""Distance over Gradients (optax.contrib's `dog`): $x_{t+1} = x_t - \gamma_t \eta_t g_t$
    with $\eta_t = \bar r_t / \sqrt{G_t + \epsilon}$ (see `scale_by_dog`).

    `chain(add_decayed_weights(weight_decay, mask) or identity(), scale_by_dog(init_step,
    eps), scale_by_learning_rate(learning_rate))`; `identity()` when `weight_decay` is None.
    The authors recommend averaging the iterates (e.g. `gradtx.incremental_update`).

    Args:
        learning_rate: $\gamma \geq 0$, a constant or a `count -> value` schedule on top.
        init_step: `(tag, value)`, see `scale_by_dog`; the suggested heuristic value is 1e-6
            (1e-4 for models with batch normalisation).
        eps: $\epsilon \geq 0$, see `scale_by_dog`.
        weight_decay: $\lambda \geq 0$ added as $g + \lambda x$, or None for none.
        mask: a tree of bools (or a function of the params) choosing the leaves to decay.

    Returns:
        A `GradientTransformation` (a chain of three; its state is a tuple of their states).

    Raises:
        ValueError: for a negative `learning_rate` or `weight_decay`, or a bad `init_step`
            or `eps` (see `scale_by_dog`).
    """
    checks.check_weight_decay("dog", "weight_decay", weight_decay)
    checks.check_scalar_or_schedule("dog", "learning_rate", learning_rate)
    return chain(
        _decay(weight_decay, mask),
        scale_by_dog(init_step, eps),
        scale_by_learning_rate(learning_rate),
    )


@factory
def scale_by_dowg(
    init_estim_sq_dist: ArrayLike | None = None, eps: ArrayLike = 1e-4
) -> GradientTransformation:
    r"""DoWG's step size: gradients weighted by the squared distance travelled.

    $$\bar r_t^2 = \max(\bar r_{t-1}^2, \lVert x_t - x_0 \rVert^2), \quad
      v_t = v_{t-1} + \bar r_t^2 \lVert g_t \rVert^2, \quad
      u_t = \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon} g_t,$$

    from $\bar r_0^2$ = `init_estim_sq_dist` (or $\epsilon$ when None) and $v_0 = 0$. Emits
    $u_t$ (a descent direction: follow with a negative learning rate, as `dowg` does); stores
    $x_0$, $v_t$, $\bar r_t^2$. With `eps=0` and only zero gradients the rate is 0 (optax's
    $0/0$).

    Args:
        init_estim_sq_dist: $\bar r_0^2 > 0$, the initial guess of the squared distance to a
            solution, or None for $\epsilon$.
        eps: $\epsilon \geq 0$, added to $\sqrt{v_t}$.

    Returns:
        A `GradientTransformation` with state
        `DoWGState(init_params, weighted_sq_norm_grads, estim_sq_dist)`.

    Raises:
        ValueError: for a non-positive `init_estim_sq_dist` or a negative `eps`.
        TypeError: at init for a complex parameter; at update when `params` is not passed.
    """
    fn = "scale_by_dowg"
    checks.check_finite(fn, "eps", eps, 0.0, low_open=False)
    if init_estim_sq_dist is not None:
        checks.check_finite(fn, "init_estim_sq_dist", init_estim_sq_dist, 0.0)
    start = eps if init_estim_sq_dist is None else init_estim_sq_dist

    def init(params):
        params = numerics.as_arrays(params)
        refuse_complex(fn, params)
        dtype = scalar_dtype(params)
        return DoWGState(params, jnp.zeros([], dtype), numerics.cast(start, dtype))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        updates, params = _needs_params(fn, updates, params)
        checks.check_state(fn, state, DoWGState)
        cast = numerics.cast
        sdt = jnp.result_type(state.estim_sq_dist)
        cdt = numerics.compute_dtype(state.estim_sq_dist)
        curr = cast(_distance_sq(fn, state.init_params, params), cdt)
        estim = jnp.maximum(cast(state.estim_sq_dist, cdt), curr)
        step_sq = cast(tree_norm(updates, squared=True), cdt)
        weighted = estim * step_sq + cast(state.weighted_sq_norm_grads, cdt)
        rate = safe_divide(estim, jnp.sqrt(weighted) + numerics.as_compute(eps, cdt))
        return _scaled(updates, rate), DoWGState(
            state.init_params, cast(weighted, sdt), cast(estim, sdt)
        )

    return GradientTransformation(init, update)


def dowg(
    learning_rate: ScalarOrSchedule = 1.0,
    init_estim_sq_dist: ArrayLike | None = None,
    eps: ArrayLike = 1e-4,
    weight_decay: ArrayLike | None = None,
    mask: Any | Callable[[PyTree], Any] | None = None,
) -> GradientTransformation:
    r"""Distance over Weighted Gradients (optax.contrib's `dowg`):
    $x_{t+1} = x_t - \gamma_t \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon} g_t$ (see
    `scale_by_dowg`).

    `chain(add_decayed_weights(weight_decay, mask) or identity(),
    scale_by_dowg(init_estim_sq_dist, eps), scale_by_learning_rate(learning_rate))`;
    `identity()` when `weight_decay` is None.

    Args:
        learning_rate: $\gamma \geq 0$, a constant or a `count -> value` schedule on top.
        init_estim_sq_dist: $\bar r_0^2 > 0$ or None, see `scale_by_dowg`.
        eps: $\epsilon \geq 0$, see `scale_by_dowg`.
        weight_decay: $\lambda \geq 0$ added as $g + \lambda x$, or None for none.
        mask: a tree of bools (or a function of the params) choosing the leaves to decay.

    Returns:
        A `GradientTransformation` (a chain of three; its state is a tuple of their states).

    Raises:
        ValueError: for a negative `learning_rate` or `weight_decay`, or a bad
            `init_estim_sq_dist` or `eps` (see `scale_by_dowg`).
    """
    checks.check_weight_decay("dowg", "weight_decay", weight_decay)
    checks.check_scalar_or_schedule("dowg", "learning_rate", learning_rate)
    return chain(
        _decay(weight_decay, mask),
        scale_by_dowg(init_estim_sq_dist, eps),
        scale_by_learning_rate(learning_rate),
    )
