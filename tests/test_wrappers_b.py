"""Clipping variants, centralisation, the non-negativity constraint and the measurements
(snapshot, monitor, measure_with_ema): parity with optax 0.2.8, formulas by hand, laws."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx
from gradtx import transforms
from gradtx.tree_utils import tree_get

FEW = settings(max_examples=15, deadline=None, derandomize=True)

SHAPES = {"w": (3, 4), "b": (4,), "blocks": [(2, 2, 3), ()], "conv": (2, 2, 3, 2)}


def make_params(dtype=jnp.float32, shapes=SHAPES, seed=0):
    """A nested tree of several shapes (one scalar), drawn with numpy (nothing to compile)."""
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    rng = np.random.default_rng(seed)
    arrays = []
    for shape in leaves:
        x = rng.normal(size=shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            x = x + 1j * rng.normal(size=shape)
        arrays.append(jnp.asarray(np.asarray(x).astype(dtype)))
    return jax.tree.unflatten(treedef, arrays)


def _wide(x):
    return jnp.complex64 if jnp.iscomplexobj(x) else jnp.float32


def grad_fn(params, shift=-0.3):
    """The gradient of a fixed quartic at `params`: (k+1)(p + 0.2 p|p|^2 + shift), leaf k."""

    def leaf(k, p):
        x = p.astype(_wide(p))
        sq = (x * jnp.conj(x)).real.astype(x.dtype)
        return ((k + 1.0) * (x + 0.2 * x * sq + shift)).astype(p.dtype)

    leaves, treedef = jax.tree.flatten(params)
    return jax.tree.unflatten(treedef, [leaf(k, p) for k, p in enumerate(leaves)])


def run(opt, params, steps, step_size, *, standard=False, jit=True, shift=-0.3, first_alone=False):
    """`steps` updates with feedback gradients under one `jit(lax.scan)` (with `first_alone`,
    the first one jitted alone: optax's monitor changes its state's structure there).
    Returns the final params, the stacked emitted updates and the final state."""

    def step(carry, _):
        p, s = carry
        u, s = opt.update(grad_fn(p, shift), s, p)
        p = jax.tree.map(
            lambda a, b: (a.astype(_wide(a)) + step_size * b.astype(_wide(a))).astype(a.dtype),
            p,
            u,
        )
        return (p, s), u

    ctx = jax.numpy_dtype_promotion("standard") if standard else contextlib.nullcontext()
    with ctx:
        carry = (params, opt.init(params))
        if not jit:
            emitted = []
            for _ in range(steps):
                carry, u = step(carry, None)
                emitted.append(u)
            return *carry[:1], jax.tree.map(lambda *xs: jnp.stack(xs), *emitted), carry[1]
        if not first_alone:
            carry, emitted = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(carry)
            return carry[0], emitted, carry[1]
        carry, first = jax.jit(lambda c: step(c, None))(carry)
        carry, rest = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps - 1))(carry)
        emitted = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
        return carry[0], emitted, carry[1]


def close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(
            np.asarray(x.astype(_wide(x)) if x.dtype == jnp.bfloat16 else x, np.complex128),
            np.asarray(y.astype(_wide(y)) if y.dtype == jnp.bfloat16 else y, np.complex128),
            rtol=rtol,
            atol=atol,
        )


def paths(tree):
    """The key paths of `tree`'s leaves: its layout up to the classes of its nodes."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def norm_by_optax(x):
    return optax.tree.norm(x)


