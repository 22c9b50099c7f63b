"""The checks every factory shares: hyper-parameters at construction, trees at update.

One phrasing everywhere: `fn: name must be <what is allowed>, got <value>[; <the fix>]`.

* Numbers: `check_range` (and its short forms `check_decay`, `check_non_negative`,
  `check_positive`, `check_scalar_or_schedule`) skip traced values, which have no Python value
  to look at (hyper-parameters that `inject_hyperparams` feeds in under `jit`).
* Integers: `check_int` returns the value as a Python `int`; a value of the wrong kind raises
  `NotAnIntegerError`, which is both a `TypeError` and a `ValueError`.
* `check_bool`, `canonicalize_dtype`.
* Trees: `check_tree_match` names the first mismatching key path.
* `missing_argument`: the one error for an `update` argument a piece needs and did not get.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx.typing import PyTree


class NotAnIntegerError(TypeError, ValueError):
    """A size, count or step that is not an integer.

    A `TypeError` (a value of the wrong kind) that is also a `ValueError` (an invalid argument,
    like every other bad size), so either `except` clause catches it, the way numpy's
    `AxisError` is both a `ValueError` and an `IndexError`.
    """


def is_concrete(value: Any) -> bool:
    """True when `value` can be inspected in Python (not a tracer under `jit`)."""
    return not isinstance(value, jax.core.Tracer)


def as_float(fn: str, name: str, value: Any) -> float | None:
    """The float value of a real scalar hyper-parameter, or None when it is traced.

    Raises:
        TypeError: for a bool, a string, None, a complex number or a non-numeric array.
        ValueError: for an array that is not a scalar.
    """
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
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
    """Raises a ValueError naming `fn`, `name` and `value` unless the value lies in the range.

    Traced values are not checked: there is no Python value to look at.
    """
    x = as_float(fn, name, value)
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


def check_finite(
    fn: str,
    name: str,
    value: Any,
    low: float = -math.inf,
    *,
    low_open: bool = True,
    hint: str = "",
) -> None:
    """`value` is a finite real number above `low` (at or above it with `low_open=False`)."""
    check_range(fn, name, value, low, math.inf, low_open=low_open, high_open=True, hint=hint)


def check_decay(fn: str, name: str, value: Any) -> None:
    """A decay rate $\\beta$ must lie in $[0, 1)$, also once rounded to float32.

    A $\\beta$ that rounds to 1.0 in float32 would make $1 - \\beta^t$ zero and
    bias correction infinite, so it is refused here rather than clamped later.
    """
    check_range(fn, name, value, 0.0, 1.0, high_open=True)
    x = as_float(fn, name, value)
    if x is not None and float(np.float32(x)) >= 1.0:
        raise ValueError(
            f"{fn}: {name} must be in [0, 1), got {value!r}, which rounds to 1.0 in float32"
        )


def check_non_negative(fn: str, name: str, value: Any) -> None:
    """`value` is a real number $\\geq 0$ (or traced)."""
    check_range(fn, name, value, 0.0)


def check_positive(fn: str, name: str, value: Any) -> None:
    """`value` is a real number $> 0$ (or traced)."""
    check_range(fn, name, value, 0.0, low_open=True)


def check_scalar_or_schedule(fn: str, name: str, value: Any, *, non_negative: bool = True) -> None:
    """A learning rate (or similar) is a number (non-negative by default) or a schedule."""
    if callable(value):
        return
    if non_negative:
        check_non_negative(fn, name, value)
    else:
        as_float(fn, name, value)


def check_moments(fn: str, b1: Any, b2: Any, eps: Any, eps_root: Any = 0.0) -> None:
    """Adam-style moment arguments: decays $\\beta_1, \\beta_2 \\in [0, 1)$; both
    $\\epsilon$'s $\\geq 0$."""
    check_decay(fn, "b1", b1)
    check_decay(fn, "b2", b2)
    check_non_negative(fn, "eps", eps)
    check_non_negative(fn, "eps_root", eps_root)


