"""gradtx.tree_utils, gradtx.tree and gradtx.safe_math against optax 0.2.8's.

optax runs under standard promotion (it needs it for bfloat16 and mixed trees); gradtx runs
under the suite's strict promotion, so each comparison also checks that gradtx works there.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest

import gradtx
from gradtx import tree_utils as tu
from tests._util import make_params, standard_promotion


def _tree(dtype, key=0, scale=1.0):
    params = make_params(key)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        imag = make_params(key + 100)
        return jax.tree.map(
            lambda r, i: jax.lax.complex(scale * r, scale * i).astype(dtype), params, imag
        )
    return jax.tree.map(lambda r: (scale * r).astype(dtype), params)


def _mixed(key=0):
    """float32, bfloat16 and complex64 leaves in one tree."""
    return {
        "f32": _tree(jnp.float32, key)["dense"],
        "bf16": _tree(jnp.bfloat16, key + 1)["conv"],
        "c64": _tree(jnp.complex64, key + 2)["scale"],
    }


def _real_mixed(key=0):
    return {"f32": _tree(jnp.float32, key)["dense"], "bf16": _tree(jnp.bfloat16, key + 1)["conv"]}


TREES = {"float32": lambda k: _tree(jnp.float32, k), "mixed": _mixed}
REAL_TREES = {"float32": TREES["float32"], "mixed": _real_mixed}
LOOSE = dict(rtol=2e-2, atol=2e-2)  # bfloat16 has 8 bits of mantissa


def _tol(tree):
    low = any(jnp.result_type(x) == jnp.bfloat16 for x in jax.tree.leaves(tree))
    return LOOSE if low else dict(rtol=1e-5, atol=1e-6)


def assert_same(ours, theirs, rtol=1e-5, atol=1e-6, dtypes=True):
    """Same structure, same dtypes, close values (complex compared as complex; bfloat16
    leaves to bfloat16's precision)."""
    lo, to = jax.tree.flatten(ours)
    lt, tt = jax.tree.flatten(theirs)
    assert to == tt, f"structures differ: {to} vs {tt}"
    for a, b in zip(lo, lt):
        if dtypes:
            assert jnp.result_type(a) == jnp.result_type(b), (jnp.result_type(a), b)
        tol = dict(rtol=rtol, atol=atol)
        if jnp.bfloat16 in (jnp.result_type(a), jnp.result_type(b)):
            tol = {k: max(v, LOOSE[k]) for k, v in tol.items()}
        np.testing.assert_allclose(
            np.asarray(a, np.complex128), np.asarray(b, np.complex128), **tol
        )


def theirs(fn, *args, **kwargs):
    with standard_promotion():
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------
# The namespaces.


def test_tree_utils_has_every_name_of_optax_tree_utils():
    deprecated = {"tree_scalar_mul", "tree_add_scalar_mul", "tree_l1_norm", "tree_l2_norm"}
    names = {n for n in dir(otu) if not n.startswith("_") and n not in ("functools", "typing")}
    missing = names - deprecated - {"tree_linf_norm"} - set(tu.__all__)
    assert not missing


def test_short_names_are_optax_trees_and_the_tree_utils_functions():
    ours = set(gradtx.tree.__all__)
    assert ours == {n for n in dir(optax.tree) if not n.startswith("_")}
    for name in ours:
        assert getattr(gradtx.tree, name) is getattr(tu, "tree_" + name)


def test_top_level_exports_match_optax():
    for name in [
        "safe_norm",
        "safe_root_mean_squares",
        "safe_increment",
        "safe_int32_increment",
        "tree_map_params",
        "update_moment",
        "update_infinity_moment",
        "update_moment_per_elem_norm",
    ]:
        assert hasattr(optax, name) and name in gradtx.__all__
    assert gradtx.update_moment is tu.tree_update_moment
    assert gradtx.tree_map_params is tu.tree_map_params
    for module in ("projections", "tree", "tree_utils"):
        assert module in gradtx.__all__


# ----------------------------------------------------------------------------
# Element-wise arithmetic.


@pytest.mark.parametrize("kind", TREES)
@pytest.mark.parametrize("name", ["tree_add", "tree_sub", "tree_mul", "tree_div"])
def test_binary_ops_match_optax(name, kind):
    x, y = TREES[kind](0), TREES[kind](1)
    y = jax.tree.map(lambda v: v + jnp.asarray(3, v.dtype), y)  # no division by ~0
    expected = theirs(getattr(otu, name), x, y)
    assert_same(jax.jit(getattr(tu, name))(x, y), expected)
    if kind == "float32":
        assert_same(getattr(tu, name)(x, y), expected)


@pytest.mark.parametrize("kind", TREES)
def test_add_of_several_trees(kind):
    x, y, z = TREES[kind](0), TREES[kind](1), TREES[kind](2)
    assert_same(tu.tree_add(x, y, z, x), theirs(otu.tree_add, x, y, z, x), **_tol(x))


@pytest.mark.parametrize("kind", TREES)
def test_scale_and_add_scale_match_optax(kind):
    x, y = TREES[kind](0), TREES[kind](1)
    for s in (0.5, -2.0):
        assert_same(tu.tree_scale(s, x), theirs(otu.tree_scale, s, x), **_tol(x))
        assert_same(tu.tree_add_scale(x, s, y), theirs(otu.tree_add_scale, x, s, y), **_tol(x))
    if kind == "float32":  # a 0-d array, traced under jit
        s = jnp.asarray(0.25, jnp.float32)
        assert_same(jax.jit(tu.tree_scale)(s, x), otu.tree_scale(s, x))
        assert_same(jax.jit(tu.tree_add_scale)(x, s, y), otu.tree_add_scale(x, s, y))


def test_add_scale_keeps_none_leaves():
    x = {"a": jnp.ones(2), "b": None}
    y = {"a": jnp.arange(2.0), "b": None}
    got = tu.tree_add_scale(x, 2.0, y)
    assert got["b"] is None
    assert_same(got, otu.tree_add_scale(x, 2.0, y))


@pytest.mark.parametrize("kind", TREES)
def test_conj_and_real_match_optax(kind):
    x = TREES[kind](0)
    assert_same(tu.tree_conj(x), otu.tree_conj(x))
    assert_same(tu.tree_real(x), otu.tree_real(x))


@pytest.mark.parametrize("kind", REAL_TREES)
def test_clip_matches_optax(kind):
    x = REAL_TREES[kind](0)
    for bounds in [(None, None), (-0.5, None), (None, 0.3), (-0.2, 0.4)]:
        assert_same(tu.tree_clip(x, *bounds), theirs(otu.tree_clip, x, *bounds))
    assert_same(tu.tree_clip(x), otu.tree_clip(x))


@pytest.mark.parametrize("kind", TREES)
def test_where_matches_optax_also_with_a_traced_condition(kind):
    x, y = TREES[kind](0), TREES[kind](1)
    for c in (True, False):
        assert_same(tu.tree_where(c, x, y), otu.tree_where(c, x, y))
        got = jax.jit(tu.tree_where)(jnp.asarray(c), x, y)
        assert_same(got, otu.tree_where(c, x, y))


# ----------------------------------------------------------------------------
# Reductions.


@pytest.mark.parametrize("kind", TREES)
def test_sum_matches_optax(kind):
    x = TREES[kind](0)
    for associative in (False, True):
        ours = tu.tree_sum(x, associative_reduction=associative)
        expected = theirs(otu.tree_sum, x, associative_reduction=associative)
        assert_same(ours, expected, **_tol(x))
    assert_same(jax.jit(tu.tree_sum)(x), theirs(otu.tree_sum, x), **_tol(x))


@pytest.mark.parametrize("kind", TREES)
def test_vdot_matches_optax_and_conjugates_the_first_tree(kind):
    x, y = TREES[kind](0), TREES[kind](1)
    assert_same(tu.tree_vdot(x, y), theirs(otu.tree_vdot, x, y), **_tol(x))
    assert_same(jax.jit(tu.tree_vdot)(x, y), theirs(otu.tree_vdot, x, y), **_tol(x))


def test_vdot_of_complex_trees_conjugates_the_first():
    x, y = _tree(jnp.complex64, 0), _tree(jnp.complex64, 1)
    flat = lambda t: np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(t)])
    np.testing.assert_allclose(complex(tu.tree_vdot(x, y)), np.vdot(flat(x), flat(y)), rtol=1e-5)
    assert float(jnp.abs(tu.tree_vdot(x, x).imag)) < 1e-4  # <x, x> = |x|^2 is real