# (gradtx's, optax's, step size, initial params' transform, gradient shift)
CASES = {
    "clip_by_block_rms": (
        lambda: gradtx.clip_by_block_rms(0.5),
        lambda: optax.clip_by_block_rms(0.5),
        -0.05,
    ),
    "clip_by_block_rms_loose": (
        lambda: transforms.clip_by_block_rms(5.0),
        lambda: optax.transforms.clip_by_block_rms(5.0),
        -0.05,
    ),
    "adaptive_grad_clip": (
        lambda: gradtx.adaptive_grad_clip(0.05),
        lambda: optax.adaptive_grad_clip(0.05),
        -0.05,
    ),
    "adaptive_grad_clip_eps": (
        lambda: gradtx.adaptive_grad_clip(0.2, eps=0.5),
        lambda: optax.adaptive_grad_clip(0.2, eps=0.5),
        -0.05,
    ),
    "centralize": (gradtx.centralize, optax.centralize, -0.05),
    "normalize_by_update_norm": (
        gradtx.normalize_by_update_norm,
        optax.normalize_by_update_norm,
        -0.05,
    ),
    "normalize_by_update_norm_scaled": (
        lambda: gradtx.normalize_by_update_norm(-0.5, eps=1e-3),
        lambda: optax.normalize_by_update_norm(-0.5, eps=1e-3),
        0.1,
    ),
    "keep_params_nonnegative": (
        lambda: gradtx.chain(gradtx.sgd(0.05, 0.9), gradtx.keep_params_nonnegative()),
        lambda: optax.chain(optax.sgd(0.05, 0.9), optax.keep_params_nonnegative()),
        1.0,
    ),
    "snapshot": (
        lambda: gradtx.chain(
            gradtx.sgd(0.05, momentum=0.9),
            gradtx.snapshot("norm_before_clip", gradtx.global_norm),
            gradtx.clip_by_global_norm(0.5),
        ),
        lambda: optax.chain(
            optax.sgd(0.05, momentum=0.9),
            optax.snapshot("norm_before_clip", norm_by_optax),
            optax.clip_by_global_norm(0.5),
        ),
        1.0,
    ),
    "monitor": (
        lambda: gradtx.chain(
            gradtx.sgd(0.05, momentum=0.9),
            gradtx.monitor(
                {
                    "norm": gradtx.global_norm,
                    "clipped": gradtx.measure_with_ema(lambda u: gradtx.global_norm(u) > 0.5, 0.9),
                    "norm_ema": gradtx.measure_with_ema(
                        gradtx.global_norm, 0.8, debias=False, accumulator_dtype=jnp.float32
                    ),
                    "leaves": gradtx.measure_with_ema(lambda u: u, 0.7),
                }
            ),
            gradtx.clip_by_global_norm(0.5),
        ),
        lambda: optax.chain(
            optax.sgd(0.05, momentum=0.9),
            optax.monitor(
                {
                    "norm": optax.tree.norm,
                    "clipped": optax.measure_with_ema(lambda u: optax.tree.norm(u) > 0.5, 0.9),
                    "norm_ema": optax.measure_with_ema(
                        optax.tree.norm, 0.8, debias=False, accumulator_dtype=jnp.float32
                    ),
                    "leaves": optax.measure_with_ema(lambda u: u, 0.7),
                }
            ),
            optax.clip_by_global_norm(0.5),
        ),
        1.0,
    ),
}
SHIFT = {"keep_params_nonnegative": 0.3}  # pushes the parameters below zero


def _start(name, dtype=jnp.float32):
    params = make_params(dtype)
    if name == "keep_params_nonnegative":
        params = jax.tree.map(jnp.abs, params)
    return params


def _check_states(ours, theirs, rtol, atol):
    assert paths(ours) == paths(theirs)
    close(ours, theirs, rtol, atol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_optax_300_jitted_steps(name):
    ours, theirs, step = CASES[name]
    params, shift = _start(name), SHIFT.get(name, -0.3)
    p1, u1, s1 = run(ours(), params, 300, step, shift=shift)
    alone = name == "monitor"
    p2, u2, s2 = run(theirs(), params, 300, step, standard=True, shift=shift, first_alone=alone)
    close(u1, u2)
    close(p1, p2)
    _check_states(s1, s2, 1e-5, 1e-6)
    if name == "keep_params_nonnegative":  # the constraint was active, and held
        assert min(float(jnp.min(x)) for x in jax.tree.leaves(p1)) == 0.0
    if name == "monitor":  # the clipped fraction moved off its start
        assert 0.0 < float(tree_get(s1, "clipped")) < 1.0


@pytest.mark.parametrize("name", ["snapshot"])  # the formula tests below run without jit too
def test_matches_optax_without_jit(name):
    ours, theirs, step = CASES[name]
    params, shift = _start(name), SHIFT.get(name, -0.3)
    p1, u1, s1 = run(ours(), params, 2, step, jit=False, shift=shift)
    p2, u2, s2 = run(theirs(), params, 2, step, jit=False, standard=True, shift=shift)
    close(u1, u2)
    close(p1, p2)
    _check_states(s1, s2, 1e-5, 1e-6)


@pytest.mark.parametrize(
    "name",
    ["adaptive_grad_clip", "normalize_by_update_norm"],  # the others' dtypes: zero-gradient test
)
def test_matches_optax_bfloat16_and_keeps_the_dtype(name):
    """optax computes in bfloat16 (and its normalize_by_update_norm emits float32); gradtx in
    float32, rounded once to bfloat16: they agree to bfloat16 resolution."""
    ours, theirs, step = CASES[name]
    params = _start(name, jnp.bfloat16)
    p1, u1, _ = run(ours(), params, 30, step)
    p2, u2, _ = run(theirs(), params, 30, step, standard=True)
    assert {x.dtype for x in jax.tree.leaves(u1)} == {jnp.dtype(jnp.bfloat16)}
    close(p1, p2, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "name",
    ["clip_by_block_rms", "adaptive_grad_clip", "normalize_by_update_norm_scaled"],
)
def test_matches_optax_complex64(name):
    """Norms of |x|: optax supports complex leaves in these pieces, and so does gradtx."""
    ours, theirs, step = CASES[name]
    params = make_params(jnp.complex64)
    p1, u1, _ = run(ours(), params, 50, step)
    p2, u2, _ = run(theirs(), params, 50, step, standard=True)
    assert {x.dtype for x in jax.tree.leaves(u1)} == {jnp.dtype(jnp.complex64)}
    assert any(float(jnp.max(jnp.abs(x.imag))) > 0 for x in jax.tree.leaves(u1))
    close(u1, u2)
    close(p1, p2)


# ----------------------------------------------------------------------------
# Formulas by hand.


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def test_clip_by_block_rms_is_the_formula():
    g = make_params(seed=3)
    out = gradtx.clip_by_block_rms(0.7).update(g, gradtx.EmptyState())[0]
    for x, u in zip(jax.tree.leaves(_np(g)), jax.tree.leaves(out)):
        expected = x / max(1.0, np.sqrt(np.mean(x**2)) / 0.7)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((), None),
        ((5,), None),
        ((1, 5), None),  # a vector once squeezed: one unit
        ((3, 4), (0,)),
        ((2, 3, 4), (0,)),
        ((2, 2, 3, 4), (0, 1, 2)),
        ((2, 2, 2, 3, 4), (0, 1, 2, 3)),
    ],
)
def test_unitwise_norm_default_units(shape, axes):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    expected = np.broadcast_to(
        np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=axes, keepdims=True)), shape
    )
    got = transforms.unitwise_norm(x)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(optax.transforms.unitwise_norm(x)), rtol=1e-6
    )


