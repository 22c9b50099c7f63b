r"""Averages of the weights themselves (IDEAS §2 applied to $\theta$, not to the gradients).

An exponentially weighted average (EWA) of the parameters along training,

$$v_t = \beta v_{t-1} + (1 - \beta)\,\theta_t,$$

is the Polyak-Ruppert (or "EMA") average kept next to the weights for evaluation: it averages
roughly the last $1 / (1 - \beta)$ iterates, so the noise of the last mini-batch steps cancels.
`incremental_update(new, old, step_size)` is one such step with `step_size` $= 1 - \beta$
(optax's name and signature). Start it from the initial weights, $v_0 = \theta_0$, rather
than from zeros: the average then needs no bias correction (IDEAS §3).

`periodic_update(new, old, steps, update_period)` is the hard-copy variant, a "target
network" refreshed every `update_period` steps.

Both are plain functions of trees, not transformations: they hold no state of their own, the
caller keeps the averaged tree (e.g. next to the optimiser state) and the step count.

Differences from optax 0.2.8 (stricter, never a different number for valid input):
a concrete `step_size` outside $[0, 1]$ or `update_period` below 1 is refused; trees that
differ are refused naming the first differing key path; the average keeps `old_tensors`'
dtypes (computed in float32 or wider, so a bfloat16 average is rounded once a step, where
optax rounds each product), and integer leaves or complex new values on a real average
are refused instead of changing the average's dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import tree_leaves_with_none
from gradtx.typing import PyTree


def _paths(tree: PyTree) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in tree_leaves_with_none(tree)]


def _prune_old(fn: str, new_tensors: PyTree, old_tensors: PyTree) -> PyTree:
    """`old_tensors` with `None` wherever `new_tensors` has `None` (optax reads it so),
    after checking the trees match; the error names the first differing key path."""
    try:
        pruned = numerics.prune_like(new_tensors, old_tensors)
    except ValueError:
        checks.check_tree_match(fn, new_tensors, old_tensors, "new_tensors", "old_tensors")
        raise
    checks.check_tree_match(fn, new_tensors, pruned, "new_tensors", "old_tensors")
    return pruned


def incremental_update(new_tensors: PyTree, old_tensors: PyTree, step_size: ArrayLike) -> PyTree:
    r"""One step of an exponentially weighted (Polyak) average of parameters.

    $$v_t = \alpha\,\theta_t + (1 - \alpha)\,v_{t-1}, \qquad \alpha = 1 - \beta,$$

    the EWA $v_t = \beta v_{t-1} + (1-\beta)\theta_t$ of IDEAS §2 with `step_size` $\alpha$.
    `step_size=1` returns `new_tensors`, `step_size=0` returns `old_tensors`.

    Emits the new average, a tree like `old_tensors` in its dtypes (computed in float32 or
    wider). A `None` leaf of `new_tensors` stays `None`, its old value is not read, as in
    optax. Jittable; `step_size` may be traced (then it is not range-checked).

    Args:
        new_tensors: the latest parameters $\theta_t$.
        old_tensors: the average so far $v_{t-1}$, a tree like `new_tensors`.
        step_size: $\alpha = 1 - \beta$, a scalar in $[0, 1]$.

    Returns:
        The average $v_t$.

    Raises:
        ValueError: for a `step_size` outside $[0, 1]$ or not a scalar, or trees that differ
            in structure or shapes (naming the first differing key path).
        TypeError: for an integer leaf of `old_tensors`, or a complex new value on a real
            average (its imaginary part would be dropped).

    References:
        [Polyak and Juditsky, 1992](https://epubs.siam.org/doi/10.1137/0330046)
    """
    fn = "incremental_update"
    checks.check_range(
        fn, "step_size", step_size, 0.0, 1.0, hint="step_size is 1 - decay, e.g. 0.001"
    )
    old_tensors = _prune_old(fn, new_tensors, old_tensors)
    paths = _paths(new_tensors)
    leaves_new, treedef = numerics.flatten(new_tensors, is_leaf=lambda x: x is None)
    leaves_old = [x for _, x in tree_leaves_with_none(old_tensors)]

    def step(path: str, new: Any, old: Any) -> Any:
        if new is None:
            return None
        new, old = jnp.asarray(new), jnp.asarray(old)
        if not jnp.issubdtype(old.dtype, jnp.inexact):
            raise TypeError(
                f"{fn}: old_tensors{path} has dtype {old.dtype}; an average needs a floating "
                f"or complex dtype: cast the average, e.g. with .astype(jnp.float32)"
            )
        if numerics.is_complex(new) and not numerics.is_complex(old):
            raise TypeError(
                f"{fn}: new_tensors{path} is {new.dtype} but old_tensors{path} is "
                f"{old.dtype}: the imaginary part would be dropped; make the average complex"
            )
        dtype = numerics.compute_dtype(new, old)
        alpha = numerics.as_compute(step_size, dtype)
        average = alpha * new.astype(dtype) + (1.0 - alpha) * old.astype(dtype)
        return jnp.asarray(average).astype(old.dtype)

    return treedef.unflatten([step(*x) for x in zip(paths, leaves_new, leaves_old)])


def periodic_update(
    new_tensors: PyTree,
    old_tensors: PyTree,
    steps: ArrayLike,
    update_period: ArrayLike,
) -> PyTree:
    r"""A slow copy of the parameters, refreshed every `update_period` steps.

    $$v_t = \begin{cases} \theta_t & t \bmod K = 0 \\ v_{t-1} & \text{otherwise}
    \end{cases}$$

    with $t$ = `steps` and $K$ = `update_period` (a target network, as in DQN or BYOL).
    Emits `new_tensors` or `old_tensors` (chosen with `lax.cond`, so it jits with a traced
    `steps`); the two trees must have the same structure, shapes and dtypes.

    Args:
        new_tensors: the latest parameters $\theta_t$.
        old_tensors: the slow copy $v_{t-1}$, a tree like `new_tensors`.
        steps: $t$, the number of updates of the online parameters (an integer; traced under
            `jit`).
        update_period: $K \geq 1$, every how many steps to copy (an integer).

    Returns:
        The slow copy $v_t$.

    Raises:
        ValueError: for an `update_period` below 1, a negative `steps`, or trees that
            differ in structure, shapes or dtypes (naming the first differing key path).
        TypeError: for a non-integer `steps` or `update_period`.

    References:
        [Mnih et al., 2015](https://arxiv.org/abs/1312.5602);
        [Grill et al., 2020](https://arxiv.org/abs/2006.07733)
    """
    fn = "periodic_update"
    checks.check_int(fn, "update_period", update_period, 1, traced=True, whole_float=True)
    checks.check_int(fn, "steps", steps, 0, traced=True, whole_float=True)
    checks.check_tree_match(fn, new_tensors, old_tensors, "new_tensors", "old_tensors")
    for (path, new), (_, old) in zip(
        jax.tree_util.tree_flatten_with_path(new_tensors)[0],
        jax.tree_util.tree_flatten_with_path(old_tensors)[0],
    ):
        if jnp.result_type(new) != jnp.result_type(old):
            key = jax.tree_util.keystr(path)
            raise ValueError(
                f"{fn}: new_tensors{key} has dtype {jnp.result_type(new)}, old_tensors{key} "
                f"has {jnp.result_type(old)}; keep the slow copy in the parameters' dtypes"
            )
    return jax.lax.cond(
        jnp.mod(steps, update_period) == 0,
        lambda _: new_tensors,
        lambda _: old_tensors,
        None,
    )