@pytest.mark.parametrize("kind", TREES)
@pytest.mark.parametrize("ord", [None, 1, 2, jnp.inf, "inf", "infinity"])
def test_norm_matches_optax(kind, ord):
    x = TREES[kind](0)
    for squared in (False, True):
        ours = jax.jit(functools.partial(tu.tree_norm, ord=ord, squared=squared))(x)
        assert_same(ours, theirs(otu.tree_norm, x, ord=ord, squared=squared), **_tol(x))
    assert_same(tu.tree_norm(x, ord), theirs(otu.tree_norm, x, ord=ord), **_tol(x))  # eager


def test_norm_of_complex_counts_the_modulus():
    x = {"a": jnp.asarray([3 + 4j, 0j], jnp.complex64), "b": jnp.asarray(1j, jnp.complex64)}
    np.testing.assert_allclose(float(tu.tree_norm(x)), np.sqrt(26.0), rtol=1e-6)
    np.testing.assert_allclose(float(tu.tree_norm(x, ord=1)), 6.0, rtol=1e-6)
    np.testing.assert_allclose(float(tu.tree_norm(x, ord="inf")), 5.0, rtol=1e-6)
    assert tu.tree_norm(x).dtype == jnp.float32


def test_norm_of_bfloat16_is_taken_wide():
    """2,000 bfloat16 ones: the squared norm is 2,000 exactly in float32 accumulation."""
    x = {"a": jnp.ones(1000, jnp.bfloat16), "b": jnp.ones(1000, jnp.bfloat16)}
    got = tu.tree_norm(x, squared=True)
    assert got.dtype == jnp.bfloat16
    assert float(got) == float(jnp.asarray(2000.0, jnp.bfloat16))