def test_unitwise_norm_axis_dtypes_and_complex():
    x = np.random.default_rng(2).normal(size=(3, 4, 5)).astype(np.float32)
    got = transforms.unitwise_norm(x, axis=(1, -1))
    np.testing.assert_allclose(
        np.asarray(got),
        np.broadcast_to(np.sqrt(np.sum(x**2, axis=(1, 2), keepdims=True)), x.shape),
        rtol=1e-6,
    )
    assert transforms.unitwise_norm(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16
    z = (x + 1j * x[::-1]).astype(np.complex64)
    norm = transforms.unitwise_norm(z)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(norm),
        np.broadcast_to(np.sqrt(np.sum(np.abs(z) ** 2, axis=0, keepdims=True)), z.shape),
        rtol=1e-6,
    )


def test_unitwise_clip_is_the_formula_and_safe_at_zero():
    rng = np.random.default_rng(4)
    g = rng.normal(size=(3, 4)).astype(np.float32)
    g_norm = np.asarray(transforms.unitwise_norm(g))
    limit = np.full_like(g, 0.8)
    got = transforms.unitwise_clip(g_norm, limit, g)
    expected = np.where(g_norm < limit, g, g * limit / np.maximum(g_norm, 1e-6))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(optax.transforms.unitwise_clip(g_norm, limit, g)), rtol=1e-6
    )
    zeros = np.zeros_like(g)
    out = transforms.unitwise_clip(zeros, zeros, zeros, div_eps=0.0)
    assert np.all(np.asarray(out) == 0)


def test_adaptive_grad_clip_is_the_formula():
    p = make_params(seed=5)
    g = jax.tree.map(lambda x: 3 * x[::-1] if x.ndim else 3 * x, p)
    out = gradtx.adaptive_grad_clip(0.4, eps=0.1).update(g, gradtx.EmptyState(), p)[0]
    axes = {0: None, 1: None, 2: (0,), 3: (0,), 4: (0, 1, 2)}
    for x, q, u in zip(jax.tree.leaves(_np(g)), jax.tree.leaves(_np(p)), jax.tree.leaves(out)):
        a = axes[x.ndim]
        gn = np.sqrt(np.sum(x**2, axis=a, keepdims=True))
        pn = np.sqrt(np.sum(q**2, axis=a, keepdims=True))
        limit = 0.4 * np.maximum(pn, 0.1)
        expected = np.where(gn < limit, x, x * limit / gn)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=2e-6, atol=1e-7)


def test_adaptive_grad_clip_axis_and_none_updates():
    p = {"w": jnp.ones((3, 4)), "frozen": jnp.ones((2,))}
    g = {"w": jnp.arange(12.0).reshape(3, 4), "frozen": None}
    out = gradtx.adaptive_grad_clip(0.1, axis=1).update(g, gradtx.EmptyState(), p)[0]
    assert out["frozen"] is None
    want = optax.adaptive_grad_clip(0.1, axis=1).update(
        {"w": g["w"]}, optax.EmptyState(), {"w": p["w"]}
    )[0]
    close(out["w"], want["w"])


def test_centralize_is_the_formula():
    g = make_params(seed=6)
    out = gradtx.centralize().update(g, gradtx.EmptyState())[0]
    for x, u in zip(jax.tree.leaves(_np(g)), jax.tree.leaves(out)):
        expected = x - x.mean(axis=tuple(range(1, x.ndim)), keepdims=True) if x.ndim > 1 else x
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5, atol=1e-6)
    z = np.asarray(make_params(jnp.complex64)["blocks"][0])  # complex: the complex mean
    u = gradtx.centralize().update(jnp.asarray(z), gradtx.EmptyState())[0]
    assert u.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(u), z - z.mean(axis=(1, 2), keepdims=True), atol=1e-6)
    assert float(np.max(np.abs(np.asarray(u).imag))) > 0


