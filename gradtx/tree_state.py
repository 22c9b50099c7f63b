r"""Optimiser states as pytrees: looking values up, setting them, mapping over the params.

`NamedTupleKey`, `tree_get_all_with_path`, `tree_get`, `tree_set` and `tree_map_params` of
`optax.tree_utils` (optax 0.2.8), and `is_params_placeholder`, the test for the stand-in for
the params that `tree_map_params` passes to `init`; all of them in `gradtx.tree_utils`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax

from gradtx import numerics
from gradtx.typing import OptState, Params, PyTree

__all__ = [
    "NamedTupleKey",
    "is_params_placeholder",
    "tree_get",
    "tree_get_all_with_path",
    "tree_map_params",
    "tree_set",
]


# ----------------------------------------------------------------------------
# Looking values up in (and setting them into) optimiser states.


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """The path entry of a NamedTuple's field, naming the tuple: `ScaleByAdamState.mu`.

    `tree_get_all_with_path`, `tree_get` and `tree_set` write the fields of NamedTuples
    (optimiser states) so in their paths, where `jax.tree_util` writes a bare `.mu`, so that a
    `filtering(path, value)` function can tell fields of the same name apart by their state.

    Attributes:
        tuple_name: the NamedTuple's class name, e.g. `"ScaleByAdamState"`.
        name: the field's name, e.g. `"mu"`.
    """

    tuple_name: str
    name: str

    def __str__(self) -> str:
        return f"{self.tuple_name}.{self.name}"


KeyPath = tuple[Any, ...]
Filtering = Callable[[KeyPath, Any], bool]


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _has_any(node: Any, keys: Sequence[Any]) -> bool:
    """A NamedTuple with a field or class name in `keys`, or a dict with a key in `keys`."""
    if _is_named_tuple(node):
        return any(k in node._fields or k == type(node).__name__ for k in keys)
    if isinstance(node, dict):
        for k in keys:
            try:
                if k in node:
                    return True
            except TypeError:  # an unhashable key
                continue
    return False


def _entries(tree: PyTree, stop: Callable[[Any], bool]) -> list[tuple[KeyPath, Any]]:
    """`tree`'s leaves with paths, NamedTuple fields as `NamedTupleKey`, stopping at `stop`."""
    out: list[tuple[KeyPath, Any]] = []
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: stop(x) or _is_named_tuple(x)
    )
    for path, node in flat[0]:
        if stop(node) or not _is_named_tuple(node):
            out.append((tuple(path), node))
            continue
        for field in node._fields:
            key = NamedTupleKey(type(node).__name__, field)
            for sub, value in _entries(getattr(node, field), stop):
                out.append(((*path, key, *sub), value))
    return out


def _children(path: KeyPath, node: Any) -> list[tuple[KeyPath, Any]]:
    if _is_named_tuple(node):
        name = type(node).__name__
        return [((*path, NamedTupleKey(name, f)), getattr(node, f)) for f in node._fields]
    return [((*path, jax.tree_util.DictKey(k)), v) for k, v in node.items()]


def _direct(path: KeyPath, node: Any, key: Any) -> tuple[KeyPath, Any]:
    """The value `node` holds under `key` (or `node` itself when it is the NamedTuple `key`)."""
    if _is_named_tuple(node):
        if key == type(node).__name__:
            return path, node
        return (*path, NamedTupleKey(type(node).__name__, key)), getattr(node, key)
    return (*path, jax.tree_util.DictKey(key)), node[key]


def _injected_types() -> tuple[type, ...]:
    """The states of `inject_hyperparams`: gradtx's, and optax's when optax is installed."""
    from gradtx.hyperparams import InjectStatefulHyperparamsState

    try:
        import optax
    except ImportError:
        return (InjectStatefulHyperparamsState,)
    return (InjectStatefulHyperparamsState, optax.InjectStatefulHyperparamsState)


def _schedule_states(tree: PyTree) -> set[int]:
    """The `hyperparams_states` dicts of the injected states in `tree` (by id).

    They are keyed by hyper-parameter name but hold the schedules' states; the value of
    the hyper-parameter is in `hyperparams`. Skipping them, `tree_get(state,
    "learning_rate")` finds the one value also when the rate is scheduled.
    """
    types = _injected_types()
    nodes: list[Any] = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, types))
    return {id(n.hyperparams_states) for n in nodes if isinstance(n, types)}  # type: ignore[attr-defined]


def _find(tree: PyTree, key: Any, skip: set[int] | None = None) -> list[tuple[KeyPath, Any]]:
    """Every value under `key`, outermost first (optax's order): the nodes holding it, in
    leaf order, then what their children hold."""
    skip = set() if skip is None else skip
    holds = functools.partial(_has_any, keys=(key,))
    holders = [(p, n) for p, n in _entries(tree, holds) if holds(n) and id(n) not in skip]
    found = [_direct(p, n, key) for p, n in holders]
    for path, node in holders:
        for child_path, child in _children(path, node):
            found += [((*child_path, *sub), v) for sub, v in _find(child, key, skip)]
    return found


