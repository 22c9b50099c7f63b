r"""Optimisers as data: `to_config(tx)` describes one in JSON, `from_config(cfg)` rebuilds it.

For sweeps, experiment logs and benchmark harnesses that build optimisers from files:

```python
cfg = gradtx.to_config(gradtx.chain(gradtx.clip_by_global_norm(1.0),
                                    gradtx.adamw(gradtx.cosine_decay_schedule(3e-4, 10_000))))
json.dumps(cfg)                      # plain JSON: dicts, lists, strings, numbers
opt = gradtx.from_config(cfg)        # the same optimiser: same record, same updates
```

The description is read from the record each factory attaches (`gradtx.spec.Spec`), nested
through combinators and wrappers, with schedules as their own factory calls. A call is
`{"factory": name, "arguments": {parameter: value}}`; values are JSON scalars and lists, or

* `{"dtype": "bfloat16"}`, `{"tuple": [...]}`, `{"dict": [[key, value], ...]}`,
* `{"array": nested lists, "dtype": name}` for a NumPy or JAX array (e.g. in a mask),
* `{"prng_key": key data, "impl": name}` for a typed PRNG key (`add_noise(key=...)`),
* `{"function": name}` for one of gradtx's public functions passed as a value
  (`inject_hyperparams(gradtx.adam)`), and a nested call for a made factory.

`name` is the name under `gradtx` (`"adam"`, `"schedules.cosine_decay_schedule"` is written
`"cosine_decay_schedule"`). A value with no description — a user's function or lambda, a
foreign (optax) transformation, an arbitrary object — raises a `TypeError` naming where it
sits, e.g. `to_config: chain.transforms[1].mask is <function f>, which has no config`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradtx.checks import as_dtype
from gradtx.spec import (
    Recorded,
    describe,
    is_prng_key,
    is_transformation,
    spec_of,
    split_arguments,
)

__all__ = ["from_config", "to_config"]

_SCALARS = (bool, int, float, str, type(None))


def _public_name(fn: Any) -> str | None:
    """The name of `fn` under the `gradtx` namespace, or None when it is not public there."""
    import gradtx

    name = getattr(fn, "__name__", None)
    if isinstance(name, str) and getattr(gradtx, name, None) is fn:
        return name
    module = getattr(fn, "__module__", None) or ""
    qualname = getattr(fn, "__qualname__", None)
    if module.startswith("gradtx.") and isinstance(qualname, str) and "<" not in qualname:
        try:
            found = getattr(importlib.import_module(module), qualname, None)
        except ImportError:
            found = None
        if found is fn:
            return f"{module}:{qualname}"
    return None


def _resolve(fn: str, where: str, name: Any) -> Any:
    import gradtx

    if not isinstance(name, str):
        raise TypeError(f"{fn}: {where} must name a gradtx factory, got {name!r}")
    if ":" in name:
        module, _, qualname = name.partition(":")
        if not (module == "gradtx" or module.startswith("gradtx.")):
            raise ValueError(f"{fn}: {where} names {name!r}, which is not part of gradtx")
        found = getattr(importlib.import_module(module), qualname, None)
    else:
        found = getattr(gradtx, name, None)
    if not callable(found):
        raise ValueError(
            f"{fn}: {where} names {name!r}, which is not a gradtx factory; names are those "
            "under gradtx, e.g. 'adam' or 'cosine_decay_schedule'"
        )
    return found


def to_config(obj: Any) -> dict[str, Any]:
    """A JSON-serialisable description of a gradtx transformation or schedule.

    Args:
        obj: a transformation or schedule made by gradtx's factories.

    Returns:
        `{"factory": name, "arguments": {...}}`, nested; `from_config` rebuilds `obj`.

    Raises:
        TypeError: naming the path of the first value that has no description (a user
            function or lambda, a foreign transformation, an arbitrary object).
    """
    spec = spec_of(obj)
    if spec is None:
        raise TypeError(
            f"to_config: {describe(obj)} was not made by a gradtx factory, so it has no "
            "description; build it from gradtx's factories"
        )
    return _encode(obj, spec.name)


def _encode(value: Any, where: str) -> Any:
    spec = spec_of(value)
    if spec is not None:
        if isinstance(spec.factory, Recorded):
            factory: Any = _encode(spec.factory, f"{where}'s factory")
        else:
            factory = _public_name(spec.factory)
            if factory is None:
                raise TypeError(
                    f"to_config: {where} was made by {describe(spec.factory)}, which is not "
                    "a public gradtx factory"
                )
        arguments = {k: _encode(v, f"{where}.{k}") for k, v in spec.arguments.items()}
        return {"factory": factory, "arguments": arguments}
    if isinstance(value, _SCALARS):
        return value
    dtype = as_dtype(value)
    if dtype is not None:
        return {"dtype": dtype.name}
    if is_prng_key(value):
        data = np.asarray(jax.random.key_data(value)).tolist()
        return {"prng_key": data, "impl": str(jax.random.key_impl(value))}
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and not isinstance(
        value, jax.core.Tracer
    ):
        array = np.asarray(value)
        return {"array": array.tolist(), "dtype": array.dtype.name}
    if type(value) is list:
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if type(value) is tuple:
        return {"tuple": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if type(value) is dict:
        return {
            "dict": [
                [_encode(k, f"{where} key {k!r}"), _encode(v, f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    if callable(value) and not is_transformation(value):
        name = _public_name(value)
        if name is not None:
            return {"function": name}
    raise TypeError(
        f"to_config: {where} is {describe(value)}, which has no config; only gradtx's "
        "factories and schedules, numbers, strings, dtypes, arrays and lists, tuples and "
        "dicts of them can be exported"
    )


def from_config(config: Mapping[str, Any]) -> Any:
    """Rebuilds the transformation or schedule `to_config` described.

    Each factory is called again with the recorded arguments, so its checks run again.

    Args:
        config: what `to_config` returned (or the same read back from JSON).

    Raises:
        TypeError, ValueError: naming the path of a part that is not a description.
    """
    if not (isinstance(config, Mapping) and "factory" in config):
        raise TypeError(
            f"from_config: config must be a dict with 'factory' and 'arguments', as made by "
            f"to_config, got {type(config).__name__}"
        )
    return _decode(config, "config")


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list):
        return [_decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, Mapping) or len(value) not in (1, 2):
        raise TypeError(f"from_config: {where} is not a config value: {value!r}")
    if "factory" in value:
        factory = value["factory"]
        fn = (
            _decode(factory, f"{where}.factory")
            if isinstance(factory, Mapping)
            else _resolve("from_config", f"{where}.factory", factory)
        )
        arguments = value.get("arguments", {})
        if not isinstance(arguments, Mapping):
            raise TypeError(f"from_config: {where}.arguments must be a dict, got {arguments!r}")
        decoded = {k: _decode(v, f"{where}.arguments.{k}") for k, v in arguments.items()}
        return _call(fn, decoded, where)
    if "prng_key" in value and "impl" in value:
        data = jnp.asarray(np.asarray(value["prng_key"], dtype=np.uint32))
        return jax.random.wrap_key_data(data, impl=value["impl"])
    if "dtype" in value and "array" in value:
        return jnp.asarray(np.asarray(value["array"], dtype=value["dtype"]))
    (kind, payload), *_ = value.items()
    if kind == "dtype":
        return jnp.dtype(payload)
    if kind == "tuple":
        return tuple(_decode(v, f"{where}[{i}]") for i, v in enumerate(payload))
    if kind == "dict":
        return {_decode(k, where): _decode(v, f"{where}[{k!r}]") for k, v in payload}
    if kind == "function":
        return _resolve("from_config", f"{where}.function", payload)
    raise TypeError(f"from_config: {where} is not a config value: {value!r}")


def _call(fn: Any, arguments: dict[str, Any], where: str) -> Any:
    """`fn` called with `arguments` bound by name."""
    signature = inspect.signature(fn)
    unknown = set(arguments) - set(signature.parameters)
    if unknown:
        raise TypeError(
            f"from_config: {where} gives {sorted(unknown)}, which {describe(fn)} does not take"
        )
    args, kwargs = split_arguments(signature, arguments)
    return fn(*args, **kwargs)
