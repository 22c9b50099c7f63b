r"""What a transformation (or a schedule) is: one explicit record, read by everything else.

Every public factory declares itself once, with a decorator: `@factory` for those that return a
`GradientTransformation`, `@recorded` for those that return another callable (schedules, the
factories made by `inject_hyperparams`). Calling the factory binds its arguments to its
signature (defaults applied) and attaches a `Spec`:

```python
>>> spec_of(gradtx.trace(0.9))
Spec(factory=trace, arguments={'decay': 0.9, 'nesterov': False, 'accumulator_dtype': None})
```

Printing (`describe`), `apply_step`'s choice of native kernel (by the factory object's
identity and its bound arguments), `state_summary` and config export (`gradtx.to_config`) all
read this record and nothing else. Hyper-parameters are written once, in the signature.

Printing follows one rule: a required argument is shown by position, an optional one by
keyword, and an optional one left at a default that is a flag or an off switch (a bool, None,
zero or an empty tuple) is not shown; other defaults (rates, decays, epsilons) are. What can
be printed as Python is printed so, and evaluates back to an equal object; what cannot (a
user's function, a lambda, a foreign transformation) is shown in angle brackets,
`stateless(<function double>)`, which no one can mistake for Python.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from gradtx.checks import as_dtype


@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
    """The record of one factory call: the factory object and its bound arguments.

    Attributes:
        factory: the public factory that was called (compared by identity), or for a factory
            made by another one (`inject_hyperparams(adam)`) that made factory, a `Recorded`.
        arguments: every parameter of the factory's signature, in order, bound to the value it
            was called with or its default (read-only).
    """

    factory: Callable[..., Any]
    arguments: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The factory's name, e.g. `"trace"`; for a made factory, its description."""
        if isinstance(self.factory, Recorded):
            return describe(self.factory)
        return getattr(self.factory, "__name__", type(self.factory).__name__)

    @property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.factory)

    def call_arguments(self) -> tuple[list[Any], dict[str, Any]]:
        """`(args, kwargs)` such that `factory(*args, **kwargs)` makes the same call again."""
        return split_arguments(self.signature, self.arguments)

    def rebuild(self) -> Any:
        """Calls the factory again with the same arguments."""
        args, kwargs = self.call_arguments()
        return self.factory(*args, **kwargs)

    def inner(self) -> tuple[Any, ...]:
        """The transformations among the arguments (those of `chain`, `masked`, ...), in order."""
        return tuple(x for x in _walk(tuple(self.arguments.values())) if is_transformation(x))

    def __repr__(self) -> str:
        items = ", ".join(f"{k!r}: {describe(v)}" for k, v in self.arguments.items())
        return f"Spec(factory={self.name}, arguments={{{items}}})"


