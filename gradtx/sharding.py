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

import json
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, PRNGKeyArray

from gradtx import numerics
from gradtx.checks import check_bool, check_int, check_key
from gradtx.epochs import EpochPlan, check_sizes, check_start_step, dataset_size, draw_plan_jit
from gradtx.shuffle import Permutation, check_permutation
from gradtx.typing import PyTree

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


def axis_size(fn: str, mesh: Mesh, axis: Axis) -> int:
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
                f"{tuple(mesh.axis_names)}: pass one of them (or a tuple of them) as axis"
            )
    return math.prod(mesh.shape[name] for name in names)


def constrain(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
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
    size = axis_size(fn, mesh, axis)
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
    """Places a full copy of every leaf of `tree` on every device of `mesh` (e.g. parameters).

    Args:
        tree: a pytree of arrays.
        mesh: the devices to copy it to.
    """
    axis_size("replicate", mesh, ())
    return jax.device_put(tree, NamedSharding(mesh, P()))


def state_sharding(state: PyTree, mesh: Mesh, axis: Axis = "data") -> PyTree:
    r"""A `NamedSharding` per leaf of an optimizer state that splits it $N$ ways (ZeRO-1).

    Each leaf is split over `axis` along its first dimension whose size is a multiple of the
    $N$ devices of that axis, so each device stores $1/N$ of it; leaves without such a
    dimension (step counters and other scalars, odd shapes) are replicated. Use the result as
    `out_shardings` of the jitted train step so the state stays split from step to step; `jit`
    then updates each slice on its own device and all-gathers the parameter update.

    Args:
        state: an optimizer state (or its shapes, from `jax.eval_shape`).
        mesh: the device mesh.
        axis: the mesh axis (or axes) to split over.

    Returns:
        A pytree of `NamedSharding` with the structure of `state`.
    """
    size = axis_size("state_sharding", mesh, axis)

    def leaf_sharding(leaf: Any) -> NamedSharding:
        for dim, length in enumerate(np.shape(leaf)):
            if length % size == 0:
                return NamedSharding(mesh, P(*([None] * dim), axis))
        return NamedSharding(mesh, P())

    return jax.tree.map(leaf_sharding, state)


def shard_state(state: PyTree, mesh: Mesh, axis: Axis = "data") -> PyTree:
    """Places an optimizer state on `mesh` as `state_sharding` lays it out (ZeRO-1).

    Args:
        state: an optimizer state.
        mesh: the device mesh.
        axis: the mesh axis (or axes) to split over.
    """
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
    return _process_rows(
        "process_rows", global_batch_size, mesh, axis, process_index, device_process
    )


def _process_rows(
    fn: str,
    global_batch_size: Any,
    mesh: Mesh,
    axis: Axis,
    process_index: int | None = None,
    device_process: Callable[[Any], int] | None = None,
) -> np.ndarray:
    b = check_int(fn, "global_batch_size", global_batch_size, 1)
    size = axis_size(fn, mesh, axis)
    if b % size:
        near = sorted({max(size, b - b % size), b - b % size + size})
        raise ValueError(
            f"{fn}: global batch size {b} does not divide over the {size} devices of mesh axis "
            f"{axis!r}; use a multiple of {size} (e.g. {' or '.join(map(str, near))})"
        )
    if process_index is None:
        p = jax.process_index()
    else:
        p = check_int(fn, "process_index", process_index, 0)
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
        raise ValueError(
            f"{fn}: process {p} owns no device of the mesh; build the mesh from every "
            f"process's devices, e.g. jax.make_mesh((jax.device_count(),), ('data',))"
        )
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

    The plan and `start_step` count global batches, so the data position of a run is
    `(epoch, step)` and the key, whatever the number of processes: a checkpoint written by $P$
    processes resumes with any other number and reads exactly the remaining batches.

    With several processes, the arguments are checked on every process and then compared
    across processes (one small `multihost_utils.process_allgather`, at the call): when one
    process rejects its arguments, or the processes disagree on anything that fixes the global
    batches (the number of examples, the leaves' shapes and dtypes, the batch size, the key,
    `start_step`, the mesh, the plan drawn), every process raises, naming each process's value,
    instead of the others waiting for it in the training step's first collective. So every
    process must call `process_batches` at the same point, as for any collective.

    Call `jax.distributed.initialize(...)` first on every process (see the README).

    Args:
        key: the epoch's PRNG key, the same on every process (e.g. `fold_in(key, epoch)`).
        data: a pytree of host arrays sharing a leading axis of $m$ examples: the whole
            dataset, the same on every process.
        global_batch_size: $B$, summed over all processes; a multiple of the devices on `axis`.
        mesh: the global mesh.
        axis: the mesh axis (or axes) the batch is split over.
        drop_remainder: drop a partial last batch; otherwise it needs `with_mask=True`.
        with_mask: yield `(batch, mask)` with the last batch padded to a static shape.
        start_step: the first global batch to yield (to resume mid-epoch).
        permutation: the shuffle `(key, m) -> int[m]`, the same on every process.

    Returns:
        An iterator over global batches (`jax.Array`s sharded over `axis`), or `(batch, mask)`.

    Raises:
        ValueError, TypeError: on every process, for a bad argument on any process or a
            disagreement between processes.
    """
    fn = "process_batches"
    try:
        n = dataset_size(fn, data)
        n, b = check_sizes(fn, n, global_batch_size, "global_batch_size")
        check_bool(fn, "drop_remainder", drop_remainder)
        check_bool(fn, "with_mask", with_mask)
        check_key(fn, key)
        if not with_mask and not drop_remainder and n % b:
            raise ValueError(
                f"{fn}: {n} examples do not split into global batches of {b} (the last batch "
                f"has {n % b}); pass with_mask=True (padded, static shape) or "
                f"drop_remainder=True"
            )
        rows = _process_rows(fn, b, mesh, axis)
        start, t_total = check_start_step(fn, start_step, n, b, drop_remainder)
        check_permutation(fn, permutation)
        plan = draw_plan_jit(key, n, b, drop_remainder, permutation)
        facts = _batch_facts(data, n, b, key, start, drop_remainder, with_mask, mesh, axis, plan)
    except Exception as error:
        _agree(fn, error, {})
        raise
    _agree(fn, None, facts)
    local_indices = np.asarray(plan.indices)[:, rows]
    local_mask = np.asarray(plan.mask)[:, rows]
    sharding = NamedSharding(mesh, P(axis))

    leaves, treedef = numerics.flatten(data)
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


# ----------------------------------------------------------------------------
# The same arguments on every process.

# What each process tells the others: a JSON report, zero-padded to a fixed size (one compiled
# gather for every call).
_REPORT_BYTES = 8192

# The facts every process of `process_batches` must agree on, in the order they are compared:
# what each one is, and how to make the processes agree.
_FACTS = {
    "num_examples": (
        "the number of examples in data",
        "every process passes the whole dataset, the same rows in the same order (each reads "
        "its own rows of every global batch from it), e.g. the same file on every host",
    ),
    "leaves": (
        "the leaves of data (key path, shape after the example axis, dtype)",
        "pass data with the same structure, shapes and dtypes on every process",
    ),
    "global_batch_size": (
        "global_batch_size",
        "pass the same global_batch_size on every process: it counts the rows of all "
        "processes together, not one process's share",
    ),
    "key": (
        "key",
        "pass the same key on every process, e.g. jax.random.fold_in(jax.random.key(seed), "
        "epoch); a key that depends on jax.process_index() gives each process another epoch plan",
    ),
    "start_step": (
        "start_step",
        "resume every process from the same checkpointed (epoch, step)",
    ),
    "drop_remainder": ("drop_remainder", "pass the same drop_remainder on every process"),
    "with_mask": ("with_mask", "pass the same with_mask on every process"),
    "mesh": (
        "the mesh (axis names, shape, device order)",
        "build the same global mesh on every process, e.g. "
        "jax.make_mesh((jax.device_count(),), ('data',))",
    ),
    "axis": ("axis", "pass the same axis on every process"),
    "plan": (
        "the epoch plan drawn from the same key and sizes",
        "pass the same permutation on every process",
    ),
}


def _batch_facts(
    data: PyTree,
    n: int,
    b: int,
    key: PRNGKeyArray,
    start: int,
    drop_remainder: bool,
    with_mask: bool,
    mesh: Mesh,
    axis: Axis,
    plan: EpochPlan,
) -> dict[str, Any]:
    """What fixes the global batches of `process_batches`, as JSON values (`_FACTS`)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key_words = np.asarray(jax.random.key_data(key)).ravel().tolist()
    else:
        key_words = np.asarray(key).ravel().tolist()
    leaves = [
        [jax.tree_util.keystr(path), list(np.shape(leaf)[1:]), str(np.result_type(leaf))]
        for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]
    ]
    device_ids = np.asarray([d.id for d in mesh.devices.flat], np.int64)
    plan_bytes = np.asarray(plan.indices).tobytes() + np.asarray(plan.mask).tobytes()
    return {
        "num_examples": n,
        "leaves": leaves,
        "global_batch_size": b,
        "key": key_words,
        "start_step": start,
        "drop_remainder": drop_remainder,
        "with_mask": with_mask,
        "mesh": [
            list(mesh.axis_names),
            list(mesh.devices.shape),
            f"device ids crc32 {zlib.crc32(device_ids.tobytes()):08x}",
        ],
        "axis": list(_axis_names(axis)),
        "plan": f"crc32 {zlib.crc32(plan_bytes):08x}",
    }