def test_norm_of_an_empty_tree_is_zero():
    for ord in (None, 1, jnp.inf):
        assert float(tu.tree_norm({}, ord=ord)) == 0.0
    assert float(tu.tree_norm({"a": jnp.zeros((0,))}, ord="inf")) == 0.0
    with standard_promotion():
        assert float(otu.tree_norm({}, ord=jnp.inf)) == -np.inf  # what gradtx does not do


@pytest.mark.parametrize("kind", REAL_TREES)
def test_max_min_size_match_optax(kind):
    x = REAL_TREES[kind](0)
    x = {**x, "empty": jnp.zeros((0, 3))}
    assert_same(tu.tree_max(x), theirs(otu.tree_max, x))
    assert_same(tu.tree_min(x), theirs(otu.tree_min, x))
    assert tu.tree_size(x) == otu.tree_size(x)
    assert tu.tree_max({}) == otu.tree_max({}) == -np.inf
    assert tu.tree_min({}) == otu.tree_min({}) == np.inf


def test_max_and_sum_of_integer_trees_are_exact():
    x = {"a": jnp.asarray([1, 7, -3], jnp.int32), "b": jnp.asarray(5, jnp.int32)}
    assert int(tu.tree_max(x)) == 7 and int(tu.tree_min(x)) == -3
    assert int(tu.tree_sum(x)) == 10 and tu.tree_sum(x).dtype == jnp.int32


def test_global_norm_agrees_with_tree_norm():
    for key in range(3):
        x = _tree(jnp.float32, key)
        np.testing.assert_allclose(float(gradtx.global_norm(x)), float(tu.tree_norm(x)), rtol=1e-6)
        b = _tree(jnp.bfloat16, key)
        np.testing.assert_allclose(float(gradtx.global_norm(b)), float(tu.tree_norm(b)), rtol=1e-2)


@pytest.mark.parametrize("rtol, atol, equal_nan", [(1e-5, 1e-8, False), (0.5, 0.1, True)])
def test_allclose_matches_optax(rtol, atol, equal_nan):
    x = _tree(jnp.float32, 0)
    y = jax.tree.map(lambda v: v * 1.1, x)
    z = {**x, "scale": x["scale"].at[0].set(jnp.nan)}
    for a, b in [(x, x), (x, y), (z, z)]:
        assert bool(tu.tree_allclose(a, b, rtol, atol, equal_nan)) == bool(
            otu.tree_allclose(a, b, rtol, atol, equal_nan)
        )
    assert bool(tu.tree_allclose({}, {}))


# ----------------------------------------------------------------------------
# Trees of constants, casts, dtypes, batch shapes.


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16, jnp.dtype("int32")])
def test_zeros_ones_full_like_match_optax(dtype):
    x = _mixed(0) if dtype is None else _tree(jnp.float32, 0)
    assert_same(tu.tree_zeros_like(x, dtype), otu.tree_zeros_like(x, dtype))
    assert_same(tu.tree_ones_like(x, dtype), otu.tree_ones_like(x, dtype))
    assert_same(tu.tree_full_like(x, 3, dtype), otu.tree_full_like(x, 3, dtype))


@pytest.mark.parametrize("kind", TREES)
def test_cast_and_cast_like_match_optax(kind):
    x = TREES[kind](0)
    assert tu.tree_cast(x, None) is x
    if kind == "float32":
        for dtype in (jnp.bfloat16, jnp.int32):
            assert_same(tu.tree_cast(x, dtype), otu.tree_cast(x, dtype))
    other = jax.tree.map(lambda v: v.astype(jnp.complex64), x)
    assert_same(tu.tree_cast_like(x, other), theirs(otu.tree_cast_like, x, other))
    other = jax.tree.map(lambda v: 1.0, x)  # no dtype: unchanged
    assert_same(tu.tree_cast_like(x, other), otu.tree_cast_like(x, other))


def test_cast_takes_python_number_leaves():
    assert tu.tree_cast({"a": 1.0}, jnp.bfloat16)["a"].dtype == jnp.bfloat16


