"""The numerics every piece shares: step counters, the dtype update math runs in, scaling.

Update math runs in float32 or wider whatever the storage dtype (`compute_dtype`), and every
cast is explicit, so each piece works under `jax_numpy_dtype_promotion="strict"`.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gradtx.typing import PyTree, ScalarOrSchedule


def safe_increment(count: ArrayLike) -> jax.Array:
    r"""$t + 1$, staying at the dtype's largest value $t_{\max}$ instead of overflowing.

    $$t \leftarrow \begin{cases} t + 1 & t < t_{\max} \\ t_{\max} & \text{otherwise}\end{cases}$$

    Works for integer and floating counters, in their dtype.

    Args:
        count: the counter, an integer or floating array.

    Raises:
        TypeError: for another dtype (bool, complex).
    """
    dtype = jnp.asarray(count).dtype
    max_value: Any
    if jnp.issubdtype(dtype, jnp.integer):
        max_value = jnp.iinfo(dtype).max
    elif jnp.issubdtype(dtype, jnp.floating):
        max_value = jnp.finfo(dtype).max
    else:
        raise TypeError(
            f"safe_increment: count must have an integer or floating dtype, got {dtype}"
        )
    top = jnp.array(max_value, dtype)
    return jnp.where(count < top, count + jnp.array(1, dtype), top)


safe_int32_increment = safe_increment  # optax's older name


def zero_count() -> jax.Array:
    """The step counter every stateful transformation starts from: an int32 zero."""
    return jnp.zeros([], jnp.int32)


def evaluate(value: ScalarOrSchedule, count: jax.Array) -> ArrayLike:
    """A hyper-parameter's value at step `count`: call it if it is a schedule."""
    return value(count) if callable(value) else value


_F32 = np.dtype(np.float32)


def _dtype_of(x: Any) -> np.dtype:
    """`x`'s dtype: its own for an array or a tracer, JAX's rule for a Python number."""
    dtype = getattr(x, "dtype", None)
    return dtype if isinstance(dtype, np.dtype) else jnp.result_type(x)


def cast(x: Any, dtype: Any) -> jax.Array:
    """`jnp.asarray(x).astype(dtype)`, without the call when `x` already is a strongly typed
    array of that dtype (the usual case: the per-leaf casts of the update math cost trace time,
    nothing at run time)."""
    if isinstance(x, jax.Array) and x.dtype == dtype and not x.weak_type:
        return x
    return jnp.asarray(x).astype(dtype)


def compute_dtype(*arrays: ArrayLike) -> np.dtype:
    """The dtype update math runs in: float32, float64 if any input is 64-bit, and the
    complex dtype of that width if any input is complex.

    Explicit, so it works under strict dtype promotion, where bfloat16 and
    float32 have no implicit common type.
    """
    dtypes = [_dtype_of(x) for x in arrays]
    if all(d == _F32 for d in dtypes):  # the common case, without the lattice (trace time)
        return _F32
    wide = any(d in (jnp.float64, jnp.complex128) for d in dtypes)
    if any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes):
        return jnp.dtype(jnp.complex128 if wide else jnp.complex64)
    return jnp.dtype(jnp.float64 if wide else jnp.float32)


def common_dtype(*dtypes: Any) -> np.dtype:
    """The dtypes' common dtype on JAX's standard promotion lattice, whatever the config says.

    Reductions over a tree add the parts of leaves of different dtypes (a bfloat16 leaf's and
    a float32 leaf's); this is the explicit cast that lets them do so under strict promotion.
    """
    with jax.numpy_dtype_promotion("standard"):
        return functools.reduce(jnp.promote_types, dtypes)


def is_complex(x: Any) -> bool:
    """Whether `x` (an array or a dtype) is complex."""
    dtype = x if isinstance(x, np.dtype) else _dtype_of(x)
    return dtype.kind == "c"


def real_dtype(dtype: Any) -> np.dtype:
    """The real dtype of the same width: float32 for complex64, a real dtype unchanged.

    Second moments are real ($|g|^2$) and are stored in it.
    """
    dtype = jnp.dtype(dtype)
    return jnp.finfo(dtype).dtype if is_complex(dtype) else dtype


def abs_sq(x: jax.Array) -> jax.Array:
    r"""$|x|^2$: `x * x` for real `x`, $(x \bar x)$'s real part for complex `x` (real dtype)."""
    if is_complex(x):
        return (x * jnp.conj(x)).real
    return x * x


def as_compute(value: ArrayLike, dtype: Any) -> ArrayLike:
    """A hyper-parameter ready to meet arrays of `dtype` under strict promotion.

    Python numbers stay Python numbers (weakly typed, so `1 - decay` is taken in
    double precision and rounded once); arrays, e.g. the traced values that
    `inject_hyperparams` passes in, are cast to `dtype`.
    """
    if isinstance(value, numbers.Number):
        return value
    return jnp.asarray(value).astype(dtype)