def check_weight_decay(fn: str, name: str, value: Any) -> None:
    """An optimiser's weight decay: a number $\\geq 0$ or a schedule (None: no decay).

    `add_decayed_weights` itself admits factors in $(-1, 0)$ (`fromage`'s shrink after the
    learning rate); an optimiser's `weight_decay` argument is a decay, never negative.
    """
    if value is not None:
        check_scalar_or_schedule(fn, name, value)


def check_int(
    fn: str, name: str, value: Any, low: int = 0, *, traced: bool = False, whole_float: bool = False
) -> Any:
    """`value` as a Python `int` $\\geq$ `low`: a Python or numpy integer, or a concrete
    integer scalar array.

    With `whole_float=True` (step counts, as optax takes them) an integer-valued float
    such as `10.0` is accepted too, and `10.5` refused.

    With `traced=True` a traced integer (e.g. a hyper-parameter fed by `inject_hyperparams`) is
    returned unchecked; otherwise it is refused, since the value fixes a shape or a loop.

    Raises:
        NotAnIntegerError: for a bool, a float, a string, a traced value (unless `traced`).
        ValueError: for an integer below `low`.
    """
    if not is_concrete(value):
        if traced:
            return value
        raise NotAnIntegerError(
            f"{fn}: {name} must be a static Python int, got a traced value; mark {name} "
            "static under jit (static_argnums/static_argnames)"
        )
    if isinstance(value, (bool, np.bool_)):
        raise NotAnIntegerError(f"{fn}: {name} must be an integer >= {low}, got {value!r}")
    if whole_float and isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise NotAnIntegerError(
                f"{fn}: {name} must be a whole number of steps >= {low}, got {value!r}; "
                f"round it, e.g. {name}=round({value!r})"
            )
        value = int(value)
    if isinstance(value, (jax.Array, np.ndarray)) and value.ndim == 0:
        if whole_float and jnp.issubdtype(value.dtype, jnp.floating):
            return check_int(fn, name, float(value), low, whole_float=True)
        if not jnp.issubdtype(value.dtype, jnp.integer):
            raise NotAnIntegerError(
                f"{fn}: {name} must be an integer >= {low}, got {value!r} ({value.dtype})"
            )
        value = int(value)
    try:
        as_int = operator.index(value)
    except TypeError:
        raise NotAnIntegerError(
            f"{fn}: {name} must be an integer >= {low}, got {value!r} ({type(value).__name__})"
        ) from None
    if as_int < low:
        raise ValueError(f"{fn}: {name} must be an integer >= {low}, got {as_int}")
    return as_int


def check_bool(fn: str, name: str, value: Any) -> None:
    """`value` is `True` or `False` (a Python bool: a flag changes the program, not its data)."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be True or False, got {value!r}")


def check_key(fn: str, key: Any) -> None:
    """A single PRNG key: `jax.random.key(seed)` or a legacy `uint32[2]` `PRNGKey`."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"{fn}: key must be a single PRNG key, got a key array of {shape}")
        return
    if dtype == jnp.uint32 and shape == (2,):
        return
    raise TypeError(
        f"{fn}: key must be a PRNG key such as jax.random.key(0) or "
        f"jax.random.fold_in(key, epoch), got {type(key).__name__}"
        + (f" of dtype {dtype} and shape {shape}" if dtype is not None else f" {key!r}")
    )


def as_dtype(value: Any) -> np.dtype | None:
    """`value` as a dtype when it names one (`jnp.float32`, `np.dtype('bfloat16')`), else None."""
    if isinstance(value, np.dtype):
        return value
    if isinstance(value, type) and (
        issubclass(value, np.generic) or isinstance(getattr(value, "dtype", None), np.dtype)
    ):
        return jnp.dtype(value)
    return None


