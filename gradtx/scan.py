r"""A whole epoch on the device: `scan_epoch` runs the $T$ steps of an epoch as one `lax.scan`.

The epoch's plan (`gradtx.data.epoch_indices`) is drawn inside the compiled function and every
batch is gathered from the device-resident dataset inside the scan body, so an epoch costs one
dispatch instead of $T$; with a mesh, each batch is split over its data axis and the scan runs
data-parallel. The compiled epoch is cached per step function and options, so later epochs
reuse it.
"""

from __future__ import annotations

import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PRNGKeyArray

from gradtx.checks import check_bool, check_key
from gradtx.epochs import EpochPlan, check_sizes, dataset_size, draw_plan, take
from gradtx.sharding import Axis, axis_size, constrain
from gradtx.shuffle import Permutation, check_permutation
from gradtx.typing import PyTree

__all__ = ["scan_epoch"]

StepFn = Callable[..., tuple[PyTree, PyTree]]

# Compiled epochs, per step function and static options, so that a second epoch reuses the
# compiled scan. Plain functions are held weakly (the entry goes with the function); bound
# methods and other callables that cannot be weakly referenced go to a small LRU instead.
_EPOCHS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Callable[..., Any]]] = (
    weakref.WeakKeyDictionary()
)
_EPOCHS_STRONG: OrderedDict[Any, dict[tuple[Any, ...], Callable[..., Any]]] = OrderedDict()
_EPOCHS_STRONG_SIZE = 32


def _use_mesh(mesh: Mesh) -> Any:
    """`jax.set_mesh(mesh)`, a context manager from jax 0.7.1; `jax.sharding.use_mesh` in 0.7.0."""
    set_mesh = getattr(jax, "set_mesh", None)
    if set_mesh is not None:
        return set_mesh(mesh)
    return jax.sharding.use_mesh(mesh)  # type: ignore[attr-defined]  # jax 0.7.0 only


def _epoch_cache(step_fn: StepFn) -> dict[tuple[Any, ...], Callable[..., Any]]:
    if not isinstance(step_fn, types.MethodType):
        try:
            return _EPOCHS.setdefault(step_fn, {})
        except TypeError:  # not weakly referenceable
            pass
    entry = _EPOCHS_STRONG.pop(step_fn, None) or {}
    _EPOCHS_STRONG[step_fn] = entry
    while len(_EPOCHS_STRONG) > _EPOCHS_STRONG_SIZE:
        _EPOCHS_STRONG.popitem(last=False)
    return entry


def _build_epoch(
    step_ref: Callable[[], StepFn | None],
    batch_size: int,
    drop_remainder: bool,
    with_mask: bool,
    permutation: Permutation,
    sharding: NamedSharding | None,
    donate: bool,
    unroll: int | bool,
) -> Callable[..., Any]:
    def epoch(carry: PyTree, data: PyTree, key: PRNGKeyArray) -> tuple[PyTree, PyTree]:
        step_fn = step_ref()
        assert step_fn is not None, "scan_epoch: the step function was garbage collected"
        n = jax.tree.leaves(data)[0].shape[0]
        plan = draw_plan(key, n, batch_size, drop_remainder, permutation)

        def body(c: PyTree, xs: EpochPlan) -> tuple[PyTree, PyTree]:
            batch = constrain(take(data, xs.indices), sharding)
            if with_mask:
                return step_fn(c, batch, constrain(xs.mask, sharding))
            return step_fn(c, batch)

        return lax.scan(body, carry, plan, unroll=unroll)

    return jax.jit(epoch, donate_argnums=(0,) if donate else ())


