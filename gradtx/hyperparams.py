r"""Live hyper-parameters: keep them in the state, read them for logging, change them between steps.

`inject_hyperparams(adam)(learning_rate=1e-3)` builds the same optimiser as
`adam(1e-3)`, but its numeric hyper-parameters live in the state as arrays:

```python
opt = inject_hyperparams(adam)(learning_rate=cosine_decay_schedule(1e-3, 1_000), b1=0.9)
state = opt.init(params)
updates, state = step(grads, state, params)          # one jitted step
get_hyperparam(state, "learning_rate")               # the rate used by that step
state = set_hyperparam(state, "b1", 0.95)            # no re-compilation: same dtype, same shape
```

Each `update` rebuilds the inner optimiser from the current values (the
factory's checks skip traced values), so changing a value is changing data,
never the compiled program. The rules follow `optax.inject_hyperparams`; the
differences are listed in `inject_hyperparams`.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike, DTypeLike

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, PyTree
from gradtx.spec import Recorded, Spec, _bind, describe, is_transformation


class InjectStatefulHyperparamsState(NamedTuple):
    """The state of an injected optimiser: optax's `InjectStatefulHyperparamsState`."""

    count: Array  # type: ignore[assignment]  # steps taken
    hyperparams: dict[str, Array]  # name -> value used by the last step (scalars, fixed dtypes)
    hyperparams_states: dict[str, PyTree]  # name -> its schedule's state
    inner_state: PyTree  # the inner optimiser's state


InjectHyperparamsState = InjectStatefulHyperparamsState  # what inject_hyperparams keeps


class WrappedScheduleState(NamedTuple):
    count: Array  # type: ignore[assignment]  # the schedule's own step count


@runtime_checkable
class StatefulSchedule(Protocol):
    """optax's interface of a stateful schedule: `init()` gives its state, `update(state,
    **extra_args)` the next state, `state -> value` its value (e.g. a learning rate that
    reads `value=loss`). `inject_hyperparams` accepts any object with these three methods."""

    def init(self) -> Any:
        """The schedule's initial state."""

    def update(self, state: Any, **extra_args: Any) -> Any:
        """The state after one step."""

    def __call__(self, state: Any, **extra_args: Any) -> ArrayLike:
        """The value at `state`."""


class WrappedSchedule:
    """A `count -> value` schedule as a stateful one: its state is its step count.

    This is how `inject_hyperparams` keeps a plain schedule (optax's layout:
    `hyperparams_states[name] = WrappedScheduleState(count)`).

    Args:
        schedule_fn: the `count -> value` schedule.
    """

    def __init__(self, schedule_fn: Callable[[Array], ArrayLike]):
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        return WrappedScheduleState(numerics.zero_count())

    def update(self, state: WrappedScheduleState, **extra_args: Any) -> WrappedScheduleState:
        del extra_args
        return WrappedScheduleState(numerics.safe_increment(state.count))

    def __call__(self, state: WrappedScheduleState, **extra_args: Any) -> ArrayLike:
        del extra_args
        return self.schedule_fn(state.count)


def is_stateful_schedule(value: Any) -> bool:
    """A stateful schedule (optax's `StatefulSchedule` protocol): callable, with callable
    `init()` and `update(state, **extra_args)`; called as `value(state, **extra_args)`."""
    return (
        callable(value)
        and callable(getattr(value, "init", None))
        and callable(getattr(value, "update", None))
        and not is_transformation(value)
    )


def _is_static(value: Any) -> bool:
    """Values that configure the program rather than feed it numbers: bools, None, dtypes, text."""
    return (
        value is None
        or isinstance(value, (bool, np.bool_, str, bytes))
        or checks.as_dtype(value) is not None
        or is_transformation(value)
    )


def _is_numeric(value: Any) -> bool:
    return isinstance(value, (numbers.Real, jax.Array, np.ndarray, np.generic))


