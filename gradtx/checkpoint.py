r"""The optimiser state as data: what it holds and costs, and getting it back from a checkpoint.

A gradtx state is a pytree of arrays (NamedTuples, tuples, dicts), so Orbax and
`flax.serialization` save it as they save parameters. Restoring is where runs
go silently wrong: Flax's `from_bytes` accepts arrays of the wrong shape, and a
raw restore comes back as dicts and lists. `restore_state` checks what was read
against the optimiser's own state and rebuilds that structure:

```python
template = opt.init(params)                      # or jax.eval_shape(opt.init, params)
with orbax.checkpoint.StandardCheckpointer() as ckptr:
    ckptr.save(path, state)
    state = restore_state(template, ckptr.restore(path))
```

`state_summary(state, params)` lists the state's leaves with their shapes, dtypes
and bytes, and what the optimiser costs per parameter (Adam in float32: 8 bytes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx.base import OptState, Params, PyTree

_tu = jax.tree_util


def _key_name(key: Any) -> str:
    """One step of a key path as plain text, the same for a NamedTuple field and a dict key."""
    if isinstance(key, _tu.GetAttrKey):
        return key.name
    if isinstance(key, _tu.DictKey):
        return str(key.key)
    if isinstance(key, _tu.SequenceKey):
        return str(key.idx)
    if isinstance(key, _tu.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _normalised(path: tuple) -> tuple[str, ...]:
    return tuple(_key_name(k) for k in path)


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
    shape = tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))
    dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x)
    return shape, dtype


def restore_state(template: OptState, restored: PyTree) -> OptState:
    """`restored` checked against `template` and rebuilt with `template`'s structure.

    `template` is the optimiser's own state for the same params: `opt.init(params)`,
    or `jax.eval_shape(opt.init, params)` to allocate nothing. `restored` is what
    a checkpoint gave back: the same structure (Orbax or Flax restoring into a
    target), or plain nested dicts and lists (`orbax.checkpoint`'s
    `StandardCheckpointer().restore(path)` without a target,
    `flax.serialization.msgpack_restore`, `to_state_dict`), matched by key path
    (a NamedTuple field or a tuple index is matched by its name or position).

    Every leaf must be present, with the template's shape and dtype, and nothing
    else may be there: no leaf is cast, padded or dropped. One deliberate difference
    from optax's layouts is bridged: optax stores the second moment of a complex
    parameter as a complex array (zero imaginary part), gradtx as a real one; such a
    leaf is restored as its real part, and refused if its imaginary part is not zero.
    Arrays read back as NumPy become JAX arrays; JAX arrays (e.g. sharded by Orbax) are
    kept.

    Args:
        template: the state the optimiser expects.
        restored: the state read from a checkpoint.

    Returns:
        The restored state, with `template`'s tree structure.

    Raises:
        ValueError: naming the first key path that is missing, extra, or of the
            wrong shape or dtype, e.g. `restore_state: state[0].mu['w'] has shape
            (3,) in the restored state, (4,) in the optimiser's state`.
    """
    fn = "restore_state"
    t_leaves, treedef_ = _tu.tree_flatten_with_path(template)
    treedef: Any = treedef_  # jaxlib ships no stubs for PyTreeDef
    available: dict[tuple[str, ...], tuple[Any, Any]] = {}
    for path, leaf in _tu.tree_flatten_with_path(restored)[0]:
        available.setdefault(_normalised(path), (path, leaf))
    out = []
    for path, t in t_leaves:
        key, where = _normalised(path), "state" + _tu.keystr(path)
        if key not in available:
            raise ValueError(_missing_message(fn, where, key, available))
        _, r = available.pop(key)
        (t_shape, t_dtype), (r_shape, r_dtype) = _shape_dtype(t), _shape_dtype(r)
        if r_shape != t_shape:
            raise ValueError(
                f"{fn}: {where} has shape {r_shape} in the restored state, {t_shape} in the "
                "optimiser's state; were the params different?"
            )
        if r_dtype != t_dtype and _is_real_part(r_dtype, t_dtype):
            r = _real_moment(fn, where, r, t_dtype)
            r_dtype = t_dtype
        if r_dtype != t_dtype:
            raise ValueError(
                f"{fn}: {where} has dtype {r_dtype.name} in the restored state, "
                f"{t_dtype.name} in the optimiser's state (e.g. a different mu_dtype)"
            )
        out.append(r if isinstance(r, jax.Array) else jnp.asarray(r))
    if available:
        path, _ = next(iter(available.values()))
        raise ValueError(
            f"{fn}: the restored state has restored{_tu.keystr(path)}, which the optimiser's "
            "state lacks; was it saved from a different optimiser?"
        )
    return treedef.unflatten(out)


def _is_real_part(restored: np.dtype, template: np.dtype) -> bool:
    """A complex leaf restored where gradtx keeps its real counterpart (complex64 -> float32)."""
    return np.issubdtype(restored, np.complexfloating) and np.finfo(restored).dtype == template


def _real_moment(fn: str, where: str, leaf: Any, dtype: np.dtype) -> Any:
    """optax keeps the second moment of a complex parameter as a complex array with zero
    imaginary part; gradtx keeps it real ($|g|^2$). Restored: its real part, checked."""
    imag = np.asarray(jnp.imag(leaf))
    if np.any(imag != 0):
        raise ValueError(
            f"{fn}: {where} is {np.dtype(leaf.dtype).name} with a non-zero imaginary part in "
            f"the restored state; gradtx keeps this moment real ({dtype.name}: the mean of "
            "|g|^2 of a complex parameter), so the checkpoint is not a second moment"
        )
    return jnp.real(jnp.asarray(leaf)).astype(dtype)


def _missing_message(fn: str, where: str, key: tuple[str, ...], available: dict) -> str:
    """Says which leaf is missing and what the restored state holds at the nearest place."""

    def shared(other: tuple[str, ...]) -> int:
        n = 0
        while n < min(len(key), len(other)) and key[n] == other[n]:
            n += 1
        return n

    message = f"{fn}: the optimiser's state has {where}, the restored state does not"
    if available:
        depth = max(shared(k) for k in available)
        near = ["restored" + _tu.keystr(p) for k, (p, _) in available.items() if shared(k) == depth]
        shown = ", ".join(near[:3]) + (", ..." if len(near) > 3 else "")
        message += f" (it has {shown} there)"
    return message + "; was it saved from a different optimiser or params tree?"


# ----------------------------------------------------------------------------
# What the state holds and costs.


@dataclasses.dataclass(frozen=True)
class LeafSummary:
    """One leaf of a state: its key path, shape, dtype and size in bytes."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int


