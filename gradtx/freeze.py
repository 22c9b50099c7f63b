r"""Freezing parameters: zero updates for the leaves a static mask marks.

* `set_to_zero()`: $u = 0$ everywhere; the building block.
* `freeze(mask)`: `masked(set_to_zero(), mask)`: frozen leaves get $u = 0$, the rest pass
  through unchanged.
* `selective_transform(optimizer, freeze_mask=mask)`: `partition` into `optimizer` (trained
  leaves) and `set_to_zero()` (frozen leaves), so the optimiser keeps no state for frozen
  leaves.

Masks follow `masked`'s rule: a bool, a tree of Python or NumPy bools with the params'
structure (or a prefix of it), or a function `params -> mask`; a callable pytree with bool
leaves (an Equinox module built as a mask) is a mask tree, not a function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradtx import base
from gradtx.base import (
    GradientTransformation,
    OptState,
    Params,
    PyTree,
    Updates,
    factory,
    stateless_pair,
)
from gradtx.combine import _apply_mask, _resolve_mask, is_mask_function, masked, partition
from gradtx.tree_utils import is_params_placeholder

__all__ = ["freeze", "selective_transform", "set_to_zero"]


@factory
def set_to_zero() -> GradientTransformation:
    r"""Maps every update to zero: $u_t = 0$ (each leaf's shape and dtype kept).

    Stores nothing (`EmptyState()`). Inside one `jit` with the gradient computation XLA drops
    the work whose result is zeroed. Combine it with `masked` or `partition` (or use `freeze`,
    `selective_transform`) to hold some parameters fixed.

    Returns:
        A stateless `GradientTransformation` (optax's `set_to_zero`).
    """
    return stateless_pair(lambda updates, params: jax.tree.map(jnp.zeros_like, updates))


def _check_static_mask(fn: str, mask: Any) -> None:
    """Refuses, at construction, a mask tree with a leaf that is not a bool (a function mask
    is checked when it is called, on the params' tree)."""
    if not is_mask_function(mask):
        _resolve_mask(fn, mask, None)


def _checked_mask(fn: str, mask: Any, tree: PyTree) -> PyTree:
    """`mask` resolved on `tree` (called if it is a function), its tree checked to be a prefix
    of `tree`'s, the error naming `fn` and the first mismatching key path."""
    if is_params_placeholder(tree):  # `tree_map_params`' stand-in: nothing to check
        return tree
    mask_tree = _resolve_mask(fn, mask, tree)
    _apply_mask(fn, mask_tree, tree)
    return mask_tree


def _checking(fn: str, mask: Any, tx: GradientTransformation) -> GradientTransformation:
    """`tx` whose init and update first check `mask` against the tree they are given."""

    def init(params: Params) -> OptState:
        _checked_mask(fn, mask, params)
        return tx.init(params)

    def update(
        updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]:
        _checked_mask(fn, mask, updates)
        return tx.update(updates, state, params, **extra_args)

    return GradientTransformation(init, update)


@factory
def freeze(mask: bool | PyTree | Callable[[PyTree], PyTree]) -> GradientTransformation:
    r"""Zeros the updates of the leaves where `mask` is True; the others pass through.

    $$u_i = \begin{cases} 0 & \text{mask}_i \\ g_i & \text{otherwise} \end{cases}$$

    The same as `masked(set_to_zero(), mask)`, and optax's `freeze`. Emits the masked
    updates; stores `MaskedState(EmptyState())`. A transformation chained after `freeze`
    still sees (and keeps state for) the frozen leaves, with zero updates; to keep no
    optimiser state for them use `selective_transform`.

    Args:
        mask: static: `True` (freeze everything) or `False` (nothing), a tree of Python or
            NumPy bools with the params' structure (or a prefix of it), or a function
            `params -> mask`.

    Returns:
        A `GradientTransformation` with state `MaskedState(inner_state=EmptyState())`.

    Raises:
        TypeError: when a leaf of the mask tree is not a bool (e.g. a traced array).
        ValueError: at init or update, when the mask's tree is not a prefix of the params'
            tree (the message names the first mismatching key path).
    """
    _check_static_mask("freeze", mask)
    return _checking("freeze", mask, masked(set_to_zero(), mask))


@factory
def selective_transform(
    optimizer: GradientTransformation,
    *,
    freeze_mask: bool | PyTree | Callable[[PyTree], PyTree],
) -> GradientTransformation:
    r"""Runs `optimizer` on the trained leaves only; frozen leaves get zero updates.

    $$u_i = \begin{cases} 0 & \text{freeze\_mask}_i \\
        \text{optimizer}(g_{\text{train}})_i & \text{otherwise} \end{cases}$$

    The same as `partition({"train": optimizer, "freeze": set_to_zero()}, labels)` with
    labels `"freeze"` where the mask is True and `"train"` elsewhere (optax's
    `selective_transform`): the optimiser sees, and keeps state for, the trained leaves
    only. A function mask is called on the params' (or updates') tree; optax would read the
    function object itself as `True` and freeze everything.

    Args:
        optimizer: the transformation for the trained leaves (gradtx or optax).
        freeze_mask: static, keyword-only: `True` (freeze everything), `False` (nothing), a
            tree of Python or NumPy bools with the params' structure (or a prefix of it), or
            a function `params -> mask`.

    Returns:
        A `GradientTransformation` with state `PartitionState(inner_states={"train":
        MaskedState(...), "freeze": MaskedState(EmptyState())})`, optax's layout.

    Raises:
        TypeError: when `optimizer` is not a transformation, or a leaf of the mask tree is not
            a bool.
        ValueError: at init or update, when the mask's tree is not a prefix of the params'
            tree (the message names the first mismatching key path).
    """
    fn = "selective_transform"
    optimizer = base.as_transformation(fn, "optimizer", optimizer)
    _check_static_mask(fn, freeze_mask)

    def label_fn(tree: PyTree) -> PyTree:
        mask = _resolve_mask(fn, freeze_mask, tree)
        return jax.tree.map(lambda m: "freeze" if m else "train", mask)

    tx = partition({"train": optimizer, "freeze": set_to_zero()}, param_labels=label_fn)
    return _checking(fn, freeze_mask, tx)
