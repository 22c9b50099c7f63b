r"""Data parallelism on a `jax.sharding.Mesh`: batches split over devices, ZeRO-1 state, hosts.

A data-parallel step needs no special code: put the parameters on every device (`replicate`),
split each batch over the data axis (`shard`), and `jax.jit` inserts the all-reduce of the
gradient::

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    params, opt_state = replicate((params, opt_state), mesh)
    for batch in batches(jax.random.fold_in(key, epoch), data, batch_size=128):
        params, opt_state, loss = train_step(params, opt_state, shard(batch, mesh))

* `state_sharding` / `shard_state` split the optimizer state $N$ ways instead (ZeRO-1): each
  device stores and updates $1/N$ of it.
* `process_rows` / `process_batches` feed several processes (hosts) with JAX's own distributed
  runtime (`jax.distributed`, `jax.make_array_from_process_local_data`): every process draws
  the same global epoch plan and reads only its own rows of every batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, PRNGKeyArray

from gradtx.base import PyTree
from gradtx.data import (
    Permutation,
    _as_int,
    _check_bool,
    _check_key,
    _check_sizes,
    _dataset_size,
    _plan_jit,
)
from gradtx.shuffle import _check_permutation

__all__ = [
    "process_batches",
    "process_rows",
    "replicate",
    "shard",
    "shard_state",
    "state_sharding",
]

Axis = str | Sequence[str]


# ----------------------------------------------------------------------------
# Sharding over devices.


def _axis_names(axis: Axis) -> tuple[str, ...]:
    return (axis,) if isinstance(axis, str) else tuple(axis)


def _axis_size(fn: str, mesh: Mesh, axis: Axis) -> int:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{fn}: mesh must be a jax.sharding.Mesh, e.g. "
            f"jax.make_mesh((jax.device_count(),), ('data',)), got {type(mesh).__name__}"
        )
    names = _axis_names(axis)
    for name in names:
        if name not in mesh.shape:
            raise ValueError(
                f"{fn}: axis {name!r} is not an axis of the mesh; its axes are "
                f"{tuple(mesh.axis_names)}"
            )
    return math.prod(mesh.shape[name] for name in names)


def _constrain(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
    """Lays `tree` out as `sharding` inside a traced function (explicit or auto mesh axes)."""
    if sharding is None:
        return tree
    mesh = sharding.mesh
    names = [a for part in sharding.spec if part is not None for a in _axis_names(part)]
    types_ = dict(zip(mesh.axis_names, mesh.axis_types))
    if any(types_[a] == jax.sharding.AxisType.Explicit for a in names):
        return jax.sharding.reshard(tree, sharding)
    return lax.with_sharding_constraint(tree, sharding)


def shard(batch: PyTree, mesh: Mesh, axis: Axis = "data") -> PyTree:
    r"""Places `batch` on `mesh` with its leading axis split over `axis`.

    Each leaf gets `NamedSharding(mesh, PartitionSpec(axis))`: with $N$ devices along `axis`,
    device $k$ holds rows $[kB/N, (k+1)B/N)$. Replicated parameters and a sharded batch are all
    `jax.jit` needs for data parallelism: it inserts the all-reduce of the gradient.

    Args:
        batch: a pytree of arrays with a leading batch axis (a mask included).
        mesh: the device mesh, e.g. `jax.make_mesh((jax.device_count(),), ("data",))`.
        axis: the mesh axis name, or a tuple of names, to split over.

    Raises:
        ValueError: when a leaf's leading size is not a multiple of the number of devices
            along `axis` (the leaf, its size and the device count are named), or `axis` is not
            a mesh axis.
    """
    fn = "shard"
    size = _axis_size(fn, mesh, axis)
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        shape = np.shape(leaf)
        where = f"batch{jax.tree_util.keystr(path)}"
        if len(shape) == 0:
            raise ValueError(f"{fn}: {where} is a scalar; it has no batch axis to split")
        if shape[0] % size:
            raise ValueError(
                f"{fn}: batch size {shape[0]} of {where} does not divide over the {size} "
                f"devices of mesh axis {axis!r}; use a batch size that is a multiple of {size}"
            )
    return jax.device_put(batch, NamedSharding(mesh, P(axis)))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places a full copy of every leaf of `tree` on every device of `mesh` (e.g. parameters)."""
    _axis_size("replicate", mesh, ())
    return jax.device_put(tree, NamedSharding(mesh, P()))


def state_sharding(state: PyTree, mesh: Mesh, axis: Axis = "data") -> PyTree:
    r"""A `NamedSharding` per leaf of an optimizer state that splits it $N$ ways (ZeRO-1).

    Each leaf is split over `axis` along its first dimension whose size is a multiple of the
    $N$ devices of that axis, so each device stores $1/N$ of it; leaves without such a
    dimension (step counters and other scalars, odd shapes) are replicated. Use the result as
    `out_shardings` of the jitted train step so the state stays split from step to step; `jit`
    then updates each slice on its own device and all-gathers the parameter update.

    Returns:
        A pytree of `NamedSharding` with the structure of `state`.
    """
    size = _axis_size("state_sharding", mesh, axis)

    def leaf_sharding(leaf: Any) -> NamedSharding:
        for dim, length in enumerate(np.shape(leaf)):
            if length % size == 0:
                return NamedSharding(mesh, P(*([None] * dim), axis))
        return NamedSharding(mesh, P())

    return jax.tree.map(leaf_sharding, state)


def shard_state(state: PyTree, mesh: Mesh, axis: Axis = "data") -> PyTree:
    """Places an optimizer state on `mesh` as `state_sharding` lays it out (ZeRO-1)."""
    return jax.device_put(state, state_sharding(state, mesh, axis))