def _encode_report(error: BaseException | None, facts: dict[str, Any]) -> np.ndarray:
    report: dict[str, Any] = {
        "error": None if error is None else [type(error).__name__, str(error)],
        "facts": facts,
    }
    text = json.dumps(report).encode()
    if len(text) > _REPORT_BYTES and "leaves" in facts:  # many leaves: compare a checksum
        leaves = json.dumps(facts["leaves"]).encode()
        report["facts"] = {**facts, "leaves": f"crc32 {zlib.crc32(leaves):08x}"}
        text = json.dumps(report).encode()
    while len(text) > _REPORT_BYTES and report["error"]:  # a long message: keep its start
        kind, message = report["error"]
        report["error"] = [kind, message[: len(message) // 2] + " ..."]
        text = json.dumps(report).encode()
    buffer = np.zeros((_REPORT_BYTES,), np.uint8)
    buffer[: len(text)] = np.frombuffer(text, np.uint8)
    return buffer


def _decode_report(buffer: np.ndarray) -> dict[str, Any]:
    return json.loads(bytes(np.asarray(buffer, np.uint8)).rstrip(b"\0").decode())


def _by_value(values: Sequence[Any]) -> str:
    """`88 on processes 0, 2; 80 on process 1`: each distinct value and who has it."""
    groups: dict[str, list[int]] = {}
    for p, value in enumerate(values):
        groups.setdefault(json.dumps(value), []).append(p)
    return "; ".join(
        f"{value} on process{'es' if len(ps) > 1 else ''} {', '.join(map(str, ps))}"
        for value, ps in groups.items()
    )


def _disagreement(fn: str, reports: Sequence[dict[str, Any]]) -> str | None:
    """Why the processes cannot go on together, from every process's report; None if they can.

    A process that rejected its arguments comes first (its error is quoted); otherwise the first
    fact of `_FACTS` on which the processes differ, with every value and the fix.
    """
    count = len(reports)
    failed = [(p, r["error"]) for p, r in enumerate(reports) if r["error"] is not None]
    if failed:
        quoted = "; ".join(f"process {p}: {kind}: {message}" for p, (kind, message) in failed)
        return (
            f"{fn}: {len(failed)} of {count} processes rejected their arguments, so every "
            f"process stops here rather than wait for them in a collective. {quoted}"
        )
    for name, (what, fix) in _FACTS.items():
        values = [r["facts"].get(name) for r in reports]
        if any(v != values[0] for v in values[1:]):
            return f"{fn}: the {count} processes disagree on {what}: {_by_value(values)}; {fix}"
    return None


def _agree(fn: str, error: BaseException | None, facts: dict[str, Any]) -> None:
    """Makes the processes fail together: when any process failed its checks (`error`) or they
    disagree on `facts`, every one of them raises.

    A check that fails on one process only (its own data or arguments) would leave the others
    waiting for it in the next collective until the distributed runtime gives up. So every
    process sends the others its error, if any, and its facts (one `process_allgather` of a
    fixed-size report). A process that failed returns, to re-raise its own error; the others
    raise a `ValueError` that says which process failed and why, or which facts differ. Nothing
    is sent in a single process.
    """
    if jax.process_count() == 1:
        return
    gathered = multihost_utils.process_allgather(_encode_report(error, facts))
    message = _disagreement(fn, [_decode_report(row) for row in gathered])
    if error is None and message is not None:
        raise ValueError(message)