@pytest.mark.parametrize("handler", [None, "promote", "highest", "lowest"])
def test_dtype_matches_optax(handler):
    same = _tree(jnp.bfloat16, 0)
    assert tu.tree_dtype(same, handler) == otu.tree_dtype(same, handler)
    mixed = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2, jnp.float32)}
    if handler is None:
        with pytest.raises(ValueError, match=r"tree_dtype: .*first is float16; \['b'\] is f"):
            tu.tree_dtype(mixed)
    else:
        assert tu.tree_dtype(mixed, handler) == theirs(otu.tree_dtype, mixed, handler)
    assert tu.tree_dtype({}, handler) == otu.tree_dtype({}, handler)


def test_dtype_of_incomparable_dtypes_refused_like_optax():
    tree = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2, jnp.bfloat16)}
    for handler in ("highest", "lowest"):
        with pytest.raises(ValueError, match="tree_dtype: cannot order dtypes"):
            tu.tree_dtype(tree, handler)
        with pytest.raises(ValueError), standard_promotion():
            otu.tree_dtype(tree, handler)
    assert tu.tree_dtype(tree, "promote") == theirs(otu.tree_dtype, tree, "promote")


def test_batch_shape_matches_optax():
    x = _real_mixed(0)
    for shape in [(3,), (2, 4)]:
        assert_same(tu.tree_batch_shape(x, shape), otu.tree_batch_shape(x, shape))
    assert_same(tu.tree_batch_shape(x), otu.tree_batch_shape(x))


# ----------------------------------------------------------------------------
# Random trees.


@pytest.mark.parametrize("key", [jax.random.key(3), jax.random.PRNGKey(4)])
def test_random_trees_equal_optax_for_the_same_key(key):
    x = {"f32": [jnp.ones((2, 3))], "bf16": jnp.ones(3, jnp.bfloat16)}
    assert_same(tu.tree_random_like(key, x), otu.tree_random_like(key, x), rtol=0, atol=0)
    got = tu.tree_random_like(key, x, jax.random.uniform, jnp.float32)
    assert_same(got, otu.tree_random_like(key, x, jax.random.uniform, jnp.float32), 0, 0)
    got = tu.tree_random_like(key, x, dtype=jnp.dtype("float16"))  # a dtype object, not a class
    assert all(v.dtype == jnp.float16 for v in jax.tree.leaves(got))
    keys, expected = tu.tree_split_key_like(key, x), otu.tree_split_key_like(key, x)
    assert_same(
        tu.tree_unwrap_random_key_data(keys),
        otu.tree_unwrap_random_key_data(expected),
        rtol=0,
        atol=0,
    )


def test_random_like_with_a_sampler_without_out_sharding():
    sampler = lambda k, shape, dtype: jax.random.bernoulli(k, 0.5, shape).astype(dtype)
    x = {"a": jnp.ones((2, 3)), "b": [jnp.ones(3)]}
    key = jax.random.key(0)
    assert_same(tu.tree_random_like(key, x, sampler), otu.tree_random_like(key, x, sampler))


def test_unwrap_random_key_data_leaves_arrays_alone():
    tree = {"k": jax.random.key(1), "x": jnp.ones(2)}
    got = tu.tree_unwrap_random_key_data(tree)
    assert got["k"].dtype == jnp.uint32 and got["x"] is tree["x"]


# ----------------------------------------------------------------------------
# Moments.


@pytest.mark.parametrize(
    "kind, decay, order", [("float32", 0.9, 1), ("mixed", 0.999, 2), ("mixed", 0.5, 3)]
)
def test_moment_updates_match_optax_over_jitted_steps(kind, decay, order):
    moments_ours = tu.tree_zeros_like(TREES[kind](0))
    moments_theirs = moments_ours
    per_elem_ours = jax.tree.map(lambda v: jnp.zeros(v.shape, jnp.real(v).dtype), moments_ours)
    per_elem_theirs = per_elem_ours
    inf_ours = inf_theirs = per_elem_ours
    ours_step = jax.jit(
        lambda g, m, n, u: (
            tu.tree_update_moment(g, m, decay, order),
            tu.tree_update_moment_per_elem_norm(g, n, decay, order),
            tu.tree_update_infinity_moment(jax.tree.map(jnp.abs, g), u, decay, 1e-3),
        )
    )
    for step in range(4):
        g = TREES[kind](step)
        moments_ours, per_elem_ours, inf_ours = ours_step(g, moments_ours, per_elem_ours, inf_ours)
        with standard_promotion():
            moments_theirs = otu.tree_update_moment(g, moments_theirs, decay, order)
            per_elem_theirs = otu.tree_update_moment_per_elem_norm(g, per_elem_theirs, decay, order)
            inf_theirs = otu.tree_update_infinity_moment(
                jax.tree.map(jnp.abs, g), inf_theirs, decay, 1e-3
            )
    tol = _tol(moments_ours)
    assert_same(moments_ours, moments_theirs, **tol)
    assert_same(per_elem_ours, per_elem_theirs, **tol)
    assert_same(inf_ours, inf_theirs, **tol)