def test_normalize_by_update_norm_is_the_formula():
    g = make_params(seed=7)
    out = gradtx.normalize_by_update_norm(2.0, eps=0.5).update(g, gradtx.EmptyState())[0]
    leaves = jax.tree.leaves(_np(g))
    norm = np.sqrt(sum(np.sum(x**2) for x in leaves))
    for x, u in zip(leaves, jax.tree.leaves(out)):
        np.testing.assert_allclose(np.asarray(u), 2.0 * x / (norm + 0.5), rtol=1e-6)


def _per_example_grads(dtype=jnp.float32, batch=6):
    shapes = {"w": (batch, 3, 2), "b": (batch, 2), "s": (batch,)}
    grads = make_params(np.float64, shapes, seed=8)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        grads = jax.tree.map(lambda x: np.asarray(x) * (1 - 2j), grads)
    weights = np.arange(batch)  # example 0 is all zeros
    return jax.tree.map(
        lambda x: jnp.asarray(
            (np.asarray(x) * weights.reshape(-1, *[1] * (x.ndim - 1))).astype(dtype)
        ),
        grads,
    )


def test_per_example_global_norm_clip_matches_optax_and_the_formula():
    grads = _per_example_grads()  # example 0 is all zeros
    ours = jax.jit(gradtx.per_example_global_norm_clip)
    theirs = jax.jit(optax.per_example_global_norm_clip)
    for clip in [0.0, 0.5, 3.0, float("inf")]:
        _check_per_example(grads, clip, ours, theirs)
    summed, _ = gradtx.per_example_global_norm_clip(grads, 0.5)  # without jit
    close(summed, ours(grads, 0.5)[0])


def _check_per_example(grads, clip, ours, theirs):
    summed, count = ours(grads, clip)
    want_sum, want_count = theirs(grads, clip)
    close(summed, want_sum)
    assert int(count) == int(want_count)
    leaves = jax.tree.leaves(_np(grads))
    norms = np.sqrt(sum(np.sum(x.reshape(len(x), -1) ** 2, axis=1) for x in leaves))
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.nan_to_num(np.minimum(clip / norms, 1.0), nan=1.0)
    for x, s in zip(leaves, jax.tree.leaves(summed)):
        np.testing.assert_allclose(
            np.asarray(s), np.tensordot(factor, x, axes=1), rtol=1e-5, atol=1e-6
        )
    assert int(count) == int(np.sum(factor < 1))


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("jit", [False, True])
def test_per_example_layer_norm_clip_matches_optax(uniform, jit):
    grads = _per_example_grads()
    fn = gradtx.per_example_layer_norm_clip
    if jit:
        fn = jax.jit(fn, static_argnames="uniform")
    summed, counts = fn(grads, 2.0, uniform=uniform)
    want_sum, want_counts = optax.per_example_layer_norm_clip(grads, 2.0, uniform=uniform)
    close(summed, want_sum)
    assert paths(counts) == paths(want_counts)
    assert jax.tree.map(int, counts) == jax.tree.map(int, want_counts)


def test_per_example_clipping_keeps_dtypes_and_takes_integers():
    ours = jax.jit(gradtx.per_example_global_norm_clip)
    bf = _per_example_grads(jnp.bfloat16)
    summed, _ = ours(bf, 1.0)
    assert {x.dtype for x in jax.tree.leaves(summed)} == {jnp.dtype(jnp.bfloat16)}
    with jax.numpy_dtype_promotion("standard"):
        theirs = jax.jit(optax.per_example_global_norm_clip)
        ints = [jnp.asarray([[0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]])]
        for clip in (0.0, 1.25, float("inf")):
            got, n = ours(ints, clip)
            want, m = theirs(ints, clip)
            assert got[0].dtype == jnp.float32
            close(got, want)
            assert int(n) == int(m)
        z = _per_example_grads(jnp.complex64)
        got, n = ours(z, 0.5)
        want, m = theirs(z, 0.5)
    assert got["w"].dtype == jnp.complex64
    close(got, want)
    assert int(n) == int(m) > 0


