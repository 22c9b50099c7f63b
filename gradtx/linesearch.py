r"""Line searches: pick the step size $\eta$ along an update direction $u$ by calling $f$.

A line search is the last piece of a chain (`lbfgs`, or `chain(sgd(1.0), <line search>)`):
it receives the direction $u$ built by the pieces before it and emits $\eta u$. Its `update`
needs three extra arguments, as optax's does:

```python
value, grad = jax.value_and_grad(f)(params)
updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
```

`value` is $f(w)$, `grad` is $\nabla f(w)$ and `value_fn` is $f$ itself; any other keyword
argument is passed on to `value_fn` (data such as `x=`, `y=`). For a deterministic $f$ the
value and gradient computed at the accepted step are stored in the state, and
`value_and_grad_from_state(f)` hands them back for the next step instead of recomputing them.

* `scale_by_backtracking_linesearch`: shrink $\eta$ until the sufficient decrease (Armijo)
  criterion holds.
* `scale_by_zoom_linesearch`: the strong Wolfe conditions (sufficient decrease and small
  curvature), by the interval search and zoom of Nocedal and Wright, Algorithms 3.5 and 3.6.

States, infos and defaults are optax 0.2.8's, field for field, so optax checkpoints restore.
Scalars (values, slopes, step sizes) are computed in float32 or wider and stored in optax's
dtypes; complex parameters follow optax's complex formulas.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, OptState, Params, PyTree, Updates, factory
from gradtx.tree_reductions import tree_vdot
from gradtx.tree_state import tree_get

__all__ = [
    "BacktrackingLineSearchState",
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "ZoomLinesearchState",
    "scale_by_backtracking_linesearch",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
    "zoom_linesearch",
]


# ----------------------------------------------------------------------------
# Tree arithmetic shared with `gradtx.lbfgs`: each leaf in float32 or wider, kept in its dtype.


def real_dtype_of(tree: PyTree) -> Any:
    """The dtype scalars about `tree` are computed in: the real part of its first leaf's
    compute dtype (float32 for bfloat16 or complex64 leaves, float64 for 64-bit ones)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.dtype(jnp.float32)
    return numerics.real_dtype(numerics.compute_dtype(leaves[0]))


def stored_real_dtype(tree: PyTree) -> Any:
    """optax's dtype for the stored scalars: the real dtype of the first leaf."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.dtype(jnp.float32)
    return numerics.real_dtype(jnp.result_type(leaves[0]))


def widen(tree: PyTree) -> PyTree:
    """Every leaf in its compute dtype (float32 for bfloat16), for the reductions."""
    return jax.tree.map(lambda x: numerics.cast(x, numerics.compute_dtype(x)), tree)


def real_vdot(tree_x: PyTree, tree_y: PyTree, dtype: Any) -> Array:
    r"""$\operatorname{Re} \sum_i \bar x_i y_i$ as a `dtype` scalar."""
    out = jnp.real(jnp.asarray(tree_vdot(widen(tree_x), widen(tree_y))))
    return numerics.cast(out, dtype)


def add_scale(tree_x: PyTree, scalar: ArrayLike, tree_y: PyTree) -> PyTree:
    r"""$x + s\,y$ leaf by leaf, each result in its leaf of `tree_x`'s dtype."""

    def leaf(x, y):
        dtype = numerics.compute_dtype(x, y, scalar)
        s = numerics.cast(scalar, dtype)
        return numerics.cast(numerics.cast(x, dtype) + s * numerics.cast(y, dtype), x.dtype)

    return jax.tree.map(leaf, tree_x, tree_y)


def scale_tree(scalar: ArrayLike, tree: PyTree) -> PyTree:
    r"""$s\,x$ leaf by leaf, each leaf in its dtype."""
    return jax.tree.map(lambda x: numerics.scale_leaf(x, scalar), tree)


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """`tree`'s leaves cast to the dtypes of `like`'s, leaf by leaf in order (a loop's carry
    keeps its types; `like` may be a state of optax's classes with the same leaves)."""
    leaves, treedef = numerics.flatten(tree)
    old = jax.tree.leaves(like)
    if len(old) != len(leaves):
        raise ValueError(f"state has {len(old)} leaves where {len(leaves)} were expected")
    return treedef.unflatten([numerics.cast(x, jnp.result_type(o)) for x, o in zip(leaves, old)])


def tree_select(condition: ArrayLike, tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """`jnp.where(condition, x, y)` leaf by leaf."""
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), tree_x, tree_y)


def _like_params(grad: PyTree, params: PyTree) -> PyTree:
    return jax.tree.map(lambda g, p: numerics.cast(g, jnp.result_type(p)), grad, params)


# ----------------------------------------------------------------------------
# What every line search's update needs.