def _check_filtering(fn: str, filtering: Any) -> None:
    if filtering is not None and not callable(filtering):
        raise TypeError(
            f"{fn}: filtering must be a function (path, value) -> bool or None, got "
            f"{type(filtering).__name__}"
        )


def tree_get_all_with_path(
    tree: PyTree, key: Any, filtering: Filtering | None = None
) -> list[tuple[KeyPath, Any]]:
    r"""Every value held under `key` in `tree`, with its path.

    `key` is a dict key, a NamedTuple field name or a NamedTuple class name (which finds the
    tuple itself). Paths are tuples of `jax.tree_util` keys, with `NamedTupleKey` for
    NamedTuple fields; `jax.tree_util.keystr(path)` prints one, e.g.
    `InjectHyperparamsState.hyperparams['learning_rate']`. Values nested in a found value are
    found too.

    Args:
        tree: the tree to search, e.g. an optimiser state.
        key: the key, field or NamedTuple name to look for.
        filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.

    Returns:
        A list of `(path, value)`, outer matches before the ones nested in them.
    """
    _check_filtering("tree_get_all_with_path", filtering)
    found = _find(tree, key)
    if filtering is not None:
        found = [(p, v) for p, v in found if filtering(p, v)]
    return found


def tree_get(
    tree: PyTree, key: Any, default: Any = None, filtering: Filtering | None = None
) -> Any:
    r"""The one value held under `key` in `tree` (`default` when there is none).

    Finds what `tree_get_all_with_path(tree, key, filtering)` finds, except inside the
    `hyperparams_states` of an injected state (gradtx's or optax's): those are the
    schedules' states, named like their hyper-parameters. So `tree_get(state,
    "learning_rate")` is the rate the last step used, scheduled or not (optax raises
    "found multiple values" there).

    Args:
        tree: the tree to search, e.g. an optimiser state.
        key: the key, field or NamedTuple name to look for.
        default: returned when `key` is not found.
        filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.

    Raises:
        KeyError: when several values match; the message lists their paths.
    """
    _check_filtering("tree_get", filtering)
    found = _find(tree, key, _schedule_states(tree))
    if filtering is not None:
        found = [(p, v) for p, v in found if filtering(p, v)]
    if len(found) > 1:
        paths = ", ".join(jax.tree_util.keystr(p) for p, _ in found)
        raise KeyError(
            f"tree_get: found {len(found)} values for {key!r} (at {paths}); pass "
            "filtering=lambda path, value: ... to choose one, e.g. by the NamedTupleKey in "
            "its path"
        )
    return found[0][1] if found else default


def tree_set(tree: PyTree, filtering: Filtering | None = None, /, **kwargs: Any) -> PyTree:
    r"""A copy of `tree` with the values held under each keyword's name replaced.

    Every value that `tree_get` would consider (so not the schedules' states inside an
    injected state's `hyperparams_states`) is replaced by
    `kwargs[name]` (a NamedTuple found by its class name is replaced whole); values nested in
    a replaced one go with it.

    Args:
        tree: the tree, e.g. an optimiser state.
        filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.
        **kwargs: `name=new_value` for each key, field or NamedTuple name to set.

    Raises:
        KeyError: when a name is not found (or no match passes `filtering`).
    """
    fn = "tree_set"
    _check_filtering(fn, filtering)
    skip = _schedule_states(tree)  # schedules' states, named like the hyper-parameters
    for name in kwargs:
        found = _find(tree, name, skip)
        if not [(p, v) for p, v in found if filtering is None or filtering(p, v)]:
            where = " that passes the filtering" if filtering is not None else ""
            raise KeyError(f"{fn}: no value{where} is held under {name!r} in the tree")

    def accepts(path, value):
        return filtering is None or filtering(path, value)

    def rebuild(path: KeyPath, node: Any) -> Any:
        if _is_named_tuple(node):
            name = type(node).__name__
            if name in kwargs and accepts(path, node):
                return kwargs[name]
            fields = {}
            for child_path, child in _children(path, node):
                field = child_path[-1].name
                fields[field] = replace_or_descend(field, child_path, child)
            return node._replace(**fields)
        if type(node) is dict:
            keyed = id(node) not in skip  # a schedules' states dict: its keys are not values
            return {
                k: replace_or_descend(k, child_path, child, keyed)
                for (child_path, child), k in zip(_children(path, node), node)
            }
        children, treedef = numerics.flatten_with_path(node, lambda x: x is not node)
        if treedef.num_nodes == 1:  # a leaf
            return node
        new = []
        for sub, child in children:
            entry = sub[0]
            dict_key = entry.key if isinstance(entry, jax.tree_util.DictKey) else None
            new.append(replace_or_descend(dict_key, (*path, *sub), child, dict_key is not None))
        return treedef.unflatten(new)

    def replace_or_descend(name: Any, path: KeyPath, child: Any, keyed: bool = True) -> Any:
        try:
            hit = keyed and name in kwargs
        except TypeError:
            hit = False
        if hit and accepts(path, child):
            return kwargs[name]
        return rebuild(path, child)

    return rebuild((), tree)


