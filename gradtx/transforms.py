"""`optax.transforms`' names: the combinators and wrappers, in one namespace as optax has them."""

from gradtx.accumulation import MultiStepsState
from gradtx.clip_variants import (
    adaptive_grad_clip,
    clip_by_block_rms,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
    unitwise_clip,
    unitwise_norm,
)
from gradtx.clipping import clip, clip_by_global_norm
from gradtx.combine import (
    MaskedNode,
    MaskedState,
    PartitionState,
    chain,
    masked,
    named_chain,
    partition,
)
from gradtx.conditional import (
    ConditionallyMaskState,
    ConditionallyTransformState,
    ConditionFn,
    conditionally_mask,
    conditionally_transform,
    skip_large_updates,
    skip_not_finite,
)
from gradtx.constraints import NonNegativeParamsState, keep_params_nonnegative
from gradtx.ewa import EmaState, ema
from gradtx.flatten import flatten
from gradtx.freeze import freeze, selective_transform
from gradtx.guards import ApplyIfFiniteState, ZeroNansState, apply_if_finite, zero_nans
from gradtx.momentum import TraceState, trace
from gradtx.multi_steps import MultiSteps, ShouldSkipUpdateFunction
from gradtx.noise import AddNoiseState, add_noise
from gradtx.snapshot import MonitorState, SnapshotState, measure_with_ema, monitor, snapshot
from gradtx.weight_decay import add_decayed_weights

__all__ = [
    "ApplyIfFiniteState",
    "EmaState",
    "MaskedNode",
    "MaskedState",
    "MultiStepsState",
    "PartitionState",
    "TraceState",
    "ZeroNansState",
    "add_decayed_weights",
    "apply_if_finite",
    "chain",
    "clip",
    "clip_by_global_norm",
    "ema",
    "masked",
    "named_chain",
    "partition",
    "trace",
    "zero_nans",
]

# One list per part of the API work (issues 11 and 12).
__all__ += [  # zoo-c
    "AddNoiseState",
    "add_noise",
]  # (end zoo-c)
__all__ += [  # wrappers-a
    "ConditionFn",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "MultiSteps",
    "ShouldSkipUpdateFunction",
    "conditionally_mask",
    "conditionally_transform",
    "flatten",
    "freeze",
    "selective_transform",
    "skip_large_updates",
    "skip_not_finite",
]  # (end wrappers-a)
__all__ += [  # wrappers-b
    "MonitorState",
    "NonNegativeParamsState",
    "SnapshotState",
    "adaptive_grad_clip",
    "clip_by_block_rms",
    "keep_params_nonnegative",
    "measure_with_ema",
    "monitor",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "snapshot",
    "unitwise_clip",
    "unitwise_norm",
]  # (end wrappers-b)