def _needs(fn: str, value: Any, grad: Any, value_fn: Any, params: Any) -> None:
    how = "opt.update(grads, state, params, value=value, grad=grads, value_fn=f)"
    for name, given in (("params", params), ("value", value), ("grad", grad)):
        if given is None:
            what = {
                "params": "params (the point the step starts from)",
                "value": "value=f(params)",
                "grad": "grad=jax.grad(f)(params)",
            }[name]
            raise checks.missing_argument(fn, what, how)
    if value_fn is None:
        raise checks.missing_argument(fn, "value_fn=f, the function minimised", how)
    if not callable(value_fn):
        raise TypeError(
            f"{fn}: value_fn must be the function minimised, f(params, **data) -> scalar, "
            f"got {type(value_fn).__name__}"
        )
    if jnp.ndim(value) != 0:
        raise ValueError(f"{fn}: value must be the scalar f(params), got shape {jnp.shape(value)}")


def value_fn_kwargs(fn: str, value_fn: Callable[..., Any], extra_args: dict) -> dict[str, Any]:
    """The extra arguments `value_fn` takes (all of them when it takes `**kwargs`).

    Raises:
        TypeError: naming the arguments `value_fn` does not take, as optax does.
    """
    try:
        parameters = inspect.signature(value_fn).parameters
    except (TypeError, ValueError):
        return dict(extra_args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(extra_args)
    rest = sorted(k for k in extra_args if k not in parameters)
    if rest:
        raise TypeError(
            f"{fn}: update got keyword arguments {rest} that value_fn does not take; extra "
            "keyword arguments of update go to value_fn (e.g. a batch as x=..., y=...), so "
            "pass only those value_fn accepts"
        )
    return dict(extra_args)


def _cond_print(condition: ArrayLike, message: str, **kwargs: Any) -> None:
    jax.lax.cond(
        condition,
        lambda: jax.debug.print(message, **kwargs, ordered=True),
        lambda: None,
    )


# ----------------------------------------------------------------------------
# Backtracking.


class BacktrackingLinesearchInfo(NamedTuple):
    num_linesearch_steps: Array  # values of f taken in the last search
    decrease_error: Array  # > 0 when no step with sufficient decrease was found


class ScaleByBacktrackingLinesearchState(NamedTuple):
    learning_rate: Array  # the step size eta accepted last
    value: Array  # f at the accepted step (for value_and_grad_from_state)
    grad: Updates | None  # its gradient when store_grad, else None
    info: BacktrackingLinesearchInfo


class BacktrackingLineSearchState(NamedTuple):
    """The carry of the search loop (optax's inner state)."""

    learning_rate: Array
    new_value: Array
    new_grad: Updates
    decrease_error: Array
    iter_num: Array


@factory
def scale_by_backtracking_linesearch(
    max_backtracking_steps: ArrayLike,
    slope_rtol: ArrayLike = 1e-4,
    decrease_factor: ArrayLike = 0.8,
    increase_factor: ArrayLike = 1.5,
    max_learning_rate: ArrayLike = 1.0,
    atol: ArrayLike = 0.0,
    rtol: ArrayLike = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> GradientTransformation:
    r"""Backtracking line search: the largest tried $\eta$ with sufficient decrease (Armijo).

    With $w$ the params, $u$ the incoming direction and $s = \operatorname{Re}\langle u,
    \nabla f(w)\rangle$ its slope, the search starts from
    $\eta_0 = \min(\gamma\,\eta_{prev}, \eta_{max})$ and takes $\eta \leftarrow \rho\,\eta$
    until

    $$f(w + \eta u) \le (1 + \delta) f(w) + c\,\eta\,s + \epsilon$$

    or `max_backtracking_steps` shrinks were made. Emits $\eta u$ ($\eta = 0$ when every
    trial gave NaN or Inf); stores $\eta$, $f(w + \eta u)$, its gradient when `store_grad`
    (else None) and `BacktrackingLinesearchInfo(num_linesearch_steps, decrease_error)`.
    $u$ must be a descent direction ($s < 0$), e.g. after `sgd(1.0)` without momentum.

    Args:
        max_backtracking_steps: the most shrinks of $\eta$ per search, an integer $\geq 0$.
        slope_rtol: $c \in [0, 1)$, the fraction of the linear decrease required.
        decrease_factor: $\rho \in (0, 1)$, the shrink factor.
        increase_factor: $\gamma \geq 1$, the growth of the first guess over the last
            $\eta$ (`math.inf` starts every search at $\eta_{max}$).
        max_learning_rate: $\eta_{max} > 0$.
        atol: $\epsilon \geq 0$, absolute tolerance of the criterion.
        rtol: $\delta \geq 0$, relative tolerance of the criterion.
        store_grad: also compute and store $\nabla f$ at the accepted step, for
            `value_and_grad_from_state`.
        verbose: print a diagnostic (`jax.debug.print`) when a search fails.

    Returns:
        A `GradientTransformation` with state `ScaleByBacktrackingLinesearchState(
        learning_rate, value, grad, info)`; its `update` needs `value=`, `grad=` and
        `value_fn=` (other keyword arguments go to `value_fn`).

    Raises:
        ValueError, TypeError: for an argument out of range or of the wrong kind.
    """
    fn = "scale_by_backtracking_linesearch"
    checks.check_int(fn, "max_backtracking_steps", max_backtracking_steps, 0, traced=True)
    checks.check_range(fn, "slope_rtol", slope_rtol, 0.0, 1.0, high_open=True)
    checks.check_range(
        fn,
        "decrease_factor",
        decrease_factor,
        0.0,
        1.0,
        low_open=True,
        high_open=True,
        hint="the step must shrink at each trial, e.g. decrease_factor=0.8",
    )
    checks.check_range(
        fn, "increase_factor", increase_factor, 1.0, hint="use 1.0 to keep the last step"
    )
    checks.check_positive(fn, "max_learning_rate", max_learning_rate)
    checks.check_non_negative(fn, "atol", atol)
    checks.check_non_negative(fn, "rtol", rtol)
    checks.check_bool(fn, "store_grad", store_grad)
    checks.check_bool(fn, "verbose", verbose)

    def init(params):
        dtype = stored_real_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.ones([], dtype),
            value=jnp.full([], jnp.inf, dtype),
            grad=jax.tree.map(jnp.zeros_like, params) if store_grad else None,
            info=BacktrackingLinesearchInfo(
                num_linesearch_steps=numerics.zero_count(),
                decrease_error=jnp.full([], jnp.inf, dtype),
            ),
        )

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra):
        _needs(fn, value, grad, value_fn, params)
        checks.check_state(fn, state, ScaleByBacktrackingLinesearchState)
        fn_kwargs = value_fn_kwargs(fn, value_fn, extra)
        f = functools.partial(value_fn, **fn_kwargs)
        dt = real_dtype_of(params)
        h = functools.partial(numerics.as_compute, dtype=dt)
        value = numerics.cast(value, dt)
        grad = _like_params(grad, params)
        slope = real_vdot(updates, jax.tree.map(jnp.conj, grad), dt)

        def decrease_error_at(stepsize, new_value):
            error = new_value - (1.0 + h(rtol)) * value - stepsize * h(slope_rtol) * slope
            error = jnp.where(jnp.isnan(error), jnp.inf, error)
            return jnp.maximum(error, 0.0)

        def searching(s):
            return (~(s.decrease_error <= h(atol))) & (s.iter_num <= max_backtracking_steps)

        def trial(s):
            learning_rate = jnp.where(
                s.iter_num > 0, h(decrease_factor) * s.learning_rate, s.learning_rate
            )
            new_params = add_scale(params, learning_rate, updates)
            new_grad = s.new_grad
            if store_grad:  # the gradient by transposing the linearisation, once accepted
                out, jvp = jax.linearize(f, new_params)
                new_value = numerics.cast(out, dt)
                error = decrease_error_at(learning_rate, new_value)
                new_grad = jax.lax.cond(
                    (error <= h(atol)) | (s.iter_num == max_backtracking_steps),
                    lambda p: jax.linear_transpose(jvp, p)(jnp.ones_like(out))[0],
                    lambda p: s.new_grad,
                    new_params,
                )
            else:
                new_value = numerics.cast(f(new_params), dt)
                error = decrease_error_at(learning_rate, new_value)
            new = BacktrackingLineSearchState(
                learning_rate, new_value, new_grad, error, s.iter_num + 1
            )
            return cast_like(new, s)

        guess = jnp.minimum(
            h(increase_factor) * numerics.cast(state.learning_rate, dt), h(max_learning_rate)
        )
        start = BacktrackingLineSearchState(
            learning_rate=numerics.cast(guess, dt),
            new_value=value,
            new_grad=jax.tree.map(jnp.zeros_like, params),
            decrease_error=jnp.full([], jnp.inf, dt),
            iter_num=numerics.zero_count(),
        )
        found = jax.lax.while_loop(searching, trial, start)
        # Every trial NaN or Inf: no step at all rather than a step into NaN.
        learning_rate = jnp.where(jnp.isinf(found.decrease_error), 0.0, found.learning_rate)
        if verbose:
            _cond_print(
                found.decrease_error > h(atol),
                f"INFO: {fn}: no step size with sufficient decrease found; value {{value}}, "
                "slope {slope}, step size {stepsize}, decrease error {error}",
                value=value,
                slope=slope,
                stepsize=found.learning_rate,
                error=found.decrease_error,
            )
        new_state = ScaleByBacktrackingLinesearchState(
            learning_rate=learning_rate,
            value=found.new_value,
            grad=found.new_grad if store_grad else None,
            info=BacktrackingLinesearchInfo(found.iter_num, found.decrease_error),
        )
        new_state = numerics.in_structure_of(cast_like(new_state, state), state)
        return scale_tree(learning_rate, updates), new_state

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Zoom (strong Wolfe conditions).


