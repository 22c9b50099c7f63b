"""`apply_step`: one pass per step through the native kernel, equal to update + apply_updates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx import fused, native, schedules
from gradtx.grouped import group, ungroup

# Skipped only where the kernel is absent, which fails CI (tests/test_native.py).
needs_native = pytest.mark.skipif(
    not fused.native_available(), reason=f"native kernel unavailable: {gradtx.native_status()}"
)

FUSED = [
    gradtx.adam(1e-3),
    gradtx.adam(schedules.exponential_decay(1e-2, 50, 0.5), b1=0.8, b2=0.99, eps=1e-6),
    gradtx.adam(1e-3, eps_root=1e-8),
    gradtx.adamw(1e-3, weight_decay=0.1),
    gradtx.adamw(1e-3, weight_decay=schedules.linear_schedule(0.1, 0.0, 100)),
    gradtx.sgd(0.1, momentum=0.9),
    gradtx.sgd(schedules.cosine_decay_schedule(0.1, 200), momentum=0.5, nesterov=True),
    gradtx.rmsprop(1e-3),
    gradtx.rmsprop(1e-3, decay=0.95, eps_in_sqrt=False, bias_correction=True),
    gradtx.rmsprop(1e-3, initial_scale=0.1),
]
NOT_FUSED = [
    gradtx.sgd(0.1),  # no state: nothing to fuse
    gradtx.nadam(1e-3),
    gradtx.adam(1e-3, mu_dtype=jnp.bfloat16),  # the kernels take float32 moments only
    gradtx.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    gradtx.rmsprop(1e-3, momentum=0.9),
    gradtx.rmsprop(1e-3, centered=True),
    gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-3)),
    gradtx.amsgrad(1e-3),
]


def _params():
    key = jax.random.key(0)
    return {
        "w": jax.random.normal(key, (70, 300)),  # spans several of the kernel's chunks
        "b": jax.random.normal(jax.random.fold_in(key, 1), (300,)),
        "layers": [jax.random.normal(jax.random.fold_in(key, i), (5, 7)) for i in range(3)],
        "scalar": jnp.float32(0.5),
        "empty": jnp.zeros((0,)),
    }


def _grads(params, t):
    key = jax.random.key(1000 + t)
    return jax.tree.map(lambda p: jax.random.normal(key, p.shape, p.dtype), params)


def _run(opt, params, steps, native, grads=None):
    step = jax.jit(functools.partial(fused.apply_step, opt, native=native), donate_argnums=(1, 2))
    params, state = jax.tree.map(jnp.copy, params), opt.init(params)
    for t in range(steps):
        params, state = step(_grads(params, t) if grads is None else grads(t), state, params)
    return params, state


def _assert_close(a, b, rtol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        scale = float(np.abs(np.asarray(y)).max(initial=0.0))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * scale)


@needs_native
@pytest.mark.parametrize("opt", FUSED, ids=repr)
def test_the_native_kernel_matches_update_and_apply_updates_over_300_steps(opt):
    native = _run(opt, _params(), 300, native=True)
    reference = _run(opt, _params(), 300, native=False)
    _assert_close(native, reference, rtol=1e-5)


@needs_native
def test_the_native_adam_matches_optax_over_300_steps():
    native, _ = _run(gradtx.adam(1e-3), _params(), 300, native=True)
    opt = optax.adam(1e-3)
    params = _params()
    state = opt.init(params)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 and float
        for t in range(300):
            updates, state = opt.update(_grads(params, t), state, params)
            params = optax.apply_updates(params, updates)
    _assert_close(native, params, rtol=1e-5)


@pytest.mark.parametrize("opt", NOT_FUSED, ids=repr)
def test_other_optimisers_take_the_two_line_step_bit_for_bit(opt):
    assert fused._plan(opt) is None or fused._why_not_native(
        opt, _params(), opt.init(_params()), _params()
    )
    with pytest.raises(ValueError, match="apply_step: the native kernel does not apply"):
        fused.apply_step(opt, _params(), opt.init(_params()), _params(), native=True)
    for x, y in zip(
        jax.tree.leaves(_run(opt, _params(), 3, native=None)),
        jax.tree.leaves(_run(opt, _params(), 3, native=False)),
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bfloat16_leaves_and_optax_transformations_fall_back():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
    opt = gradtx.adam(1e-3)
    assert "float32" in fused._why_not_native(opt, params, opt.init(params), params)
    with jax.numpy_dtype_promotion("standard"):
        out, _ = fused.apply_step(optax.adam(1e-3), params, optax.adam(1e-3).init(params), params)
    assert jax.tree.structure(out) == jax.tree.structure(params)


@needs_native
def test_one_native_call_per_64_leaves_updates_them_in_place():
    opt = gradtx.adam(1e-3)
    params = {f"leaf{i:03d}": jnp.full((i % 7 + 1,), i / 10) for i in range(150)}
    step = jax.jit(lambda p, s, g: fused.apply_step(opt, g, s, p), donate_argnums=(0, 1))
    hlo = step.lower(params, opt.init(params), params).compile().as_text()
    assert hlo.count('custom_call_target="gradtx_adam_step"') == 3  # 64 + 64 + 22 leaves
    assert " copy(" not in hlo  # donated, returned in the same order: updated in place
    _assert_close(
        _run(opt, params, 10, native=True), _run(opt, params, 10, native=False), rtol=1e-6
    )


@needs_native
def test_the_state_is_the_optimisers_own():
    opt = gradtx.adamw(schedules.exponential_decay(1e-2, 10, 0.5), weight_decay=1e-2)
    native_state = _run(opt, _params(), 4, native=True)[1]
    reference_state = _run(opt, _params(), 4, native=False)[1]
    assert jax.tree.structure(native_state) == jax.tree.structure(reference_state)
    assert int(native_state[0].count) == 4
    # a constant decay keeps no state (optax's layout); the scheduled rate its count
    assert native_state[1] == gradtx.EmptyState()
    assert [int(c) for c in jax.tree.leaves(native_state[1:])] == [4]


@needs_native
def test_derivatives_and_vmap_go_through_the_native_step():
    opt = gradtx.adam(1e-2)

    def final_loss(params, native):
        grads = jax.tree.map(lambda p: 2 * p, params)
        new, _ = fused.apply_step(opt, grads, opt.init(params), params, native=native)
        return sum(jnp.sum(x**2) for x in jax.tree.leaves(new))

    params = {"a": jnp.arange(1.0, 6.0), "b": jnp.ones((2, 3))}
    _assert_close(
        jax.grad(final_loss)(params, True), jax.grad(final_loss)(params, False), rtol=1e-6
    )
    batch = jnp.stack([jnp.arange(4.0), -jnp.arange(4.0)])

    def one(p, native):
        return fused.apply_step(opt, p, opt.init(p), p, native=native)[0]

    np.testing.assert_allclose(
        jax.vmap(lambda p: one(p, True))(batch), jax.vmap(lambda p: one(p, False))(batch)
    )


@needs_native
def test_grouped_parameters_take_one_native_pass():
    opt, params = gradtx.adam(1e-3), {k: v for k, v in _params().items() if k != "empty"}
    grads = [_grads(params, t) for t in range(20)]
    native_grouped = _run(opt, group(params), 20, True, lambda t: group(grads[t]))
    native_tree = _run(opt, params, 20, True, lambda t: grads[t])
    for x, y in zip(jax.tree.leaves(ungroup(native_grouped[0])), jax.tree.leaves(native_tree[0])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_without_the_kernel_apply_step_is_the_two_line_step(monkeypatch):
    monkeypatch.setattr(native, "_loaded", ["no compiler here"])
    assert not fused.native_available()
    opt, params = gradtx.adam(1e-3), _params()
    with pytest.raises(ValueError, match="no compiler here"):
        fused.apply_step(opt, params, opt.init(params), params, native=True)
    for x, y in zip(
        jax.tree.leaves(_run(opt, params, 3, native=None)),
        jax.tree.leaves(_run(opt, params, 3, native=False)),
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_errors_name_the_function():
    opt, params = gradtx.adam(1e-3), _params()
    with pytest.raises(TypeError, match="native must be True or False"):
        fused.apply_step(opt, params, opt.init(params), params, native=1)
    with pytest.raises(TypeError, match="apply_step: tx must be a gradient transformation"):
        fused.apply_step(lambda g: g, params, (), params)


# ----------------------------------------------------------------------------
# Every kernel kind's derivative rule is its jax.numpy reference: checked against the
# derivatives of the two-line step, so a wrong term in a reference fails here.

KINDS = [
    gradtx.adam(1e-2),
    gradtx.adam(1e-2, b1=0.5, b2=0.9, eps=1e-3, eps_root=1e-4),
    gradtx.adamw(1e-2, weight_decay=0.3),
    gradtx.sgd(0.1, momentum=0.9),
    gradtx.sgd(0.1, momentum=0.7, nesterov=True),
    gradtx.rmsprop(1e-2),
    gradtx.rmsprop(1e-2, decay=0.8, eps=1e-3, eps_in_sqrt=False, bias_correction=True),
]


def _steps(opt, params, native, steps=3):
    """Params after `steps` steps on a loss whose gradient depends on the params."""
    state = opt.init(params)
    for _ in range(steps):
        grads = jax.tree.map(lambda p: 2 * p + jnp.sin(3 * p), params)
        params, state = fused.apply_step(opt, grads, state, params, native=native)
    return params, state


@needs_native
@pytest.mark.parametrize("opt", KINDS, ids=repr)
def test_grad_through_the_kernel_is_the_grad_of_the_two_line_step(opt):
    params = {"a": jnp.linspace(-1.5, 2.0, 7), "b": jnp.asarray([[0.3, -0.8], [1.2, 0.05]])}
    weights = jax.tree.map(
        lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params
    )

    def loss(params, native):
        new, state = _steps(opt, params, native)
        moments = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
        out = sum(jnp.sum(w * x) for w, x in zip(jax.tree.leaves(weights), jax.tree.leaves(new)))
        return out + sum(jnp.sum(jnp.sin(m)) for m in moments)

    _assert_close(jax.grad(loss)(params, True), jax.grad(loss)(params, False), rtol=1e-5)


@needs_native
@pytest.mark.parametrize("opt", KINDS, ids=repr)
def test_jvp_through_the_kernel_is_the_jvp_of_the_two_line_step(opt):
    params = {"a": jnp.linspace(-1.5, 2.0, 7), "b": jnp.asarray([[0.3, -0.8], [1.2, 0.05]])}
    tangent = jax.tree.map(lambda p: jnp.full_like(p, 0.5) - 0.1 * p, params)

    def run(params, native):  # params and the floating moments (the counts have no tangent)
        new, state = _steps(opt, params, native)
        return new, [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]

    out_native, t_native = jax.jvp(lambda p: run(p, True), (params,), (tangent,))
    out_ref, t_ref = jax.jvp(lambda p: run(p, False), (params,), (tangent,))
    _assert_close(out_native, out_ref, rtol=1e-5)
    _assert_close(t_native, t_ref, rtol=1e-5)


@pytest.mark.parametrize("opt", KINDS, ids=repr)
def test_each_kind_is_chosen_from_the_record(opt):
    plan = fused._plan(opt)
    assert plan is not None
    assert plan.kernel.head is gradtx.spec.spec_of(opt).arguments["transforms"][0].spec.factory


def test_a_user_transformation_named_like_a_fused_piece_never_gets_a_kernel():
    @gradtx.base.factory
    def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        """A user's piece that happens to share the name (and arguments) of gradtx's."""
        return gradtx.scale(0.5)

    opt = gradtx.chain(scale_by_adam(), gradtx.scale_by_learning_rate(1e-3))
    assert repr(opt).startswith("chain(scale_by_adam(b1=0.9")  # same printed name...
    assert fused._plan(opt) is None  # ...but not the same factory
    params = _params()
    with pytest.raises(ValueError, match="the native kernel does not apply"):
        fused.apply_step(opt, params, opt.init(params), params, native=True)
    new, _ = fused.apply_step(opt, params, opt.init(params), params)
    expected = jax.tree.map(lambda p: p - 0.5e-3 * p, params)
    _assert_close(new, expected, rtol=1e-6)