def test_moment_updates_keep_none_leaves():
    g = {"a": jnp.ones(2), "b": None}
    m = {"a": jnp.zeros(2), "b": None}
    for fn in (tu.tree_update_moment, tu.tree_update_moment_per_elem_norm):
        got = fn(g, m, 0.9, 2)
        assert got["b"] is None
        assert_same(got, getattr(otu, fn.__name__)(g, m, 0.9, 2))
    assert tu.tree_update_infinity_moment(g, m, 0.9, 0.0)["b"] is None


@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_bias_correction_matches_optax(decay):
    moment = _mixed(0)
    step = jax.jit(tu.tree_bias_correction)
    for t in (1, 2, 10, 1000):
        count = jnp.asarray(t, jnp.int32)
        got = step(moment, decay, count)
        assert_same(got, theirs(otu.tree_bias_correction, moment, decay, count), **_tol(moment))
    # 1 - 0.999 is taken in float32: a bfloat16 moment does not divide by zero at t = 1.
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(got))


# ----------------------------------------------------------------------------
# State look-ups.


def _keyed(found):
    return [(jax.tree_util.keystr(p), v) for p, v in found]


PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
STATES = {
    "optax adam": lambda: optax.adam(0.1).init(PARAMS),
    "optax chain injected": lambda: optax.chain(
        optax.clip(1.0), optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    ).init(PARAMS),
    "gradtx adam": lambda: gradtx.adam(0.1).init(PARAMS),
    "gradtx injected": lambda: gradtx.inject_hyperparams(gradtx.adam)(
        learning_rate=gradtx.cosine_decay_schedule(0.1, 10)
    ).init(PARAMS),
    "nested dicts": lambda: {"count": 1, "a": {"count": 2, "b": [{"count": 3}]}, "c": None},
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(
    "key", ["count", "mu", "learning_rate", "ScaleByAdamState", "TraceState", "missing"]
)
def test_get_all_with_path_matches_optax(state, key):
    s = STATES[state]()
    ours = _keyed(tu.tree_get_all_with_path(s, key))
    expected = _keyed(otu.tree_get_all_with_path(s, key))
    assert [p for p, _ in ours] == [p for p, _ in expected]
    for (_, a), (_, b) in zip(ours, expected):
        assert_same(a, b)
    schedule_states = [v for p, v in ours if "hyperparams_states" in jax.tree_util.keystr(p)]
    if len(ours) <= 1:
        got = tu.tree_get(s, key, default=-1)
        assert_same(got, otu.tree_get(s, key, default=-1))
    elif len(ours) - len(schedule_states) == 1:  # a scheduled rate: its value, not its state
        assert_same(tu.tree_get(s, key), s.hyperparams[key])
    else:
        with pytest.raises(KeyError, match=f"tree_get: found {len(ours)} values"):
            tu.tree_get(s, key)


def test_filtering_by_named_tuple_key():
    state = gradtx.chain(gradtx.scale_by_adam(), gradtx.ema(0.9)).init(PARAMS)
    with pytest.raises(KeyError, match="ScaleByAdamState.count"):
        tu.tree_get(state, "count")
    in_ema = lambda path, value: (
        isinstance(path[-1], tu.NamedTupleKey) and (path[-1].tuple_name == "EmaState")
    )
    assert tu.tree_get(state, "count", filtering=in_ema) is state[1].count
    assert str(tu.NamedTupleKey("EmaState", "count")) == "EmaState.count"


def test_get_finds_a_scheduled_learning_rate_under_gradtx_inject_hyperparams():
    schedule = gradtx.cosine_decay_schedule(0.1, 10)
    opt = gradtx.inject_hyperparams(gradtx.adam)(learning_rate=schedule)
    state = opt.init(PARAMS)
    update = jax.jit(opt.update)
    for t in range(3):
        _, state = update(PARAMS, state, PARAMS)
        np.testing.assert_allclose(tu.tree_get(state, "learning_rate"), schedule(t), rtol=1e-6)
    # optax's own injected state holds a schedule's name twice: optax's tree_get cannot pick.
    with standard_promotion():
        optax_state = optax.inject_hyperparams(optax.adam)(
            learning_rate=optax.cosine_decay_schedule(0.1, 10)
        ).init(PARAMS)
    with pytest.raises(KeyError):
        otu.tree_get(optax_state, "learning_rate")
    is_array = lambda path, value: isinstance(value, jax.Array)
    assert float(tu.tree_get(optax_state, "learning_rate", filtering=is_array)) == np.float32(0.1)


@pytest.mark.parametrize("state", ["optax adam", "gradtx adam", "nested dicts"])
def test_set_matches_optax_where_optax_sets_everything_it_finds(state):
    s = STATES[state]()
    key = "mu" if state != "nested dicts" else "c"
    new = jax.tree.map(lambda v: v + 1, tu.tree_get(s, key)) if key == "mu" else 7
    assert_same(tu.tree_set(s, **{key: new}), otu.tree_set(s, **{key: new}))


def test_set_sets_every_value_tree_get_all_with_path_finds():
    """optax 0.2.8 skips the values under a list or tuple of a matching node."""
    s = STATES["gradtx injected"]()
    new = tu.tree_set(s, count=jnp.asarray(5, jnp.int32))
    # the wrapper's count, its schedule's count (in hyperparams_states), Adam's count
    assert [int(v) for _, v in tu.tree_get_all_with_path(new, "count")] == [5, 5, 5]
    stale = otu.tree_set(s, count=jnp.asarray(5, jnp.int32))
    assert [int(v) for _, v in otu.tree_get_all_with_path(stale, "count")] == [5, 0, 0]
    # a hyper-parameter's name in hyperparams_states names its schedule's state: not set
    lr = tu.tree_set(s, learning_rate=jnp.asarray(0.5))
    assert float(tu.tree_get(lr, "learning_rate")) == 0.5
    assert lr.hyperparams_states == s.hyperparams_states
    nested = tu.tree_set(STATES["nested dicts"](), count=0)
    assert nested == {"count": 0, "a": {"count": 0, "b": [{"count": 0}]}, "c": None}


def test_set_with_filtering_and_by_named_tuple_name():
    s = gradtx.chain(gradtx.scale_by_adam(), gradtx.ema(0.9)).init(PARAMS)
    in_adam = lambda path, value: "ScaleByAdamState" in jax.tree_util.keystr(path)
    new = tu.tree_set(s, in_adam, count=jnp.asarray(3, jnp.int32))
    assert int(new[0].count) == 3 and int(new[1].count) == 0
    assert_same(new, otu.tree_set(s, in_adam, count=jnp.asarray(3, jnp.int32)))
    fresh = gradtx.ema(0.9).init(PARAMS)
    assert tu.tree_set(s, EmaState=fresh)[1] is fresh
    with pytest.raises(KeyError, match="tree_set: no value .*'nu_max'"):
        tu.tree_set(s, nu_max=1)
    with pytest.raises(KeyError, match="that passes the filtering"):
        tu.tree_set(s, lambda p, v: False, count=1)


def test_set_keeps_other_pytree_nodes():
    tree = {"a": (jnp.ones(2), {"count": 1}), "b": [None, {"count": 2}]}
    got = tu.tree_set(tree, count=0)
    assert got["a"][1] == {"count": 0} and got["b"] == [None, {"count": 0}]
    assert got["a"][0] is tree["a"][0]


# ----------------------------------------------------------------------------
# tree_map_params.


OPTIMISERS = {
    "adam": lambda: gradtx.adam(1e-3),
    "sgd momentum": lambda: gradtx.sgd(0.1, momentum=0.9),
    "chain": lambda: gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-3)),
    "inject_hyperparams": lambda: gradtx.inject_hyperparams(gradtx.adamw)(
        gradtx.linear_schedule(0.1, 0.0, 10), weight_decay=1e-2
    ),
    "optax adam in a gradtx chain": lambda: gradtx.chain(gradtx.trace(0.9), optax.adam(1e-3)),
}


