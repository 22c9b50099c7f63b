"""optax.contrib's optimisers, each a short chain of gradtx pieces (optax's names and states)."""

from gradtx.contrib.cocob import COCOBState, cocob, scale_by_cocob
from gradtx.contrib.dadapt import DAdaptAdamWState, dadapt_adamw
from gradtx.contrib.dowg import DoGState, DoWGState, dog, dowg, scale_by_dog, scale_by_dowg
from gradtx.contrib.madgrad import MadgradState, madgrad, scale_by_madgrad
from gradtx.contrib.mechanize import MechanicState, mechanize
from gradtx.contrib.prodigy import ProdigyState, prodigy
from gradtx.plateau import ReduceLROnPlateauState, reduce_on_plateau

__all__ = [
    "ReduceLROnPlateauState",
    "reduce_on_plateau",
]

# One list per part of the contrib work (issue 11).
__all__ += [  # contrib-a
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
