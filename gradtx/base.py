"""The one abstraction: a gradient transformation is a pair of pure functions.

```
init(params) -> state
update(updates, state, params=None, **extra_args) -> (new_updates, new_state)
```

`GradientTransformation` is a `NamedTuple` of exactly those two fields, so it
is structurally the same as `optax.GradientTransformation`: a gradtx
transformation goes wherever optax expects one (`optax.chain`, Flax's
`TrainState`) and the other way round.

Every public factory is declared with `@factory`, which attaches the record of
the call (`gradtx.spec.Spec`: the factory and its bound arguments). The record
is not a field and not a pytree leaf: JAX, optax and Flax see two functions.
This module also holds `apply_updates` and the stateless building blocks.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from gradtx import checks, numerics
from gradtx.spec import Spec, _bind, describe, spec_of
from gradtx.typing import OptState, Params, PyTree, ScalarOrSchedule, Schedule, Updates

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "OptState",
    "Params",
    "PyTree",
    "ScalarOrSchedule",
    "Schedule",
    "TransformInitFn",
    "TransformUpdateFn",
    "Updates",
    "apply_updates",
    "as_transformation",
    "factory",
    "identity",
    "stateless",
    "stateless_with_tree_map",
]


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class _Pair(NamedTuple):
    init: TransformInitFn
    update: TransformUpdateFn


class GradientTransformation(_Pair):
    """A pair of pure functions `(init, update)`, and the record of how it was made.

    `init(params)` builds the state (a pytree of arrays, usually a NamedTuple);
    `update(updates, state, params=None, **extra_args)` returns the transformed
    updates and the new state. Both are side-effect free and jittable.

    The tuple has exactly optax's two fields. `spec` is the record of the factory
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


class EmptyState(NamedTuple):
    """The state of a stateless transformation: an empty pytree."""


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
    if accepts_extra_args(update):
        if isinstance(tx, GradientTransformation):
            return tx
        return GradientTransformation(init, update, spec_of(tx))

    def update_dropping_extras(updates, state, params=None, **extra_args):
        del extra_args
        return update(updates, state, params)

    return GradientTransformation(init, update_dropping_extras)


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
    never change dtype and no precision is thrown away before the add.

    Args:
        params: the parameters $\theta$.
        updates: the updates $u$, a tree like `params`.

    Raises:
        ValueError: when `updates` and `params` differ in structure or shapes.
    """
    checks.check_tree_match("apply_updates", updates, params, "updates", "params")

    def add(p, u):
        if p is None:
            return None
        p = jnp.asarray(p)
        dtype = numerics.compute_dtype(p, u)
        return (p.astype(dtype) + jnp.asarray(u).astype(dtype)).astype(p.dtype)

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)