class ZoomLinesearchState(NamedTuple):
    """The carry of the zoom line search (optax's inner state)."""

    count: Array  # type: ignore[assignment]
    params: Params  # w
    updates: Updates  # u
    stepsize_guess: Array
    stepsize: Array  # the step tried last, its value, gradient and slope
    value: Array
    grad: Updates
    slope: Array
    value_init: Array  # f(w) and the slope at eta = 0
    slope_init: Array
    decrease_error: Array
    curvature_error: Array
    error: Array
    interval_found: Array
    done: Array
    failed: Array
    low: Array  # the interval [low, high] (f(high) >= f(low), not high >= low)
    value_low: Array
    slope_low: Array
    high: Array
    value_high: Array
    slope_high: Array
    cubic_ref: Array
    value_cubic_ref: Array
    safe_stepsize: Array  # the best step with sufficient decrease seen (0: none)
    safe_value: Array
    safe_grad: Updates


class ZoomLinesearchInfo(NamedTuple):
    num_linesearch_steps: Array  # values and gradients of f taken in the last search
    decrease_error: Array  # > 0: no sufficient decrease
    curvature_error: Array  # > 0: small curvature not reached (less serious)


class ScaleByZoomLinesearchState(NamedTuple):
    learning_rate: Array  # the step size eta accepted last
    value: Array  # f and its gradient at the accepted step
    grad: Updates
    info: ZoomLinesearchInfo


