"""Short names for the tree utilities, as `optax.tree`: `gradtx.tree.norm(g)`.

Each name is the function of `gradtx.tree_utils` without its `tree_` prefix
(`add` is `tree_utils.tree_add`); `max`, `min`, `sum` and `set` shadow the builtins only
inside this namespace.
"""

from gradtx import tree_utils as _tu

add = _tu.tree_add
add_scale = _tu.tree_add_scale
allclose = _tu.tree_allclose
batch_shape = _tu.tree_batch_shape
bias_correction = _tu.tree_bias_correction
cast = _tu.tree_cast
cast_like = _tu.tree_cast_like
clip = _tu.tree_clip
conj = _tu.tree_conj
div = _tu.tree_div
dtype = _tu.tree_dtype
full_like = _tu.tree_full_like
get = _tu.tree_get
get_all_with_path = _tu.tree_get_all_with_path
map_params = _tu.tree_map_params
max = _tu.tree_max
min = _tu.tree_min
mul = _tu.tree_mul
norm = _tu.tree_norm
ones_like = _tu.tree_ones_like
random_like = _tu.tree_random_like
real = _tu.tree_real
scale = _tu.tree_scale
set = _tu.tree_set
size = _tu.tree_size
split_key_like = _tu.tree_split_key_like
sub = _tu.tree_sub
sum = _tu.tree_sum
unwrap_random_key_data = _tu.tree_unwrap_random_key_data
update_infinity_moment = _tu.tree_update_infinity_moment
update_moment = _tu.tree_update_moment
update_moment_per_elem_norm = _tu.tree_update_moment_per_elem_norm
vdot = _tu.tree_vdot
where = _tu.tree_where
zeros_like = _tu.tree_zeros_like

__all__ = [
    "add",
    "add_scale",
    "allclose",
    "batch_shape",
    "bias_correction",
    "cast",
    "cast_like",
    "clip",
    "conj",
    "div",
    "dtype",
    "full_like",
    "get",
    "get_all_with_path",
    "map_params",
    "max",
    "min",
    "mul",
    "norm",
    "ones_like",
    "random_like",
    "real",
    "scale",
    "set",
    "size",
    "split_key_like",
    "sub",
    "sum",
    "unwrap_random_key_data",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "vdot",
    "where",
    "zeros_like",
]
