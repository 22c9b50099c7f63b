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
from gradtx.contrib.cocob import COCOBState, cocob, scale_by_cocob
from gradtx.contrib.dadapt import DAdaptAdamWState, dadapt_adamw
from gradtx.contrib.dowg import DoGState, DoWGState, dog, dowg, scale_by_dog, scale_by_dowg
from gradtx.contrib.madgrad import MadgradState, madgrad, scale_by_madgrad
from gradtx.contrib.mechanize import MechanicState, mechanize
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
from gradtx.contrib.prodigy import ProdigyState, prodigy
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
    "COCOBState",
    "DAdaptAdamWState",
    "DoGState",
    "DoWGState",
    "MadgradState",
    "MechanicState",
    "ProdigyState",
    "cocob",
    "dadapt_adamw",
    "dog",
    "dowg",
    "madgrad",
    "mechanize",
    "prodigy",
    "scale_by_cocob",
    "scale_by_dog",
    "scale_by_dowg",
    "scale_by_madgrad",
]  # (end contrib-b)
