"""gradtx: composable JAX gradient transformations."""

from gradtx.base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    PyTree,
    Schedule,
    ScalarOrSchedule,
    Updates,
    apply_updates,
    identity,
    stateless,
    stateless_with_tree_map,
)

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "OptState",
    "Params",
    "PyTree",
    "ScalarOrSchedule",
    "Schedule",
    "Updates",
    "apply_updates",
    "identity",
    "stateless",
    "stateless_with_tree_map",
]
