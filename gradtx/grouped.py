r"""Grouped parameters: a whole model held as one flat buffer per dtype, across steps.

Every leaf of a parameter tree costs a jitted step a few tens of microseconds on top of its
arithmetic (a loop, buffer bookkeeping, its share of compile time). A model with thousands of
small leaves spends most of its optimiser step on that. `group` packs the leaves into one
contiguous buffer per dtype; the model keeps seeing its tree through `ungroup`, whose slices
XLA fuses into their consumers inside `jit`. Because `Grouped` is a pytree whose leaves are the
buffers, everything downstream sees a few large leaves:

* `jax.grad` of a loss of `ungroup(params)` with respect to the `Grouped` params returns the
  gradients grouped the same way (one concatenation, fused where XLA can);
* `opt.init(params)` builds grouped moments, and `opt.update` / `apply_updates` /
  `apply_step` run one loop per buffer instead of one per leaf.

```python
params = gradtx.group(init_params(key))      # one float32 buffer
opt = gradtx.adam(1e-3)
state = opt.init(params)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def train_step(params, state, batch):
    loss, grads = jax.value_and_grad(lambda p: loss_fn(gradtx.ungroup(p), batch))(params)
    params, state = gradtx.apply_step(opt, grads, state, params)
    return params, state, loss
```

Element-wise transformations (`sgd`, `rmsprop`, `adam`, `adamw`, ...) apply the same
operations to every element as on the tree. The numbers agree to float32 round-off: XLA
vectorises one long buffer and many short leaves differently (fused multiply-adds, reciprocal
square roots), which can move the last bit; through `apply_step`'s native kernel they agree
bit for bit. Transformations that reduce over leaves (`clip_by_global_norm`) add in another
order, and masks or labels given per leaf (`masked`, `partition`, `adamw(mask=...)`) need the
tree: here they see one leaf per dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.tree_util import DictKey

from gradtx.base import PyTree


class _Slot(NamedTuple):
    buffer: int  # which buffer holds the leaf
    size: int  # number of elements
    shape: tuple[int, ...]


class GroupLayout(NamedTuple):
    """Where each leaf lives: static, hashable, the pytree aux data of `Grouped`."""

    treedef: Any  # the tree's structure (a jax PyTreeDef)
    dtypes: tuple[str, ...]  # the dtype of each buffer, in order of first appearance
    slots: tuple[_Slot, ...]  # one per leaf, in tree order; a buffer's leaves are contiguous


class Grouped:
    """A parameter tree stored as one flat buffer per dtype (see `group`).

    A pytree whose leaves are the buffers, keyed by dtype name (`['float32']`), so it can be
    passed to `jit` (and donated), differentiated, and given to any transformation.

    Attributes:
        buffers: the flat buffers, one per dtype, in the order of `layout.dtypes`.
        layout: the `GroupLayout` that maps them back to the tree.
    """

    __slots__ = ("buffers", "layout")

    def __init__(self, buffers: tuple, layout: GroupLayout):
        self.buffers = tuple(buffers)
        self.layout = layout

    def __repr__(self) -> str:
        parts = []
        for i, (dtype, buffer) in enumerate(zip(self.layout.dtypes, self.buffers)):
            n_leaves = sum(slot.buffer == i for slot in self.layout.slots)
            parts.append(f"{dtype}[{_size(buffer)}] holding {n_leaves} leaves")
        return f"Grouped({', '.join(parts)})"


def _size(buffer: Any) -> Any:
    shape = getattr(buffer, "shape", None)
    return shape[0] if shape else "?"


jax.tree_util.register_pytree_with_keys(
    Grouped,
    lambda g: ([(DictKey(d), b) for d, b in zip(g.layout.dtypes, g.buffers)], g.layout),
    lambda layout, buffers: Grouped(tuple(buffers), layout),
    flatten_func=lambda g: (g.buffers, g.layout),
)


def group(tree: PyTree) -> Grouped:
    """Packs a tree's leaves into one flat buffer per dtype.

    Leaves keep their dtype; leaves of one dtype are laid end to end in tree order. Do it
    once, outside the training loop: the point is that parameters, gradients and optimiser
    state then stay grouped from step to step.

    Args:
        tree: a pytree of arrays (or scalars), e.g. a model's parameters.

    Returns:
        A `Grouped` holding the same numbers; `ungroup` gives the tree back.

    Raises:
        TypeError: for a leaf that is not a number or an array of numbers.
    """
    leaves, treedef = jax.tree.flatten(tree)
    dtypes: list[str] = []
    slots: list[Any] = []
    parts: list[Any] = []
    for path, leaf in zip(jax.tree_util.tree_flatten_with_path(tree)[0], leaves):
        try:
            array = jnp.asarray(leaf)
        except TypeError as err:
            key = jax.tree_util.keystr(path[0])
            raise TypeError(
                f"group: leaf {key} must be an array or a number, got {type(leaf).__name__}"
            ) from err
        dtype = jnp.dtype(array.dtype).name
        if dtype not in dtypes:
            dtypes.append(dtype)
            parts.append([])
        index = dtypes.index(dtype)
        slots.append(_Slot(index, int(array.size), tuple(array.shape)))
        parts[index].append(array.ravel())
    buffers = tuple(jnp.concatenate(p) if len(p) > 1 else p[0] for p in parts)
    return Grouped(buffers, GroupLayout(treedef, tuple(dtypes), tuple(slots)))


def ungroup(grouped: Grouped) -> PyTree:
    """The tree view of grouped parameters (or gradients, or a moment).

    Inside `jit` the views are slices of the buffers that XLA fuses into their consumers; the
    gradient of a function of the views, taken with respect to `grouped`, comes back grouped.

    Args:
        grouped: a `Grouped`, as built by `group` (or mapped from one).

    Returns:
        The tree `group` was given, with the current numbers.

    Raises:
        TypeError: when `grouped` is not a `Grouped`.
    """
    if not isinstance(grouped, Grouped):
        raise TypeError(
            f"ungroup: expected a Grouped (built by gradtx.group), got {type(grouped).__name__}"
        )
    layout = grouped.layout
    pieces: list[list[jax.Array]] = []
    for i, buffer in enumerate(grouped.buffers):
        sizes = [slot.size for slot in layout.slots if slot.buffer == i]
        pieces.append(list(jax.lax.split(buffer, sizes)) if len(sizes) > 1 else [buffer])
    taken = [0] * len(pieces)
    leaves = []
    for slot in layout.slots:
        leaves.append(pieces[slot.buffer][taken[slot.buffer]].reshape(slot.shape))
        taken[slot.buffer] += 1
    return layout.treedef.unflatten(leaves)