# ----------------------------------------------------------------------------
# Several processes (multi-host).


def process_rows(
    global_batch_size: int,
    mesh: Mesh,
    axis: Axis = "data",
    *,
    process_index: int | None = None,
    device_process: Callable[[Any], int] | None = None,
) -> np.ndarray:
    r"""The rows of every global batch that one process loads.

    A global batch of $B$ rows is split over the $N$ devices of `axis`; a process loads the rows
    of the devices it owns, in the order `jax.make_array_from_process_local_data` expects
    (ascending). With $P$ processes of $N/P$ devices each, laid out in order along the axis
    (`jax.make_mesh` on a GPU or CPU cluster), process $p$ loads rows $[pB/P, (p+1)B/P)$.

    Args:
        global_batch_size: $B$, a multiple of $N$.
        mesh: the global mesh (every process builds the same one).
        axis: the mesh axis the batch is split over.
        process_index: the process to plan for; defaults to `jax.process_index()`.
        device_process: maps a device to its process; defaults to `device.process_index`.
            Pass another mapping to plan for a simulated cluster.

    Returns:
        A sorted int array of $B/P$ row positions within the global batch.
    """
    fn = "process_rows"
    b = _as_int(fn, "global_batch_size", global_batch_size, 1)
    size = _axis_size(fn, mesh, axis)
    if b % size:
        raise ValueError(
            f"{fn}: global batch size {b} does not divide over the {size} devices of mesh axis "
            f"{axis!r}; use a multiple of {size}"
        )
    if process_index is None:
        p = jax.process_index()
    else:
        p = _as_int(fn, "process_index", process_index, 0)
    owner = device_process or (lambda device: device.process_index)
    index_map = NamedSharding(mesh, P(axis)).devices_indices_map((b,))
    spans = sorted(
        {
            (index[0].start or 0, b if index[0].stop is None else index[0].stop)
            for device, index in index_map.items()
            if owner(device) == p
        }
    )
    if not spans:
        raise ValueError(f"{fn}: process {p} owns no device of the mesh")
    return np.concatenate([np.arange(lo, hi) for lo, hi in spans])


def process_batches(
    key: PRNGKeyArray,
    data: PyTree,
    global_batch_size: int,
    mesh: Mesh,
    axis: Axis = "data",
    *,
    drop_remainder: bool = False,
    with_mask: bool = False,
    start_step: int = 0,
    permutation: Permutation = jax.random.permutation,
) -> Iterator[PyTree] | Iterator[tuple[PyTree, Bool[Array, " batch"]]]:
    r"""`batches` for several processes: each one reads only its own rows of every batch.

    Every process runs the same loop with the same `key`, so all draw the same plan
    (`epoch_indices`). Process $p$ reads the examples `indices[t, process_rows(...)]` from its
    own copy of the dataset (numpy arrays, `np.memmap`, anything indexable by an int array)
    and the global batch is assembled with `jax.make_array_from_process_local_data`, split over
    `axis` of `mesh`. In a single process this is `shard(next(batches(...)), mesh)`.

    Call `jax.distributed.initialize(...)` first on every process (see the README).

    Args:
        key, drop_remainder, with_mask, start_step, permutation: as in `batches`; a partial
            last batch needs `with_mask=True` (padded, static shape) or
            `drop_remainder=True`.
        data: a pytree of host arrays sharing a leading axis of $m$ examples.
        global_batch_size: $B$, summed over all processes; a multiple of the devices on `axis`.
        mesh: the global mesh.
        axis: the mesh axis (or axes) the batch is split over.

    Returns:
        An iterator over global batches (`jax.Array`s sharded over `axis`), or `(batch, mask)`.
    """
    fn = "process_batches"
    n = _dataset_size(fn, data)
    n, b = _check_sizes(fn, n, global_batch_size)
    _check_bool(fn, "drop_remainder", drop_remainder)
    _check_bool(fn, "with_mask", with_mask)
    _check_key(fn, key)
    if not with_mask and not drop_remainder and n % b:
        raise ValueError(
            f"{fn}: {n} examples do not split into global batches of {b} (the last batch has "
            f"{n % b}); pass with_mask=True (padded, static shape) or drop_remainder=True"
        )
    rows = process_rows(b, mesh, axis)
    t_total = n // b if drop_remainder else -(-n // b)
    start = _as_int(fn, "start_step", start_step, 0)
    if start > t_total:
        raise ValueError(
            f"{fn}: start_step must be in [0, {t_total}] (the epoch has {t_total} batches), "
            f"got {start}"
        )
    _check_permutation(fn, permutation)
    plan = _plan_jit(key, n, b, drop_remainder, permutation)
    local_indices = np.asarray(plan.indices)[:, rows]
    local_mask = np.asarray(plan.mask)[:, rows]
    sharding = NamedSharding(mesh, P(axis))

    leaves, treedef = jax.tree.flatten(data)
    shapes = [(b, *np.shape(leaf)[1:]) for leaf in leaves]

    def generate() -> Iterator[Any]:
        for t in range(start, t_total):
            rows_t = local_indices[t]
            batch = treedef.unflatten(
                [
                    jax.make_array_from_process_local_data(
                        sharding, np.asarray(leaf[rows_t]), shape
                    )
                    for leaf, shape in zip(leaves, shapes)
                ]
            )
            if with_mask:
                mask = jax.make_array_from_process_local_data(sharding, local_mask[t], (b,))
                yield batch, mask
            else:
                yield batch

    return generate()
