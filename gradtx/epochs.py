r"""Mini-batches drawn with `jax.random`: epoch plans and batches.

IDEAS §1 as code. One **epoch** is one pass over the $m$ examples of a dataset, split into
$T = \lceil m / B \rceil$ mini-batches $X^{\{1\}}, \dots, X^{\{T\}}$ of size $B$; each training
step sees one of them and reports its own, noisy, cost $J^{\{t\}}$.

* The order is a permutation $\pi_e$ of $\{0, \dots, m-1\}$ drawn with
  `jax.random.permutation(jax.random.fold_in(key, e), m)` (or another shuffle, see
  `gradtx.shuffle`): the same key gives the same batches, and a run resumed at (epoch $e$, step
  $t$) sees exactly the batches an uninterrupted run would have seen.
* Batch $t$ holds the examples $\pi_e(tB), \dots, \pi_e(tB + B - 1)$. When $B \nmid m$ the last
  batch is partial: it is either padded to $B$ rows with a boolean mask marking the $m \bmod B$
  real ones (so shapes stay static for `jit` and `lax.scan`), or dropped when asked
  (`drop_remainder=True`; `num_dropped` and `dropped_indices` then say which ones). An example is
  never lost silently.
* Data is any pytree of arrays sharing a leading example axis, e.g. `{"x": X, "y": Y}`. Batches
  are gathered on the device from the device-resident dataset (no host copy per batch).

The pieces: `epoch_indices` (the plan), `batches` (a Python iterator), `masked_mean` (the loss
of a padded batch) and the sizes (`num_batches`, `num_dropped`, `dropped_indices`). The whole
mini-batch API is `gradtx.data`, which re-exports these with the shuffles (`gradtx.shuffle`),
on-device epochs (`gradtx.scan`) and sharding (`gradtx.sharding`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from gradtx.checks import check_bool, check_int, check_key
from gradtx.shuffle import Permutation, check_permutation, permute, permute_jit
from gradtx.typing import PyTree

__all__ = [
    "EpochPlan",
    "batches",
    "dropped_indices",
    "epoch_indices",
    "masked_mean",
    "num_batches",
    "num_dropped",
    "num_examples",
]


class EpochPlan(NamedTuple):
    """The batches of one epoch, as example indices.

    Attributes:
        indices: `[num_batches, batch_size]` int32; row $t$ lists the examples of batch $t$.
            Padding slots of a partial last batch repeat real indices (so a gather never reads
            out of bounds); the mask tells them apart.
        mask: `[num_batches, batch_size]` bool; `True` for real examples, `False` for padding.
            All `True` unless the last batch is partial and kept.
    """

    indices: Int[Array, "num_batches batch_size"]
    mask: Bool[Array, "num_batches batch_size"]


# ----------------------------------------------------------------------------
# Checks.


def check_sizes(
    fn: str, num_examples: Any, batch_size: Any, name: str = "batch_size"
) -> tuple[int, int]:
    """`(num_examples, batch_size)` as ints, `1 <= batch_size <= num_examples`; `name` is how
    `fn` calls its batch size."""
    n = check_int(fn, "num_examples", num_examples, 1)
    b = check_int(fn, name, batch_size, 1)
    if b > n:
        raise ValueError(
            f"{fn}: {name} must be <= the number of examples, got {name}={b} for "
            f"{n} examples; use a {name} between 1 and {n}"
        )
    return n, b


def num_examples(data: PyTree) -> int:
    """The size $m$ of the leading (example) axis shared by every leaf of `data`.

    Args:
        data: a pytree of arrays sharing a leading example axis, e.g. `{"x": X, "y": Y}`.

    Raises:
        ValueError: when `data` has no array leaves, a leaf has no leading axis, two leaves
            disagree on their leading size (both leaf paths are named), or $m = 0$.
    """
    return dataset_size("num_examples", data)


def dataset_size(fn: str, data: PyTree) -> int:
    leaves = jax.tree_util.tree_flatten_with_path(data)[0]
    if not leaves:
        raise ValueError(
            f"{fn}: data has no array leaves (got {data!r}); pass a pytree of arrays sharing a "
            f"leading example axis, e.g. {{'x': X, 'y': Y}}"
        )
    first_path, size = None, None
    for path, leaf in leaves:
        shape = np.shape(leaf)
        where = f"data{jax.tree_util.keystr(path)}"
        if len(shape) == 0:
            raise ValueError(f"{fn}: {where} is a scalar; every leaf needs a leading example axis")
        if size is None:
            first_path, size = where, shape[0]
        elif shape[0] != size:
            raise ValueError(
                f"{fn}: leaves disagree on the number of examples: {where} has leading size "
                f"{shape[0]}, {first_path} has {size}"
            )
    assert size is not None
    if size == 0:
        raise ValueError(f"{fn}: the dataset is empty ({first_path} has leading size 0)")
    return int(size)


# ----------------------------------------------------------------------------
# Epoch plans.


def check_start_step(
    fn: str, start_step: Any, n: int, b: int, drop_remainder: bool
) -> tuple[int, int]:
    """`(start_step, batches in the epoch)`, with `0 <= start_step <= batches` (resuming)."""
    t_total = n // b if drop_remainder else -(-n // b)
    start = check_int(fn, "start_step", start_step, 0)
    if start > t_total:
        raise ValueError(
            f"{fn}: start_step must be in [0, {t_total}] (the epoch has {t_total} batches), "
            f"got {start}"
        )
    return start, t_total


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
    r"""The number of batches in an epoch: $\lceil m/B \rceil$, or $\lfloor m/B \rfloor$ when
    `drop_remainder`.

    Args:
        num_examples: $m \geq 1$, the examples in the dataset.
        batch_size: $B$, between 1 and $m$.
        drop_remainder: whether a partial last batch is dropped.

    Raises:
        ValueError: for sizes below 1, a non-integer size, or `batch_size > num_examples`.
    """
    n, b = check_sizes("num_batches", num_examples, batch_size)
    check_bool("num_batches", "drop_remainder", drop_remainder)
    return n // b if drop_remainder else -(-n // b)


def num_dropped(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    r"""How many examples an epoch leaves out: $m \bmod B$ with `drop_remainder`, else 0.

    Which ones they are depends on the epoch's key: see `dropped_indices`.

    Args:
        num_examples: $m \geq 1$, the examples in the dataset.
        batch_size: $B$, between 1 and $m$.
        drop_remainder: whether a partial last batch is dropped.
    """
    n, b = check_sizes("num_dropped", num_examples, batch_size)
    check_bool("num_dropped", "drop_remainder", drop_remainder)
    return n % b if drop_remainder else 0


def _layout(perm: Int[Array, " n"], b: int, drop_remainder: bool) -> EpochPlan:
    """Cuts a permutation into the rows of an `EpochPlan` (static sizes; traceable)."""
    n = perm.shape[0]
    t = n // b if drop_remainder else -(-n // b)
    used = t * b
    if used <= n:
        indices = perm[:used]
        mask = jnp.ones((used,), jnp.bool_)
    else:  # pad the partial last batch with real indices from the front of the permutation
        indices = jnp.concatenate([perm, perm[: used - n]])
        mask = jnp.arange(used) < n
    return EpochPlan(indices.reshape(t, b), mask.reshape(t, b))


def draw_plan(
    key: PRNGKeyArray, n: int, b: int, drop_remainder: bool, permutation: Permutation
) -> EpochPlan:
    """The plan for static sizes; traceable (the body of `epoch_indices` and `scan_epoch`)."""
    return _layout(permute(key, n, permutation), b, drop_remainder)


# Compiled apart from the permutation (`permute_jit`), which depends on n alone.
_layout_jit = jax.jit(_layout, static_argnums=(1, 2))


def draw_plan_jit(
    key: PRNGKeyArray, n: int, b: int, drop_remainder: bool, permutation: Permutation
) -> EpochPlan:
    """`draw_plan`, compiled: for plans drawn outside a trace (`epoch_indices`, `batches`)."""
    return _layout_jit(permute_jit(key, n, permutation), b, drop_remainder)


def epoch_indices(
    key: PRNGKeyArray,
    num_examples: int,
    batch_size: int,
    drop_remainder: bool = False,
    *,
    permutation: Permutation = jax.random.permutation,
) -> EpochPlan:
    r"""The batches of one epoch: a random permutation cut into rows of `batch_size`.

    With $\pi$ = `permutation(key, m)` (by default `jax.random.permutation`) and
    $T$ = `num_batches(m, B, drop_remainder)`, `indices[t, j]` $= \pi(tB + j)$. When $B \nmid m$
    and the last batch is kept, its $T B - m$ empty slots are filled with
    $\pi(0), \pi(1), \dots$ and marked `False` in `mask`, so every example appears exactly once
    among the `True` slots. With `drop_remainder=True` the last $m \bmod B$ examples of $\pi$
    are left out (`dropped_indices`).

    Sizes are static (they fix the shape); `key` may be traced, so the plan can be built inside
    `jit` or `lax.scan`, e.g. `jax.jit(epoch_indices, static_argnums=(1, 2, 3))`.

    Args:
        key: a PRNG key, usually `jax.random.fold_in(key, epoch)`.
        num_examples: $m \geq 1$.
        batch_size: $1 \leq B \leq m$.
        drop_remainder: drop a partial last batch instead of padding it.
        permutation: `(key, m) -> int[m]`, the shuffle; `feistel_permutation` is ~10 times
            cheaper on CPU.

    Returns:
        `EpochPlan(indices, mask)`, both `[T, B]`.

    Raises:
        ValueError: for sizes below 1, a non-integer size or `batch_size > num_examples`.
        TypeError: when `key` is not a PRNG key.
    """
    fn = "epoch_indices"
    n, b = check_sizes(fn, num_examples, batch_size)
    check_bool(fn, "drop_remainder", drop_remainder)
    check_key(fn, key)
    check_permutation(fn, permutation)
    return draw_plan_jit(key, n, b, drop_remainder, permutation)


def dropped_indices(
    key: PRNGKeyArray,
    num_examples: int,
    batch_size: int,
    *,
    permutation: Permutation = jax.random.permutation,
) -> Int[Array, " num_dropped"]:
    r"""The examples `epoch_indices(key, m, B, drop_remainder=True)` leaves out.

    They are the last $m \bmod B$ entries of the epoch's permutation: $\pi(\lfloor m/B \rfloor B),
    \dots, \pi(m-1)$; a different set each epoch. Empty when $B \mid m$.

    Args:
        key: the epoch's PRNG key, as given to `epoch_indices`.
        num_examples: $m \geq 1$.
        batch_size: $B$, between 1 and $m$.
        permutation: the shuffle `(key, m) -> int[m]` the epoch uses.
    """
    n, b = check_sizes("dropped_indices", num_examples, batch_size)
    check_key("dropped_indices", key)
    check_permutation("dropped_indices", permutation)
    return permute_jit(key, n, permutation)[(n // b) * b :]


# ----------------------------------------------------------------------------
# Batches.


def take(data: PyTree, indices: Int[Array, " batch"]) -> PyTree:
    """Rows `indices` of every leaf, gathered on the device (indices are known in bounds)."""
    return jax.tree.map(lambda x: x.at[indices].get(mode="promise_in_bounds"), data)


@functools.partial(jax.jit, static_argnames=("count", "last_size"))
def _take_batches(
    data: PyTree, plan: EpochPlan, start: Int[ArrayLike, ""], count: int, last_size: int
) -> list[tuple[PyTree, Bool[Array, " batch"]]]:
    """Batches `start, ..., start + count - 1` in one dispatch, the last one cut to `last_size`
    rows; each comes back as its own arrays."""
    rows = lax.dynamic_slice_in_dim(plan.indices, start, count)
    masks = lax.dynamic_slice_in_dim(plan.mask, start, count)
    sizes = [rows.shape[1]] * (count - 1) + [last_size]
    return [(take(data, rows[i, :size]), masks[i, :size]) for i, size in enumerate(sizes)]


# `batches` gathers several batches per dispatch (one dispatch per batch costs as much as a
# small training step), up to this many bytes or batches at a time.
_AHEAD_BYTES = 16 * 2**20
_AHEAD_BATCHES = 16


def _on_device(data: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), data)


def masked_mean(
    values: Float[ArrayLike, "batch ..."], mask: Bool[ArrayLike, " batch"]
) -> Float[Array, ""]:
    r"""The mean of `values` over the rows where `mask` is `True`.

    $$\bar{x} = \frac{\sum_i w_i \sum_k x_{ik}}{K \max(1, \sum_i w_i)}, \quad w_i = \text{mask}_i$$

    where $K$ is the size of one row. Use it for the loss of a padded batch: it equals the plain
    mean over the real examples, so a padded last batch trains exactly like a short one.

    Args:
        values: per-example values (e.g. losses), shape `(batch, ...)`.
        mask: `(batch,)` booleans, True for the real examples.
    """
    values = jnp.asarray(values)
    weights = jnp.asarray(mask).astype(values.dtype)
    if weights.ndim != 1 or values.ndim < 1 or weights.shape[0] != values.shape[0]:
        raise ValueError(
            f"masked_mean: mask must have shape (batch,) matching values' leading axis, got "
            f"values {values.shape} and mask {weights.shape}"
        )
    row_size = math.prod(values.shape[1:])
    weighted = weights.reshape(weights.shape + (1,) * (values.ndim - 1)) * values
    count = jnp.maximum(jnp.sum(weights), jnp.ones((), values.dtype))
    return jnp.sum(weighted) / (count * jnp.asarray(row_size, values.dtype))


def batches(
    key: PRNGKeyArray,
    data: PyTree,
    batch_size: int,
    *,
    drop_remainder: bool = False,
    with_mask: bool = False,
    start_step: int = 0,
    permutation: Permutation = jax.random.permutation,
) -> Iterator[PyTree] | Iterator[tuple[PyTree, Bool[Array, " batch"]]]:
    r"""Iterates over the mini-batches of one epoch, in the order of `epoch_indices(key, ...)`.

    Each batch is `data` with every leaf replaced by its rows `indices[t]`, gathered on the
    device (numpy leaves are moved to the device once, when `batches` is called; pass device
    arrays to avoid even that). Up to 16 batches (16 MiB) are gathered per jitted call, so the
    loop adds little to the training step's own dispatch. Three ways to treat a partial last
    batch:

    * default: it is yielded short, with $m \bmod B$ rows (a jitted step compiles once more);
    * `with_mask=True`: every batch has $B$ rows and comes as `(batch, mask)`; weight the loss
      with the mask (`masked_mean`), as `scan_epoch` does;
    * `drop_remainder=True`: it is left out (see `dropped_indices`).

    Args:
        key: the epoch's key, usually `jax.random.fold_in(key, epoch)`.
        data: a pytree of arrays sharing a leading axis of $m$ examples.
        batch_size: $1 \leq B \leq m$.
        drop_remainder: drop a partial last batch.
        with_mask: yield `(batch, mask)` pairs of static shape, the last one padded.
        start_step: the first batch to yield, in $[0, T]$. Resuming at step $t$ with the same
            key yields exactly the batches $t, t+1, \dots$ of the uninterrupted epoch.
        permutation: the shuffle, as in `epoch_indices`.

    Returns:
        An iterator over the remaining batches (pytrees like `data`, or `(batch, mask)` pairs).

    Raises:
        ValueError: for mismatched or empty `data`, bad sizes or `start_step` out of range
            (raised at the call, not at the first `next`).
    """
    fn = "batches"
    n = dataset_size(fn, data)
    n, b = check_sizes(fn, n, batch_size)
    check_bool(fn, "drop_remainder", drop_remainder)
    check_bool(fn, "with_mask", with_mask)
    check_key(fn, key)
    start, t_total = check_start_step(fn, start_step, n, b, drop_remainder)
    check_permutation(fn, permutation)
    plan = draw_plan_jit(key, n, b, drop_remainder, permutation)
    data = _on_device(data)
    last_size = b if (drop_remainder or with_mask or n % b == 0) else n % b
    row_bytes = sum(x.nbytes // max(1, x.shape[0]) for x in jax.tree.leaves(data))
    ahead = max(1, min(_AHEAD_BATCHES, _AHEAD_BYTES // max(1, b * row_bytes)))

    count = min(ahead, t_total)

    def generate() -> Iterator[Any]:
        for first in range(start, t_total, count):
            # Always `count` batches per call (one compiled shape however the epoch is cut or
            # resumed): the last call starts early and skips what was already yielded.
            begin = min(first, t_total - count)
            size = last_size if begin + count == t_total else b
            chunk = _take_batches(data, plan, begin, count=count, last_size=size)
            for batch, mask in chunk[first - begin :]:
                yield (batch, mask) if with_mask else batch

    return generate()