def test_scale_gradient_scales_only_the_backward_pass():
    x = {"a": jnp.arange(1.0, 4.0), "b": [jnp.ones((2, 2))]}

    def loss(fn, scale):
        return lambda t: sum(jnp.sum(y**2) for y in jax.tree.leaves(fn(t, scale)))

    for scale in (0.0, 1.0, -2.0):
        assert jax.tree.all(jax.tree.map(jnp.array_equal, gradtx.scale_gradient(x, scale), x))
        got = jax.jit(jax.grad(loss(gradtx.scale_gradient, scale)))(x)
        close(got, jax.tree.map(lambda t, s=scale: 2 * s * t, x))
        with jax.numpy_dtype_promotion("standard"):
            close(got, jax.jit(jax.grad(loss(optax.scale_gradient, scale)))(x))
    traced = jax.jit(jax.grad(lambda t, s: jnp.sum(gradtx.scale_gradient(t, s) ** 2)))
    close(traced(x["a"], jnp.float32(0.5)), x["a"])
    bf = jnp.ones(3, jnp.bfloat16)
    g = jax.grad(lambda t: jnp.sum(gradtx.scale_gradient(t, jnp.float32(0.5)).astype(jnp.float32)))(
        bf
    )
    assert g.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(g, np.float32), 0.5)
    z = jnp.asarray([1 + 2j, -0.5j], jnp.complex64)
    plain = jax.grad(lambda t: jnp.sum(jnp.abs(t) ** 2))(z)
    scaled = jax.grad(lambda t: jnp.sum(jnp.abs(gradtx.scale_gradient(t, 0.5)) ** 2))(z)
    close(scaled, 0.5 * plain)


def test_keep_params_nonnegative_is_the_formula():
    p = {"a": jnp.asarray([0.0, 1.0, 2.0, 0.5]), "none": None}
    g = {"a": jnp.asarray([-1.0, -3.0, 1.0, -0.5]), "none": None}
    out, state = gradtx.keep_params_nonnegative().update(g, gradtx.NonNegativeParamsState(), p)
    np.testing.assert_array_equal(np.asarray(out["a"]), [0.0, -1.0, 1.0, -0.5])
    assert out["none"] is None and state == gradtx.EmptyState()
    bf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p["a"])
    u = gradtx.keep_params_nonnegative().update(g["a"].astype(jnp.bfloat16), (), bf)[0]
    assert u.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(u, np.float32), [0.0, -1.0, 1.0, -0.5])


def test_measure_with_ema_is_the_formula():
    opt = gradtx.monitor({"m": gradtx.measure_with_ema(gradtx.global_norm, 0.8)})
    g0 = {"a": jnp.ones(3)}
    state = opt.init(g0)
    average, norms = 0.0, []
    for t in range(1, 6):
        g = {"a": jnp.full(3, float(t))}
        _, state = opt.update(g, state)
        n = np.sqrt(3.0) * t
        average = 0.8 * average + 0.2 * n
        norms.append(n)
        np.testing.assert_allclose(float(tree_get(state, "m")), average / (1 - 0.8**t), rtol=1e-6)


# ----------------------------------------------------------------------------
# Zero gradients, state layouts, jit, optax states.

STATELESS = {
    "clip_by_block_rms": lambda: gradtx.clip_by_block_rms(1.0),
    "adaptive_grad_clip": lambda: gradtx.adaptive_grad_clip(0.01, eps=0.0),
    "centralize": gradtx.centralize,
    "normalize_by_update_norm": lambda: gradtx.normalize_by_update_norm(eps=0.0),
    "keep_params_nonnegative": gradtx.keep_params_nonnegative,
    "snapshot": lambda: gradtx.snapshot("n", gradtx.global_norm),
    "monitor": lambda: gradtx.monitor(
        {"n": gradtx.global_norm, "e": gradtx.measure_with_ema(gradtx.global_norm, 0.9)}
    ),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_gradients_and_zero_params_give_no_nan(dtype):
    zeros = jax.tree.map(jnp.zeros_like, make_params(dtype))
    for name, make in STATELESS.items():
        opt = make()
        out, state = jax.jit(lambda z, opt=opt: opt.update(z, opt.init(z), z))(zeros)
        for x in jax.tree.leaves((out, state)):
            assert bool(jnp.all(jnp.isfinite(x))), name
        for x in jax.tree.leaves(out):
            assert x.dtype == dtype and not bool(jnp.any(x)), name
    batched = jax.tree.map(lambda x: jnp.zeros((3, *x.shape), dtype), zeros)
    for clip_fn in (gradtx.per_example_global_norm_clip, gradtx.per_example_layer_norm_clip):
        summed, count = jax.jit(clip_fn)(batched, 0.0)
        assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(summed))
        assert not any(bool(x) for x in jax.tree.leaves(count))


@pytest.mark.parametrize("name", sorted(STATELESS))
def test_update_jits_once_and_keeps_the_state_layout(name):
    opt = STATELESS[name]()
    params = make_params()
    state = opt.init(params)
    traces = []

    def update(g, s, p):
        traces.append(1)
        return opt.update(g, s, p)

    step = jax.jit(update)
    for t in range(3):
        g = grad_fn(jax.tree.map(lambda x, t=t: x + t, params))
        out, new = step(g, state, params)
        assert jax.tree.structure(new) == jax.tree.structure(state)
        assert jax.tree.map(jnp.result_type, new) == jax.tree.map(jnp.result_type, state)
        state = new
    assert len(traces) == 1


