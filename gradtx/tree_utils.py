r"""Tree utilities: arithmetic, reductions, casts, random trees and state look-ups on pytrees.

The names, signatures, defaults and results of `optax.tree_utils` (optax 0.2.8), so
`optax.tree_utils.tree_norm(g)` becomes `gradtx.tree_utils.tree_norm(g)` (or, with the short
names, `gradtx.tree.norm(g)`). This is their namespace; they live in modules of one idea each:

* `gradtx.tree_arithmetic`: element-wise arithmetic (`tree_add`, `tree_sub`, `tree_mul`,
  `tree_div`, `tree_scale`, `tree_add_scale`, `tree_conj`, `tree_real`, `tree_clip`,
  `tree_where`);
* `gradtx.tree_reductions`: reductions to a scalar (`tree_sum`, `tree_vdot`, `tree_norm`,
  `tree_max`, `tree_min`, `tree_size`, `tree_allclose`);
* `gradtx.tree_build`: trees shaped like others (`tree_zeros_like`, `tree_ones_like`,
  `tree_full_like`, `tree_batch_shape`), casts and dtypes (`tree_cast`, `tree_cast_like`,
  `tree_dtype`) and random trees (`tree_split_key_like`, `tree_random_like`,
  `tree_unwrap_random_key_data`);
* `gradtx.tree_moments`: moments as optimisers update them (`tree_update_moment`,
  `tree_update_infinity_moment`, `tree_update_moment_per_elem_norm`) and
  `tree_bias_correction`;
* `gradtx.tree_state`: optimiser states (`NamedTupleKey`, `tree_get_all_with_path`,
  `tree_get`, `tree_set`, `tree_map_params`, `is_params_placeholder`).

Complex leaves are handled as optax does: inner products and norms conjugate,
$\langle x, y \rangle = \sum_i \bar x_i y_i$ and $\lVert x \rVert_2^2 = \sum_i |x_i|^2$.

Where gradtx differs from optax, on purpose:

* Bad input raises at the call, naming the function and the argument: leaves whose shapes
  differ (other than a scalar against an array) are refused instead of broadcast, a `scalar`
  that is not a scalar is refused, and so are a decay outside $[0, 1]$ or an unknown `ord`.
* Reductions over leaves (`tree_sum`, `tree_vdot`, `tree_norm`, `tree_max`, `tree_min`) work
  under strict dtype promotion: each leaf's part is taken in float32 or wider, the parts are
  added in the leaves' common dtype (`numerics.common_dtype`), and the result has the dtype optax's
  has under standard promotion (a bfloat16 tree has a bfloat16 norm).
* `tree_set` sets every value that `tree_get_all_with_path` finds (optax 0.2.8 leaves those
  nested in a list or tuple of a matching node unchanged).
* `tree_get` names the paths it found when there are several.
* `tree_norm(ord=inf)` of an empty tree is 0, not $-\infty$.
"""

from gradtx.tree_arithmetic import (
    tree_add,
    tree_add_scale,
    tree_clip,
    tree_conj,
    tree_div,
    tree_mul,
    tree_real,
    tree_scale,
    tree_sub,
    tree_where,
)
from gradtx.tree_build import (
    tree_batch_shape,
    tree_cast,
    tree_cast_like,
    tree_dtype,
    tree_full_like,
    tree_ones_like,
    tree_random_like,
    tree_split_key_like,
    tree_unwrap_random_key_data,
    tree_zeros_like,
)
from gradtx.tree_moments import (
    tree_bias_correction,
    tree_update_infinity_moment,
    tree_update_moment,
    tree_update_moment_per_elem_norm,
)
from gradtx.tree_reductions import (
    tree_allclose,
    tree_max,
    tree_min,
    tree_norm,
    tree_size,
    tree_sum,
    tree_vdot,
)
from gradtx.tree_state import (
    NamedTupleKey,
    is_params_placeholder,
    tree_get,
    tree_get_all_with_path,
    tree_map_params,
    tree_set,
)
from gradtx.tree_state import _ParamsPlaceholder as _ParamsPlaceholder  # tests build one

__all__ = [
    "NamedTupleKey",
    "is_params_placeholder",
    "tree_add",
    "tree_add_scale",
    "tree_allclose",
    "tree_batch_shape",
    "tree_bias_correction",
    "tree_cast",
    "tree_cast_like",
    "tree_clip",
    "tree_conj",
    "tree_div",
    "tree_dtype",
    "tree_full_like",
    "tree_get",
    "tree_get_all_with_path",
    "tree_map_params",
    "tree_max",
    "tree_min",
    "tree_mul",
    "tree_norm",
    "tree_ones_like",
    "tree_random_like",
    "tree_real",
    "tree_scale",
    "tree_set",
    "tree_size",
    "tree_split_key_like",
    "tree_sub",
    "tree_sum",
    "tree_unwrap_random_key_data",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
]
