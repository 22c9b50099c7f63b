r"""Schedule-Free learning: momentum replaced by interpolation and averaging, so no decaying
schedule is needed (Defazio et al., 2024, "The Road Less Scheduled")."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, Params, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.optimizers import sgd
from gradtx.rms import scale_by_rms
from gradtx.scale import scale_by_learning_rate
from gradtx.tree_build import tree_dtype
from gradtx.warmup import warmup_constant_schedule
from gradtx.weight_decay import add_decayed_weights


class ScheduleFreeState(NamedTuple):
    b1: Array  # beta_1, in the params' lowest dtype (read by `schedule_free_eval_params`)
    weight_sum: Array  # sum of the averaging weights so far
    step_count: Array  # starts at 1: the learning rate schedule is read at it
    max_lr: Array  # the largest learning rate seen
    base_optimizer_state: PyTree
    z: PyTree  # the base optimiser's iterate, in `state_dtype`


def _leaf(p: Any) -> jax.Array:
    return p if isinstance(p, jax.Array) else jnp.asarray(p)


def _x_from(y: jax.Array, z: jax.Array, b1: Any) -> jax.Array:
    r"""$x = (y - (1-\beta_1) z) / \beta_1$ in the compute dtype."""
    dtype = numerics.compute_dtype(y, z, b1)
    beta = numerics.as_compute(b1, dtype)
    return (numerics.cast(y, dtype) - (1 - beta) * numerics.cast(z, dtype)) / beta


def schedule_free_eval_params(state: ScheduleFreeState, params: Params) -> Params:
    r"""The parameters to evaluate at: the average $x = (y - (1-\beta_1) z) / \beta_1$.

    Training moves the parameters $y$; `schedule_free` keeps $z$ and $\beta_1$ in its state,
    from which the averaged sequence $x$ (the one to test and save) is recovered.

    Args:
        state: the `ScheduleFreeState` of `schedule_free` (or of optax's).
        params: the current (training) parameters $y$.

    Returns:
        $x$, a tree like `params`, each leaf in its parameter's dtype.

    Raises:
        ValueError: when `state` is not a `ScheduleFreeState`.
    """
    if getattr(state, "_fields", None) != ScheduleFreeState._fields:
        raise ValueError(
            "schedule_free_eval_params: state must be the ScheduleFreeState made by "
            f"schedule_free's init, got {type(state).__name__}; with schedule_free inside "
            "a chain, pass that entry of the chain's state"
        )
    checks.check_tree_match("schedule_free_eval_params", params, state.z, "params", "state.z")
    return jax.tree.map(
        lambda y, z: numerics.cast(_x_from(_leaf(y), z, state.b1), _leaf(y).dtype),
        params,
        state.z,
    )


@factory
def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
    state_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Makes `base_optimizer` schedule-free: it moves $z$; the params follow an
    interpolation of $z$ and a weighted average $x$ of the $z$'s.

    With $\Delta_t$ the base optimiser's update (it should have no momentum of its own),
    $\gamma_t$ the learning rate at `step_count` $t$ (from 1) and
    $c_t = \gamma_{\max,t}^{\,p} / \sum_{s \le t} \gamma_{\max,s}^{\,p}$:
    $$z_{t+1} = z_t + \Delta_t, \qquad x_t = \frac{y_t - (1-\beta_1) z_t}{\beta_1},$$
    $$x_{t+1} = (1 - c_t)\, x_t + c_t z_{t+1}, \qquad
      y_{t+1} = \beta_1 x_{t+1} + (1-\beta_1) z_{t+1}.$$

    Emits $y_{t+1} - y_t$ (so the params are $y$); stores $\beta_1$, the weight sum, $t$,
    $\gamma_{\max}$, the base optimiser's state and $z$. Evaluate at
    `schedule_free_eval_params(state, params)`, which is $x$. Extra arguments of `update`
    go to the base optimiser.

    Args:
        base_optimizer: the optimiser whose updates move $z$ (e.g. `sgd(lr)`, or Adam with
            `b1=0`).
        learning_rate: $\gamma$, a constant $\geq 0$ or a `count -> value` schedule (with
            warmup, without decay): it weights the average.
        b1: $\beta_1 \in (0, 1]$, the interpolation between $x$ and $z$.
        weight_lr_power: $p \geq 0$, the power of the learning rate in the weights
            (down-weights the warmup's iterates).
        state_dtype: storage dtype of $z$; None keeps each parameter's dtype.

    Returns:
        A `GradientTransformation` with state `ScheduleFreeState(b1, weight_sum,
        step_count, max_lr, base_optimizer_state, z)`.

    Raises:
        ValueError: for `b1` outside $(0, 1]$, a negative rate or `weight_lr_power`.
        TypeError: when `base_optimizer` is not a transformation; in `update`, when
            `params` is not passed.
    """
    fn = "schedule_free"
    inner = base.as_transformation(fn, "base_optimizer", base_optimizer)
    checks.check_scalar_or_schedule(fn, "learning_rate", learning_rate)
    checks.check_range(
        fn, "b1", b1, 0.0, 1.0, low_open=True, hint="schedule_free divides by b1; use e.g. 0.9"
    )
    checks.check_non_negative(fn, "weight_lr_power", weight_lr_power)
    z_dt = checks.canonicalize_dtype(fn, "state_dtype", state_dtype)

    def init(params):
        # optax's scalars are in the params' lowest dtype (real: rates are real)
        params_dtype = numerics.real_dtype(tree_dtype(params, "lowest"))
        z = jax.tree.map(lambda p: jnp.array(p, dtype=z_dt, copy=True), params)
        return ScheduleFreeState(
            b1=jnp.asarray(b1, params_dtype),
            weight_sum=jnp.zeros([], params_dtype),
            step_count=jnp.ones([], jnp.int32),
            max_lr=jnp.zeros([], params_dtype),
            base_optimizer_state=inner.init(params),
            z=z,
        )

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        checks.check_state(fn, state, ScheduleFreeState)
        checks.check_tree_match(fn, params, state.z, "params", "state.z")
        lr = jnp.asarray(numerics.evaluate(learning_rate, state.step_count), state.max_lr.dtype)
        max_lr = jnp.maximum(state.max_lr, lr)
        weight = max_lr ** numerics.as_compute(weight_lr_power, max_lr.dtype)
        total = state.weight_sum + weight
        # 0 / 0 (a zero learning rate so far) is no averaging yet, not NaN.
        ck = jnp.where(
            jnp.isnan(weight) | jnp.isnan(total),
            jnp.full(weight.shape, jnp.nan, weight.dtype),
            jnp.nan_to_num(weight / total, nan=0.0, posinf=jnp.inf),
        )
        base_updates, base_state = inner.update(
            updates, state.base_optimizer_state, params, **extra_args
        )

        def leaf(y, z, u):
            y = _leaf(y)
            dtype = numerics.compute_dtype(y, z, u, ck)
            c = numerics.cast(ck, dtype)
            z_new = numerics.cast(numerics.cast(z, dtype) + numerics.cast(u, dtype), z.dtype)
            x = (1 - c) * _x_from(y, z, b1).astype(dtype) + c * numerics.cast(z_new, dtype)
            y_new = b1 * x + (1 - b1) * numerics.cast(z_new, dtype)
            return numerics.cast(y_new - numerics.cast(y, dtype), y.dtype), z_new

        out, z = numerics.tree_map_multi(leaf, 2, params, state.z, base_updates)
        new_state = ScheduleFreeState(
            b1=state.b1,
            weight_sum=total,
            step_count=numerics.safe_increment(state.step_count),
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=z,
        )
        return out, new_state

    return GradientTransformation(init, update)


def _warmed_up(learning_rate: Any, warmup_steps: int | None) -> Any:
    if warmup_steps is None:
        return learning_rate
    return warmup_constant_schedule(0, learning_rate, warmup_steps)


def schedule_free_sgd(
    learning_rate: float = 1.0,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: float | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Schedule-free SGD: `schedule_free(sgd(lr), lr, ...)`, with a linear warmup.

    With `warmup_steps`, the rate is `warmup_constant_schedule(0, learning_rate,
    warmup_steps)`; with `weight_decay`, the base optimiser is
    `chain(add_decayed_weights(weight_decay), sgd(lr))`.

    Args:
        learning_rate: the SGD rate $\gamma \geq 0$.
        warmup_steps: the length of a linear warmup from 0, or None for none.
        b1: $\beta_1 \in (0, 1]$, the interpolation between $x$ and $z$.
        weight_decay: $\lambda \geq 0$ (multiplied by the rate), or None for none.
        weight_lr_power: $p \geq 0$, the power of the rate in the averaging weights.
        state_dtype: storage dtype of $z$; None keeps each parameter's dtype.

    Returns:
        A `schedule_free` transformation.
    """
    checks.check_weight_decay("schedule_free_sgd", "weight_decay", weight_decay)
    lr = _warmed_up(learning_rate, warmup_steps)
    optimizer = sgd(lr)
    if weight_decay is not None:
        optimizer = chain(add_decayed_weights(weight_decay), optimizer)
    return schedule_free(optimizer, lr, b1, weight_lr_power, state_dtype)


def schedule_free_adamw(
    learning_rate: float = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Schedule-free AdamW: AdamW without its momentum (RMS scaling, bias-corrected) made
    schedule-free.

    The base optimiser is `chain(scale_by_rms(b2, eps, eps_in_sqrt=False,
    bias_correction=True), add_decayed_weights(weight_decay), scale_by_learning_rate(lr))`
    (Adam with $\beta_1 = 0$, without its zero first moment), as in optax.

    Args:
        learning_rate: the AdamW rate $\gamma \geq 0$.
        warmup_steps: the length of a linear warmup from 0, or None for none.
        b1: $\beta_1 \in (0, 1]$, the interpolation between $x$ and $z$.
        b2: $\beta_2 \in [0, 1)$, the second moment's decay.
        eps: $\epsilon \geq 0$, outside the root.
        weight_decay: $\lambda \geq 0$ (multiplied by the rate).
        weight_lr_power: $p \geq 0$, the power of the rate in the averaging weights.
        state_dtype: storage dtype of $z$; None keeps each parameter's dtype.

    Returns:
        A `schedule_free` transformation.
    """
    checks.check_weight_decay("schedule_free_adamw", "weight_decay", weight_decay)
    lr = _warmed_up(learning_rate, warmup_steps)
    optimizer = chain(
        scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(lr),
    )
    return schedule_free(optimizer, lr, b1, weight_lr_power, state_dtype)