def test_optax_states_run_in_gradtx_updates():
    params = make_params()
    g = grad_fn(params)
    with jax.numpy_dtype_promotion("standard"):
        o_monitor = optax.monitor(
            {"n": optax.tree.norm, "e": optax.measure_with_ema(optax.tree.norm, 0.9)}
        )
        o_state = o_monitor.init(params)  # measurements empty until the first update
        _, o_next = o_monitor.update(g, o_state)
        o_snap = optax.snapshot("n", optax.tree.norm)
        s_state = o_snap.init(params)
        _, s_next = o_snap.update(g, s_state)
    ours = gradtx.monitor(
        {"n": gradtx.global_norm, "e": gradtx.measure_with_ema(gradtx.global_norm, 0.9)}
    )
    _, mine = jax.jit(ours.update)(g, o_state)
    assert paths(mine) == paths(o_next)
    close(mine, o_next)
    _, mine = jax.jit(gradtx.snapshot("n", gradtx.global_norm).update)(g, s_state)
    close(mine, s_next)
    # a restored checkpoint holds lists where the states had tuples
    restored = o_state._replace(measure_states=list(o_state.measure_states))
    close(ours.update(g, restored)[1], o_next)
    # gradtx's init state is optax's state after an update, with zeros
    assert paths(ours.init(params)) == paths(o_next)
    # the stateless pieces take optax's EmptyState (and hand it back)
    positive = jax.tree.map(jnp.abs, params)
    for opt in (gradtx.adaptive_grad_clip(0.1), gradtx.keep_params_nonnegative()):
        out, state = opt.update(g, optax.EmptyState(), positive)
        assert state == optax.EmptyState() and paths(out) == paths(g)


def test_snapshot_and_monitor_store_the_measurements_by_name():
    opt = gradtx.chain(
        gradtx.sgd(0.1, momentum=0.9),
        gradtx.snapshot("before", gradtx.global_norm),
        gradtx.monitor({"sum": lambda u: sum(jnp.sum(x) for x in jax.tree.leaves(u))}),
        gradtx.clip_by_global_norm(0.05),
    )
    params = jnp.asarray([1.0, 2.0, 3.0])
    state = opt.init(params)
    assert tree_get(state, "before") == gradtx.global_norm(params)  # optax's init
    before = gradtx.chain(gradtx.sgd(0.1, momentum=0.9))
    b_state = before.init(params)
    for _ in range(3):
        g = 2 * params
        updates, state = opt.update(g, state)
        expected, b_state = before.update(g, b_state)
        np.testing.assert_allclose(
            float(tree_get(state, "before")), float(gradtx.global_norm(expected)), rtol=1e-6
        )
        np.testing.assert_allclose(
            float(tree_get(state, "sum")), float(jnp.sum(expected)), rtol=1e-6
        )
        params = gradtx.apply_updates(params, updates)


def test_monitor_passes_extra_arguments_and_leaves_out_measures_that_need_them():
    def needs_value(updates, state, params=None, *, value=None, **extra):
        if value is None:
            raise TypeError("needs value=")
        return value, state

    opt = gradtx.monitor({"v": gradtx.GradientTransformation(lambda p: (), needs_value)})
    params = {"a": jnp.ones(2)}
    state = opt.init(params)
    assert state.measurements == {}  # as optax, until the first update
    _, state = opt.update(params, state, value=jnp.float32(3.0))
    assert float(state.measurements["v"]) == 3.0


# ----------------------------------------------------------------------------
# Laws.

arrays = st.lists(st.floats(-1e3, 1e3, width=32), min_size=8, max_size=8).map(
    lambda xs: np.asarray(xs, np.float32)
)
# Hyper-parameters go in traced (the factories' checks skip traced values): one compile.
block_rms = jax.jit(lambda g, c: gradtx.clip_by_block_rms(c).update(g, ())[0])
agc = jax.jit(lambda g, p, c, e: gradtx.adaptive_grad_clip(c, e).update(g, (), p)[0])
normalize = jax.jit(lambda g, s, e: gradtx.normalize_by_update_norm(s, e).update(g, ())[0])
keep = jax.jit(lambda g, p: gradtx.keep_params_nonnegative().update(g, (), p)[0])
per_example = jax.jit(gradtx.per_example_global_norm_clip)


@FEW
@given(arrays, st.floats(1e-3, 10.0))
def test_a_block_rms_clipped_update_never_exceeds_the_threshold(g, threshold):
    u = np.asarray(block_rms(g, np.float32(threshold)), np.float64)
    assert np.sqrt(np.mean(u**2)) <= threshold * (1 + 1e-5)
    assert np.all(np.isfinite(u))