@pytest.mark.parametrize("name", OPTIMISERS)
def test_map_params_over_every_copy_of_the_params(name):
    opt = OPTIMISERS[name]()
    state = opt.init(PARAMS)
    with standard_promotion():  # optax's adam needs it
        _, state = jax.jit(opt.update)(PARAMS, state, PARAMS)
    specs = {"w": "spec_w", "b": "spec_b"}
    ours = tu.tree_map_params(opt, lambda _, spec: spec, state, specs, transform_non_params=str)
    expected = otu.tree_map_params(
        opt, lambda _, spec: spec, state, specs, transform_non_params=str
    )
    assert ours == expected
    leaves = jax.tree.leaves(ours)
    assert leaves.count("spec_w") == leaves.count("spec_b") >= 1
    # with the init function instead of the transformation, and without transform_non_params
    doubled = tu.tree_map_params(opt.init, lambda x: 2 * x, state)
    assert_same(doubled, otu.tree_map_params(opt.init, lambda x: 2 * x, state))


def test_map_params_with_is_leaf():
    opt = gradtx.adam(1e-3)
    params = {"w": jnp.ones(2), "frozen": (jnp.ones(1), jnp.ones(1))}
    state = opt.init(params)
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and not hasattr(x, "_fields")
    got = tu.tree_map_params(opt, lambda x: type(x).__name__, state, is_leaf=is_pair)
    assert got[0].mu == {"w": "ArrayImpl", "frozen": "tuple"}


