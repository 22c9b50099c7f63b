"""The one abstraction: a gradient transformation is a pair of pure functions.

```
init(params) -> state
update(updates, state, params=None, **extra_args) -> (new_updates, new_state)
```

`GradientTransformation` is a `NamedTuple` of exactly those two fields. When optax is
installed it is a subclass of `optax.GradientTransformationExtraArgs` (and so of
`optax.GradientTransformation`): optax's wrappers then forward extra arguments such as
`value=` to gradtx pieces, and libraries that check `isinstance(tx,
optax.GradientTransformation)` accept gradtx optimisers. Without optax it is a plain
two-field NamedTuple and gradtx works alone (optax is not a dependency of gradtx).

Every public factory is declared with `@factory`, which attaches the record of
the call (`gradtx.spec.Spec`: the factory and its bound arguments). The record
is not a field and not a pytree leaf: JAX, optax and Flax see two functions.
This module also holds `apply_updates` and the stateless building blocks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from gradtx import checks, numerics
from gradtx.spec import Spec, _bind, describe, spec_of
from gradtx.typing import OptState, Params, PyTree, ScalarOrSchedule, Schedule, Updates

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "OptState",
    "Params",
    "PyTree",
    "ScalarOrSchedule",
    "Schedule",
    "TransformInitFn",
    "TransformUpdateExtraArgsFn",
    "TransformUpdateFn",
    "Updates",
    "apply_updates",
    "as_transformation",
    "factory",
    "identity",
    "init_empty_state",
    "stateless",
    "stateless_with_tree_map",
    "with_extra_args_support",
]


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class TransformUpdateExtraArgsFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class _Pair(NamedTuple):
    init: TransformInitFn
    update: TransformUpdateFn


def _optax_base() -> type:
    """`optax.GradientTransformationExtraArgs` when optax is importable, else `_Pair`."""
    try:
        import optax
    except ImportError:
        return _Pair
    return optax.GradientTransformationExtraArgs


_EXTRA_ARGS_BASE: type = _optax_base()

if TYPE_CHECKING:
    _Base = _Pair
else:
    _Base = _EXTRA_ARGS_BASE


class GradientTransformation(_Base):
    """A pair of pure functions `(init, update)`, and the record of how it was made.

    `init(params)` builds the state (a pytree of arrays, usually a NamedTuple);
    `update(updates, state, params=None, **extra_args)` returns the transformed
    updates and the new state. Both are side-effect free and jittable.

    The tuple has exactly optax's two fields (and is an `optax.GradientTransformation`
    and `optax.GradientTransformationExtraArgs` when optax is installed; attributes can
    be set on it, as on optax's). `spec` is the record of the factory
    call that made it (None for a pair built by hand); it prints as that call,
    e.g. `chain(scale_by_adam(b1=0.9, ...), scale_by_learning_rate(0.001))`.
    Rebuilding the tuple (`_replace`, JAX's unflattening) drops the record, since
    the pair is then no longer what the factory made.
    """

    def __new__(cls, init: TransformInitFn, update: TransformUpdateFn, spec: Spec | None = None):
        self = super().__new__(cls, init, update)
        if spec is not None:
            self.__dict__["_spec"] = spec
        return self

    @property
    def spec(self) -> Spec | None:
        """The record of the factory call that made this transformation, if any."""
        return self.__dict__.get("_spec")

    def __repr__(self) -> str:
        if self.spec is not None:
            return describe(self)
        return f"GradientTransformation(init={self.init!r}, update={self.update!r})"


# Every gradtx transformation's update takes `**extra_args`: optax's name for that kind.
GradientTransformationExtraArgs = GradientTransformation


class EmptyState(NamedTuple):
    """The state of a stateless transformation: an empty pytree."""


def init_empty_state(params: Params) -> EmptyState:
    """The `init` of a stateless transformation: ignores `params`, returns `EmptyState()`.

    Args:
        params: the parameters (unused).
    """
    del params
    return EmptyState()


def factory(fn: Callable[..., GradientTransformation]) -> Callable[..., GradientTransformation]:
    """Declares a public factory of transformations: what it returns carries its `Spec`.

    ```python
    @factory
    def trace(decay: float, nesterov: bool = False, ...) -> GradientTransformation:
        ...
        return GradientTransformation(init, update)
    ```

    The factory runs first (its checks raise their own messages); then its call is bound
    to its signature, defaults applied, and recorded on the returned transformation. The
    record's `factory` is the decorated function itself, the object users import.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> GradientTransformation:
        tx = fn(*args, **kwargs)
        spec = Spec(build, _bind(fn, signature, args, kwargs))
        return GradientTransformation(tx.init, tx.update, spec)

    return build


def accepts_extra_args(update: Callable) -> bool:
    """True when `update` takes `**extra_args` (gradtx pieces, optax's ExtraArgs ones)."""
    try:
        params = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _keyword_names(update: Callable) -> frozenset[str]:
    """The extra arguments `update` names in its signature (e.g. `value`), beyond the three."""
    try:
        params = list(inspect.signature(update).parameters.values())
    except (TypeError, ValueError):
        return frozenset()
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(p.name for p in params[3:] if p.kind in kinds)


def as_transformation(fn: str, where: str, tx: Any) -> GradientTransformation:
    """`tx` (gradtx, optax, any `init`/`update` pair) as a GradientTransformation whose
    update takes `**extra_args`; those a foreign update cannot take are dropped.

    Raises:
        TypeError: naming `fn` and `where` when `tx` has no callable init/update.
    """
    init, update = getattr(tx, "init", None), getattr(tx, "update", None)
    if not (callable(init) and callable(update)):
        raise TypeError(
            f"{fn}: {where} must be a gradient transformation (an object with init and "
            f"update), got {type(tx).__name__}"
        )
    if accepts_extra_args(update) or isinstance(tx, _EXTRA_ARGS_BASE):
        # optax's ExtraArgs transformations get every extra argument, as optax passes them
        if isinstance(tx, GradientTransformation):
            return tx
        return GradientTransformation(init, update, spec_of(tx))
    named = _keyword_names(update)

    def update_dropping_extras(updates, state, params=None, **extra_args):
        kept = {k: v for k, v in extra_args.items() if k in named}
        return update(updates, state, params, **kept)

    return GradientTransformation(init, update_dropping_extras)


def with_extra_args_support(tx: Any) -> GradientTransformation:
    """`tx` as a transformation whose `update` accepts (and, if `tx` cannot take them,
    drops) extra keyword arguments; optax's name. A gradtx transformation is returned
    as it is.

    Args:
        tx: any object with `init` and `update` (gradtx, optax, hand-made).

    Raises:
        TypeError: when `tx` has no callable `init`/`update`.
    """
    return as_transformation("with_extra_args_support", "tx", tx)


# ----------------------------------------------------------------------------
# Stateless pieces.


def stateless_pair(f: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    """The `(init, update)` of a stateless transformation `f(updates, params) -> updates`.

    The building block of every piece without state (`identity`, `clip`, `square`, ...);
    the public factory that calls it gives the pair its record.
    """

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return f(updates, params), state

    return GradientTransformation(init, update)


@factory
def identity() -> GradientTransformation:
    """Passes updates through unchanged: $u_t = g_t$. Stores nothing."""
    return stateless_pair(lambda updates, params: updates)


@factory
def stateless(
    f: Callable[[Updates, Params | None], Updates], name: str | None = None
) -> GradientTransformation:
    """A transformation from a function of the whole update tree: $u_t = f(g_t, \\theta_t)$.

    Args:
        f: `f(updates, params) -> updates`, pure and jittable.
        name: a label for the reader, shown when the transformation is printed.
    """
    if not callable(f):
        raise TypeError(f"stateless: f must be callable, got {type(f).__name__}")
    return stateless_pair(f)


@factory
def stateless_with_tree_map(
    f: Callable[[jax.Array, jax.Array | None], jax.Array], name: str | None = None
) -> GradientTransformation:
    """A stateless transformation applied leaf by leaf: $u = f(g, \\theta)$ per leaf.

    Args:
        f: `f(update_leaf, param_leaf_or_None) -> update_leaf`.
        name: a label for the reader, shown when the transformation is printed.
    """
    if not callable(f):
        raise TypeError(f"stateless_with_tree_map: f must be callable, got {type(f).__name__}")

    def leafwise(updates, params):
        if params is None:
            return jax.tree.map(lambda g: f(g, None), updates)
        return jax.tree.map(f, updates, params)

    return stateless_pair(leafwise)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns $\\theta + u$ leaf by leaf, each result in its parameter's dtype.

    The sum is taken in the wider of the two dtypes (e.g. float32 updates on
    bfloat16 params are added in float32) and then cast back, so parameters
    never change dtype and no precision is thrown away before the add. Complex
    parameters get the complex sum. A `None` parameter stays `None` (its update is not
    read), as in optax, so trees with static leaves pass through.

    Args:
        params: the parameters $\theta$.
        updates: the updates $u$, a tree like `params`.

    Raises:
        ValueError: when `updates` and `params` differ in structure or shapes.
        TypeError: when a complex update meets a real parameter (the imaginary part
            would be dropped).
    """
    checks.check_tree_match("apply_updates", updates, params, "updates", "params")
    leaves_u = jax.tree.leaves(updates, is_leaf=lambda x: x is None)
    leaves_p, treedef = numerics.flatten(params, is_leaf=lambda x: x is None)

    def add(i, p, u):
        if p is None:
            return None
        p = p if isinstance(p, jax.Array) else jnp.asarray(p)
        if numerics.is_complex(u) and not numerics.is_complex(p):
            path = jax.tree_util.keystr(tree_leaves_with_none(params)[i][0])
            raise TypeError(
                f"apply_updates: updates{path} is {jnp.result_type(u)} but params{path} is "
                f"{p.dtype}: adding would drop the imaginary part; make the parameter complex "
                "or take the real part of the update explicitly"
            )
        dtype = numerics.compute_dtype(p, u)
        return numerics.cast(numerics.cast(p, dtype) + numerics.cast(u, dtype), p.dtype)

    return treedef.unflatten([add(i, p, u) for i, (p, u) in enumerate(zip(leaves_p, leaves_u))])


def tree_leaves_with_none(tree: PyTree) -> list[tuple[Any, Any]]:
    """`(key path, leaf)` pairs of `tree`, with `None` counted as a leaf."""
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
