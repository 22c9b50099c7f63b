"""The one abstraction: a gradient transformation is a pair of pure functions.

```
init(params) -> state
update(updates, state, params=None, **extra_args) -> (new_updates, new_state)
```

`GradientTransformation` is a `NamedTuple` of exactly those two fields, so it
is structurally the same as `optax.GradientTransformation`: a gradtx
transformation goes wherever optax expects one (`optax.chain`, Flax's
`TrainState`) and the other way round.

This module also holds the checks every factory shares: hyper-parameter
validation at construction, and the tree/shape match between `updates` and a
transformation's state, which turns JAX's generic broadcasting error into one
that names the transformation and the first mismatching key path.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Int

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree
Schedule = Callable[[Int[ArrayLike, ""]], ArrayLike]
ScalarOrSchedule = float | ArrayLike | Schedule


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions `(init, update)`.

    `init(params)` builds the state (a pytree of arrays, usually a NamedTuple);
    `update(updates, state, params=None, **extra_args)` returns the transformed
    updates and the new state. Both are side-effect free and jittable.

    The tuple has exactly optax's two fields; it prints as the composition that
    built it, e.g. `chain(scale_by_adam(b1=0.9, ...), scale_by_learning_rate(0.001))`.
    """

    init: TransformInitFn
    update: TransformUpdateFn

    def __repr__(self) -> str:
        describe = getattr(self.update, "__gradtx_describe__", None)
        if describe is not None:
            return describe()
        return f"GradientTransformation(init={self.init!r}, update={self.update!r})"


class EmptyState(NamedTuple):
    """The state of a stateless transformation: an empty pytree."""


def as_dtype(value: Any) -> np.dtype | None:
    """`value` as a dtype when it names one (`jnp.float32`, `np.dtype('bfloat16')`), else None."""
    if isinstance(value, np.dtype):
        return value
    if isinstance(value, type) and (
        issubclass(value, np.generic) or isinstance(getattr(value, "dtype", None), np.dtype)
    ):
        return jnp.dtype(value)
    return None


def is_transformation(value: Any) -> bool:
    """A gradtx or foreign (optax) transformation: a tuple with callable `init` and `update`."""
    return (
        isinstance(value, tuple)
        and callable(getattr(value, "init", None))
        and callable(getattr(value, "update", None))
    )


def callable_name(f: Any) -> str:
    """A function as written where it was passed: `name`, `factory(...)` for a closure."""
    qualname = getattr(f, "__qualname__", None)
    if not isinstance(qualname, str):
        return f"{type(f).__name__}(...)"
    if "<locals>" in qualname:
        return qualname.split(".<locals>")[0] + "(...)"
    if qualname == "<lambda>":
        try:
            names = ", ".join(inspect.signature(f).parameters)
        except (TypeError, ValueError):
            names = "*args"
        return f"lambda {names}: ..."
    return qualname


def _describe_transformation(tx: Any) -> str:
    """A transformation's description: its own, or `optax.factory(...)` for a foreign one."""
    describe = getattr(tx.update, "__gradtx_describe__", None)
    if describe is not None:
        return describe()
    qualname = getattr(tx.update, "__qualname__", "")
    if not (isinstance(qualname, str) and "<locals>" in qualname):
        return f"{type(tx).__name__}(...)"
    root = (getattr(tx.update, "__module__", None) or "").split(".")[0]
    prefix = "" if root in ("", "__main__", "gradtx") else f"{root}."
    return f"{prefix}{qualname.split('.<locals>')[0]}(...)"


def _format_value(value: Any) -> str:
    """`value` as written in the call that built a transformation (valid-looking Python).

    Transformations print as their composition (foreign ones as `optax.name(...)`),
    dtypes as `jnp.float32`, closures as the factory that made them
    (`cosine_decay_schedule(...)`), scalars by value and other arrays by shape.
    """
    if is_transformation(value):
        return _describe_transformation(value)
    dtype = as_dtype(value)
    if dtype is not None:
        return f"jnp.{dtype.name}"
    if callable(value):
        describe = getattr(value, "__gradtx_describe__", None)
        return describe() if describe is not None else callable_name(value)
    if isinstance(value, jax.core.Tracer):
        return f"<traced {value.dtype}{list(value.shape)}>"
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        if np.ndim(value) == 0:
            return str(np.asarray(value)[()])
        return f"Array(shape={tuple(np.shape(value))}, dtype={jnp.result_type(value).name})"
    if isinstance(value, dict):
        items = ", ".join(f"{k!r}: {_format_value(v)}" for k, v in value.items())
        return f"{{{items}}}"
    if type(value) in (list, tuple):
        items = [_format_value(v) for v in value]
        if isinstance(value, tuple):
            return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
        return f"[{', '.join(items)}]"
    return repr(value)