def _cubicmin(a, fa, fpa, b, fb, c, fc):
    """The critical point of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a
    (NaN when there is none; the caller then ignores it). From scipy's line search."""
    C = fpa
    db = b - a
    dc = c - a
    denom = (db * dc) ** 2 * (db - dc)
    d1 = jnp.array([[dc**2, -(db**2)], [-(dc**3), db**3]])
    A, B = (
        jnp.dot(
            d1, jnp.array([fb - fa - C * db, fc - fa - C * dc]), precision=jax.lax.Precision.HIGHEST
        )
        / denom
    )
    radical = B * B - 3.0 * A * C
    return a + (-B + jnp.sqrt(radical)) / (3.0 * A)


def _quadmin(a, fa, fpa, b, fb):
    """The critical point of the parabola through (a, fa), (b, fb) with slope fpa at a."""
    db = b - a
    B = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * B)


def zoom_linesearch(
    max_linesearch_steps: ArrayLike,
    max_stepsize: ArrayLike | None = None,
    tol: ArrayLike = 0.0,
    increase_factor: ArrayLike = 2.0,
    slope_rtol: ArrayLike = 1e-4,
    curv_rtol: ArrayLike = 0.9,
    approx_dec_rtol: ArrayLike | None = 1e-6,
    interval_threshold: ArrayLike = 1e-5,
    verbose: bool = False,
) -> tuple[Callable[..., ZoomLinesearchState], Callable[..., ZoomLinesearchState], Callable]:
    r"""The zoom line search as `(init, step, cond)` for a `lax.while_loop` (optax's helper).

    `init(updates, params, *, value, grad, prev_stepsize=1.0, initial_guess_strategy="one")`
    starts a search along `updates`; `step(state, *, value_and_grad_fn, fn_kwargs)` takes one
    value and gradient of $f$; `cond(state)` is True while the search goes on. The criteria
    are those of `scale_by_zoom_linesearch`, whose arguments these are (`max_stepsize` is its
    `max_learning_rate`, `interval_threshold` its `stepsize_precision`); they are not checked
    here.

    Args:
        max_linesearch_steps: the most values of $f$ per search.
        max_stepsize: the largest step size, or None for none.
        tol: absolute tolerance of both criteria.
        increase_factor: growth of the step during the interval search.
        slope_rtol: $c_1$ of the sufficient decrease criterion.
        curv_rtol: $c_2$ of the curvature criterion.
        approx_dec_rtol: $c_3$ of the approximate decrease criterion, or None.
        interval_threshold: the interval length below which a safe step is taken.
        verbose: print diagnostics when a search fails.
    """

    def value_and_slope(value_and_grad_fn, params, stepsize, updates, fn_kwargs, dt):
        step = add_scale(params, stepsize, updates)
        value, grad = value_and_grad_fn(step, **fn_kwargs)
        value, grad = numerics.cast(value, dt), _like_params(grad, params)
        slope = real_vdot(jax.tree.map(jnp.conj, grad), updates, dt)
        return value, grad, slope

    def errors(stepsize, value_step, slope_step, value_init, slope_init):
        h = functools.partial(numerics.as_compute, dtype=value_step.dtype)
        # Armijo: f(w + eta u) <= f(w) + c1 eta s0 ...
        decrease = value_step - value_init - h(slope_rtol) * stepsize * slope_init
        if approx_dec_rtol is not None:
            # ... or, close to the minimum, Hager and Zhang's approximate decrease
            # s(eta) <= (2 c1 - 1) s0, taken once f(w + eta u) <= f(w) + c3 |f(w)|.
            approx = slope_step - (2 * h(slope_rtol) - 1.0) * slope_init
            delta_values = value_step - value_init - h(approx_dec_rtol) * jnp.abs(value_init)
            decrease = jnp.minimum(jnp.maximum(approx, delta_values), decrease)
        decrease = jnp.maximum(decrease, 0.0)
        decrease = jnp.where(jnp.isnan(decrease), jnp.inf, decrease)
        curvature = jnp.abs(slope_step) - h(curv_rtol) * jnp.abs(slope_init)
        curvature = jnp.maximum(curvature, 0.0)
        curvature = jnp.where(jnp.isnan(curvature), jnp.inf, curvature)
        return decrease, curvature

    def try_safe_step(state):
        outside_domain = jnp.isinf(state.decrease_error)
        stepsize, value, grad = tree_select(
            (state.safe_stepsize > 0.0) | outside_domain,
            [state.safe_stepsize, state.safe_value, state.safe_grad],
            [state.stepsize, state.value, state.grad],
        )
        if verbose:
            jax.debug.print(
                "INFO: scale_by_zoom_linesearch: the search failed; value {value}, slope "
                "{slope}, step size {stepsize}, decrease error {dec}, curvature error {curv}; "
                "taking the step size {safe} (0: no step with sufficient decrease found)",
                value=state.value_init,
                slope=state.slope_init,
                stepsize=state.stepsize,
                dec=state.decrease_error,
                curv=state.curvature_error,
                safe=state.safe_stepsize,
                ordered=True,
            )
        return cast_like(state._replace(stepsize=stepsize, value=value, grad=grad), state)

    def search_interval(state, value_and_grad_fn, fn_kwargs):
        """Nocedal and Wright's Algorithm 3.5: grow the step until an interval is found."""
        dt = state.value.dtype
        h = functools.partial(numerics.as_compute, dtype=dt)
        iter_num = state.count
        prev_stepsize, prev_value, prev_slope = state.stepsize, state.value, state.slope
        new_stepsize = jnp.where(
            iter_num == 0, state.stepsize_guess, h(increase_factor) * prev_stepsize
        )
        if max_stepsize is not None:
            max_stepsize_reached = new_stepsize >= h(max_stepsize)
            new_stepsize = jnp.minimum(new_stepsize, h(max_stepsize))
        else:
            max_stepsize_reached = jnp.asarray(False)
        new_value, new_grad, new_slope = value_and_slope(
            value_and_grad_fn, state.params, new_stepsize, state.updates, fn_kwargs, dt
        )
        decrease_error, curvature_error = errors(
            new_stepsize, new_value, new_slope, state.value_init, state.slope_init
        )
        new_error = jnp.maximum(decrease_error, curvature_error)
        safe_stepsize, safe_value, safe_grad = tree_select(
            decrease_error <= h(tol),
            [new_stepsize, new_value, new_grad],
            [state.safe_stepsize, state.safe_value, state.safe_grad],
        )
        set_high_to_new = (decrease_error > 0.0) | ((new_value >= prev_value) & (iter_num > 0))
        set_low_to_new = (new_slope >= 0.0) & (~set_high_to_new)
        low, value_low, slope_low, high, value_high, slope_high = tree_select(
            set_low_to_new,
            [new_stepsize, new_value, new_slope, prev_stepsize, prev_value, prev_slope],
            [prev_stepsize, prev_value, prev_slope, new_stepsize, new_value, new_slope],
        )
        interval_found = set_high_to_new | set_low_to_new | (new_error <= h(tol))
        # At the largest step without an interval, the curvature cannot be reached: stop.
        done = (new_error <= h(tol)) | (max_stepsize_reached & ~interval_found)
        if verbose:
            _cond_print(
                max_stepsize_reached & ~interval_found,
                "INFO: scale_by_zoom_linesearch: no interval satisfying the curvature "
                "condition up to the largest step size {stepsize}; consider a larger "
                "max_learning_rate",
                stepsize=new_stepsize,
            )
        failed = (iter_num + 1 >= max_linesearch_steps) & (~done)
        new = state._replace(
            count=numerics.safe_increment(iter_num),
            stepsize=new_stepsize,
            value=new_value,
            grad=new_grad,
            slope=new_slope,
            decrease_error=decrease_error,
            curvature_error=curvature_error,
            error=new_error,
            interval_found=interval_found,
            done=done,
            failed=failed,
            low=low,
            value_low=value_low,
            slope_low=slope_low,
            high=high,
            value_high=value_high,
            slope_high=slope_high,
            cubic_ref=low,
            value_cubic_ref=value_low,
            safe_stepsize=safe_stepsize,
            safe_value=safe_value,
            safe_grad=safe_grad,
        )
        return cast_like(new, state)

    def zoom_into_interval(state, value_and_grad_fn, fn_kwargs):
        """Nocedal and Wright's Algorithm 3.6: shrink the interval by interpolation."""
        dt = state.value.dtype
        h = functools.partial(numerics.as_compute, dtype=dt)
        iter_num = state.count
        low, value_low, slope_low = state.low, state.value_low, state.slope_low
        high, value_high, slope_high = state.high, state.value_high, state.slope_high
        delta = jnp.abs(high - low)
        left, right = jnp.minimum(high, low), jnp.maximum(high, low)
        cubic_chk, quad_chk = 0.2 * delta, 0.1 * delta
        too_small_int = delta <= h(interval_threshold)
        # The cubic's minimiser, else the parabola's, else the midpoint: the first well inside.
        middle_cubic = _cubicmin(
            low, value_low, slope_low, high, value_high, state.cubic_ref, state.value_cubic_ref
        )
        use_cubic = (middle_cubic > left + cubic_chk) & (middle_cubic < right - cubic_chk)
        middle_quad = _quadmin(low, value_low, slope_low, high, value_high)
        use_quad = (~use_cubic) & (middle_quad > left + quad_chk) & (middle_quad < right - quad_chk)
        use_bisection = (~use_cubic) & (~use_quad)
        middle = jnp.where(use_cubic, middle_cubic, state.cubic_ref)
        middle = jnp.where(use_quad, middle_quad, middle)
        middle = jnp.where(use_bisection, (low + high) / 2.0, middle)

        value_middle, grad_middle, slope_middle = value_and_slope(
            value_and_grad_fn, state.params, middle, state.updates, fn_kwargs, dt
        )
        decrease_error, curvature_error = errors(
            middle, value_middle, slope_middle, state.value_init, state.slope_init
        )
        new_error = jnp.maximum(decrease_error, curvature_error)
        # Keep the lowest point with sufficient decrease, for a failed curvature search.
        update_safe = (decrease_error <= h(tol)) & (value_middle < state.safe_value)
        safe_stepsize, safe_value, safe_grad = tree_select(
            update_safe,
            [middle, value_middle, grad_middle],
            [state.safe_stepsize, state.safe_value, state.safe_grad],
        )
        done = new_error <= h(tol)
        set_high_to_middle = (decrease_error > 0.0) | (value_middle >= value_low)
        set_high_to_low = (slope_middle * (high - low) >= 0.0) & (~set_high_to_middle)
        set_low_to_middle = ~set_high_to_middle
        middle_point = [middle, value_middle, slope_middle]
        new_high = tree_select(set_high_to_middle, middle_point, [high, value_high, slope_high])
        new_high = tree_select(set_high_to_low, [low, value_low, slope_low], new_high)
        new_low = tree_select(set_low_to_middle, middle_point, [low, value_low, slope_low])
        # The point dropped from the interval is the next cubic's third point.
        new_cubic_ref, new_value_cubic_ref = tree_select(
            set_high_to_middle | set_high_to_low, [high, value_high], [low, value_low]
        )
        # Stop on the step budget, or on a tiny interval once a safe step exists (a very
        # steep f may need a tiny step: without a safe one the search goes on).
        presumably_failed = jnp.asarray((iter_num + 1) >= max_linesearch_steps) | (
            too_small_int & (safe_stepsize > 0.0)
        )
        new = state._replace(
            count=numerics.safe_increment(iter_num),
            stepsize=middle,
            value=value_middle,
            grad=grad_middle,
            slope=slope_middle,
            decrease_error=decrease_error,
            curvature_error=curvature_error,
            error=new_error,
            done=done,
            failed=presumably_failed & ~done,
            low=new_low[0],
            value_low=new_low[1],
            slope_low=new_low[2],
            high=new_high[0],
            value_high=new_high[1],
            slope_high=new_high[2],
            cubic_ref=new_cubic_ref,
            value_cubic_ref=new_value_cubic_ref,
            safe_stepsize=safe_stepsize,
            safe_value=safe_value,
            safe_grad=safe_grad,
        )
        return cast_like(new, state)

    def init(
        updates: Updates,
        params: Params,
        *,
        value: ArrayLike,
        grad: Updates,
        prev_stepsize: ArrayLike = 1.0,
        initial_guess_strategy: str = "one",
    ) -> ZoomLinesearchState:
        dt = real_dtype_of(params)
        if initial_guess_strategy == "one":
            guess = jnp.ones([], dt)
        elif initial_guess_strategy == "keep":
            guess = numerics.cast(prev_stepsize, dt)
        else:
            raise ValueError(
                "zoom_linesearch: initial_guess_strategy must be 'one' or 'keep', got "
                f"{initial_guess_strategy!r}"
            )
        value = numerics.cast(value, dt)
        grad = _like_params(grad, params)
        slope = real_vdot(updates, grad, dt)
        zero, inf = jnp.zeros([], dt), jnp.full([], jnp.inf, dt)
        false = jnp.asarray(False)
        return ZoomLinesearchState(
            count=numerics.zero_count(),
            params=params,
            updates=updates,
            stepsize_guess=guess,
            stepsize=zero,
            value=value,
            grad=grad,
            slope=slope,
            value_init=value,
            slope_init=slope,
            decrease_error=inf,
            curvature_error=inf,
            error=inf,
            interval_found=false,
            done=false,
            failed=false,
            low=zero,
            value_low=value,
            slope_low=slope,
            high=zero,
            value_high=value,
            slope_high=slope,
            cubic_ref=zero,
            value_cubic_ref=value,
            safe_stepsize=zero,
            safe_value=value,
            safe_grad=grad,
        )

    def step(state, *, value_and_grad_fn, fn_kwargs):
        new = jax.lax.cond(
            state.interval_found,
            functools.partial(
                zoom_into_interval, value_and_grad_fn=value_and_grad_fn, fn_kwargs=fn_kwargs
            ),
            functools.partial(
                search_interval, value_and_grad_fn=value_and_grad_fn, fn_kwargs=fn_kwargs
            ),
            state,
        )
        return jax.lax.cond(new.failed, try_safe_step, lambda s: s, new)

    def cond(state):
        return ~(state.done | state.failed)

    return init, step, cond


