r"""L-BFGS: precondition the gradient by a quasi-Newton estimate of the inverse Hessian.

`lbfgs = chain(scale_by_lbfgs, scale(-1.0) or scale_by_learning_rate, line search)`, as in
optax 0.2.8. The direction $P_k g_k$ comes from the last $m$ differences of params and
gradients; the line search (`gradtx.linesearch`) chooses how far to go along it, so each
`update` takes the extra arguments a line search needs:

```python
opt = gradtx.lbfgs()
value_and_grad = gradtx.value_and_grad_from_state(f)
value, grad = value_and_grad(params, state=state)
updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
```
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import (
    GradientTransformation,
    PyTree,
    ScalarOrSchedule,
    Updates,
    factory,
    identity,
)
from gradtx.combine import chain
from gradtx.linesearch import (
    add_scale,
    cast_like,
    real_dtype_of,
    real_vdot,
    scale_by_zoom_linesearch,
    scale_tree,
    widen,
)
from gradtx.scale import scale, scale_by_learning_rate
from gradtx.spec import is_transformation
from gradtx.tree_reductions import tree_norm

__all__ = ["ScaleByLBFGSState", "lbfgs", "scale_by_lbfgs"]


class ScaleByLBFGSState(NamedTuple):
    count: Array  # type: ignore[assignment]  # iterations k taken (int32)
    params: PyTree  # w_{k-1}, the params of the last update
    updates: PyTree  # u_{k-1}, its incoming updates (gradients)
    diff_params_memory: PyTree  # the last m differences dw, stacked along a leading axis
    diff_updates_memory: PyTree  # the last m differences du, stacked likewise
    weights_memory: Array  # rho = 1 / <du, dw> of each, shape (m,)


def _precondition(
    updates: Updates,
    diff_params_memory: PyTree,
    diff_updates_memory: PyTree,
    weights_memory: ArrayLike,
    identity_scale: ArrayLike,
    memory_idx: ArrayLike,
) -> Updates:
    r"""$P_k u$ by the two-loop recursion (Nocedal and Wright, Algorithm 7.4)."""
    rhos = jnp.asarray(weights_memory)
    memory_size = rhos.shape[0]
    indices = (memory_idx + jnp.arange(memory_size)) % memory_size

    def at(idx):
        return jax.tree.map(lambda x: x[idx], (diff_params_memory, diff_updates_memory))

    def weighted(idx, product):
        dtype = numerics.compute_dtype(rhos, product)
        return numerics.cast(rhos[idx], dtype) * numerics.cast(product, dtype)

    def right_product(vec, idx):  # newest to oldest
        dwi, dui = at(idx)
        alpha = weighted(idx, real_vdot(dwi, vec, real_dtype_of(vec)))
        return cast_like(add_scale(vec, -alpha, dui), vec), alpha

    precond, alphas = jax.lax.scan(right_product, updates, indices, reverse=True)
    precond = scale_tree(identity_scale, precond)

    def left_product(vec, idx_alpha):  # oldest to newest
        idx, alpha = idx_alpha
        dwi, dui = at(idx)
        beta = weighted(idx, real_vdot(dui, vec, real_dtype_of(vec)))
        return cast_like(add_scale(vec, alpha - beta, dwi), vec), beta

    precond, _ = jax.lax.scan(left_product, precond, (indices, alphas))
    return precond


@factory
def scale_by_lbfgs(
    memory_size: int = 10, scale_init_precond: bool = True
) -> GradientTransformation:
    r"""The L-BFGS direction $P_k u_k$: $u_k$ times an estimate of the inverse Hessian.

    From the last $m$ differences $\delta w_j = w_{j+1} - w_j$, $\delta u_j = u_{j+1} - u_j$
    of params and updates (gradients):

    $$P_{k,j+1} = V_j^\top P_{k,j} V_j + \rho_j\, \delta w_j \delta w_j^\top, \quad
    V_j = I - \rho_j\, \delta u_j \delta w_j^\top, \quad
    \rho_j = 1 / \langle \delta u_j, \delta w_j \rangle$$

    for $j = k-m, \dots, k-1$, from $P_{k,k-m} = \gamma_k I$ with
    $\gamma_k = \langle \delta w_{k-1}, \delta u_{k-1}\rangle / \|\delta u_{k-1}\|^2$
    (`scale_init_precond`, else 1) and $\gamma_0 = \min(1, 1/\|u_0\|)$, a first step of
    length at most 1. A pair with $\langle \delta u, \delta w\rangle = 0$ gets
    $\rho = 0$ (it is skipped), so a zero gradient or a repeated point gives no NaN.
    $P_k u_k$ is computed by the two-loop recursion (Nocedal and Wright, Algorithm 7.4),
    with the memory updated first: chained before a line search, the pair enters only once
    the step it measures has been taken.

    Emits $P_k u_k$ (a direction; `lbfgs` negates it); stores $k$, $w_k$, $u_k$, the $m$
    differences (stacked on a leading axis of each leaf, in the params' dtypes) and their
    $\rho$.

    Args:
        memory_size: $m$, the number of pairs kept, an integer $\geq 1$.
        scale_init_precond: start the recursion from $\gamma_k I$ rather than $I$.

    Returns:
        A `GradientTransformation` with state `ScaleByLBFGSState(count, params, updates,
        diff_params_memory, diff_updates_memory, weights_memory)`; its `update` needs
        `params`.

    Raises:
        ValueError, TypeError: for a `memory_size` that is not an integer $\geq 1$, or a
            `scale_init_precond` that is not a bool.
    """
    fn = "scale_by_lbfgs"
    memory_size = checks.check_int(fn, "memory_size", memory_size, 1)
    checks.check_bool(fn, "scale_init_precond", scale_init_precond)

    def init(params):
        stacked = jax.tree.map(
            lambda p: jnp.zeros((memory_size, *jnp.shape(p)), jnp.result_type(p)), params
        )
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByLBFGSState(
            count=numerics.zero_count(),
            params=zeros,
            updates=zeros,
            diff_params_memory=stacked,
            diff_updates_memory=stacked,
            weights_memory=jnp.zeros(memory_size, jnp.result_type(float)),
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        checks.check_state(fn, state, ScaleByLBFGSState)
        checks.check_tree_match(fn, updates, state.updates)
        count = jnp.asarray(state.count)
        memory_idx = count % memory_size
        prev_memory_idx = (count - 1) % memory_size
        first = count == 0

        def diff(new, old):  # in each leaf's compute dtype; zero at the first step
            dtype = numerics.compute_dtype(new, old)
            d = numerics.cast(new, dtype) - numerics.cast(old, dtype)
            return jnp.where(first, jnp.zeros_like(d), d)

        # 1. The newest pair (dw, du) and its weight rho enter the memory.
        diff_params = jax.tree.map(diff, params, state.params)
        diff_updates = jax.tree.map(diff, updates, state.updates)
        dt = real_dtype_of(updates)
        curvature = real_vdot(diff_updates, diff_params, dt)
        weight = jnp.where(curvature == 0.0, 0.0, 1.0 / curvature)
        weight = jnp.where(first, jnp.zeros_like(weight), weight)

        def push(memory, new):
            return memory.at[prev_memory_idx].set(numerics.cast(new, memory.dtype))

        diff_params_memory = jax.tree.map(push, state.diff_params_memory, diff_params)
        diff_updates_memory = jax.tree.map(push, state.diff_updates_memory, diff_updates)
        weights_memory = push(jnp.asarray(state.weights_memory), weight)

        # 2. gamma_k, the scale of the initial estimate.
        identity_scale: ArrayLike = 1.0
        if scale_init_precond:
            denominator = tree_norm(widen(diff_updates), squared=True)
            gamma = jnp.where(denominator > 0.0, curvature / denominator, 1.0)
            update_norm = tree_norm(widen(jax.lax.stop_gradient(updates)))
            capped_inv_norm = jnp.minimum(1.0, 1.0 / update_norm)
            identity_scale = jnp.where(first, capped_inv_norm, gamma)

        # 3. P_k u_k by the two-loop recursion.
        precond = _precondition(
            updates,
            diff_params_memory,
            diff_updates_memory,
            weights_memory,
            identity_scale,
            memory_idx,
        )
        new_state = ScaleByLBFGSState(
            count=numerics.safe_increment(count),
            params=params,
            updates=updates,
            diff_params_memory=diff_params_memory,
            diff_updates_memory=diff_updates_memory,
            weights_memory=weights_memory,
        )
        return precond, numerics.in_structure_of(cast_like(new_state, state), state)

    return GradientTransformation(init, update)


_ZOOM = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = _ZOOM,
) -> GradientTransformation:
    r"""L-BFGS: the quasi-Newton direction, a descent sign, and a line search for the step.

    $$w_{k+1} = w_k - \eta_k\, \alpha_k P_k g_k$$

    with $P_k g_k$ from `scale_by_lbfgs`, $\alpha_k$ the `learning_rate` (1 when None) and
    $\eta_k$ chosen by `linesearch` (1 when None). By default the step is found by
    `scale_by_zoom_linesearch(20, initial_guess_strategy="one")`: `update` then needs
    `value=`, `grad=` and `value_fn=` (see `gradtx.linesearch`; with a deterministic $f$,
    `value_and_grad_from_state(f)` reuses what the search computed).

    `chain(scale_by_lbfgs(memory_size, scale_init_precond), scale(-1.0), linesearch)`, with
    `scale_by_learning_rate(learning_rate)` in place of `scale(-1.0)` when a rate is given
    and `identity()` in place of a `None` line search (optax's state layout).

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$, a `count -> value` schedule, or None
            (the line search alone sets the step).
        memory_size: $m \geq 1$, the pairs of differences kept.
        scale_init_precond: start the recursion from $\gamma_k I$ (see `scale_by_lbfgs`).
        linesearch: a line search such as `scale_by_zoom_linesearch(...)` or
            `scale_by_backtracking_linesearch(...)` (gradtx's or optax's), or None.

    Returns:
        A `GradientTransformation` (a `chain`).

    Raises:
        ValueError, TypeError: for an argument out of range or of the wrong kind.
    """
    if linesearch is not None and not is_transformation(linesearch):
        raise TypeError(
            "lbfgs: linesearch must be a line search such as "
            "scale_by_zoom_linesearch(max_linesearch_steps=20) or None, got "
            f"{type(linesearch).__name__}"
        )
    if learning_rate is None:
        base_scaling = scale(-1.0)
    else:
        checks.check_scalar_or_schedule("lbfgs", "learning_rate", learning_rate)
        base_scaling = scale_by_learning_rate(learning_rate)
    return chain(
        scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init_precond),
        base_scaling,
        identity() if linesearch is None else linesearch,
    )