def _stored(value: ArrayLike, float_dtype: Any, *, keep_typed: bool = True) -> Array:
    """`value` as a strongly typed array, floats in `float_dtype`.

    With `keep_typed`, a strongly typed JAX array is kept as given (the caller chose its dtype).
    """
    if keep_typed and isinstance(value, jax.Array) and not getattr(value, "weak_type", False):
        return value
    array = jnp.asarray(value)
    if jnp.issubdtype(array.dtype, jnp.floating):
        return jnp.asarray(array, float_dtype)
    return jnp.asarray(array, array.dtype)  # drops a weak type: ints stay ints


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: DTypeLike | None = None,
) -> Callable[..., GradientTransformation]:
    r"""Makes a factory whose numeric hyper-parameters live in the state.

    `inject_hyperparams(f)(*args, **kwargs)` acts as `f(*args, **kwargs)`. Each
    argument of `f` (defaults included) is, in this order:

    * static (fixed when the optimiser is built): named in `static_args`, or a
      bool, None, a string, a dtype or a transformation;
    * a stateful schedule (optax's protocol: `init()`, `update(state, **extra_args)`,
      called as `h(state, **extra_args)`, e.g. one that reads `value=`); its state is
      kept in `hyperparams_states`;
    * a schedule $h(t)$: any other callable. It is evaluated at its own step count $t$
      (`WrappedScheduleState`, counting with the wrapper's) before each update, and the
      value used is stored;
    * numeric: a real number or array. It is stored as an array (floats in
      `hyperparam_dtype`, ints as ints) and read back at every update, so
      `set_hyperparam` (or writing `state.hyperparams[name]`) changes it for
      the following steps without re-compiling.

    Each `update` calls `f` with the static values and the current numeric
    ones, then its `update`: $u_t = f(\dots, h_t)(g_t)$. Emits the inner
    optimiser's updates; stores $t$, the hyper-parameters used by the last step
    (at `init`, their values at $t = 0$) and the inner state.

    Matches `optax.inject_hyperparams` for the same call, with these differences:

    * `get_hyperparam(state, "learning_rate")` reads the `hyperparams` dict only, so it
      works whether or not the value is scheduled (optax 0.2.8's `optax.tree.get`
      finds two values then: the value and the schedule's state of the same name).
    * Floats are stored in float32 by default, or float64 if a parameter is
      float64. optax stores them in the params' widest dtype, so bfloat16
      params get bfloat16 hyper-parameters ($\beta_2 = 0.999$ rounds to 1.0).
      With gradtx's optimisers the moments keep their dtype (e.g. bfloat16)
      whatever the hyper-parameters' dtype.
    * A dtype argument (`mu_dtype=jnp.bfloat16`) is static without naming it
      in `static_args` (optax takes the callable `jnp.bfloat16` for a schedule).
    * The factory is called once when the optimiser is built, with each
      schedule's value at step 0, so bad values raise there.

    Setting a scheduled hyper-parameter has no effect: its value is recomputed
    at every step. Non-schedule callables (e.g. `adamw`'s `mask` function) must
    be named in `static_args`. Ints stay ints: pass `1.0`, not `1`, for a real
    hyper-parameter.

    Args:
        inner_factory: a function returning a transformation, e.g. `gradtx.adam`.
        static_args: names of `inner_factory`'s arguments to keep static.
        hyperparam_dtype: floating dtype for the stored float hyper-parameters.

    Returns:
        A factory with `inner_factory`'s signature, returning a transformation
        with state `InjectStatefulHyperparamsState(count, hyperparams,
        hyperparams_states, inner_state)` (optax's layout; `InjectHyperparamsState` is
        the same class).

    Raises:
        TypeError: if `inner_factory` is not callable.
        ValueError: if `static_args` names an argument `inner_factory` lacks.
    """
    fn = "inject_hyperparams"
    if not callable(inner_factory):
        raise TypeError(f"{fn}: inner_factory must be callable, got {type(inner_factory).__name__}")
    static_names = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = static_names - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"{fn}: static_args {sorted(unknown)} are not arguments of "
            f"{getattr(inner_factory, '__name__', 'inner_factory')}; it takes "
            f"{list(signature.parameters)}"
        )
    float_dtype = checks.canonicalize_dtype(
        fn, "hyperparam_dtype", hyperparam_dtype, allow_complex=False
    )
    factory_name = describe(inner_factory)

    @functools.wraps(inner_factory)
    def make(*args: Any, **kwargs: Any) -> GradientTransformation:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{fn}({factory_name}): {err}") from err
        bound.apply_defaults()
        static, schedules, numeric = {}, {}, {}
        for name, value in bound.arguments.items():
            if name in static_names or _is_static(value):
                static[name] = value
            elif is_stateful_schedule(value):
                schedules[name] = value
            elif callable(value):
                schedules[name] = WrappedSchedule(value)
            elif _is_numeric(value):
                numeric[name] = value
            else:
                static[name] = value
        # Built once here so that bad values raise now, with the factory's own message.
        at_zero = {k: s(s.init()) for k, s in schedules.items()}
        inner_factory(**static, **numeric, **at_zero)

        def init(params):
            leaves = [x for x in jax.tree.leaves(params) if not numerics.is_complex(x)]
            dtype = float_dtype or numerics.compute_dtype(*leaves)
            schedule_states = {k: s.init() for k, s in schedules.items()}
            hyperparams = {k: _stored(v, dtype) for k, v in numeric.items()}
            hyperparams.update(
                {
                    k: _stored(s(schedule_states[k]), dtype, keep_typed=False)
                    for k, s in schedules.items()
                }
            )
            inner = inner_factory(**static, **hyperparams)
            return InjectStatefulHyperparamsState(
                numerics.zero_count(), hyperparams, schedule_states, inner.init(params)
            )

        def update(updates, state, params=None, **extra_args):
            stored = {k: _stored(v, jnp.result_type(v)) for k, v in state.hyperparams.items()}
            hyperparams = {k: stored[k] for k in numeric}
            schedule_states = dict(state.hyperparams_states)
            for k, schedule in schedules.items():
                value = schedule(schedule_states[k], **extra_args)
                hyperparams[k] = jnp.asarray(value).astype(stored[k].dtype)
                schedule_states[k] = schedule.update(schedule_states[k], **extra_args)
            inner = base.as_transformation(
                fn, f"{factory_name}(...)", inner_factory(**static, **hyperparams)
            )
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
            count = numerics.safe_increment(state.count)
            return updates, InjectStatefulHyperparamsState(
                count, hyperparams, schedule_states, inner_state
            )

        return GradientTransformation(
            init, update, Spec(made, _bind(make, signature, args, kwargs))
        )

    made = Recorded(
        make,
        Spec(
            inject_hyperparams,
            _bind(
                inject_hyperparams, _SIGNATURE, (inner_factory, static_args, hyperparam_dtype), {}
            ),
        ),
    )
    return made