def scan_epoch(
    step_fn: StepFn,
    carry: PyTree,
    data: PyTree,
    key: PRNGKeyArray,
    batch_size: int,
    *,
    drop_remainder: bool = False,
    with_mask: bool = True,
    permutation: Permutation = jax.random.permutation,
    mesh: Mesh | None = None,
    axis: Axis = "data",
    donate: bool = True,
    unroll: int | bool = 1,
) -> tuple[PyTree, PyTree]:
    r"""Runs one epoch as a single compiled `lax.scan` on the device.

    Equivalent to (but with one dispatch instead of $T$)::

        outputs = []
        for batch, mask in batches(key, data, batch_size, with_mask=True):
            carry, out = step_fn(carry, batch, mask)
            outputs.append(out)
        return carry, stack(outputs)

    The plan (`epoch_indices`) is drawn inside the compiled function and every batch is gathered
    from `data` on the device inside the scan body. The function is `jit`-compiled once per
    step function, options and argument shapes, and cached: later epochs reuse it.

    Args:
        step_fn: `step_fn(carry, batch, mask) -> (carry, output)` with `with_mask=True` (the
            default), else `step_fn(carry, batch) -> (carry, output)`. `batch` is a pytree like
            `data` with $B$ rows per leaf; `mask` is `bool[B]`, `False` on the padding of a
            partial last batch: weight the loss with it (`masked_mean`). `carry` is typically
            `(params, opt_state)`, `output` the batch loss $J^{\{t\}}$ (any pytree of arrays).
        carry: the initial carry. Donated by default: its buffers are reused for the result, so
            do not use the arrays passed in afterwards.
        data: a pytree of arrays sharing a leading axis of $m$ examples; put it on the device
            once (and on `mesh`, or leave it uncommitted, when `mesh` is given).
        key: the epoch's key, usually `jax.random.fold_in(key, epoch)`.
        batch_size: $1 \leq B \leq m$.
        drop_remainder: drop a partial last batch instead of padding and masking it.
        with_mask: pass the mask to `step_fn`. Without it, every batch must be full
            ($B \mid m$ or `drop_remainder=True`): padding rows would otherwise count twice.
        permutation: the shuffle, as in `epoch_indices`. The default, `jax.random.permutation`,
            sorts: on a CPU that costs more than a whole epoch of a small model's steps, and
            `feistel_permutation` is ~10 times cheaper.
        mesh: when given, each batch (and mask) is split over `axis` of this mesh, so the scan
            runs data-parallel; $B$ must be a multiple of the axis size.
        axis: the mesh axis (or axes) the batch is split over.
        donate: donate `carry` to the compiled epoch.
        unroll: passed to `lax.scan`.

    Returns:
        `(carry, outputs)`: the carry after $T$ steps, and the outputs stacked along a leading
        axis of size $T$ (e.g. the noisy per-batch cost curve $J^{\{1\}}, \dots, J^{\{T\}}$).

    Raises:
        ValueError: for mismatched or empty `data`, bad sizes, or `with_mask=False` with a
            partial last batch.
    """
    fn = "scan_epoch"
    if not callable(step_fn):
        raise TypeError(f"{fn}: step_fn must be callable, got {type(step_fn).__name__}")
    n = dataset_size(fn, data)
    n, b = check_sizes(fn, n, batch_size)
    for name, value in (("drop_remainder", drop_remainder), ("with_mask", with_mask)):
        check_bool(fn, name, value)
    check_bool(fn, "donate", donate)
    check_key(fn, key)
    check_permutation(fn, permutation)
    if not with_mask and not drop_remainder and n % b:
        raise ValueError(
            f"{fn}: {n} examples do not split into batches of {b} (the last batch has "
            f"{n % b}); pass with_mask=True and weight the loss with the mask, or "
            f"drop_remainder=True to leave {n % b} examples out"
        )
    sharding = None
    if mesh is not None:
        size = axis_size(fn, mesh, axis)
        if b % size:
            raise ValueError(
                f"{fn}: batch_size {b} does not divide over the {size} devices of mesh axis "
                f"{axis!r}; use a multiple of {size}"
            )
        sharding = NamedSharding(mesh, P(axis))
    options = (b, drop_remainder, with_mask, permutation, sharding, donate, unroll)
    cache = _epoch_cache(step_fn)
    compiled = cache.get(options)
    if compiled is None:
        step_ref: Callable[[], StepFn | None]
        if isinstance(step_fn, types.MethodType):
            step_ref = lambda: step_fn  # held by the bounded LRU
        else:
            try:
                step_ref = weakref.ref(step_fn)
            except TypeError:
                step_ref = lambda: step_fn
        compiled = cache[options] = _build_epoch(step_ref, *options)
    if mesh is not None:
        with _use_mesh(mesh):
            return compiled(carry, data, key)
    return compiled(carry, data, key)