def canonicalize_dtype(
    fn: str, name: str, dtype: Any, *, allow_complex: bool = True
) -> np.dtype | None:
    """None, or `dtype` as a floating (or, with `allow_complex`, complex) JAX dtype;
    64-bit ones follow `jax_enable_x64`."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{fn}: {name} must be a dtype, got {dtype!r}") from err
    if not allow_complex and not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{fn}: {name} must be a floating dtype, got {dt.name}")
    if not jnp.issubdtype(dt, jnp.inexact):
        raise ValueError(f"{fn}: {name} must be a floating or complex dtype, got {dt.name}")
    return jax.dtypes.canonicalize_dtype(dt)


def check_state(fn: str, state: Any, layout: type) -> None:
    """Raises a ValueError unless `state` has the fields of the NamedTuple `layout`.

    Checked by field names, not by class, so optax's state of the same layout is accepted
    (the layouts are optax's). Runs at trace time only.
    """
    fields = getattr(state, "_fields", None)
    want: tuple[str, ...] = getattr(layout, "_fields", ())
    if fields != want:
        got = type(state).__name__ + (f"({', '.join(fields)})" if fields is not None else "")
        raise ValueError(
            f"{fn}: state must be a {layout.__name__}({', '.join(want)}) made by {fn}'s init, "
            f"got {got}; was it built by a different optimiser?"
        )


def missing_argument(fn: str, name: str, how: str) -> TypeError:
    """The error for an `update` argument a piece needs and was not given (raise it).

    `how` shows the call that passes it, e.g. `opt.update(grads, state, params)`.
    """
    return TypeError(f"{fn}: update needs {name}; pass it as {how}")


def _same_structure(a: Any, b: Any) -> bool:
    """Treedef equality (typed `Any`: jaxlib ships no stubs for PyTreeDef)."""
    return a == b


def _first_class_difference(a: Any, b: Any) -> tuple[str, str] | None:
    """The qualified names of the first node classes at which two treedefs differ."""
    if a.num_nodes == 1 or b.num_nodes == 1:  # a leaf or None
        return None
    ta, tb = a.node_data()[0], b.node_data()[0]
    if ta is not tb:
        return f"{ta.__module__}.{ta.__qualname__}", f"{tb.__module__}.{tb.__qualname__}"
    for ca, cb in zip(a.children(), b.children()):
        found = _first_class_difference(ca, cb)
        if found is not None:
            return found
    return None


def check_tree_match(
    fn: str, updates: PyTree, reference: PyTree, what: str = "updates", ref_name: str = "state"
) -> None:
    """Raises a ValueError when `updates` and `reference` differ in structure or leaf shapes.

    The message names the transformation and the first mismatching key path,
    e.g. `scale_by_adam: updates['dense']['bias'] has shape (4,), state has (3,)`.
    Runs at trace time only (shapes are static), so it costs nothing under `jit`.
    """
    u_flat, u_def = jax.tree_util.tree_flatten(updates)
    r_flat, r_def = jax.tree_util.tree_flatten(reference)
    if _same_structure(u_def, r_def) and all(
        jnp.shape(u) == jnp.shape(r) for u, r in zip(u_flat, r_flat)
    ):
        return  # the usual case, without key paths (trace time)
    u_leaves = jax.tree_util.tree_flatten_with_path(updates)[0]
    r_leaves = jax.tree_util.tree_flatten_with_path(reference)[0]
    if not _same_structure(u_def, r_def):
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
        classes = _first_class_difference(u_def, r_def)
        if classes is not None and classes[0].split(".")[-1] == classes[1].split(".")[-1]:
            raise ValueError(
                f"{fn}: tree structures differ: the same key paths, but {what} has a "
                f"{classes[0]} node where {ref_name} has a {classes[1]} one (two classes of the "
                f"same name from different libraries); build both with the same library"
            )
        raise ValueError(f"{fn}: tree structures differ: {what} is {u_def}, {ref_name} is {r_def}")
    for (path, u), (_, r) in zip(u_leaves, r_leaves):
        u_shape, r_shape = jnp.shape(u), jnp.shape(r)
        if u_shape != r_shape:
            key = jax.tree_util.keystr(path)
            raise ValueError(f"{fn}: {what}{key} has shape {u_shape}, {ref_name} has {r_shape}")
