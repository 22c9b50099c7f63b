r"""Factored second moments (Adafactor): RMS scaling that stores a row and a column, not a matrix.

For a leaf of rank $\geq 2$ whose two largest axes are long enough, the EWA of squared
gradients $V$ (one number per entry) is replaced by its row means $R$ and column means $C$,
and $V$ is estimated as the rank-one matrix $R C^\top / \operatorname{mean}(R)$: memory
$n + m$ instead of $n m$. `adafactor` is this scaling followed by block clipping, the step
size, and optional momentum and weight decay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike, DTypeLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.clip_variants import clip_by_block_rms
from gradtx.combine import chain
from gradtx.ewa import ema
from gradtx.param_block import scale_by_param_block_rms
from gradtx.scale import scale, scale_by_learning_rate
from gradtx.weight_decay import add_decayed_weights


class FactoredState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken (int32)
    v_row: PyTree  # row means of the squared-gradient EWA (factored leaves), else a (1,) zero
    v_col: PyTree  # column means (factored leaves), else a (1,) zero
    v: PyTree  # the full squared-gradient EWA (leaves not factored), else a (1,) zero


def decay_rate_pow(step: ArrayLike, exponent: ArrayLike = 0.8) -> Array:
    r"""Adafactor's second-moment decay at step $t$: $\beta_t = 1 - (t + 1)^{-c}$.

    $\beta_0 = 0$ (the first estimate is the first squared gradient) and $\beta_t \to 1$,
    so the average spans more and more of the past. The default `decay_rate_fn` of
    `scale_by_factored_rms`.

    Args:
        step: $t \geq 0$, the step count.
        exponent: $c \geq 0$ (`decay_rate`).
    """
    t = jnp.asarray(step).astype(jnp.float32) + 1
    return 1 - t ** -jnp.asarray(numerics.as_compute(exponent, jnp.float32))


def factored_dims(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """`(d1, d0)`, the second largest and the largest axis of `shape`, when a leaf of that
    shape is factored: `factored`, rank $\\geq 2$ and `shape[d1] >= min_dim_size_to_factor`;
    None otherwise. Ties between equal sizes are broken as `np.argsort` breaks them (optax's
    rule, so the state has optax's shapes).

    Args:
        shape: the leaf's shape.
        factored: whether factoring is on at all.
        min_dim_size_to_factor: the smallest size of the second largest axis to factor.
    """
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _inverse_root(x: Array) -> Array:
    r"""$x^{-1/2}$ where $x > 0$, else 0: a block whose whole history is zero emits 0."""
    return jnp.where(x > 0, x**-0.5, 0)


def _state_shapes(shape: tuple[int, ...], dims: tuple[int, int] | None):
    """The shapes of a leaf's `(v_row, v_col, v)` (optax's layout)."""
    if dims is None:
        return (1,), (1,), shape
    d1, d0 = dims
    drop = lambda axis: tuple(n for i, n in enumerate(shape) if i != axis)  # noqa: E731
    return drop(d0), drop(d1), (1,)


@factory
def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
    decay_rate_fn: Callable[[ArrayLike, ArrayLike], ArrayLike] = decay_rate_pow,
) -> GradientTransformation:
    r"""Divides by a factored estimate of the root mean square of the updates (Adafactor).

    With $\beta_t = f(\max(t - t_0, 0), c)$ (`decay_rate_fn`, by default
    $1 - (t + 1)^{-c}$) and $G = |g_t|^2 + \epsilon$, a factored leaf (see `factored_dims`:
    rank $\geq 2$, its second largest axis at least `min_dim_size_to_factor`) keeps the means
    of $G$ over its largest axis $d_0$ and over its second largest $d_1$:

    $$R_t = \beta_t R_{t-1} + (1-\beta_t) \operatorname{mean}_{d_0} G, \qquad
      C_t = \beta_t C_{t-1} + (1-\beta_t) \operatorname{mean}_{d_1} G,$$
    $$u_t = g_t \Big/ \sqrt{\frac{R_t}{\operatorname{mean}_{d_1} R_t}\, C_t}$$

    (broadcast back over $d_0$ and $d_1$). Any other leaf keeps the full EWA
    $V_t = \beta_t V_{t-1} + (1-\beta_t) G$ and emits $u_t = g_t / \sqrt{V_t}$. Where the
    estimate is 0 (the whole history of that row or column is zero, possible with
    $\epsilon = 0$) the update is 0 instead of optax's NaN.

    Emits $u_t$ in the updates' dtype; stores $t$ and, per leaf, $R$ and $C$ (factored) or
    $V$ (else), with a `(1,)` zero in the unused fields (optax's layout), real also for
    complex leaves. The moments are computed in float32 or wider and stored in the
    parameter's (real) dtype; the update uses them before that rounding.

    Args:
        factored: factor the leaves of rank $\geq 2$ (False: the full $V$ everywhere).
        decay_rate: $c$, the argument given to `decay_rate_fn` (the exponent of the default,
            $\geq 0$).
        step_offset: $t_0$, e.g. the step where fine-tuning starts (an integer); steps before
            it count as step 0, where optax's default schedule gives NaN.
        min_dim_size_to_factor: factor a leaf only when its second largest axis has at least
            this many entries (an integer $\geq 0$).
        epsilon: $\epsilon \geq 0$, added to every squared entry.
        decay_rate_fn: `f(step, decay_rate) -> beta`, the schedule of the decay
            (e.g. one capped below 1, as in Zhai et al. 2021).

    Returns:
        A `GradientTransformation` with state `FactoredState(count, v_row, v_col, v)`.

    Raises:
        ValueError: for a negative `epsilon`, `min_dim_size_to_factor` or default-schedule
            `decay_rate`, and in `update` for updates that do not fit the state.
        TypeError: for a non-bool `factored`, a non-integer `step_offset` or
            `min_dim_size_to_factor`, or a `decay_rate_fn` that is not callable.
    """
    fn = "scale_by_factored_rms"
    checks.check_bool(fn, "factored", factored)
    if not callable(decay_rate_fn):
        raise TypeError(
            f"{fn}: decay_rate_fn must be a callable f(step, decay_rate) -> beta, got "
            f"{type(decay_rate_fn).__name__}"
        )
    if decay_rate_fn is decay_rate_pow:
        checks.check_finite(fn, "decay_rate", decay_rate, 0.0, low_open=False)
    else:
        checks.as_float(fn, "decay_rate", decay_rate)
    offset = checks.check_int(fn, "step_offset", step_offset, -(2**31), traced=True)
    min_dim = checks.check_int(fn, "min_dim_size_to_factor", min_dim_size_to_factor)
    checks.check_non_negative(fn, "epsilon", epsilon)

    def init(params):
        def leaf(p):
            dtype = numerics.real_dtype(jnp.result_type(p))
            shapes = _state_shapes(jnp.shape(p), factored_dims(jnp.shape(p), factored, min_dim))
            return tuple(jnp.zeros(s, dtype) for s in shapes)

        v_row, v_col, v = numerics.tree_map_multi(leaf, 3, numerics.as_arrays(params))
        return FactoredState(numerics.zero_count(), v_row, v_col, v)

    def check_fits(updates, state):
        paths, treedef = numerics.flatten_with_path(updates)
        if treedef != numerics.flatten(state.v)[1]:
            checks.check_tree_match(fn, updates, state.v)
        stored = zip(*(treedef.flatten_up_to(t) for t in (state.v_row, state.v_col, state.v)))
        for (path, g), leaves in zip(paths, stored):
            want = _state_shapes(g.shape, factored_dims(g.shape, factored, min_dim))
            got = tuple(jnp.shape(x) for x in leaves)
            if want != got:
                raise ValueError(
                    f"{fn}: updates{jax.tree_util.keystr(path)} has shape {g.shape}, whose "
                    f"(v_row, v_col, v) would be {want}, but the state holds {got}; build the "
                    f"state with init on params of these shapes and the same factored and "
                    f"min_dim_size_to_factor"
                )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, FactoredState)
        check_fits(updates, state)
        step = jnp.maximum(jnp.asarray(state.count) - offset, 0)
        beta_t = jnp.asarray(decay_rate_fn(step, decay_rate))

        def leaf(g, v_row, v_col, v):
            dtype = numerics.compute_dtype(g, v_row, v_col, v)
            real = numerics.real_dtype(dtype)
            beta = numerics.cast(beta_t, real)
            sq = numerics.abs_sq(numerics.cast(g, dtype)) + numerics.as_compute(epsilon, real)
            dims = factored_dims(g.shape, factored, min_dim)
            if dims is None:
                new_v = beta * numerics.cast(v, real) + (1 - beta) * sq
                out = numerics.scale_leaf(g, _inverse_root(new_v))
                return (
                    out,
                    jnp.zeros_like(v_row),
                    jnp.zeros_like(v_col),
                    numerics.cast(new_v, v.dtype),
                )
            d1, d0 = dims
            new_row = beta * numerics.cast(v_row, real) + (1 - beta) * jnp.mean(sq, axis=d0)
            new_col = beta * numerics.cast(v_col, real) + (1 - beta) * jnp.mean(sq, axis=d1)
            row_axis = d1 - 1 if d1 > d0 else d1  # d1's place in the row means
            row_mean = jnp.mean(new_row, axis=row_axis, keepdims=True)
            row_factor = jnp.expand_dims(_inverse_root(new_row / row_mean), d0)
            col_factor = jnp.expand_dims(_inverse_root(new_col), d1)
            out = numerics.cast(g, dtype) * numerics.cast(row_factor, dtype)
            out = numerics.cast(out * numerics.cast(col_factor, dtype), g.dtype)
            new_row, new_col = (
                numerics.cast(new_row, v_row.dtype),
                numerics.cast(new_col, v_col.dtype),
            )
            return out, new_row, new_col, jnp.zeros_like(v)

        out, v_row, v_col, v = numerics.tree_map_multi(
            leaf, 4, updates, state.v_row, state.v_col, state.v
        )
        return out, FactoredState(numerics.safe_increment(state.count), v_row, v_col, v)

    return GradientTransformation(init, update)


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: DTypeLike = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> GradientTransformation:
    r"""Adafactor: factored RMS scaling, clipped, with a step relative to the parameters' size.

    $$u_t = -\alpha_t \operatorname{RMS}(\theta) \operatorname{clip}_c(g_t / \sqrt{\hat V_t})$$

    per leaf, with $\hat V_t$ the factored second moment of `scale_by_factored_rms`, then
    optionally an EWA of that step (momentum) and decoupled weight decay. The chain, as optax
    builds it (each piece only when its argument asks for it):

    `chain(scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor,
    eps), clip_by_block_rms(clipping_threshold), scale_by_learning_rate(learning_rate,
    flip_sign=False), scale_by_param_block_rms(), ema(momentum,
    accumulator_dtype=dtype_momentum), add_decayed_weights(weight_decay_rate,
    weight_decay_mask), scale(-1))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$, a `count -> value` schedule, or None
            for none (the relative step alone, with `multiply_by_parameter_scale`).
        min_dim_size_to_factor: factor a leaf's second moment only when its second largest
            axis has at least this many entries.
        decay_rate: $c$ in the second moment's decay $\beta_t = 1 - (t + 1)^{-c}$.
        decay_offset: the step where fine-tuning starts ($t$ counts from it).
        multiply_by_parameter_scale: multiply each leaf's step by the RMS of its parameters
            (`scale_by_param_block_rms`, at least 1e-3); False makes $\alpha$ the absolute
            step size.
        clipping_threshold: $c > 0$, clip each leaf's scaled update to RMS $\leq c$; None for
            no clipping.
        momentum: $\beta_1 \in [0, 1)$ for an EWA of the steps (more memory), or None.
        dtype_momentum: storage dtype of that EWA.
        weight_decay_rate: $\lambda \geq 0$ (or a schedule) for decoupled weight decay
            $+\lambda\theta$ after the step is formed, or None.
        eps: $\epsilon \geq 0$, added to each squared gradient entry.
        factored: factor the second moments (False: full per-entry second moments).
        weight_decay_mask: which leaves to decay: a tree of bools like the params or a
            function of the params (see `masked`); None decays every leaf.

    Returns:
        The chain above, a `GradientTransformation`.

    Raises:
        ValueError, TypeError: from the pieces' checks, naming the piece and argument.
    """
    checks.check_weight_decay("adafactor", "weight_decay_rate", weight_decay_rate)
    checks.check_bool("adafactor", "multiply_by_parameter_scale", multiply_by_parameter_scale)
    pieces = [
        scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)
    ]
    if clipping_threshold is not None:
        pieces.append(clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        checks.check_scalar_or_schedule("adafactor", "learning_rate", learning_rate)
        pieces.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        pieces.append(scale_by_param_block_rms())
    if momentum is not None:
        pieces.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        pieces.append(add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    pieces.append(scale(-1))
    return chain(*pieces)
