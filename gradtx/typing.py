"""The type aliases of gradtx's signatures (the same names as optax's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax.typing import ArrayLike, DTypeLike

PyTree = Any
Params = PyTree  # the parameters: a pytree of arrays
Updates = PyTree  # gradients or updates: a pytree shaped like the params
OptState = PyTree  # a transformation's state: a pytree of arrays
Schedule = Callable[[ArrayLike], ArrayLike]  # a step count -> a value
ScalarOrSchedule = float | ArrayLike | Schedule
MaskOrFn = Any | Callable[[Params], Any] | None  # a mask tree, a params -> mask function, or None

__all__ = [
    "ArrayLike",
    "DTypeLike",
    "MaskOrFn",
    "OptState",
    "Params",
    "PyTree",
    "ScalarOrSchedule",
    "Schedule",
    "Updates",
]
