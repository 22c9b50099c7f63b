r"""Combinators: build optimisers out of pieces.

* `chain(a, b, ...)`: $u = (b \circ a)(g)$, each piece with its own state.
* `named_chain(("name", a), ...)`: the same, with the states in a dict.
* `divide(num, den)`: two branches fed the same updates, $u = num(g) / den(g)$.
* `masked(inner, mask)`: `inner` on the masked-in leaves, the rest untouched.
* `partition(transforms, param_labels)`: a different transformation per label.

Any object with `init` and `update` works as a piece, optax's included; extra
keyword arguments of `update` reach the pieces whose `update` accepts them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, PyTree, factory
from gradtx.tree_utils import is_params_placeholder


@factory
def chain(*transforms: GradientTransformation) -> GradientTransformation:
    r"""Applies the transformations one after the other: $u = t_n(\dots t_1(g))$.

    The state is the tuple of the pieces' states, in order. `chain()` is the
    identity, and `chain(t)` acts exactly as `t` (with its state in a 1-tuple).

    Args:
        *transforms: gradtx or optax transformations.

    Returns:
        A `GradientTransformation` with a tuple of states.
    """
    txs = tuple(
        base.as_transformation("chain", f"argument {i}", t) for i, t in enumerate(transforms)
    )

    def init(params):
        return tuple(t.init(params) for t in txs)

    def update(updates, state, params=None, **extra_args):
        if type(state) is list:  # a tuple restored from a checkpoint as a list
            state = tuple(state)
        if type(state) is not tuple or len(state) != len(txs):
            got = f"{len(state)} entries" if type(state) is tuple else type(state).__name__
            raise ValueError(
                f"chain: state must be the tuple of {len(txs)} states made by this chain's "
                f"init, got {got}; was it built by a different optimiser?"
            )
        new_state = []
        for t, s in zip(txs, state):
            updates, s = t.update(updates, s, params, **extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


@factory
def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
    """`chain` whose state is a dict `{name: state}`, so pieces can be found by name.

    Args:
        *transforms: `(name, transformation)` pairs with distinct string names.
    """
    names = []
    for i, pair in enumerate(transforms):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise TypeError(
                f"named_chain: argument {i} must be a (name, transformation) pair, got {pair!r}"
            )
        if pair[0] in names:
            raise ValueError(f"named_chain: name {pair[0]!r} is used twice")
        names.append(pair[0])
    txs = {
        name: base.as_transformation("named_chain", f"transformation {name!r}", t)
        for name, t in transforms
    }

    def init(params):
        return {name: t.init(params) for name, t in txs.items()}

    def update(updates, state, params=None, **extra_args):
        if isinstance(state, (list, tuple)) and len(state) == len(txs):
            state = dict(zip(txs, state))  # restored from a checkpoint as a sequence
        if not isinstance(state, Mapping) or set(state) != set(txs):
            raise ValueError(
                f"named_chain: state must be the dict {{name: state}} made by this chain's "
                f"init with names {list(txs)}, got {type(state).__name__}"
                + (f" with names {list(state)}" if isinstance(state, Mapping) else "")
            )
        new_state = {}
        for name, t in txs.items():
            updates, new_state[name] = t.update(updates, state[name], params, **extra_args)
        return updates, new_state

    return GradientTransformation(init, update)


class DivideState(NamedTuple):
    numerator: PyTree
    denominator: PyTree


@factory
def divide(numerator: GradientTransformation, denominator: GradientTransformation):
    r"""Two branches fed the same updates, divided leaf by leaf: $u = N(g) / D(g)$.

    This is how a scaled method reads: Adam is
    `divide(chain(ema(b1), bias_correction(b1)), chain(square(), ema(b2), ...))`
    (see `scale_by_adam_composed`). The denominator branch must end strictly
    positive (add an $\epsilon$); the quotient keeps the numerator's dtype.

    Args:
        numerator: the transformation giving $N(g)$.
        denominator: the transformation giving $D(g)$.

    Returns:
        A `GradientTransformation` with state `DivideState(numerator, denominator)`.
    """
    num = base.as_transformation("divide", "numerator", numerator)
    den = base.as_transformation("divide", "denominator", denominator)

    def init(params):
        return DivideState(num.init(params), den.init(params))

    def update(updates, state, params=None, **extra_args):
        n, n_state = num.update(updates, state.numerator, params, **extra_args)
        d, d_state = den.update(updates, state.denominator, params, **extra_args)
        out = jax.tree.map(lambda a, b: (a / b.astype(a.dtype)).astype(a.dtype), n, d)
        return out, DivideState(n_state, d_state)

    return GradientTransformation(init, update)


# ----------------------------------------------------------------------------
# Masks.


class _MaskedNode(NamedTuple):
    """Stands in for a leaf (or subtree) that a mask leaves out: an empty pytree."""


def _masked_node_class() -> type:
    """optax's `MaskedNode` when optax is importable (one class, so the masked states that
    optax made and those gradtx makes have the same tree structure), else gradtx's own."""
    try:
        from optax.transforms import MaskedNode as optax_masked_node
    except ImportError:  # pragma: no cover - tested in a subprocess without optax
        return _MaskedNode
    return optax_masked_node