_SIGNATURE = inspect.signature(inject_hyperparams)


# ----------------------------------------------------------------------------
# Reading and writing hyper-parameters in a (possibly nested) state.


def inject_stateful_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: DTypeLike | None = None,
) -> Callable[..., GradientTransformation]:
    """optax's older name for `inject_hyperparams`, which takes stateful schedules too.

    Args:
        inner_factory: a function returning a transformation, e.g. `gradtx.adam`.
        static_args: names of `inner_factory`'s arguments to keep static.
        hyperparam_dtype: floating dtype for the stored float hyper-parameters.
    """
    return inject_hyperparams(inner_factory, static_args, hyperparam_dtype)


def _is_node(x: Any) -> bool:
    """A state NamedTuple with a `hyperparams` dict (gradtx's or optax's injected state)."""
    fields = getattr(x, "_fields", ())
    return (
        isinstance(x, tuple)
        and "hyperparams" in fields
        and isinstance(getattr(x, "hyperparams", None), dict)
    )


def _hyperparam_nodes(state: PyTree) -> list[tuple[str, dict]]:
    """Every `hyperparams` dict in `state`, with its key path."""
    found = []
    for path, node in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_node)[0]:
        if _is_node(node):
            found.append((jax.tree_util.keystr(path), node.hyperparams))
    return found