def test_the_placeholder_is_recognised():
    seen = []
    init = lambda params: seen.append(params) or {"p": params}
    tu.tree_map_params(init, lambda x: x, {"p": PARAMS})
    assert tu.is_params_placeholder(seen[0])
    assert type(seen[0]) is optax.tree_utils._state_utils._ParamsPlaceholder  # optax's own
    assert tu.is_params_placeholder(tu._ParamsPlaceholder())
    assert not tu.is_params_placeholder(PARAMS) and not tu.is_params_placeholder(None)
    # optax's masked passes gradtx's tree_map_params through, as it passes its own
    opt = optax.masked(optax.adam(1e-3), {"w": True, "b": False})
    state = opt.init(PARAMS)
    got = tu.tree_map_params(opt, lambda x: x.shape, state)
    assert got == otu.tree_map_params(opt, lambda x: x.shape, state)


MASKED = {
    "masked": lambda: gradtx.masked(gradtx.adam(1e-3), {"w": True, "b": False}),
    "partition": lambda: gradtx.partition(
        {"a": gradtx.adam(1e-3), "s": gradtx.sgd(0.1, momentum=0.9)}, {"w": "a", "b": "s"}
    ),
}


@pytest.mark.parametrize("name", MASKED)
def test_map_params_through_masked_and_partition(name):
    opt = MASKED[name]()
    state = opt.init(PARAMS)
    specs = {"w": "spec_w", "b": "spec_b"}
    # as optax documents for its masked: a MaskedNode is a leaf here, so specs line up
    masked_leaf = lambda v: isinstance(v, gradtx.MaskedNode)  # noqa: E731
    got = tu.tree_map_params(
        opt, lambda _, s: s, state, specs, transform_non_params=lambda v: 0, is_leaf=masked_leaf
    )
    expected = optax.tree_utils.tree_map_params(
        opt, lambda _, s: s, state, specs, transform_non_params=lambda v: 0, is_leaf=masked_leaf
    )
    assert got == expected
    assert "spec_w" in jax.tree.leaves(got)


# ----------------------------------------------------------------------------
# Safe norms and counters.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize(
    "kwargs", [{}, {"ord": 1}, {"ord": jnp.inf, "axis": 1}, {"axis": 0, "keepdims": True}]
)
def test_safe_norm_matches_optax_with_finite_gradients_at_zero(dtype, kwargs):
    x = (jnp.arange(6.0).reshape(2, 3) - 2.0).astype(dtype)
    for min_norm in (0.0, 1.0, 100.0):
        got = gradtx.safe_norm(x, min_norm, **kwargs)
        assert_same(got, theirs(optax.safe_norm, x, min_norm, **kwargs))
    zero = jnp.zeros((2, 3), jnp.float32)
    grad = jax.grad(lambda v: jnp.sum(gradtx.safe_norm(v, 1e-3, **kwargs)))(zero)
    assert bool(jnp.all(grad == 0))
    naive = jax.grad(lambda v: jnp.sum(jnp.maximum(jnp.linalg.norm(v), 1e-3)))(zero)
    assert bool(jnp.any(jnp.isnan(naive)))  # the reason safe_norm exists


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.complex64])
def test_safe_root_mean_squares_matches_optax(dtype):
    x = (jnp.arange(6.0) - 2.0).astype(dtype)
    for min_rms in (0.0, 1.0, 10.0):
        got = gradtx.safe_root_mean_squares(x, min_rms)
        expected = theirs(optax.safe_root_mean_squares, x, min_rms)
        assert_same(got, expected, **_tol(x))
    grad = jax.grad(lambda v: gradtx.safe_root_mean_squares(v, 1e-3))(jnp.zeros(4))
    assert bool(jnp.all(grad == 0))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.float32, jnp.bfloat16])
def test_safe_increment_matches_optax(dtype):
    top = jnp.iinfo(dtype).max if jnp.issubdtype(dtype, jnp.integer) else jnp.finfo(dtype).max
    for value in (0, 5, top):
        count = jnp.asarray(value, dtype)
        assert_same(gradtx.safe_increment(count), optax.safe_increment(count), rtol=0, atol=0)
    assert gradtx.safe_int32_increment is gradtx.safe_increment
    with pytest.raises(TypeError, match="safe_increment: count must have an integer"):
        gradtx.safe_increment(jnp.asarray(True))


# ----------------------------------------------------------------------------
# Bad input, where optax silently misbehaves (or fails without naming the argument).