@dataclasses.dataclass(frozen=True)
class StateSummary:
    """The leaves of an optimiser state, their total size, and the params' size for scale.

    Prints as a table. Sizes are those of the whole (global) arrays.
    """

    leaves: tuple[LeafSummary, ...]
    total_bytes: int
    param_count: int | None = None
    param_bytes: int | None = None

    @property
    def bytes_per_param(self) -> float | None:
        """State bytes per parameter value (Adam with float32 moments: about 8)."""
        return self.total_bytes / self.param_count if self.param_count else None

    @property
    def relative_to_params(self) -> float | None:
        """State bytes over param bytes (Adam: about 2, the params' memory twice over)."""
        return self.total_bytes / self.param_bytes if self.param_bytes else None

    def __str__(self) -> str:
        rows = [("path", "shape", "dtype", "bytes")]
        rows += [(x.path or "(root)", str(x.shape), x.dtype, f"{x.bytes:,}") for x in self.leaves]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [
            f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}"
            for r in rows
        ]
        total = f"{len(self.leaves)} leaves, {self.total_bytes:,} bytes"
        if self.param_count is not None:
            total += (
                f"; params: {self.param_count:,} values, {self.param_bytes:,} bytes"
                f" -> {self.bytes_per_param:.2f} bytes per parameter,"
                f" {self.relative_to_params:.2f}x the params"
                if self.param_count
                else "; params: none"
            )
        return "\n".join([*lines, total])


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def state_summary(state: OptState, params: Params | None = None) -> StateSummary:
    """Lists the leaves of `state` with key path, shape, dtype and bytes, and their total.

    Works on real arrays and on `jax.eval_shape(opt.init, params)`, so an
    optimiser's memory can be sized before anything is allocated. With `params`,
    also reports the bytes per parameter and the ratio to the params' own bytes
    (the optimiser's memory cost).

    Args:
        state: an optimiser state (or its shapes).
        params: the params (or their shapes) the state is for.

    Returns:
        A `StateSummary`; `print` it for a table.
    """
    leaves = []
    for path, leaf in _tu.tree_flatten_with_path(state)[0]:
        shape, dtype = _shape_dtype(leaf)
        leaves.append(LeafSummary(_tu.keystr(path), shape, dtype.name, _nbytes(shape, dtype)))
    total = sum(x.bytes for x in leaves)
    if params is None:
        return StateSummary(tuple(leaves), total)
    shapes = [_shape_dtype(p) for p in jax.tree.leaves(params)]
    count = sum(int(np.prod(s, dtype=np.int64)) for s, _ in shapes)
    return StateSummary(tuple(leaves), total, count, sum(_nbytes(s, d) for s, d in shapes))