MaskedNode: type = _masked_node_class()


class MaskedState(NamedTuple):
    inner_state: PyTree


def is_mask_function(mask: Any) -> bool:
    """Whether `mask` is a function of the params (optax's rule): a pytree whose leaves
    are all callable, e.g. a plain function. A callable *pytree* with bool leaves (an
    Equinox module built as a mask) is a mask tree, not a function."""
    leaves = jax.tree.leaves(mask)
    return bool(leaves) and all(callable(leaf) for leaf in leaves)


def _resolve_mask(fn: str, mask: Any, tree: PyTree) -> PyTree:
    mask_tree = mask(tree) if is_mask_function(mask) else mask
    leaves, treedef = jax.tree_util.tree_flatten_with_path(mask_tree)
    flags = []
    for path, m in leaves:
        if isinstance(m, (bool, np.bool_)) or (
            isinstance(m, (np.ndarray, jax.Array))
            and checks.is_concrete(m)
            and m.shape == ()
            and m.dtype == np.bool_
        ):  # a concrete 0-d JAX bool array is static too, as optax's masks take it
            flags.append(bool(m))
            continue
        raise TypeError(
            f"{fn}: mask{jax.tree_util.keystr(path)} must be a Python or NumPy bool, got "
            f"{m!r} (a mask is static: it cannot be a traced array)"
        )
    return jax.tree_util.tree_unflatten(treedef, flags)


def _first_mask_mismatch(mask_tree: PyTree, tree: PyTree) -> Any:
    """The first key path at which `mask_tree` is not a prefix of `tree` (None if none is)."""
    mask_paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(mask_tree)]
    tree_paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    for p in mask_paths:  # a mask leaf that covers no leaf of the tree
        if not any(t[: len(p)] == p for t in tree_paths):
            return p
    for t in tree_paths:  # a leaf of the tree that no mask leaf covers
        if not any(t[: len(p)] == p for p in mask_paths):
            return t
    return None


def _apply_mask(fn: str, mask_tree: PyTree, tree: PyTree) -> PyTree:
    try:
        return jax.tree.map(lambda m, t: t if m else MaskedNode(), mask_tree, tree)
    except ValueError as err:
        path = _first_mask_mismatch(mask_tree, tree)
        where = "" if path is None else f" first at key path {jax.tree_util.keystr(path)};"
        raise ValueError(
            f"{fn}: the mask's tree must match the params' tree or be a prefix of it;{where} {err}"
        ) from err


