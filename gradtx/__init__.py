"""gradtx: composable JAX gradient transformations.

Every classic optimisation idea — EWA, bias correction, momentum, RMS scaling,
Adam, learning-rate decay — is a small, pure `GradientTransformation`; the
optimisers are short chains of them. Structurally compatible with optax.
"""

from importlib import metadata as _metadata

from gradtx import (
    contrib,
    data,
    microbatching,
    projections,
    schedules,
    spec,
    transforms,
    tree,
    tree_utils,
)
from gradtx import typing as _typing
from gradtx.accumulation import AccumulateState, MultiStepsState, accumulate, has_updated
from gradtx.adadelta import ScaleByAdaDeltaState, adadelta, scale_by_adadelta
from gradtx.adam import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    scale_by_adam,
    scale_by_adam_composed,
    scale_by_amsgrad,
)
from gradtx.adam_variants import (
    ScaleByBeliefState,
    ScaleByNovogradState,
    adabelief,
    adamax,
    adamaxw,
    nadamw,
    novograd,
    radam,
    scale_by_adamax,
    scale_by_belief,
    scale_by_novograd,
    scale_by_radam,
    scale_by_yogi,
    yogi,
)
from gradtx.adan import ScaleByAdanState, adan, scale_by_adan
from gradtx.averaging import incremental_update, periodic_update
from gradtx.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    PyTree,
    ScalarOrSchedule,
    Schedule,
    TransformInitFn,
    TransformUpdateExtraArgsFn,
    TransformUpdateFn,
    Updates,
    apply_updates,
    identity,
    init_empty_state,
    stateless,
    stateless_with_tree_map,
    with_extra_args_support,
)
from gradtx.centralize import centralize, normalize_by_update_norm, scale_gradient
from gradtx.checkpoint import LeafSummary, StateSummary, restore_state, state_summary
from gradtx.clip_variants import (
    adaptive_grad_clip,
    clip_by_block_rms,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
)
from gradtx.clipping import clip, clip_by_global_norm, global_norm
from gradtx.combine import (
    DivideState,
    MaskedNode,
    MaskedState,
    PartitionState,
    chain,
    divide,
    masked,
    multi_transform,
    named_chain,
    partition,
)
from gradtx.conditional import (
    ApplyEvery,
    ConditionallyMaskState,
    ConditionallyTransformState,
    ConditionFn,
    apply_every,
    conditionally_mask,
    conditionally_transform,
    skip_large_updates,
    skip_not_finite,
)
from gradtx.config import from_config, to_config
from gradtx.constraints import NonNegativeParamsState, keep_params_nonnegative
from gradtx.dog import ScaleByDistanceOverGradientsState, scale_by_distance_over_gradients
from gradtx.elementwise import add_constant, sqrt, square
from gradtx.ewa import BiasCorrectionState, EmaState, bias_correction, ema
from gradtx.factored import FactoredState, adafactor, scale_by_factored_rms
from gradtx.flatten import flatten
from gradtx.freeze import freeze, selective_transform, set_to_zero
from gradtx.fused import apply_step, native_available
from gradtx.grouped import Grouped, GroupLayout, group, ungroup
from gradtx.guards import ApplyIfFiniteState, ZeroNansState, all_finite, apply_if_finite, zero_nans
from gradtx.hyperparams import (
    InjectHyperparamsState,
    InjectStatefulHyperparamsState,
    WrappedSchedule,
    WrappedScheduleState,
    get_hyperparam,
    inject_hyperparams,
    inject_stateful_hyperparams,
    set_hyperparam,
)
from gradtx.lbfgs import ScaleByLBFGSState, lbfgs, scale_by_lbfgs
from gradtx.linesearch import (
    ScaleByBacktrackingLinesearchState,
    ScaleByZoomLinesearchState,
    ZoomLinesearchInfo,
    scale_by_backtracking_linesearch,
    scale_by_zoom_linesearch,
    value_and_grad_from_state,
)
from gradtx.lookahead import LookaheadParams, LookaheadState, lookahead
from gradtx.microbatching import microbatch
from gradtx.momentum import TraceState, trace
from gradtx.monitor import MonitorNormsState, monitor_norms
from gradtx.multi_steps import MultiSteps, ShouldSkipUpdateFunction
from gradtx.native import native_status
from gradtx.noise import AddNoiseState, add_noise, noisy_sgd
from gradtx.optimistic import (
    ScaleByOptimisticGradientState,
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    scale_by_optimistic_gradient,
)
from gradtx.optimizers import (
    adagrad,
    adam,
    adamw,
    amsgrad,
    momentum_ewa,
    nadam,
    rmsprop,
    sgd,
)
from gradtx.param_block import scale_by_param_block_norm, scale_by_param_block_rms
from gradtx.plateau import ReduceLROnPlateauState, ReduceOnPlateauState, reduce_on_plateau
from gradtx.polyak import polyak_sgd, scale_by_polyak
from gradtx.rms import (
    ScaleByRmsState,
    ScaleByRmsWithCountState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByRStdDevWithCountState,
    ScaleByStddevState,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from gradtx.rprop import ScaleByRpropState, rprop, scale_by_rprop
from gradtx.safe_math import (
    safe_increment,
    safe_int32_increment,
    safe_norm,
    safe_root_mean_squares,
)
from gradtx.scale import ScaleByScheduleState, scale, scale_by_learning_rate, scale_by_schedule
from gradtx.schedules import (
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    inverse_sqrt_decay,
    inverse_time_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
    warmup_cosine_decay_schedule,
)
from gradtx.sign import ScaleByLionState, lion, scale_by_lion, scale_by_sign, sign_sgd, signum
from gradtx.sm3 import ScaleBySM3State, scale_by_sm3, sm3
from gradtx.snapshot import (
    MonitorState,
    SnapshotState,
    measure_with_ema,
    monitor,
    snapshot,
)
from gradtx.tree_utils import tree_map_params
from gradtx.trust_ratio import (
    ScaleByTrustRatioState,
    fromage,
    lamb,
    lars,
    scale_by_trust_ratio,
)
from gradtx.warmup import (
    piecewise_interpolate_schedule,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_exponential_decay_schedule,
)
from gradtx.weight_decay import AddDecayedWeightsState, WeightDecaySchedule, add_decayed_weights

# optax's names for stateless pieces' states (all `EmptyState` there too) and for `partition`'s.
ClipState = ClipByGlobalNormState = ScaleState = AdaptiveGradClipState = EmptyState
MultiTransformState = PartitionState
MaskOrFn = _typing.MaskOrFn

# optax's top-level aliases of its tree utilities (`optax.update_moment`, ...). optax's
# `bias_correction` alias (of `tree_bias_correction`) is not one: gradtx.bias_correction is
# the transformation of IDEAS §3; use `gradtx.tree_utils.tree_bias_correction`.
update_infinity_moment = tree_utils.tree_update_infinity_moment
update_moment = tree_utils.tree_update_moment
update_moment_per_elem_norm = tree_utils.tree_update_moment_per_elem_norm

try:  # the one version source is pyproject.toml, read from the installed package's metadata
    __version__ = _metadata.version("gradtx")
except _metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

__all__ = [
    "from_config",
    "to_config",
    "spec",
    "apply_step",
    "native_available",
    "native_status",
    "GroupLayout",
    "Grouped",
    "group",
    "ungroup",
    "AccumulateState",
    "MultiStepsState",
    "accumulate",
    "has_updated",
    "contrib",
    "data",
    "microbatching",
    "transforms",
    "projections",
    "tree",
    "tree_utils",
    "safe_increment",
    "safe_int32_increment",
    "safe_norm",
    "safe_root_mean_squares",
    "tree_map_params",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "LeafSummary",
    "StateSummary",
    "restore_state",
    "state_summary",
    "ApplyIfFiniteState",
    "ZeroNansState",
    "all_finite",
    "apply_if_finite",
    "zero_nans",
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "WrappedSchedule",
    "WrappedScheduleState",
    "get_hyperparam",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "set_hyperparam",
    "MonitorNormsState",
    "monitor_norms",
    "ReduceLROnPlateauState",
    "ReduceOnPlateauState",
    "reduce_on_plateau",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "inverse_sqrt_decay",
    "inverse_time_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "warmup_cosine_decay_schedule",
    "piecewise_interpolate_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_exponential_decay_schedule",
    "schedules",
    "AddDecayedWeightsState",
    "BiasCorrectionState",
    "DivideState",
    "EmaState",
    "EmptyState",
    "ClipState",
    "AdaptiveGradClipState",
    "ClipByGlobalNormState",
    "ScaleState",
    "MultiTransformState",
    "MaskOrFn",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "MaskedNode",
    "MaskedState",
    "OptState",
    "Params",
    "PartitionState",
    "PyTree",
    "ScalarOrSchedule",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByScheduleState",
    "ScaleByStddevState",
    "Schedule",
    "TraceState",
    "TransformInitFn",
    "TransformUpdateExtraArgsFn",
    "TransformUpdateFn",
    "Updates",
    "WeightDecaySchedule",
    "adagrad",
    "adam",
    "adamw",
    "add_constant",
    "add_decayed_weights",
    "amsgrad",
    "apply_updates",
    "incremental_update",
    "periodic_update",
    "microbatch",
    "bias_correction",
    "chain",
    "clip",
    "clip_by_global_norm",
    "divide",
    "ema",
    "global_norm",
    "identity",
    "init_empty_state",
    "masked",
    "momentum_ewa",
    "multi_transform",
    "nadam",
    "named_chain",
    "partition",
    "rmsprop",
    "safe_increment",
    "safe_int32_increment",
    "scale",
    "scale_by_adam",
    "scale_by_adam_composed",
    "scale_by_amsgrad",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_stddev",
    "sgd",
    "sqrt",
    "square",
    "stateless",
    "stateless_with_tree_map",
    "trace",
    "with_extra_args_support",
]


# Added by each part of the zoo and the rest of optax's API (issues 11 and 12), one list each.
__all__ += [  # zoo-a
    "ScaleByBeliefState",
    "ScaleByLionState",
    "ScaleByNovogradState",
    "ScaleByTrustRatioState",
    "adabelief",
    "adamax",
    "adamaxw",
    "fromage",
    "lamb",
    "lars",
    "lion",
    "nadamw",
    "novograd",
    "radam",
    "scale_by_adamax",
    "scale_by_belief",
    "scale_by_lion",
    "scale_by_novograd",
    "scale_by_radam",
    "scale_by_sign",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "sign_sgd",
    "signum",
    "yogi",
]  # (end zoo-a)
__all__ += [  # zoo-b
    "FactoredState",
    "adafactor",
    "scale_by_factored_rms",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "ScaleBySM3State",
    "scale_by_sm3",
    "sm3",
    "ScaleByAdaDeltaState",
    "adadelta",
    "scale_by_adadelta",
    "ScaleByRpropState",
    "rprop",
    "scale_by_rprop",
]  # (end zoo-b)
__all__ += [  # zoo-c
    "AddNoiseState",
    "ScaleByAdanState",
    "ScaleByDistanceOverGradientsState",
    "ScaleByOptimisticGradientState",
    "adan",
    "add_noise",
    "noisy_sgd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "scale_by_adan",
    "scale_by_distance_over_gradients",
    "scale_by_optimistic_gradient",
    "scale_by_polyak",
]  # (end zoo-c)
__all__ += [  # lbfgs
    "ScaleByBacktrackingLinesearchState",
    "ScaleByLBFGSState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "lbfgs",
    "scale_by_backtracking_linesearch",
    "scale_by_lbfgs",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
]  # (end lbfgs)
__all__ += [  # wrappers-a
    "ApplyEvery",
    "ConditionFn",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "LookaheadParams",
    "LookaheadState",
    "MultiSteps",
    "ShouldSkipUpdateFunction",
    "apply_every",
    "conditionally_mask",
    "conditionally_transform",
    "flatten",
    "freeze",
    "lookahead",
    "selective_transform",
    "set_to_zero",
    "skip_large_updates",
    "skip_not_finite",
]  # (end wrappers-a)
__all__ += [  # wrappers-b
    "MonitorState",
    "NonNegativeParamsState",
    "SnapshotState",
    "adaptive_grad_clip",
    "centralize",
    "clip_by_block_rms",
    "keep_params_nonnegative",
    "measure_with_ema",
    "monitor",
    "normalize_by_update_norm",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "scale_gradient",
    "snapshot",
]  # (end wrappers-b)