# ----------------------------------------------------------------------------
# Mapping over the copies of the params inside an optimiser state.


@jax.tree_util.register_pytree_node_class
class _ParamsPlaceholder:
    """Stands in for the params when `tree_map_params` calls `init` (optax not installed)."""

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux, children
        return cls()


_OPTAX_STATE_UTILS = "optax.tree_utils._state_utils"


def _placeholder_types() -> tuple[type, ...]:
    optax_utils = sys.modules.get(_OPTAX_STATE_UTILS)  # its placeholder exists only if imported
    theirs = getattr(optax_utils, "_ParamsPlaceholder", None)
    return (_ParamsPlaceholder,) if theirs is None else (_ParamsPlaceholder, theirs)


def is_params_placeholder(x: Any) -> bool:
    """True for the stand-in for the params that `tree_map_params` passes to `init`.

    Recognises gradtx's and optax's (`optax.tree_map_params` calls `init` with optax's), so a
    combinator whose `init` reshapes the params (e.g. by a mask) can pass it through whole,
    as optax's `masked` does.

    Args:
        x: any value, e.g. the `params` given to an `init`.
    """
    return isinstance(x, _placeholder_types())


def _new_placeholder() -> Any:
    """optax's placeholder when optax is installed (so optax's `masked` recognises it too)."""
    try:
        optax_utils = importlib.import_module(_OPTAX_STATE_UTILS)
    except ImportError:
        return _ParamsPlaceholder()
    theirs = getattr(optax_utils, "_ParamsPlaceholder", None)
    return _ParamsPlaceholder() if theirs is None else theirs()


def tree_map_params(
    initable: Callable[[Params], OptState] | Any,
    f: Callable[..., Any],
    state: OptState,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[Params], bool] | None = None,
) -> OptState:
    r"""Maps `f` over every copy of the params inside an optimiser state.

    `initable`'s `init` is called with a placeholder for the params; wherever the state it
    builds holds the placeholder, the matching part of `state` is a tree shaped like the
    params (e.g. Adam's `mu` and `nu`), and is replaced by `jax.tree.map(f, part, *rest)`.
    Every other leaf $v$ (counts, injected hyper-parameters) becomes
    `transform_non_params(v)`, or stays. Typical use: sharding specs for a state from the
    params' specs.

    Args:
        initable: the transformation (an object with `init`) or an `init` function.
        f: applied leaf by leaf to each copy of the params, with the leaves of `rest`.
        state: the state to map over, made by `initable`'s `init`.
        *rest: trees shaped like the params, passed to `f` after the state's leaf.
        transform_non_params: applied to every leaf of `state` that is not part of a copy of
            the params; None leaves them unchanged.
        is_leaf: passed to `jax.tree.map` over each copy of the params (e.g. to stop at
            `MaskedNode`s).

    Raises:
        TypeError: when `initable` has no `init` and is not callable, or `f` is not callable.
        ValueError: when `state` does not have the structure `initable`'s `init` gives.
    """
    fn = "tree_map_params"
    init = getattr(initable, "init", None)
    if not callable(init):
        if not callable(initable):
            raise TypeError(
                f"{fn}: initable must be a transformation (with init) or an init function, "
                f"got {type(initable).__name__}"
            )
        init = initable
    if not callable(f):
        raise TypeError(f"{fn}: f must be callable, got {type(f).__name__}")
    if transform_non_params is not None and not callable(transform_non_params):
        raise TypeError(
            f"{fn}: transform_non_params must be callable or None, got "
            f"{type(transform_non_params).__name__}"
        )
    shaped = init(_new_placeholder())
    marked, treedef = numerics.flatten_with_path(shaped, is_params_placeholder)
    markers = [m for _, m in marked]
    try:
        values = treedef.flatten_up_to(state)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{fn}: state does not have the tree structure that initable's init gives; pass "
            f"the state made by the same transformation ({err})"
        ) from None

    def visit(marker, value):
        if is_params_placeholder(marker):
            return jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        if transform_non_params is not None:
            return transform_non_params(value)
        return value

    return treedef.unflatten([visit(m, v) for m, v in zip(markers, values)])