def _factory_defaults(module: str | None, name: str) -> dict[str, Any]:
    """The defaults of the public factory `name` in `module`, or {} when there is none."""
    factory = getattr(sys.modules.get(module or ""), name, None)
    if not callable(factory):
        return {}
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _is_switched_off(value: Any, default: Any) -> bool:
    """True when `value` is a default that turns a feature off: None, False or zero."""
    if default is None or default is False:
        return value is default
    if type(default) in (int, float) and default == 0:
        return type(value) in (int, float) and value == 0
    return False


def transformation(
    name: str, init: TransformInitFn, update: TransformUpdateFn, *args: Any, **hparams: Any
) -> GradientTransformation:
    """Packs `init`/`update` into a `GradientTransformation` that prints as `name(...)`.

    Positional `args` are shown by value (e.g. the inner transformations of a
    combinator), `hparams` as `key=value`. A keyword is left out when it equals
    the default of the factory `name` (looked up in `update`'s module) and that
    default switches a feature off (None, False or zero), so
    `print(adam(1e-3))` reads
    `chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-08), scale_by_learning_rate(0.001))`
    and evaluates back to the same optimiser. Nothing is added to the tuple: the
    description rides on the `update` function, so optax and Flax see a plain
    two-field transformation. An `update` that already describes another
    transformation is wrapped, not relabelled.
    """
    module = getattr(update, "__module__", None)
    if hasattr(update, "__gradtx_describe__"):
        described = update

        @functools.wraps(described)
        def update(*args_, **kwargs_):
            return described(*args_, **kwargs_)

    def describe() -> str:
        defaults = _factory_defaults(module, name)
        parts = [_format_value(a) for a in args]
        parts += [
            f"{k}={_format_value(v)}"
            for k, v in hparams.items()
            if not (k in defaults and _is_switched_off(v, defaults[k]))
        ]
        return f"{name}({', '.join(parts)})"

    update.__gradtx_describe__ = describe  # type: ignore[attr-defined]
    update.__gradtx_name__ = name  # type: ignore[attr-defined]
    update.__gradtx_args__ = args  # type: ignore[attr-defined]
    update.__gradtx_hparams__ = hparams  # type: ignore[attr-defined]
    return GradientTransformation(init, update)


def accepts_extra_args(update: Callable) -> bool:
    """True when `update` takes `**extra_args` (gradtx pieces, optax's ExtraArgs ones)."""
    try:
        params = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def as_transformation(fn: str, where: str, tx: Any) -> GradientTransformation:
    """`tx` (gradtx, optax, any `init`/`update` pair) as a GradientTransformation whose
    update takes `**extra_args`; those a foreign update cannot take are dropped.

    Raises:
        TypeError: naming `fn` and `where` when `tx` has no callable init/update.
    """
    init, update = getattr(tx, "init", None), getattr(tx, "update", None)
    if not (callable(init) and callable(update)):
        raise TypeError(
            f"{fn}: {where} must be a gradient transformation (an object with init and "
            f"update), got {type(tx).__name__}"
        )
    if accepts_extra_args(update):
        return (
            tx if isinstance(tx, GradientTransformation) else GradientTransformation(init, update)
        )

    def update_dropping_extras(updates, state, params=None, **extra_args):
        del extra_args
        return update(updates, state, params)

    update_dropping_extras.__gradtx_describe__ = lambda: _format_value(tx)  # type: ignore[attr-defined]
    return GradientTransformation(init, update_dropping_extras)