@FEW
@given(arrays, arrays, st.floats(0.0, 2.0), st.floats(0.0, 1.0))
def test_an_agc_clipped_unit_never_exceeds_clipping_times_the_param_norm(g, p, clipping, eps):
    u = np.asarray(agc(g, p, np.float32(clipping), np.float32(eps)), np.float64)
    limit = clipping * max(float(np.linalg.norm(np.asarray(p, np.float64))), eps)
    assert np.linalg.norm(u) <= limit * (1 + 1e-5)  # clipped to the limit, or already below
    assert np.linalg.norm(u) <= np.linalg.norm(np.asarray(g, np.float64)) * (1 + 1e-6)
    assert np.all(np.isfinite(u))


@FEW
@given(st.lists(arrays, min_size=4, max_size=4), st.floats(0.0, 50.0))
def test_a_per_example_clipped_sum_never_exceeds_batch_times_the_bound(examples, clip):
    grads = {"g": jnp.asarray(np.stack(examples))}
    summed, count = per_example(grads, np.float32(clip))
    norm = np.linalg.norm(np.asarray(summed["g"], np.float64))
    assert norm <= len(examples) * clip * (1 + 1e-5) + 1e-6
    assert 0 <= int(count) <= len(examples)


@FEW
@given(arrays, st.floats(-3.0, 3.0), st.floats(0.0, 1.0))
def test_a_normalised_update_has_norm_at_most_the_scale(g, scale, eps):
    u = np.asarray(normalize(g, np.float32(scale), np.float32(eps)), np.float64)
    assert np.linalg.norm(u) <= abs(scale) * (1 + 1e-5)
    assert np.all(np.isfinite(u))


@FEW
@given(arrays.map(np.abs), arrays, st.floats(0.0, 1.0))
def test_keep_params_nonnegative_keeps_them_nonnegative(p, g, overshoot):
    # half the coordinates step to just below zero, where the constraint must act
    g = np.where(np.arange(len(g)) % 2 == 0, g, -p - np.float32(overshoot) * 1e-3)
    u = keep(g, p)
    assert bool(jnp.all(p + u >= 0))
    assert bool(jnp.all(jnp.where(p + g >= 0, u == g, u == -p)))


# ----------------------------------------------------------------------------
# Bad input.