def split_arguments(
    signature: inspect.Signature, arguments: Mapping[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Arguments by parameter name as the `(args, kwargs)` of a call: `*args`/`**kwargs`
    parameters are splatted, positional-only ones passed by position, the rest by name."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, p in signature.parameters.items():
        if name not in arguments:
            continue
        value = arguments[name]
        if p.kind is p.VAR_POSITIONAL:
            args.extend(value)
        elif p.kind is p.VAR_KEYWORD:
            kwargs.update(value)
        elif p.kind is p.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[name] = value
    return args, kwargs


def _bind(fn: Callable[..., Any], signature: inspect.Signature, args, kwargs) -> Mapping:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return types.MappingProxyType(dict(bound.arguments))


class Recorded:
    """A callable with a record: a schedule or a made factory that knows how it was built.

    Calls go to the wrapped function; it prints as the call that built it, e.g.
    `cosine_decay_schedule(0.1, 100)`, and `gradtx.to_config` exports it.
    """

    __slots__ = ("__wrapped__", "spec", "__weakref__")  # jax.jit keeps weak references

    def __init__(self, fn: Callable[..., Any], spec: Spec):
        self.__wrapped__ = fn
        self.spec = spec

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.__wrapped__)

    @property
    def __name__(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return describe(self)


def recorded(fn: Callable[..., Callable[..., Any]]) -> Callable[..., Recorded]:
    """Declares a factory of callables (e.g. a schedule factory): its results carry a `Spec`.

    Used as a decorator on the public factory; the factory's own checks run first, so bad
    arguments raise its message.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> Recorded:
        made = fn(*args, **kwargs)
        return Recorded(made, Spec(build, _bind(fn, signature, args, kwargs)))

    return build


def spec_of(value: Any) -> Spec | None:
    """The record of a gradtx transformation or recorded callable, None for anything else."""
    if isinstance(value, Recorded):
        return value.spec
    if is_transformation(value):
        spec = getattr(value, "spec", None)
        return spec if isinstance(spec, Spec) else None
    return None


def is_transformation(value: Any) -> bool:
    """A gradtx or foreign (optax) transformation: a tuple with callable `init` and `update`."""
    return (
        isinstance(value, tuple)
        and callable(getattr(value, "init", None))
        and callable(getattr(value, "update", None))
    )


def _walk(value: Any) -> Iterator[Any]:
    """`value` and, inside plain tuples, lists and dicts, everything it holds."""
    yield value
    if type(value) in (tuple, list):
        for v in value:
            yield from _walk(v)
    elif type(value) is dict:
        for v in value.values():
            yield from _walk(v)


# ----------------------------------------------------------------------------
# Printing.


def _is_quiet_default(value: Any, default: Any) -> bool:
    """True when `value` is its parameter's default and that default is a flag or an off
    switch (a bool, None, zero or `()`), which a reader need not see."""
    if default is None or isinstance(default, bool):
        return value is default
    if type(default) is tuple and default == ():
        return type(value) is tuple and value == ()
    if type(default) in (int, float) and default == 0:
        return type(value) in (int, float) and value == 0
    return False


def describe_call(spec: Spec) -> str:
    """`name(required, ..., optional=value, ...)`, by the printing rule of this module."""
    parts: list[str] = []
    for name, p in spec.signature.parameters.items():
        if name not in spec.arguments:
            continue
        value = spec.arguments[name]
        if p.kind is p.VAR_POSITIONAL:
            parts += [describe(v) for v in value]
        elif p.kind is p.VAR_KEYWORD:
            parts += [f"{k}={describe(v)}" for k, v in value.items()]
        elif p.default is p.empty and p.kind is not p.KEYWORD_ONLY:
            parts.append(describe(value))
        elif p.default is p.empty or not _is_quiet_default(value, p.default):
            parts.append(f"{name}={describe(value)}")
    return f"{spec.name}({', '.join(parts)})"


def _foreign_transformation(tx: Any) -> str:
    """`<transformation optax.clip_by_global_norm>`: the factory a foreign update came from."""
    update = tx.update
    qualname = getattr(update, "__qualname__", None)
    module = (getattr(update, "__module__", None) or "").split(".")[0]
    if isinstance(qualname, str) and "<locals>" in qualname:
        where = qualname.split(".<locals>")[0]
        prefix = f"{module}." if module and module not in ("__main__", "gradtx") else ""
        return f"<transformation {prefix}{where}>"
    return f"<transformation {type(tx).__name__}>"


def is_prng_key(value: Any) -> bool:
    """A concrete array of typed PRNG keys (`jax.random.key(seed)`), which NumPy cannot hold."""
    return (
        isinstance(value, jax.Array)
        and not isinstance(value, jax.core.Tracer)
        and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)
    )


def _describe_function(f: Any) -> str:
    """A callable without a record: bare when it is gradtx's public function, else in `<>`."""
    qualname = getattr(f, "__qualname__", None)
    module = getattr(f, "__module__", None) or ""
    if not isinstance(qualname, str):
        return f"<{type(f).__name__} object>"
    if getattr(f, "__name__", None) == "<lambda>":
        try:
            names = ", ".join(inspect.signature(f).parameters)
        except (TypeError, ValueError):
            names = "..."
        return f"<lambda {names}>"
    if module.split(".")[0] == "gradtx" and "<" not in qualname:
        return qualname
    return f"<function {qualname}>"


def describe(value: Any) -> str:
    """`value` as written in the call that built a transformation.

    Recorded transformations and callables print as their call, dtypes as `jnp.float32`,
    scalars by value, other arrays by shape and dtype, containers item by item; what has no
    Python spelling is shown in angle brackets.
    """
    spec = spec_of(value)
    if spec is not None:
        return describe_call(spec)
    if is_transformation(value):
        return _foreign_transformation(value)
    dtype = as_dtype(value)
    if dtype is not None:
        return f"jnp.{dtype.name}"
    if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
        return _describe_function(value)
    if isinstance(value, jax.core.Tracer):
        return f"<traced {value.dtype}{list(value.shape)}>"
    if is_prng_key(value):
        data = np.asarray(jax.random.key_data(value)).tolist()
        return f"<PRNG key {jax.random.key_impl(value)} {data}>"
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        if np.ndim(value) == 0:
            return str(np.asarray(value)[()])
        return f"<array shape={tuple(np.shape(value))} dtype={np.result_type(value).name}>"
    if type(value) is dict:
        items = ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items())
        return f"{{{items}}}"
    if type(value) in (list, tuple):
        parts = [describe(v) for v in value]
        if type(value) is tuple:
            return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"
        return f"[{', '.join(parts)}]"
    return repr(value)