@factory
def scale_by_zoom_linesearch(
    max_linesearch_steps: ArrayLike,
    max_learning_rate: ArrayLike | None = None,
    tol: ArrayLike = 0.0,
    increase_factor: ArrayLike = 2.0,
    slope_rtol: ArrayLike = 1e-4,
    curv_rtol: ArrayLike = 0.9,
    approx_dec_rtol: ArrayLike | None = 1e-6,
    stepsize_precision: ArrayLike = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> GradientTransformation:
    r"""Zoom line search: a step size $\eta$ meeting the strong Wolfe conditions.

    With $w$ the params, $u$ the incoming direction, $\phi(\eta) = f(w + \eta u)$ and its
    slope $\phi'(\eta) = \operatorname{Re}\langle \nabla f(w + \eta u), u\rangle$:

    $$\phi(\eta) \le \phi(0) + c_1 \eta\, \phi'(0) + \epsilon, \qquad
    |\phi'(\eta)| \le c_2 |\phi'(0)| + \epsilon$$

    Near a minimum, where $\phi(\eta) \le \phi(0) + c_3|\phi(0)|$, the first (Armijo)
    criterion may be met by Hager and Zhang's approximate one instead,
    $\phi'(\eta) \le (2 c_1 - 1)\phi'(0) + \epsilon$ (off with `approx_dec_rtol=None`).
    The search grows $\eta$ by `increase_factor` from the first guess (1, or the last
    $\eta$ with `initial_guess_strategy="keep"`) until an interval holding such a step is
    found, then shrinks it by cubic, quadratic or bisection steps (Nocedal and Wright,
    Algorithms 3.5 and 3.6). A failed search takes the lowest step with sufficient decrease
    seen, if any. Emits $\eta u$; stores $\eta$, $\phi(\eta)$, $\nabla f(w + \eta u)$ and
    `ZoomLinesearchInfo(num_linesearch_steps, decrease_error, curvature_error)`.

    Args:
        max_linesearch_steps: the most values (and gradients) of $f$ per search, an
            integer $\geq 1$.
        max_learning_rate: the largest $\eta$, $> 0$, or None for no bound.
        tol: $\epsilon \geq 0$, absolute tolerance of both criteria.
        increase_factor: growth of $\eta$ while searching for the interval, $> 1$.
        slope_rtol: $c_1 \in [0, 1)$, for sufficient decrease.
        curv_rtol: $c_2 > c_1$, for small curvature (`jnp.inf` drops the criterion).
        approx_dec_rtol: $c_3 \geq 0$ for the approximate decrease criterion, or None.
        stepsize_precision: once the interval is shorter than this ($\geq 0$) and a step
            with sufficient decrease was seen, that step is taken.
        initial_guess_strategy: `"keep"` (start from the last $\eta$; for SGD-like
            directions) or `"one"` (start from 1; for Newton and quasi-Newton directions
            such as `scale_by_lbfgs`).
        verbose: print diagnostics (`jax.debug.print`) when a search fails.

    Returns:
        A `GradientTransformation` with state `ScaleByZoomLinesearchState(learning_rate,
        value, grad, info)`; its `update` needs `value=`, `grad=` and `value_fn=` (other
        keyword arguments go to `value_fn`).

    Raises:
        ValueError, TypeError: for an argument out of range or of the wrong kind.
    """
    fn = "scale_by_zoom_linesearch"
    checks.check_int(fn, "max_linesearch_steps", max_linesearch_steps, 1, traced=True)
    if max_learning_rate is not None:
        checks.check_positive(fn, "max_learning_rate", max_learning_rate)
    checks.check_non_negative(fn, "tol", tol)
    checks.check_range(
        fn,
        "increase_factor",
        increase_factor,
        1.0,
        low_open=True,
        hint="the interval search must grow the step, e.g. increase_factor=2.0",
    )
    checks.check_range(fn, "slope_rtol", slope_rtol, 0.0, 1.0, high_open=True)
    c1 = checks.as_float(fn, "slope_rtol", slope_rtol)
    checks.check_range(
        fn,
        "curv_rtol",
        curv_rtol,
        c1 if c1 is not None else 0.0,
        low_open=True,
        hint="the Wolfe conditions need slope_rtol < curv_rtol (e.g. 1e-4 and 0.9); "
        "jnp.inf drops the curvature criterion",
    )
    if approx_dec_rtol is not None:
        checks.check_non_negative(fn, "approx_dec_rtol", approx_dec_rtol)
    checks.check_non_negative(fn, "stepsize_precision", stepsize_precision)
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(
            f"{fn}: initial_guess_strategy must be 'one' or 'keep', got "
            f"{initial_guess_strategy!r}; 'one' for quasi-Newton directions (lbfgs), 'keep' "
            "for gradient directions"
        )
    checks.check_bool(fn, "verbose", verbose)
    init_search, step_search, searching = zoom_linesearch(
        max_linesearch_steps=max_linesearch_steps,
        max_stepsize=max_learning_rate,
        tol=tol,
        increase_factor=increase_factor,
        slope_rtol=slope_rtol,
        curv_rtol=curv_rtol,
        approx_dec_rtol=approx_dec_rtol,
        interval_threshold=stepsize_precision,
        verbose=verbose,
    )

    def init(params):
        dtype = stored_real_dtype(params)
        inf = jnp.full([], jnp.inf, jnp.result_type(float))
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.ones([], dtype),
            value=jnp.full([], jnp.inf, dtype),
            grad=jax.tree.map(jnp.zeros_like, params),
            info=ZoomLinesearchInfo(numerics.zero_count(), inf, inf),
        )

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra):
        _needs(fn, value, grad, value_fn, params)
        checks.check_state(fn, state, ScaleByZoomLinesearchState)
        fn_kwargs = value_fn_kwargs(fn, value_fn, extra)
        start = init_search(
            updates,
            params,
            value=value,
            grad=grad,
            prev_stepsize=state.learning_rate,
            initial_guess_strategy=initial_guess_strategy,
        )
        found = jax.lax.while_loop(
            searching,
            functools.partial(
                step_search, value_and_grad_fn=jax.value_and_grad(value_fn), fn_kwargs=fn_kwargs
            ),
            start,
        )
        new_state = ScaleByZoomLinesearchState(
            learning_rate=found.stepsize,
            value=found.value,
            grad=found.grad,
            info=ZoomLinesearchInfo(found.count, found.decrease_error, found.curvature_error),
        )
        new_state = numerics.in_structure_of(cast_like(new_state, state), state)
        return scale_tree(found.stepsize, updates), new_state

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Reusing what the search computed.