BAD = [
    (
        lambda: gradtx.clip_by_block_rms(0.0),
        ValueError,
        r"clip_by_block_rms: threshold must be in \(0, inf\], got 0.0",
    ),
    (
        lambda: gradtx.clip_by_block_rms("1"),
        TypeError,
        "clip_by_block_rms: threshold must be a real number",
    ),
    (
        lambda: gradtx.adaptive_grad_clip(-0.1),
        ValueError,
        r"adaptive_grad_clip: clipping must be in \[0, inf\]",
    ),
    (
        lambda: gradtx.adaptive_grad_clip(0.1, eps=-1.0),
        ValueError,
        "adaptive_grad_clip: eps must be in",
    ),
    (
        lambda: gradtx.adaptive_grad_clip(0.1, axis=1.5),
        TypeError,
        "adaptive_grad_clip: axis must be None, an int or a tuple of ints, got 1.5",
    ),
    (
        lambda: gradtx.adaptive_grad_clip(0.1, axis=(0, "a")),
        TypeError,
        "adaptive_grad_clip: axis must be",
    ),
    (
        lambda: gradtx.normalize_by_update_norm(float("inf")),
        ValueError,
        "normalize_by_update_norm: scale_factor must be in",
    ),
    (
        lambda: gradtx.normalize_by_update_norm(eps=-1e-6),
        ValueError,
        r"normalize_by_update_norm: eps must be in \[0, inf\)",
    ),
    (
        lambda: gradtx.snapshot(1, gradtx.global_norm),
        TypeError,
        "snapshot: measure_name must be a string, got 1",
    ),
    (
        lambda: gradtx.snapshot("n", 3),
        TypeError,
        "snapshot: measure must be a function of the updates, got int",
    ),
    (
        lambda: gradtx.monitor([gradtx.global_norm]),
        TypeError,
        r"monitor: measures must be a dict \{name: measure\}, got list",
    ),
    (
        lambda: gradtx.monitor({"n": 3}),
        TypeError,
        r"monitor: measures\['n'\] must be a gradient transformation",
    ),
    (
        lambda: gradtx.measure_with_ema(3, 0.9),
        TypeError,
        "measure_with_ema: measure must be a function",
    ),
    (
        lambda: gradtx.measure_with_ema(gradtx.global_norm, 1.0),
        ValueError,
        r"measure_with_ema: decay must be in \[0, 1\)",
    ),
    (
        lambda: gradtx.measure_with_ema(gradtx.global_norm, 0.9, debias=1),
        TypeError,
        "measure_with_ema: debias must be True or False",
    ),
    (
        lambda: gradtx.measure_with_ema(gradtx.global_norm, 0.9, accumulator_dtype=jnp.int32),
        ValueError,
        "measure_with_ema: accumulator_dtype must be a floating",
    ),
    (
        lambda: gradtx.per_example_global_norm_clip(
            {"a": jnp.ones((2, 3)), "b": jnp.ones((3,))}, 1.0
        ),
        ValueError,
        r"per_example_global_norm_clip: grads must be per-example gradients, every leaf with "
        r"the same batch size on axis 0, got shapes \[\(2, 3\), \(3,\)\]",
    ),
    (lambda: gradtx.per_example_global_norm_clip({}, 1.0), ValueError, r"got shapes \[\]"),
    (
        lambda: gradtx.per_example_global_norm_clip([jnp.ones((2, 3))], -1.0),
        ValueError,
        "per_example_global_norm_clip: l2_norm_clip must be in",
    ),
    (
        lambda: gradtx.per_example_layer_norm_clip([jnp.ones(())], 1.0),
        ValueError,
        "per_example_layer_norm_clip: grads must be per-example",
    ),
    (
        lambda: gradtx.per_example_layer_norm_clip([jnp.ones((2,))], -1.0),
        ValueError,
        "per_example_layer_norm_clip: global_l2_norm_clip must be in",
    ),
    (
        lambda: gradtx.per_example_layer_norm_clip([jnp.ones((2,))], 1.0, uniform=1),
        TypeError,
        "per_example_layer_norm_clip: uniform must be True or False",
    ),
    (
        lambda: transforms.unitwise_norm(jnp.ones((2,) * 6)),
        ValueError,
        r"unitwise_norm: the default units are defined for leaves of rank 1 to 5, got a leaf "
        r"of shape \(2, 2, 2, 2, 2, 2\); pass axis=",
    ),
    (
        lambda: transforms.unitwise_norm(jnp.ones((2, 3)), axis=2),
        ValueError,
        r"unitwise_norm: axis 2 is out of range for a leaf of shape \(2, 3\)",
    ),
    (
        lambda: transforms.unitwise_clip(jnp.ones(2), jnp.ones(3), jnp.ones(2)),
        ValueError,
        r"unitwise_clip: g_norm, max_norm and grad must have one shape, "
        r"got \(2,\), \(3,\) and \(2,\)",
    ),
    (
        lambda: transforms.unitwise_clip(jnp.ones(2), jnp.ones(2, jnp.complex64), jnp.ones(2)),
        TypeError,
        "unitwise_clip: max_norm must be real",
    ),
    (
        lambda: transforms.unitwise_clip(jnp.ones(2), jnp.ones(2), jnp.ones(2), div_eps=-1.0),
        ValueError,
        "unitwise_clip: div_eps must be in",
    ),
    (
        lambda: gradtx.scale_gradient(jnp.ones(2), "x"),
        TypeError,
        "scale_gradient: scale must be a real number",
    ),
    (
        lambda: gradtx.scale_gradient(jnp.ones(2), 1j),
        TypeError,
        "scale_gradient: scale must be a real number",
    ),
    (
        lambda: gradtx.scale_gradient(jnp.ones(2), jnp.ones(2)),
        ValueError,
        "scale_gradient: scale must be a scalar",
    ),
]


@pytest.mark.parametrize("make, error, match", BAD, ids=lambda x: x if isinstance(x, str) else "")
def test_bad_input_is_refused_with_a_message(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_update_calls_are_refused_with_a_message():
    params = {"a": jnp.ones((2, 3))}
    agc = gradtx.adaptive_grad_clip(0.1)
    with pytest.raises(TypeError, match=r"adaptive_grad_clip: update needs params; pass it as"):
        agc.update(params, agc.init(params))
    with pytest.raises(ValueError, match=r"adaptive_grad_clip: updates\['a'\] has shape \(3,\)"):
        agc.update({"a": jnp.ones(3)}, (), params)
    with pytest.raises(
        ValueError, match=r"adaptive_grad_clip: the default units .* shape \(1, 2, 1, 2, 1, 2\)"
    ):
        agc.update({"a": jnp.ones((1, 2) * 3)}, (), {"a": jnp.ones((1, 2) * 3)})
    keep = gradtx.keep_params_nonnegative()
    with pytest.raises(TypeError, match="keep_params_nonnegative: update needs params"):
        keep.update(params, keep.init(params))
    with pytest.raises(
        TypeError,
        match=r"keep_params_nonnegative: params\['a'\] is complex64; non-negativity needs real",
    ):
        keep.init({"a": jnp.ones(2, jnp.complex64)})
    with pytest.raises(TypeError, match=r"keep_params_nonnegative: updates\['a'\] is complex64"):
        keep.update({"a": jnp.ones(2, jnp.complex64)}, (), {"a": jnp.ones(2)})
    mon = gradtx.monitor({"n": gradtx.global_norm})
    with pytest.raises(
        ValueError, match="monitor: state.measure_states must be the tuple of 1 states"
    ):
        mon.update(params, gradtx.MonitorState({}, ()))
