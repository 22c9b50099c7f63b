"""optax.contrib's optimisers, each a short chain of gradtx pieces (optax's names and states)."""

from gradtx.plateau import ReduceLROnPlateauState, reduce_on_plateau

__all__ = [
    "ReduceLROnPlateauState",
    "reduce_on_plateau",
]

# One list per part of the contrib work (issue 11).
__all__ += [  # contrib-a
]  # (end contrib-a)
__all__ += [  # contrib-b
]  # (end contrib-b)
