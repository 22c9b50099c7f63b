"""gradtx.projections against optax.projections, and the laws of a Euclidean projection.

For a closed convex set $C$, $p = P_C(x)$ lies in $C$, $P_C(p) = p$, and $p$ is the nearest
point: $\\langle x - p, q - p \\rangle \\le 0$ for every $q \\in C$.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradtx import projections as P
from gradtx import tree_utils as tu
from tests._util import standard_promotion


def _tree(seed, dtype=jnp.float32, spread=2.0):
    keys = jax.random.split(jax.random.key(seed), 4)
    tree = {
        "w": spread * jax.random.normal(keys[0], (3, 2)),
        "b": [spread * jax.random.normal(keys[1], (4,)), spread * jax.random.normal(keys[2], ())],
    }
    if jnp.issubdtype(dtype, jnp.complexfloating):
        imag = jax.tree.map(lambda v: jax.random.normal(keys[3], v.shape), tree)
        return jax.tree.map(lambda r, i: jax.lax.complex(r, spread * i).astype(dtype), tree, imag)
    return jax.tree.map(lambda v: v.astype(dtype), tree)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v, np.complex128)) for v in jax.tree.leaves(tree)])


def assert_same(ours, theirs, rtol=1e-5, atol=1e-6):
    lo, to = jax.tree.flatten(ours)
    lt, tt = jax.tree.flatten(theirs)
    assert to == tt
    for a, b in zip(lo, lt):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        low = a.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(a, np.complex128),
            np.asarray(b, np.complex128),
            rtol=2e-2 if low else rtol,
            atol=2e-2 if low else atol,
        )


SCALED = [
    "projection_simplex",
    "projection_l1_sphere",
    "projection_l1_ball",
    "projection_l2_sphere",
    "projection_l2_ball",
    "projection_linf_ball",
    "projection_hypercube",
]


def test_every_optax_projection_is_here():
    names = {n for n in dir(optax.projections) if n.startswith("projection_")}
    assert names == set(P.__all__)


@pytest.mark.parametrize("name", SCALED)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_scaled_projections_match_optax(name, dtype):
    """bfloat16: against optax on the same values in float32, rounded to bfloat16 (optax 0.2.8
    returns float32 leaves for a bfloat16 simplex and fails on a bfloat16 l1 ball)."""
    x = _tree(0, dtype)
    if name == "projection_hypercube":
        x = x["w"]  # optax 0.2.8's hypercube takes a single array only
    reference = tu.tree_cast(x, jnp.float32)

    def expected(*args):
        with standard_promotion():
            out = getattr(optax.projections, name)(reference, *args)
        return tu.tree_cast_like(out, x)

    for scale in (0.5, 3.0):
        assert_same(jax.jit(getattr(P, name))(x, scale), expected(scale))
    assert_same(getattr(P, name)(x), expected())


def test_non_negative_and_box_match_optax():
    x = _tree(1)
    assert_same(P.projection_non_negative(x), optax.projections.projection_non_negative(x))
    lower = jax.tree.map(lambda v: -0.5 * jnp.ones_like(v), x)
    upper = jax.tree.map(lambda v: jnp.full_like(v, 0.7), x)
    assert_same(
        P.projection_box(x, lower, upper), optax.projections.projection_box(x, lower, upper)
    )
    # scalar bounds work on any tree (optax 0.2.8 raises for a tree of several leaves)
    assert_same(P.projection_box(x, -0.5, 0.7), optax.projections.projection_box(x, lower, upper))
    assert_same(P.projection_hypercube(x, 0.7), P.projection_box(x, 0.0, 0.7))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
def test_l2_projections_of_complex_trees_match_optax(dtype):
    x = _tree(2, dtype)
    for name in ("projection_l2_ball", "projection_l2_sphere"):
        with standard_promotion():
            expected = getattr(optax.projections, name)(x, 0.5)
        assert_same(getattr(P, name)(x, 0.5), expected)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.complex64])
def test_vector_hyperplane_halfspace_match_optax(dtype):
    x, a = _tree(3, dtype), _tree(4, dtype)
    calls = {
        "projection_vector": (x, a),
        "projection_hyperplane": (x, a, 1.5),
        "projection_halfspace": (x, a, -1.5),
    }
    if dtype == jnp.complex64:  # a halfspace needs an order: real trees only
        del calls["projection_halfspace"]
    for name, args in calls.items():
        with standard_promotion():
            expected = getattr(optax.projections, name)(*args)
        assert_same(getattr(P, name)(*args), expected, rtol=1e-4, atol=1e-5)
    if dtype == jnp.float32:
        assert_same(P.projection_halfspace(x, a, 1e3), x)  # inside: unchanged


def test_each_leaf_keeps_its_dtype_in_a_mixed_tree():
    x = {"f32": _tree(5)["w"], "bf16": _tree(6, jnp.bfloat16)["b"]}
    for name in SCALED:
        got = getattr(P, name)(x, 0.5)
        assert jax.tree.map(lambda v: v.dtype, got) == jax.tree.map(lambda v: v.dtype, x), name


def test_simplex_has_the_jvp_of_its_support():
    x = jnp.asarray([0.5, 0.2, -1.0, 0.4])
    p = P.projection_simplex(x)
    support = np.asarray(p > 0, np.float32)
    jac = jax.jacfwd(P.projection_simplex)(x)
    expected = np.diag(support) - np.outer(support, support) / support.sum()
    np.testing.assert_allclose(np.asarray(jac), expected, atol=1e-6)
    with standard_promotion():
        jac_optax = jax.jacfwd(optax.projections.projection_simplex)(x)
    np.testing.assert_allclose(np.asarray(jac), np.asarray(jac_optax), atol=1e-6)


# ----------------------------------------------------------------------------
# Laws, on random trees.


def _membership(name, p, s):
    v = _flat(p).real
    tol = 1e-4 * max(1.0, s)
    if name == "projection_simplex":
        return bool(np.all(v >= -1e-6) and abs(v.sum() - s) <= tol)
    if name == "projection_l1_sphere":
        return abs(np.abs(v).sum() - s) <= tol
    if name == "projection_l1_ball":
        return np.abs(v).sum() <= s + tol
    if name == "projection_l2_sphere":
        return abs(np.linalg.norm(v) - s) <= tol
    if name == "projection_l2_ball":
        return np.linalg.norm(v) <= s + tol
    if name == "projection_linf_ball":
        return np.abs(v).max() <= s + tol
    if name == "projection_hypercube":
        return bool(np.all(v >= 0) and np.all(v <= s + tol))
    raise AssertionError(name)


JITTED = {name: jax.jit(getattr(P, name)) for name in SCALED}


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(SCALED),
    seed=st.integers(0, 2**16),
    other=st.integers(0, 2**16),
    spread=st.sampled_from([0.01, 0.3, 2.0, 30.0]),
    scale=st.floats(0.05, 20.0),
)
def test_a_projection_lands_in_the_set_is_idempotent_and_nearest(name, seed, other, spread, scale):
    project = functools.partial(JITTED[name], scale=scale)
    x = _tree(seed, spread=spread)
    p = project(x)
    assert _membership(name, p, scale)
    assert_same(project(p), p, rtol=1e-4, atol=1e-5 * max(1.0, scale))
    # nearest point: <x - p, q - p> <= 0 for q in the set (the set is convex but the spheres;
    # for those the nearest-point check is |x - p| <= |x - q|).
    q = project(_tree(other, spread=spread))
    x_, p_, q_ = _flat(x).real, _flat(p).real, _flat(q).real
    slack = 1e-4 * (1.0 + np.abs(x_).sum()) * (1.0 + scale)
    if name.endswith("sphere"):
        assert np.linalg.norm(x_ - p_) <= np.linalg.norm(x_ - q_) + slack
    else:
        assert np.dot(x_ - p_, q_ - p_) <= slack


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), b=st.floats(-5.0, 5.0))
def test_hyperplane_and_halfspace_laws(seed, b):
    x, a = _tree(seed), _tree(seed + 1)
    p = P.projection_hyperplane(x, a, b)
    np.testing.assert_allclose(float(tu.tree_vdot(a, p)), b, atol=1e-3)
    assert_same(P.projection_hyperplane(p, a, b), p, rtol=1e-4, atol=1e-4)
    h = P.projection_halfspace(x, a, b)
    assert float(tu.tree_vdot(a, h)) <= b + 1e-3
    inside = float(tu.tree_vdot(a, x)) <= b
    assert_same(h, x if inside else p, rtol=1e-4, atol=1e-4)
    v = P.projection_vector(x, a)  # x - v is orthogonal to a
    assert abs(float(tu.tree_vdot(a, tu.tree_sub(x, v)))) <= 1e-3 * (1 + float(tu.tree_norm(x)))


# ----------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: P.projection_l2_ball(x, -1.0), r"projection_l2_ball: scale must be in \[0"),
        (lambda x: P.projection_linf_ball(x, -1.0), "projection_linf_ball: scale"),
        (lambda x: P.projection_l2_sphere(x, -1.0), "projection_l2_sphere: scale"),
        (lambda x: P.projection_hypercube(x, -1.0), "projection_hypercube: scale"),
        (lambda x: P.projection_simplex(x, 0.0), r"projection_simplex: scale must be in \(0"),
        (lambda x: P.projection_l1_sphere(x, -2.0), "projection_l1_sphere: scale"),
        (lambda x: P.projection_l1_ball(x, 0.0), "projection_l1_ball: scale"),
        (
            lambda x: P.projection_box(x, 1.0, 0.0),
            r"projection_box: lower must be <= upper everywhere, .* at tree\['b'\]\[0\]",
        ),
        (
            lambda x: P.projection_box(x, {"w": 0.0}, 1.0),
            "projection_box: lower must be a scalar or a tree with the structure of tree",
        ),
    ],
)
def test_bad_bounds_are_refused_naming_function_and_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(_tree(0))


def test_traced_radii_are_not_checked():
    x = _tree(0)
    got = jax.jit(P.projection_l2_ball)(x, jnp.float32(0.5))
    np.testing.assert_allclose(float(tu.tree_norm(got)), 0.5, rtol=1e-5)
