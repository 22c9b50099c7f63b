"""The numerics every piece shares: step counters, the dtype update math runs in, scaling.

Update math runs in float32 or wider whatever the storage dtype (`compute_dtype`), and every
cast is explicit, so each piece works under `jax_numpy_dtype_promotion="strict"`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gradtx.typing import PyTree, ScalarOrSchedule


def safe_increment(count: jax.Array) -> jax.Array:
    """`count + 1`, saturating at the dtype's maximum instead of wrapping around."""
    max_value = jnp.iinfo(count.dtype).max
    return jnp.where(count < max_value, count + 1, max_value).astype(count.dtype)


def zero_count() -> jax.Array:
    """The step counter every stateful transformation starts from: an int32 zero."""
    return jnp.zeros([], jnp.int32)


def evaluate(value: ScalarOrSchedule, count: jax.Array) -> ArrayLike:
    """A hyper-parameter's value at step `count`: call it if it is a schedule."""
    return value(count) if callable(value) else value


def compute_dtype(*arrays: ArrayLike) -> np.dtype:
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


def scale_leaf(u: ArrayLike, s: ArrayLike) -> jax.Array:
    """`u * s` computed in at least float32 and returned in `u`'s dtype.

    A bfloat16 update times a float32 factor keeps the factor's precision for
    the product; under `jit` the casts fuse into the multiply.
    """
    u = jnp.asarray(u)
    dtype = compute_dtype(u)
    return (u.astype(dtype) * jnp.asarray(s).astype(dtype)).astype(u.dtype)


def flatten(tree: PyTree) -> tuple[list[Any], Any]:
    """`jax.tree.flatten(tree)`, its treedef typed `Any` (jaxlib ships no stubs for it)."""
    return jax.tree.flatten(tree)


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


def epochs_since(
    count: ArrayLike, steps: int = 1, begin: int = 0, staircase: bool = False
) -> jax.Array:
    r"""$e = \max(t - B, 0) / T$ as a float, $\lfloor e \rfloor$ when `staircase`."""
    whole, part = jnp.divmod(jnp.maximum(jnp.asarray(count), begin) - begin, steps)
    return (
        schedule_float(whole) if staircase else schedule_float(whole) + schedule_float(part) / steps
    )