def named_stateless(
    name: str, f: Callable[[Updates, Params | None], Updates], *args: Any, **hparams: Any
) -> GradientTransformation:
    """A stateless transformation `f(updates, params) -> updates` that prints as `name(...)`.

    The building block of every piece without state (`identity`, `clip`,
    `square`, ...); `args`/`hparams` are shown as in `transformation`.
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return f(updates, params), state

    return transformation(name, init, update, *args, **hparams)


def identity() -> GradientTransformation:
    """Passes updates through unchanged: $u_t = g_t$. Stores nothing."""
    return named_stateless("identity", lambda updates, params: updates)


def stateless(
    f: Callable[[Updates, Params | None], Updates], name: str | None = None
) -> GradientTransformation:
    """A transformation from a function of the whole update tree: $u_t = f(g_t, \\theta_t)$.

    Args:
        f: `f(updates, params) -> updates`, pure and jittable.
        name: shown when the transformation is printed (defaults to `f`'s name).
    """
    if not callable(f):
        raise TypeError(f"stateless: f must be callable, got {type(f).__name__}")
    return named_stateless("stateless", f, name or getattr(f, "__name__", "f"))


def stateless_with_tree_map(
    f: Callable[[Array, Array | None], Array], name: str | None = None
) -> GradientTransformation:
    """A stateless transformation applied leaf by leaf: $u = f(g, \\theta)$ per leaf.

    Args:
        f: `f(update_leaf, param_leaf_or_None) -> update_leaf`.
        name: shown when the transformation is printed (defaults to `f`'s name).
    """
    if not callable(f):
        raise TypeError(f"stateless_with_tree_map: f must be callable, got {type(f).__name__}")

    def leafwise(updates, params):
        if params is None:
            return jax.tree.map(lambda g: f(g, None), updates)
        return jax.tree.map(f, updates, params)

    return named_stateless("stateless_with_tree_map", leafwise, name or getattr(f, "__name__", "f"))


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns $\\theta + u$ leaf by leaf, each result in its parameter's dtype.

    The sum is taken in the wider of the two dtypes (e.g. float32 updates on
    bfloat16 params are added in float32) and then cast back, so parameters
    never change dtype and no precision is thrown away before the add.

    Raises:
        ValueError: when `updates` and `params` differ in structure or shapes.
    """
    check_tree_match("apply_updates", updates, params, "updates", "params")

    def add(p, u):
        if p is None:
            return None
        p = jnp.asarray(p)
        dtype = compute_dtype(p, u)
        return (p.astype(dtype) + jnp.asarray(u).astype(dtype)).astype(p.dtype)

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)


# ----------------------------------------------------------------------------
# Checks shared by every factory.


def is_concrete(value: Any) -> bool:
    """True when `value` can be inspected in Python (not a tracer under `jit`)."""
    return not isinstance(value, jax.core.Tracer)


def _as_float(fn: str, name: str, value: Any) -> float | None:
    """The float value of a scalar hyper-parameter, or None when traced."""
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}")
    if not is_concrete(value):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        array = jnp.asarray(value)
    except TypeError as err:
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}") from err
    if array.ndim != 0:
        raise ValueError(f"{fn}: {name} must be a scalar, got an array of shape {array.shape}")
    if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
        raise TypeError(f"{fn}: {name} must be a real number, got dtype {array.dtype}")
    return float(array)