@factory
def masked(
    inner: GradientTransformation,
    mask: PyTree | Callable[[PyTree], PyTree],
    *,
    mask_compatible_extra_args: bool = False,
):
    r"""Applies `inner` only where `mask` is True; other leaves pass through unchanged.

    $$u_i = \begin{cases} \text{inner}(g)_i & \text{mask}_i \\ g_i & \text{otherwise}\end{cases}$$

    `inner` sees (and keeps state for) the masked-in leaves only.

    Args:
        inner: the transformation to apply.
        mask: a tree of Python or NumPy bools with the params' structure (or a prefix
            of it), or a function `params -> mask` (called on the updates in `update`,
            so it must depend on structure and shapes only). As in optax, the mask is a
            function when its leaves are callable: a callable pytree with bool leaves
            (e.g. an Equinox module) is a mask tree.
        mask_compatible_extra_args: also mask the extra keyword arguments of `update`
            whose tree is the updates' tree (e.g. per-parameter tags), as optax does.

    Returns:
        A `GradientTransformation` with state `MaskedState(inner_state)`.
    """
    tx = base.as_transformation("masked", "inner", inner)
    checks.check_bool("masked", "mask_compatible_extra_args", mask_compatible_extra_args)

    def init(params):
        if is_params_placeholder(params):
            return MaskedState(tx.init(params))
        mask_tree = _resolve_mask("masked", mask, params)
        return MaskedState(tx.init(_apply_mask("masked", mask_tree, params)))

    def update(updates, state, params=None, **extra_args):
        mask_tree = _resolve_mask("masked", mask, updates)
        masked_updates = _apply_mask("masked", mask_tree, updates)
        if params is not None:
            params = numerics.prune_like(updates, params)
        masked_params = None if params is None else _apply_mask("masked", mask_tree, params)
        if mask_compatible_extra_args:
            structure = numerics.flatten(updates)[1]
            extra_args = {
                k: _apply_mask("masked", mask_tree, v) if numerics.flatten(v)[1] == structure else v
                for k, v in extra_args.items()
            }
        new, inner_state = tx.update(masked_updates, state.inner_state, masked_params, **extra_args)
        out = jax.tree.map(lambda m, n, g: n if m else g, mask_tree, new, updates)
        return out, MaskedState(inner_state)

    return GradientTransformation(init, update)


class PartitionState(NamedTuple):
    inner_states: dict  # label -> MaskedState


@factory
def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: PyTree | Callable[[PyTree], PyTree],
) -> GradientTransformation:
    r"""A different transformation for each group of parameters.

    $u_i = T_{\ell(i)}(g)_i$, where $\ell(i)$ is leaf $i$'s label. Each
    transformation sees only its own leaves.

    Args:
        transforms: `{label: transformation}`.
        param_labels: a tree of labels with the params' structure (or a prefix),
            or a function `params -> labels`.

    Raises:
        ValueError: when a label has no transformation.
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError(
            f"partition: transforms must be a non-empty mapping label -> transformation, "
            f"got {transforms!r}"
        )
    txs = {
        k: base.as_transformation("partition", f"transforms[{k!r}]", t)
        for k, t in transforms.items()
    }

    def labels_of(tree):
        labels = param_labels(tree) if is_mask_function(param_labels) else param_labels
        used = set(jax.tree.leaves(labels))
        missing = used - set(txs)
        if missing:
            raise ValueError(
                f"partition: label(s) {', '.join(sorted(map(repr, missing)))} in param_labels "
                f"have no transformation; transforms has {', '.join(sorted(map(repr, txs)))}"
            )
        return labels

    def masks(labels):
        return {k: jax.tree.map(lambda lab, k=k: lab == k, labels) for k in txs}

    def init(params):
        if is_params_placeholder(params):  # optax.tree_utils.tree_map_params
            return PartitionState({k: MaskedState(t.init(params)) for k, t in txs.items()})
        ms = masks(labels_of(params))
        return PartitionState({k: masked(t, ms[k]).init(params) for k, t in txs.items()})

    def update(updates, state, params=None, **extra_args):
        ms = masks(labels_of(updates))
        new_states = {}
        for k, t in txs.items():
            updates, new_states[k] = masked(t, ms[k]).update(
                updates, state.inner_states[k], params, **extra_args
            )
        return updates, PartitionState(new_states)

    return GradientTransformation(init, update)


multi_transform = partition