def value_and_grad_from_state(
    value_fn: Callable[..., ArrayLike],
) -> Callable[..., tuple[ArrayLike, Updates]]:
    r"""`jax.value_and_grad(value_fn)` that reuses the value and gradient stored in a state.

    A line search stores $f$ and $\nabla f$ at the step it accepted, which are the value and
    gradient at the next params. The returned `value_and_grad(params, *args, state=state,
    **kwargs)` returns them when the stored value is finite, and computes
    `jax.value_and_grad(value_fn)(params, *args, **kwargs)` otherwise (at the first step,
    where the state holds $+\infty$). Only for a deterministic $f$: with mini-batches the
    stored values belong to the last batch.

    Args:
        value_fn: the function minimised, `f(params, *args, **kwargs) -> scalar`.

    Returns:
        `value_and_grad(params, *args, state, **kwargs) -> (value, grad)`.

    Raises:
        TypeError: when `value_fn` is not callable.
        ValueError: (from the returned function) when `state` stores no `value` or `grad`,
            e.g. `scale_by_backtracking_linesearch` without `store_grad=True`.
        KeyError: when `state` holds several of them.
    """
    if not callable(value_fn):
        raise TypeError(
            "value_and_grad_from_state: value_fn must be the function minimised, "
            f"f(params, ...) -> scalar, got {type(value_fn).__name__}"
        )
    compute = jax.value_and_grad(value_fn)

    def value_and_grad(params: Params, *fn_args: Any, state: OptState, **fn_kwargs: Any):
        value = tree_get(state, "value")
        grad = tree_get(state, "grad")
        if value is None or grad is None:
            missing = "value" if value is None else "grad"
            raise ValueError(
                f"value_and_grad_from_state: the state stores no {missing}; use a line search "
                "that stores it (scale_by_zoom_linesearch, or "
                "scale_by_backtracking_linesearch(..., store_grad=True)), or call "
                "jax.value_and_grad(value_fn) instead"
            )

        def computed(p, args, kwargs):
            v, g = compute(p, *args, **kwargs)
            return cast_like(v, value), cast_like(g, grad)

        return jax.lax.cond(
            jnp.isfinite(value),
            lambda p, args, kwargs: (value, grad),
            computed,
            params,
            fn_args,
            fn_kwargs,
        )

    return value_and_grad