def test_leaves_of_different_shapes_are_refused_not_broadcast():
    x, y = {"a": jnp.ones(3)}, {"a": jnp.ones(1)}
    for fn in (tu.tree_add, tu.tree_sub, tu.tree_mul, tu.tree_div):
        with pytest.raises(ValueError, match=rf"{fn.__name__}: .*tree_x\['a'\] has shape \(3,\)"):
            fn(x, y)
    assert otu.tree_add(x, y)["a"].shape == (3,)  # optax broadcasts
    with pytest.raises(ValueError, match=r"tree_add: .*other_trees\[0\]\['a'\] has \(1,\)"):
        tu.tree_add(x, x, y)
    with pytest.raises(ValueError, match=r"tree_vdot: .*tree_x\['a'\] has shape \(3,\)"):
        tu.tree_vdot(x, y)
    # a scalar leaf against an array leaf is a scalar times an array, as in jnp
    assert_same(tu.tree_mul(x, {"a": 2.0}), otu.tree_mul(x, {"a": 2.0}))


def test_trees_of_different_structures_name_the_first_difference():
    with pytest.raises(ValueError, match=r"tree_sub: tree_y must have the tree structure"):
        tu.tree_sub({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0})
    with pytest.raises(ValueError, match=r"tree_where: .*tree_x has 2 leaves, tree_y has 1"):
        tu.tree_where(True, [1.0, 2.0], [1.0])


def test_scalars_must_be_scalars():
    x = {"a": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"tree_scale: scalar must be a scalar, .*\(3,\)"):
        tu.tree_scale(jnp.ones(3), x)
    with pytest.raises(ValueError, match="tree_add_scale: scalar must be a scalar"):
        tu.tree_add_scale(x, jnp.ones(3), x)
    with pytest.raises(ValueError, match="tree_where: condition must be a scalar"):
        tu.tree_where(jnp.ones(3, bool), x, x)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tu.tree_norm({"a": jnp.ones(2)}, ord=3), "tree_norm: ord must be None, 1, 2"),
        (lambda: tu.tree_clip({"a": jnp.ones(2)}, 1.0, 0.0), "tree_clip: min_value must be <="),
        (
            lambda: tu.tree_update_moment({"a": jnp.ones(2)}, {"a": jnp.ones(2)}, 1.5, 2),
            r"tree_update_moment: decay must be in \[0, 1\]",
        ),
        (
            lambda: tu.tree_update_infinity_moment({"a": jnp.ones(2)}, {"a": jnp.ones(2)}, -1, 0),
            "tree_update_infinity_moment: decay",
        ),
        (
            lambda: tu.tree_bias_correction({"a": jnp.ones(2)}, 1.0, 3),
            r"tree_bias_correction: decay must be in \[0, 1\)",
        ),
        (lambda: tu.tree_dtype({}, "max"), "tree_dtype: mixed_dtype_handler must be one of"),
    ],
)
def test_bad_values_are_refused_naming_function_and_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tu.tree_batch_shape({"a": 1.0}, 3), "tree_batch_shape: shape must be a tuple"),
        (lambda: tu.tree_zeros_like({"a": 1.0}, "nope"), "tree_zeros_like: dtype must be"),
        (lambda: tu.tree_random_like(0, {"a": jnp.ones(2)}), "tree_random_like: key must be"),
        (lambda: tu.tree_random_like(jax.random.key(0), {}, 3), "tree_random_like: sampler"),
        (lambda: tu.tree_map_params(3, lambda x: x, {}), "tree_map_params: initable must be"),
        (lambda: tu.tree_map_params(gradtx.sgd(0.1), 3, {}), "tree_map_params: f must be"),
        (lambda: tu.tree_get({}, "a", filtering=3), "tree_get: filtering must be a function"),
        (lambda: tu.tree_scale("2", {"a": 1.0}), "tree_scale: scalar must be a scalar number"),
        (lambda: tu.tree_sum({}, associative_reduction=None), "tree_sum: associative_reduction"),
        (lambda: tu.tree_norm({"a": jnp.ones(2)}, squared=1), "tree_norm: squared must be True"),
    ],
)
def test_bad_kinds_are_refused_naming_function_and_argument(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_map_params_over_a_state_of_another_optimiser():
    state = gradtx.adam(1e-3).init(PARAMS)
    with pytest.raises(ValueError, match="tree_map_params: state does not have the tree"):
        tu.tree_map_params(gradtx.sgd(0.1, momentum=0.9), lambda x: x, state)


def test_traced_decays_and_counts_pass_the_checks():
    moment = _tree(jnp.float32, 0)
    got = jax.jit(tu.tree_update_moment, static_argnums=3)(moment, moment, jnp.float32(0.9), 2)
    assert_same(got, otu.tree_update_moment(moment, moment, 0.9, 2))
    got = jax.jit(tu.tree_bias_correction)(moment, jnp.float32(0.9), jnp.int32(2))
    assert_same(got, theirs(otu.tree_bias_correction, moment, 0.9, jnp.int32(2)))