def scale_leaf(u: ArrayLike, s: ArrayLike) -> jax.Array:
    """`u * s` computed in at least float32 and returned in `u`'s dtype.

    A bfloat16 update times a float32 factor keeps the factor's precision for
    the product; under `jit` the casts fuse into the multiply.
    """
    u = u if isinstance(u, jax.Array) else jnp.asarray(u)
    dtype = compute_dtype(u)
    if isinstance(s, (int, float)):  # a Python number is weakly typed: no cast needed
        return cast(cast(u, dtype) * s, u.dtype)
    return cast(cast(u, dtype) * cast(s, dtype), u.dtype)


def as_arrays(tree: PyTree) -> PyTree:
    """`tree` with Python-number leaves as arrays (optax's pieces accept them)."""
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree)


def prune_like(updates: PyTree, params: PyTree) -> PyTree:
    """`params` with `None` wherever `updates` has `None`, as optax's pieces read them.

    A `None` update (e.g. the gradient of an Equinox model's static leaf) passes
    through untouched and its parameter is never read, so a whole model with
    non-array leaves can be passed as `params`.
    """
    return jax.tree.map(
        lambda u, p: None if u is None else p, updates, params, is_leaf=lambda x: x is None
    )


def flatten(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> tuple[list[Any], Any]:
    """`jax.tree.flatten(tree)`, its treedef typed `Any` (jaxlib ships no stubs for it)."""
    return jax.tree.flatten(tree, is_leaf=is_leaf)


def flatten_with_path(
    tree: PyTree, is_leaf: Callable[[Any], bool] | None = None
) -> tuple[list[tuple[Any, Any]], Any]:
    """`jax.tree_util.tree_flatten_with_path(tree)`, its treedef typed `Any` (as `flatten`)."""
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)


def in_structure_of(new: PyTree, old: PyTree) -> PyTree:
    """`new`'s leaves in `old`'s tree structure.

    A piece builds its new state with its own classes; given a state of another library's
    classes with the same fields (optax's), a wrapper that selects between the new and the
    old state (`jnp.where`, `lax.cond`) needs one structure: the old one, the caller's.
    """
    new_leaves, new_def_ = jax.tree.flatten(new)
    new_def: Any = new_def_  # jaxlib ships no stubs for PyTreeDef
    old_def: Any = jax.tree.structure(old)
    if new_def == old_def:
        return new
    if new_def.num_leaves != old_def.num_leaves:
        raise ValueError(
            f"the inner transformation's new state has {new_def.num_leaves} leaves where its "
            f"state had {old_def.num_leaves}: {new_def} against {old_def}"
        )
    return jax.tree.unflatten(old_def, new_leaves)


def tree_map_multi(fn: Callable[..., tuple], num_outputs: int, tree: PyTree, *rest: PyTree):
    """Maps `fn` over leaves and returns `num_outputs` trees, one per output of `fn`.

    Lets a fused update compute the emitted update and the new moments of a
    leaf in one function, as the math reads, instead of one tree walk each.
    """
    leaves, treedef = flatten(tree)
    rest_leaves = [treedef.flatten_up_to(r) for r in rest]
    outs = [fn(*xs) for xs in zip(leaves, *rest_leaves)]
    columns = list(zip(*outs)) if outs else [()] * num_outputs
    return tuple(treedef.unflatten(list(col)) for col in columns)


def schedule_float(x: ArrayLike) -> jax.Array:
    """`x` as JAX's default float dtype (float32, or float64 under `jax_enable_x64`)."""
    return jnp.asarray(x, jnp.result_type(float))


_INT32_LIMIT = 2**31 - 1


def as_step(count: ArrayLike, *steps: Any) -> jax.Array:
    """A step count as an array, ready to meet the step numbers `steps` (Python ints).

    Counts and step numbers past int32's range (schedules over more than 2**31 steps)
    are taken as floats, so nothing overflows; otherwise the count keeps its dtype.
    """
    big = any(
        isinstance(x, numbers.Integral) and abs(int(x)) > _INT32_LIMIT for x in (count, *steps)
    )
    if big:
        return jnp.asarray(float(count) if isinstance(count, numbers.Number) else count).astype(
            jnp.result_type(float)
        )
    return jnp.asarray(count)


def epochs_since(
    count: ArrayLike, steps: int = 1, begin: int = 0, staircase: bool = False
) -> jax.Array:
    r"""$e = \max(t - B, 0) / T$ as a float, $\lfloor e \rfloor$ when `staircase`."""
    count = as_step(count, steps, begin)
    if not jnp.issubdtype(count.dtype, jnp.integer):  # float counts: float math
        e = jnp.maximum(count - float(begin), 0) / float(steps)
        return jnp.floor(e) if staircase else e
    whole, part = jnp.divmod(jnp.maximum(count, begin) - begin, steps)
    return (
        schedule_float(whole) if staircase else schedule_float(whole) + schedule_float(part) / steps
    )