def check_range(
    fn: str,
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> None:
    """Raises a ValueError naming `fn`, `name` and `value` unless value lies in the range.

    Traced values (hyper-parameters passed as arrays under `jit`) are not
    checked: there is no Python value to look at.
    """
    x = _as_float(fn, name, value)
    if x is None:
        return
    ok = not math.isnan(x)
    ok = ok and (x > low if low_open else x >= low)
    ok = ok and (x < high if high_open else x <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bounds = f"{left}{low:g}, {high:g}{right}"
        raise ValueError(
            f"{fn}: {name} must be in {bounds}, got {value!r}" + (f"; {hint}" if hint else "")
        )


def check_decay(fn: str, name: str, value: Any) -> None:
    """A decay rate $\\beta$ must lie in $[0, 1)$, also once rounded to float32.

    A $\\beta$ that rounds to 1.0 in float32 would make $1 - \\beta^t$ zero and
    bias correction infinite, so it is refused here rather than clamped later.
    """
    check_range(fn, name, value, 0.0, 1.0, high_open=True)
    x = _as_float(fn, name, value)
    if x is not None and float(np.float32(x)) >= 1.0:
        raise ValueError(
            f"{fn}: {name} must be in [0, 1), got {value!r}, which rounds to 1.0 in float32"
        )


def check_non_negative(fn: str, name: str, value: Any) -> None:
    check_range(fn, name, value, 0.0)


def check_positive(fn: str, name: str, value: Any) -> None:
    check_range(fn, name, value, 0.0, low_open=True)


def check_positive_int(fn: str, name: str, value: Any) -> None:
    """`value` must be a Python (or numpy) integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{fn}: {name} must be a positive integer, got {value!r}")


def check_scalar_or_schedule(fn: str, name: str, value: Any, *, non_negative: bool = True) -> None:
    """A learning rate (or similar) is a number or a `count -> value` schedule."""
    if callable(value):
        return
    if non_negative:
        check_non_negative(fn, name, value)
    else:
        _as_float(fn, name, value)


def check_bool(fn: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be True or False, got {value!r}")


def canonicalize_dtype(fn: str, name: str, dtype: Any) -> jnp.dtype | None:
    """None, or `dtype` as a floating JAX dtype (float64 follows `jax_enable_x64`)."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{fn}: {name} must be a dtype, got {dtype!r}") from err
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{fn}: {name} must be a floating dtype, got {dt.name}")
    return jax.dtypes.canonicalize_dtype(dt)


def check_tree_match(
    fn: str, updates: PyTree, reference: PyTree, what: str = "updates", ref_name: str = "state"
) -> None:
    """Raises a ValueError when `updates` and `reference` differ in structure or leaf shapes.

    The message names the transformation and the first mismatching key path,
    e.g. `scale_by_adam: updates['dense']['bias'] has shape (4,), state has (3,)`.
    Runs at trace time only (shapes are static), so it costs nothing under `jit`.
    """
    u_leaves, u_def = jax.tree_util.tree_flatten_with_path(updates)
    r_leaves, r_def = jax.tree_util.tree_flatten_with_path(reference)
    if u_def != r_def:
        u_paths = [jax.tree_util.keystr(p) for p, _ in u_leaves]
        r_paths = [jax.tree_util.keystr(p) for p, _ in r_leaves]
        for up, rp in zip(u_paths, r_paths):
            if up != rp:
                raise ValueError(
                    f"{fn}: tree structures differ: {what} has {what}{up} where "
                    f"{ref_name} has {ref_name}{rp}; pass updates with the same tree as the "
                    f"params given to init"
                )
        if len(u_paths) != len(r_paths):
            longer, name, other = (
                (u_paths, what, ref_name)
                if len(u_paths) > len(r_paths)
                else (r_paths, ref_name, what)
            )
            extra = longer[min(len(u_paths), len(r_paths))]
            raise ValueError(
                f"{fn}: tree structures differ: {name} has {name}{extra} which {other} lacks "
                f"({len(u_paths)} leaves in {what}, {len(r_paths)} in {ref_name})"
            )
        raise ValueError(f"{fn}: tree structures differ: {what} is {u_def}, {ref_name} is {r_def}")
    for (path, u), (_, r) in zip(u_leaves, r_leaves):
        u_shape, r_shape = jnp.shape(u), jnp.shape(r)
        if u_shape != r_shape:
            key = jax.tree_util.keystr(path)
            raise ValueError(f"{fn}: {what}{key} has shape {u_shape}, {ref_name} has {r_shape}")


def safe_increment(count: Int[Array, ""]) -> Int[Array, ""]:
    """`count + 1`, saturating at the dtype's maximum instead of wrapping around."""
    max_value = jnp.iinfo(count.dtype).max
    return jnp.where(count < max_value, count + 1, max_value).astype(count.dtype)


def zero_count() -> Int[Array, ""]:
    """The step counter every stateful transformation starts from."""
    return jnp.zeros([], jnp.int32)


def evaluate(value: ScalarOrSchedule, count: Int[Array, ""]) -> ArrayLike:
    """A hyper-parameter's value at step `count`: call it if it is a schedule."""
    return value(count) if callable(value) else value


def compute_dtype(*arrays: ArrayLike) -> jnp.dtype:
    """float64 if any input is float64, else float32: the dtype update math runs in.

    Explicit, so it works under strict dtype promotion, where bfloat16 and
    float32 have no implicit common type.
    """
    wide = any(jnp.result_type(x) == jnp.float64 for x in arrays)
    return jnp.dtype(jnp.float64 if wide else jnp.float32)


def as_compute(value: ArrayLike, dtype: Any) -> ArrayLike:
    """A hyper-parameter ready to meet arrays of `dtype` under strict promotion.

    Python numbers stay Python numbers (weakly typed, so `1 - decay` is taken in
    double precision and rounded once); arrays, e.g. the traced values that
    `inject_hyperparams` passes in, are cast to `dtype`.
    """
    if isinstance(value, numbers.Number):
        return value
    return jnp.asarray(value).astype(dtype)


def scale_leaf(u: Array, s: ArrayLike) -> Array:
    """`u * s` computed in at least float32 and returned in `u`'s dtype.

    A bfloat16 update times a float32 factor keeps the factor's precision for
    the product; under `jit` the casts fuse into the multiply.
    """
    u = jnp.asarray(u)
    dtype = compute_dtype(u)
    return (u.astype(dtype) * jnp.asarray(s).astype(dtype)).astype(u.dtype)


def tree_map_multi(fn: Callable[..., tuple], num_outputs: int, tree: PyTree, *rest: PyTree):
    """Maps `fn` over leaves and returns `num_outputs` trees, one per output of `fn`.

    Lets a fused update compute the emitted update and the new moments of a
    leaf in one function, as the math reads, instead of one tree walk each.
    """
    leaves, treedef = jax.tree.flatten(tree)
    rest_leaves = [treedef.flatten_up_to(r) for r in rest]
    outs = [fn(*xs) for xs in zip(leaves, *rest_leaves)]
    columns = list(zip(*outs)) if outs else [()] * num_outputs
    return tuple(treedef.unflatten(list(col)) for col in columns)
