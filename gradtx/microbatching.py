r"""Microbatching: evaluate a function over a large batch in sequential slices (IDEAS §1).

A mini-batch too large for device memory is split into $n$ microbatches of `microbatch_size`
rows, the function is run on each in a `lax.fori_loop`, and the results are combined:

$$f(X) \approx \bigoplus_{i=0}^{n-1} f(X_i), \qquad
\oplus \in \{\textstyle\sum,\ \tfrac1n\sum,\ \text{running mean},\ \text{concatenation}\}$$

For a mean loss, the MEAN of microbatch gradients is the full-batch gradient, bit for bit up
to the order of the sums; peak memory is that of one microbatch.

The names, signatures and semantics are optax 0.2.8's `optax.microbatching`:
`microbatch` (the general transformation), `micro_vmap` (a `jax.vmap` that runs in slices
and can reduce instead of stacking), `micro_grad` (per-example gradients, transformed, then
reduced), `reshape_batch_axis`, `Accumulator` and `AccumulationType`. Microbatch $i$ takes
rows $i, i + n, i + 2n, \dots$ (a column-major reshape), so a batch sharded along its batch
axis stays sharded the same way inside each microbatch; with explicit-mode meshes the
shardings are carried through the reshapes as optax does.

Compared with `gradtx.accumulate` (optax's `MultiSteps`): that one averages gradients over
several *optimiser steps* (one mini-batch each); this one splits *one* step's batch.

Differences from optax 0.2.8 (stricter, or accepting more): `microbatch_size` must be a
positive integer and `num_real_microbatches` a non-negative one, at most the number of
microbatches (when concrete; optax reads past the batch, clamped); errors name
the function; optax's own `Accumulator` and `AccumulationType` values are accepted too; explicitly
sharded batches work with jax 0.10 (optax 0.2.8 tests `jax.__version__ < '0.7.0'` as strings,
which is true for '0.10.2', so it skips its sharding path and its reshape of an explicitly
sharded batch fails).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gradtx import checks
from gradtx.typing import PyTree

__all__ = [
    "AccumulationType",
    "Accumulator",
    "IndividualOutputs",
    "micro_grad",
    "micro_vmap",
    "microbatch",
    "reshape_batch_axis",
]

Function = Callable[..., Any]
VmapFn = Callable[[Function, Any, Any], Function]
IndividualOutputs = collections.namedtuple("Aux", ["values", "metrics", "aux"])  # type: ignore[name-match]  # optax names it Aux


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How microbatch results $x_0, \\dots, x_{n-1}$ are combined, as the program

    ```python
    carry = init(jax.eval_shape(...))  # from the shape and dtype of one result
    for i in range(n):
        carry = update(carry, x_i, i)
    return finalize(carry)
    ```

    Attributes:
        init: `f(shape_dtype_struct) -> carry`, the start from one result's shape and dtype.
        update: `f(carry, value, index) -> carry`, folds in microbatch `index`'s result.
        finalize: `f(carry) -> result`.
        aggregate: `f(stacked_values) -> value`, the same reduction over a leading axis
            (used by `micro_vmap` inside one microbatch).
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[[PyTree, PyTree, Any], PyTree]
    finalize: Callable[[PyTree], PyTree]
    aggregate: Callable[[PyTree], PyTree]


class AccumulationType(enum.Enum):
    """The standard ways of combining microbatch results."""

    MEAN = enum.auto()
    """$\\frac1n \\sum_i x_i$ over all $n$ microbatches (floating results only)."""
    SUM = enum.auto()
    """$\\sum_i x_i$."""
    RUNNING_MEAN = enum.auto()
    """The mean over the microbatches run (`num_real_microbatches`; floating only)."""
    CONCAT = enum.auto()
    """The results concatenated along axis 0, in the original row order."""


def _is_accumulator(x: Any) -> bool:
    """A gradtx `Accumulator`, or optax's (same four fields)."""
    return isinstance(x, Accumulator) or (
        dataclasses.is_dataclass(x)
        and not isinstance(x, type)
        and all(hasattr(x, f) for f in ("init", "update", "finalize", "aggregate"))
    )