def _locate(fn: str, state: PyTree, name: str) -> tuple[str, dict]:
    nodes = _hyperparam_nodes(state)
    holders = [(path, hp) for path, hp in nodes if name in hp]
    if not holders:
        if not nodes:
            raise KeyError(
                f"{fn}: the state has no injected hyper-parameters; build the optimiser with "
                f"inject_hyperparams(...) to keep {name!r} in the state"
            )
        known = sorted({k for _, hp in nodes for k in hp})
        raise KeyError(f"{fn}: no hyper-parameter {name!r} in the state; it has {known}")
    if len(holders) > 1:
        paths = ", ".join(f"state{path}.hyperparams[{name!r}]" for path, _ in holders)
        raise ValueError(
            f"{fn}: {name!r} is held in {len(holders)} places ({paths}); pass the part of the "
            "state you mean, e.g. state[0]"
        )
    return holders[0]


def get_hyperparam(state: PyTree, name: str) -> Array:
    """The value of hyper-parameter `name` in an optimiser state, wherever it is nested.

    Finds the `hyperparams` dict holding `name` in `state` (an
    `InjectHyperparamsState`, or any state containing one, e.g. inside a
    `chain`; optax's injected states work too). A scheduled hyper-parameter
    holds the value used by the last step. Works under `jit`.

    Args:
        state: an optimiser state holding an injected hyper-parameter.
        name: the hyper-parameter's name, e.g. `"learning_rate"`.

    Raises:
        KeyError: if no injected hyper-parameter is called `name`.
        ValueError: if several are (the message lists their paths).
    """
    _, hyperparams = _locate("get_hyperparam", state, name)
    return hyperparams[name]


def set_hyperparam(state: PyTree, name: str, value: ArrayLike) -> PyTree:
    """A copy of `state` with hyper-parameter `name` set to `value`, in its stored dtype.

    The value keeps the stored dtype and shape, so a jitted step does not
    re-compile; the next `update` uses it. Has no effect on a scheduled
    hyper-parameter (its value is recomputed at every step). Works under `jit`.

    Args:
        state: an optimiser state holding an injected hyper-parameter.
        name: the hyper-parameter's name, e.g. `"learning_rate"`.
        value: its new value, a scalar (or an array of the stored shape).

    Raises:
        KeyError, ValueError: as `get_hyperparam`; ValueError also when `value`
            does not have the stored shape.
        TypeError: for a non-integer value of an integer hyper-parameter.
    """
    fn = "set_hyperparam"
    target, hyperparams = _locate(fn, state, name)
    old = hyperparams[name]
    dtype, given = jnp.result_type(old), jnp.asarray(value)
    if jnp.issubdtype(dtype, jnp.integer) and not jnp.issubdtype(given.dtype, jnp.integer):
        raise TypeError(
            f"{fn}: {name!r} is an integer hyper-parameter, got {value!r}; pass an integer"
        )
    new = given.astype(dtype)
    if new.shape != jnp.shape(old):
        raise ValueError(
            f"{fn}: {name!r} has shape {jnp.shape(old)}, got a value of shape {new.shape}"
        )

    def visit(path, node):
        if _is_node(node) and jax.tree_util.keystr(path) == target:
            return node._replace(hyperparams={**node.hyperparams, name: new})
        return node

    return jax.tree_util.tree_map_with_path(visit, state, is_leaf=_is_node)
