"""optax.contrib's optimisers, each a short chain of gradtx pieces (optax's names and states)."""

from gradtx.contrib.ademamix import (
    ScaleByAdemamixState,
    ScaleBySimplifiedAdEMAMixState,
    ademamix,
    scale_by_ademamix,
    scale_by_simplified_ademamix,
    simplified_ademamix,
)
from gradtx.contrib.adopt import adopt, scale_by_adopt
from gradtx.contrib.muon import (
    MuonDimensionNumbers,
    MuonState,
    muon,
    muon_dimension_numbers,
    muon_param_labels,
    orthogonalize_via_newton_schulz,
    scale_by_muon,
    scale_by_newton_schulz,
    scale_by_shape,
)
from gradtx.contrib.schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from gradtx.plateau import ReduceLROnPlateauState, reduce_on_plateau

__all__ = [
    "ReduceLROnPlateauState",
    "reduce_on_plateau",
]

# One list per part of the contrib work (issue 11).
__all__ += [  # contrib-a
    "MuonDimensionNumbers",
    "MuonState",
    "ScaleByAdemamixState",
    "ScaleBySimplifiedAdEMAMixState",
    "ScheduleFreeState",
    "ademamix",
    "adopt",
    "muon",
    "muon_dimension_numbers",
    "muon_param_labels",
    "orthogonalize_via_newton_schulz",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_muon",
    "scale_by_newton_schulz",
    "scale_by_shape",
    "scale_by_simplified_ademamix",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "simplified_ademamix",
]  # (end contrib-a)
__all__ += [  # contrib-b
]  # (end contrib-b)