def _floating_only(fn: str, init: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def checked(value: Any) -> Any:
        dtype = jnp.dtype(value.dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"microbatch: the {fn} accumulator needs floating-point results, got {dtype}; "
                "use AccumulationType.SUM for integers, or cast the result"
            )
        return init(value)

    return checked


def _per_leaf(
    init: Callable[[Any], Any],
    update: Callable[[Any, Any, Any], Any],
    finalize: Callable[[Any], Any],
    aggregate: Callable[[Any], Any],
) -> Accumulator:
    """An `Accumulator` of whole trees from one of single arrays."""
    return Accumulator(
        lambda value: jax.tree.map(init, value),
        lambda carry, value, i: jax.tree.map(lambda c, v: update(c, v, i), carry, value),
        lambda carry: jax.tree.map(finalize, carry),
        lambda values: jax.tree.map(aggregate, values),
    )


def _sum() -> Accumulator:
    return _per_leaf(
        _zeros_like,
        lambda carry, value, _: carry + value,
        lambda x: x,
        functools.partial(jnp.sum, axis=0),
    )


def _mean(num_microbatches: int) -> Accumulator:
    return _per_leaf(
        _floating_only("MEAN", _zeros_like),
        lambda carry, value, _: carry + value,
        lambda carry: carry / num_microbatches,
        functools.partial(jnp.mean, axis=0),
    )


def _running_mean() -> Accumulator:
    def update(carry: Any, value: Any, index: Any) -> Any:
        p = index / (index + 1)  # m_{i+1} = m_i i/(i+1) + x_i/(i+1)
        return carry * p.astype(carry.dtype) + value * (1 - p).astype(value.dtype)

    return _per_leaf(
        _floating_only("RUNNING_MEAN", _zeros_like),
        update,
        lambda x: x,
        functools.partial(jnp.mean, axis=0),
    )


def _zeros_like(value: Any) -> Any:
    """Zeros of `value`'s shape, dtype and explicit sharding (also from a `ShapeDtypeStruct`,
    whose sharding `jnp.zeros_like` drops on older jax)."""
    sharding = _explicit_sharding(value)
    return jnp.zeros(value.shape, value.dtype, out_sharding=sharding)


def _explicit_sharding(x: Any) -> Any:
    """`x`'s `NamedSharding` when its mesh is in explicit mode (shardings are types), else None."""
    aval = x if isinstance(x, jax.ShapeDtypeStruct) else jax.typeof(x)
    sharding = getattr(aval, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    # `mesh.axis_types` on every jax this package admits (`are_all_axes_explicit` is newer)
    types = tuple(getattr(mesh, "axis_types", ()))
    if not types or any(t != jax.sharding.AxisType.Explicit for t in types):
        return None
    return sharding


def _concat(num_microbatches: int) -> Accumulator:
    def init(value: Any) -> Any:
        return jnp.broadcast_to(_zeros_like(value), (num_microbatches, *value.shape))

    def update(carry: Any, value: Any, index: Any) -> Any:
        return carry.at[index].set(value)

    def finalize(carry: Any) -> Any:
        # Row r of microbatch i is row i + n r of the batch: undo reshape_batch_axis's
        # column-major split. The microbatch axis is unsharded; the rows keep their sharding.
        # As a swap to (m, n), then a row-major merge (no gather; see reshape_batch_axis).
        sharding = _explicit_sharding(carry)
        shape = (-1, *carry.shape[2:])
        rows_first = jnp.swapaxes(carry, 0, 1)
        if sharding is None:
            return rows_first.reshape(shape)
        spec = jax.sharding.PartitionSpec(*tuple(sharding.spec)[1:])
        out = jax.sharding.NamedSharding(sharding.mesh, spec)
        return rows_first.reshape(shape, out_sharding=out)

    return _per_leaf(init, update, finalize, lambda x: x)


def _standard(acc: Any, num_microbatches: int) -> Accumulator:
    """The `Accumulator` an `AccumulationType` (gradtx's or optax's) names."""
    name = getattr(acc, "name", None)
    if isinstance(acc, enum.Enum) and name in AccumulationType.__members__:
        if name == "SUM":
            return _sum()
        if name == "MEAN":
            return _mean(num_microbatches)
        if name == "RUNNING_MEAN":
            return _running_mean()
        return _concat(num_microbatches)
    raise ValueError(
        f"microbatch: accumulator leaves must be an Accumulator or an AccumulationType "
        f"(MEAN, SUM, RUNNING_MEAN, CONCAT), got {acc!r}"
    )


def _resolve(accumulators: Any, num_microbatches: int) -> Accumulator:
    """One `Accumulator` for a tree (a prefix of the function's output) of accumulators."""
    is_leaf = lambda x: _is_accumulator(x) or isinstance(x, enum.Enum)
    tree = jax.tree.map(
        lambda a: a if _is_accumulator(a) else _standard(a, num_microbatches),
        accumulators,
        is_leaf=is_leaf,
    )
    over = functools.partial(jax.tree.map, is_leaf=_is_accumulator)
    return Accumulator(
        lambda values: over(lambda a, v: a.init(v), tree, values),
        lambda carry, values, i: over(lambda a, c, v: a.update(c, v, i), tree, carry, values),
        lambda carry: over(lambda a, c: a.finalize(c), tree, carry),
        lambda values: over(lambda a, v: a.aggregate(v), tree, values),
    )


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    r"""Splits each leaf's batch axis $B$ into $(B / m, m)$ at the same position.

    The split is column-major: microbatch $i$ holds rows $i, i + B/m, i + 2B/m, \dots$, so a
    sharding along the batch axis carries over to the new `microbatch_size` axis (each
    microbatch is spread over the same devices) and the new leading axis is replicated. With
    an explicit-mode mesh the output sharding says so.

    Args:
        tree: a pytree of arrays, each with a batch axis.
        microbatch_size: $m$, the rows of one microbatch; must divide the batch size (and
            be a multiple of the number of shards of a sharded batch axis).
        axis: the batch axis.

    Returns:
        The tree of reshaped arrays, `x.shape[:axis] + (B // m, m) + x.shape[axis + 1:]`.

    Raises:
        ValueError: when the number of shards of the batch axis does not divide
            `microbatch_size`.
    """

    def split(x: Any) -> Any:
        # column-major as a row-major split into (m, B / m), then a swap of the two axes:
        # no gather (which an explicitly sharded batch axis refuses on older jax)
        shape = (*x.shape[:axis], microbatch_size, -1, *x.shape[axis + 1 :])
        sharding = _explicit_sharding(x)
        if sharding is None:
            return jnp.swapaxes(x.reshape(shape), axis, axis + 1)
        spec = tuple(sharding.spec)
        entry = spec[axis] if len(spec) > axis else None
        new_spec = jax.sharding.PartitionSpec(*spec[:axis], entry, None, *spec[axis + 1 :])
        shards = x.shape[axis] // sharding.shard_shape(x.shape)[axis]
        if microbatch_size % shards != 0:
            raise ValueError(
                f"reshape_batch_axis: microbatch_size must be a multiple of the {shards} "
                f"shards of the batch axis, got {microbatch_size}"
            )
        out = jax.sharding.NamedSharding(sharding.mesh, new_spec)
        return jnp.swapaxes(x.reshape(shape, out_sharding=out), axis, axis + 1)

    return jax.tree.map(split, tree)


def _split_arguments(
    microbatch_size: int,
    argnums: Sequence[int],
    argnames: Sequence[str],
    in_axes: Sequence[int],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any], int]:
    """The batch arguments reshaped into microbatches, and the batch size."""
    batch_args = [args[i] for i in argnums] + [kwargs[name] for name in argnames]
    sizes = jax.tree.leaves(
        jax.tree.map(
            lambda ax, subtree: jax.tree.map(lambda x: x.shape[ax], subtree),
            tuple(in_axes),
            tuple(batch_args),
        )
    )
    if not sizes:
        raise ValueError("microbatch: the batch arguments hold no arrays to split")
    if len(set(sizes)) > 1:
        raise ValueError(
            f"microbatch: batch arguments must have batch axes of one size, got {sizes}"
        )
    batch_size = sizes[0]
    if batch_size % microbatch_size != 0:
        raise ValueError(
            f"microbatch: microbatch_size must divide the batch size {batch_size}, "
            f"got {microbatch_size}"
        )
    new_args, new_kwargs = list(args), dict(kwargs)
    for i, ax in zip(argnums, in_axes):
        new_args[i] = reshape_batch_axis(args[i], microbatch_size, ax)
    for name, ax in zip(argnames, in_axes[len(argnums) :]):
        new_kwargs[name] = reshape_batch_axis(kwargs[name], microbatch_size, ax)
    return tuple(new_args), new_kwargs, batch_size


def microbatch(
    fun: Function,
    argnums: int | Sequence[int],
    microbatch_size: int | None,
    accumulator: Any = AccumulationType.SUM,
    *,
    argnames: str | Sequence[str] = (),
    in_axes: int | Sequence[int] = 0,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    r"""`fun` evaluated on microbatches of its batch arguments, one after another.

    $$\text{out} = \text{finalize}\big(\text{update}(\dots\text{update}(\text{init},
    f(X_0), 0)\dots, f(X_{n-1}), n-1)\big)$$

    with $X_i$ microbatch $i$ of every batch argument (`reshape_batch_axis`), run in a
    `lax.fori_loop`, so only one microbatch's intermediates are alive at a time. With SUM,
    `microbatch(f, 0, m)(x)` is $\sum_i f(X_i)$; with CONCAT it is `f(x)` for a row-wise `f`.

    Args:
        fun: the function to evaluate.
        argnums: the positions of the arguments that have a batch axis.
        microbatch_size: the rows per microbatch, dividing the batch size; `None` returns
            `fun` itself.
        accumulator: how to combine the results: an `Accumulator`, an `AccumulationType`,
            or a tree of them that is a prefix of `fun`'s output.
        argnames: the names of keyword arguments that have a batch axis.
        in_axes: the batch axis of each of `argnums + argnames`, or one for all.
        num_real_microbatches: when given, only the first this many microbatches run (the
            rest are padding); a traced value avoids recompiling for a smaller batch.

    Returns:
        A function with `fun`'s arguments.

    Raises:
        ValueError: for a `microbatch_size` below 1; when called, for batch axes of
            different sizes or a size `microbatch_size` does not divide, or a concrete
            `num_real_microbatches` above the number of microbatches.
    """
    if microbatch_size is None:
        return fun
    microbatch_size = checks.check_int("microbatch", "microbatch_size", microbatch_size, 1)
    if num_real_microbatches is not None:
        checks.check_int("microbatch", "num_real_microbatches", num_real_microbatches, traced=True)
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    argnames = (argnames,) if isinstance(argnames, str) else tuple(argnames)
    axes = (in_axes,) * (len(argnums) + len(argnames)) if isinstance(in_axes, int) else in_axes
    axes = tuple(axes)

    def microbatched(*args: Any, **kwargs: Any) -> Any:
        split_args, split_kwargs, batch_size = _split_arguments(
            microbatch_size, argnums, argnames, axes, args, kwargs
        )
        n = batch_size // microbatch_size
        real = num_real_microbatches
        if real is not None and checks.is_concrete(real) and int(real) > n:
            raise ValueError(
                f"microbatch: num_real_microbatches must be at most the {n} microbatches "
                f"of the batch, got {int(real)}"
            )
        acc = _resolve(accumulator, n)
        take = lambda index, ax: functools.partial(jnp.take, indices=index, axis=ax)

        def one(index: Any) -> Any:
            a, k = list(split_args), dict(split_kwargs)
            for i, ax in zip(argnums, axes):
                a[i] = jax.tree.map(take(index, ax), a[i])
            for name, ax in zip(argnames, axes[len(argnums) :]):
                k[name] = jax.tree.map(take(index, ax), k[name])
            return fun(*a, **k)

        body = lambda index, carry: acc.update(carry, one(index), index)
        steps = n if num_real_microbatches is None else num_real_microbatches
        carry = jax.lax.fori_loop(0, steps, body, acc.init(jax.eval_shape(one, 0)))
        return acc.finalize(carry)

    return microbatched


def micro_vmap(
    fun: Function,
    in_axes: int | Sequence[int] = 0,
    out_axes: Any = 0,
    *,
    microbatch_size: int | None = None,
    vmap_fn: VmapFn = jax.vmap,
    accumulator: Any = AccumulationType.CONCAT,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    r"""`jax.vmap(fun)` run over microbatches, optionally reducing instead of stacking.

    Each microbatch is vmapped at once and reduced with the accumulator's `aggregate`; the
    microbatch results are combined with `microbatch`. The default CONCAT is `jax.vmap`'s
    output; MEAN and SUM give $\frac1B \sum_b f(x_b)$ and $\sum_b f(x_b)$ without holding
    the $B$ outputs. Keyword arguments are mapped over their leading axis, as in `jax.vmap`.

    Args:
        fun: the function to map.
        in_axes: the mapped axis of each positional argument (None: not mapped), or one int.
        out_axes: must be 0.
        microbatch_size: the rows per microbatch; `None` vmaps the whole batch at once.
        vmap_fn: a function with `jax.vmap`'s signature (e.g. one with extra options bound).
        accumulator: how to combine the mapped outputs (see `microbatch`).
        num_real_microbatches: run only the first this many microbatches (see `microbatch`).

    Returns:
        The mapped function.

    Raises:
        NotImplementedError: for `out_axes` other than 0.
    """
    if out_axes != 0:
        raise NotImplementedError(f"micro_vmap: out_axes must be 0, got {out_axes!r}")
    axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)

    def mapped_then_reduced(*args: Any, kwargs: dict[str, Any]) -> Any:
        output = vmap_fn(fun, axes, out_axes)(*args, **kwargs)
        rows = jax.tree.leaves(output)[0].shape[0]
        return _resolve(accumulator, rows).aggregate(output)

    inner = microbatch(
        mapped_then_reduced,
        argnums=tuple(i for i, ax in enumerate(axes) if ax is not None),
        argnames="kwargs",
        microbatch_size=microbatch_size,
        accumulator=accumulator,
        in_axes=(*(ax for ax in axes if ax is not None), 0),
        num_real_microbatches=num_real_microbatches,
    )

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return inner(*args, kwargs=kwargs)

    return wrapped


def micro_grad(
    fun: Function,
    has_aux: bool = False,
    argnums: int | Sequence[int] = 0,
    *,
    batch_argnums: int | Sequence[int] = 1,
    keep_batch_dim: bool = True,
    microbatch_size: int | None = None,
    accumulator: Any = AccumulationType.SUM,
    transform_fn: Callable[[PyTree], PyTree] = lambda x: x,
    metrics_fn: Callable[[PyTree], PyTree] = lambda x: None,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    r"""Per-example gradients, transformed, then reduced over the batch, in microbatches.

    $$G = \bigoplus_{b=1}^{B} T\big(\nabla_\theta f(\theta, x_b)\big)$$

    with $T$ = `transform_fn` (e.g. per-example clipping, or `lambda g: (g, g**2)` for
    gradient moments) and $\oplus$ the accumulator (SUM by default; MEAN gives the mean).

    Returns `(G, aux)` where `aux` is a namedtuple `Aux(values, metrics, aux)` holding, per
    example, `fun`'s value, `metrics_fn` of the gradient, and `fun`'s auxiliary output.

    Args:
        fun: `fun(params, batch, ...)`, a scalar per example (with `has_aux`,
            `(value, aux)`).
        has_aux: whether `fun` returns `(value, aux)`.
        argnums: the argument(s) to differentiate.
        batch_argnums: the argument(s) with a batch axis (axis 0).
        keep_batch_dim: whether `fun` expects its batch arguments with a batch axis (each
            example is then passed as a batch of one).
        microbatch_size: the examples per microbatch; `None` processes all at once.
        accumulator: how to combine the transformed gradients (see `microbatch`).
        transform_fn: $T$, applied to each example's gradient.
        metrics_fn: applied to each example's gradient; returned per example in `aux`.
        num_real_microbatches: run only the first this many microbatches (see `microbatch`).

    Returns:
        A function with `fun`'s arguments returning `(G, aux)`.
    """
    checks.check_bool("micro_grad", "has_aux", has_aux)
    checks.check_bool("micro_grad", "keep_batch_dim", keep_batch_dim)
    batch = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    with_aux = fun if has_aux else (lambda *a, **k: (fun(*a, **k), None))
    value_and_grad = jax.value_and_grad(with_aux, argnums, has_aux=True)

    def per_example(*args: Any, **kwargs: Any) -> Any:
        (value, aux), grad = value_and_grad(*args, **kwargs)
        return transform_fn(grad), IndividualOutputs(value, metrics_fn(grad), aux)

    in_axes: list[int | None] = [None] * (max(batch) + 1)
    for i in batch:
        in_axes[i] = 0
    mapped = micro_vmap(
        per_example,
        in_axes=in_axes,  # type: ignore[arg-type]  # None marks an unmapped argument
        accumulator=(accumulator, AccumulationType.CONCAT),
        microbatch_size=microbatch_size,
        num_real_microbatches=num_real_microbatches,
    )
    if not keep_batch_dim:
        return mapped

    def with_batch_of_one(*args: Any, **kwargs: Any) -> Any:
        args_ = list(args)
        for i in batch:
            args_[i] = jax.tree.map(lambda x: jnp.expand_dims(x, axis=1), args[i])
        return mapped(*args_, **kwargs)

    return with_batch_of_one
