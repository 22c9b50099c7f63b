"""Switching `import optax` to gradtx: types, extra arguments, masks, edge inputs, complex
numbers and state layouts, each against optax 0.2.8 itself."""

from __future__ import annotations

import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from tests._util import standard_promotion


def run_optax(thunk):
    """Runs `thunk` under standard promotion (optax 0.2.8 needs it; the suite is strict)."""
    with standard_promotion():
        return thunk()


KEY = jax.random.PRNGKey(0)


def _params(dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(KEY, 3)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        real = jnp.finfo(dtype).dtype

        def draw(k, shape):
            a, b = jax.random.split(k)
            z = jax.lax.complex(
                jax.random.normal(a, shape, real), jax.random.normal(b, shape, real)
            )
            return z.astype(dtype)

    else:

        def draw(k, shape):
            return jax.random.normal(k, shape, dtype)

    return {"w": draw(k1, (4, 3)), "b": draw(k2, (3,)), "s": draw(k3, ())}


def _grad(params, step):
    """A gradient that depends on the params and the step (so errors compound)."""
    return jax.tree.map(
        lambda p: jnp.sin(p * (1.0 + 0.1 * step).astype(jnp.result_type(p))) + 0.1 * p, params
    )


def _trajectory(opt, params, steps, *, standard=False, **extra):
    @jax.jit
    def step(params, state, t):
        updates, state = opt.update(_grad(params, t), state, params, **extra)
        return optax.apply_updates(params, updates) if standard else gradtx.apply_updates(
            params, updates
        ), state

    state = opt.init(params)
    path = []
    for t in range(steps):
        params, state = step(params, state, jnp.asarray(t, jnp.float32))
        path.append(params)
    return path, state


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------
# optax's types and the extra-arguments protocol.


def test_every_gradtx_transformation_is_an_optax_one():
    for tx in [gradtx.adam(1e-3), gradtx.sgd(0.1), gradtx.identity(), gradtx.reduce_on_plateau()]:
        assert isinstance(tx, optax.GradientTransformation)
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
        assert len(tx) == 2 and tx._fields == ("init", "update")
    assert gradtx.GradientTransformationExtraArgs is gradtx.GradientTransformation


def test_optax_wrappers_forward_value_to_gradtx_pieces():
    params = {"x": jnp.ones(3)}
    grads = {"x": jnp.full(3, 0.5)}
    ours = optax.chain(gradtx.sgd(0.1), gradtx.reduce_on_plateau(patience=1, factor=0.5))
    ref = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(patience=1, factor=0.5))
    s1, s2 = ours.init(params), ref.init(params)
    for loss in [1.0, 2.0, 3.0, 4.0]:
        u1, s1 = ours.update(grads, s1, params, value=jnp.asarray(loss))
        u2, s2 = run_optax(
            lambda s2=s2, loss=loss: ref.update(grads, s2, params, value=jnp.asarray(loss))
        )
        _close(u1, u2)
    assert float(s1[1].scale) == float(s2[1].scale) < 1.0
    for wrapper in [
        lambda t: optax.MultiSteps(t, 2).gradient_transformation(),
        lambda t: optax.masked(t, {"x": True}),
    ]:
        tx = wrapper(gradtx.chain(gradtx.sgd(0.1), gradtx.reduce_on_plateau()))
        with standard_promotion():  # optax's own code in the wrapper
            tx.update(grads, tx.init(params), params, value=jnp.asarray(1.0))  # no TypeError


def test_gradtx_works_without_optax_installed():
    code = (
        "import sys; sys.modules['optax'] = None\n"
        "import jax.numpy as jnp, gradtx\n"
        "opt = gradtx.adam(0.1); p = {'x': jnp.ones(2)}\n"
        "u, s = opt.update(p, opt.init(p), p)\n"
        "assert isinstance(opt, tuple) and len(opt) == 2\n"
        "assert type(opt).__mro__[1].__name__ == '_Pair'\n"
        "print(gradtx.apply_updates(p, u)['x'])\n"
        "m = gradtx.masked(gradtx.adam(0.1), {'x': True, 'y': False})\n"
        "q = {'x': jnp.ones(2), 'y': jnp.ones(1)}\n"
        "u, s = m.update(q, m.init(q), q)\n"
        "assert type(s.inner_state[0].mu['y']).__module__ == 'gradtx.combine'\n"
        "assert float(u['y'][0]) == 1.0\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert "0.9" in out.stdout


def test_attributes_can_be_set_on_a_transformation():
    tx = gradtx.adam(1e-3)
    schedule = gradtx.linear_schedule(1.0, 0.0, 10)
    tx.lr_schedule = schedule
    assert tx.lr_schedule is schedule
    assert repr(tx).startswith("chain(scale_by_adam(")


def test_optax_names_for_the_protocol():
    sgd = gradtx.sgd(0.1)
    assert gradtx.with_extra_args_support(sgd) is sgd  # already takes extra arguments
    plain = optax.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, s))
    wrapped = gradtx.with_extra_args_support(plain)
    assert wrapped.update({"x": 1.0}, (), None, value=3.0) == ({"x": 1.0}, ())
    assert gradtx.init_empty_state({"x": 1}) == gradtx.EmptyState()
    assert int(gradtx.safe_increment(jnp.asarray(2**31 - 1, jnp.int32))) == 2**31 - 1
    assert int(gradtx.safe_int32_increment(jnp.asarray(3, jnp.int32))) == 4
    assert float(gradtx.safe_increment(jnp.asarray(1.5))) == 2.5
    with pytest.raises(TypeError, match="safe_increment: count must have an integer or floating"):
        gradtx.safe_increment(jnp.asarray(True))


# ----------------------------------------------------------------------------
# Complex parameters: complex math, |g|^2 second moments, nothing dropped.


COMPLEX_PAIRS = {
    "sgd": (lambda m: m.sgd(0.05), {}),
    "sgd_momentum": (lambda m: m.sgd(0.05, momentum=0.9, nesterov=True), {}),
    "adam": (lambda m: m.adam(0.05), {}),
    "adamw": (lambda m: m.adamw(0.05, weight_decay=0.1), {}),
    "nadam": (lambda m: m.nadam(0.05), {}),
    "amsgrad": (lambda m: m.amsgrad(0.05), {}),
    "adagrad": (lambda m: m.adagrad(0.05), {}),
    "rmsprop": (lambda m: m.rmsprop(0.05, momentum=0.5), {}),
    "rmsprop_bias": (lambda m: m.rmsprop(0.05, bias_correction=True), {}),
    "rmsprop_centered": (lambda m: m.rmsprop(0.05, centered=True), {}),
    "rss": (lambda m: m.chain(m.scale_by_rss(), m.scale(-0.1)), {}),
    "clip_by_global_norm": (lambda m: m.chain(m.clip_by_global_norm(1.0), m.sgd(0.1)), {}),
    "ema": (lambda m: m.chain(m.ema(0.9, debias=True), m.scale(-0.1)), {}),
}


@pytest.mark.parametrize("name", sorted(COMPLEX_PAIRS))
def test_complex_params_match_optax(name):
    make, _ = COMPLEX_PAIRS[name]
    params = _params(jnp.complex64)
    ours, _ = _trajectory(make(gradtx), params, 30)
    ref, _ = run_optax(lambda: _trajectory(make(optax), params, 30, standard=True))
    for a, b in zip(ours, ref):
        _close(a, b, rtol=2e-5, atol=2e-6)
    assert all(leaf.dtype == jnp.complex64 for leaf in jax.tree.leaves(ours[-1]))
    assert float(jnp.abs(ours[-1]["w"].imag - params["w"].imag).max()) > 1e-3  # it moved


def test_complex_second_moments_are_real_and_first_moments_complex():
    params = _params(jnp.complex64)
    _, state = _trajectory(gradtx.adam(0.05), params, 3)
    assert state[0].mu["w"].dtype == jnp.complex64
    assert state[0].nu["w"].dtype == jnp.float32
    g = _grad(params, jnp.float32(0))["w"]
    np.testing.assert_allclose(  # first step: nu = (1 - b2) |g|^2
        gradtx.adam(0.05)
        .update(_grad(params, jnp.float32(0)), gradtx.adam(0.05).init(params))[1][0]
        .nu["w"],
        0.001 * np.abs(np.asarray(g)) ** 2,
        rtol=1e-5,
    )
    assert state[0].nu["w"].dtype == jnp.float32
    _, rms = _trajectory(gradtx.rmsprop(0.05, centered=True), params, 3)
    assert rms[0].mu["w"].dtype == jnp.complex64 and rms[0].nu["w"].dtype == jnp.float32


def test_complex_storage_dtypes():
    params = _params(jnp.complex64)
    state = gradtx.adam(0.1, mu_dtype=jnp.complex128 if jax.config.x64_enabled else jnp.complex64)
    assert state.init(params)[0].mu["w"].dtype.kind == "c"
    with pytest.raises(TypeError, match=r"scale_by_adam: mu_dtype=bfloat16 is real .* complex64"):
        gradtx.adam(0.1, mu_dtype=jnp.bfloat16).init(params)
    with pytest.raises(TypeError, match="trace: accumulator_dtype=float32 is real"):
        gradtx.sgd(0.1, momentum=0.9, accumulator_dtype=jnp.float32).init(params)


def test_complex_apply_updates_and_norms():
    out = gradtx.apply_updates([jnp.asarray(1 + 1j, jnp.complex64)], [jnp.asarray(0.5 + 0.5j)])
    assert complex(out[0]) == 1.5 + 1.5j
    with pytest.raises(
        TypeError, match=r"apply_updates: updates\[0\] is complex64 but params\[0\]"
    ):
        gradtx.apply_updates([jnp.ones(2)], [jax.lax.complex(jnp.ones(2), jnp.ones(2))])
    z = {"a": jnp.asarray([3 + 4j], jnp.complex64)}
    assert float(gradtx.global_norm(z)) == pytest.approx(5.0)
    clipped, _ = gradtx.clip(1.0).update(z, gradtx.EmptyState())
    np.testing.assert_allclose(clipped["a"], [0.6 + 0.8j], rtol=1e-6)  # phase kept, |u| = 1
    composed = gradtx.chain(gradtx.scale_by_adam_composed(), gradtx.scale(-0.05))
    ours, _ = _trajectory(composed, _params(jnp.complex64), 10)
    fused, _ = _trajectory(
        gradtx.chain(gradtx.scale_by_adam(), gradtx.scale(-0.05)), _params(jnp.complex64), 10
    )
    _close(ours[-1], fused[-1])
    squared, _ = gradtx.square().update(z, gradtx.EmptyState())
    np.testing.assert_allclose(squared["a"], [25 + 0j])


# ----------------------------------------------------------------------------
# Masks: functions only when their leaves are callable; NumPy bools.


@jax.tree_util.register_pytree_node_class
class Model:
    """Stands in for an Equinox module: a pytree that is also callable."""

    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, x):
        return x @ self.w + self.b

    def tree_flatten(self):
        return (self.w, self.b), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def test_a_callable_pytree_is_a_mask_tree_not_a_mask_function():
    params = Model(jnp.ones((2, 2)), jnp.ones(2))
    mask = Model(True, False)
    for make in [
        lambda m: m.adamw(0.1, weight_decay=0.5, mask=mask),
        lambda m: m.masked(m.sgd(0.1), mask),
        lambda m: m.add_decayed_weights(0.5, mask),
    ]:
        ours, _ = _trajectory(make(gradtx), params, 5)
        ref, _ = run_optax(lambda: _trajectory(make(optax), params, 5, standard=True))
        _close(ours[-1], ref[-1])


def test_numpy_bool_mask_leaves():
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    mask = {"w": np.bool_(True), "b": np.array(False)}
    updates, _ = gradtx.masked(gradtx.scale(2.0), mask).update(
        params, gradtx.masked(gradtx.scale(2.0), mask).init(params)
    )
    np.testing.assert_array_equal(updates["w"], 2.0)
    np.testing.assert_array_equal(updates["b"], 1.0)
    with pytest.raises(TypeError, match=r"masked: mask\['b'\] must be a Python or NumPy bool"):
        gradtx.masked(gradtx.scale(2.0), {"w": True, "b": 1}).init(params)


def test_mask_compatible_extra_args():
    seen = {}

    def record(updates, state, params=None, **extra):
        seen.update(extra)
        return updates, state

    inner = gradtx.GradientTransformation(lambda p: (), record)
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    tx = gradtx.masked(inner, {"w": True, "b": False}, mask_compatible_extra_args=True)
    tx.update(params, tx.init(params), params, tags={"w": 1, "b": 2}, other=3)
    assert seen["tags"] == {"w": 1, "b": gradtx.MaskedNode()} and seen["other"] == 3


# ----------------------------------------------------------------------------
# optax.tree_utils.tree_map_params over gradtx states.


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.adam(0.1),
        lambda: gradtx.adamw(0.1, mask={"w": True, "b": False}),
        lambda: gradtx.masked(gradtx.adam(0.1), {"w": True, "b": False}),
        lambda: gradtx.partition(
            {"a": gradtx.adam(0.1), "s": gradtx.sgd(0.1)}, {"w": "a", "b": "s"}
        ),
        lambda: gradtx.inject_hyperparams(gradtx.adam)(0.1),
        lambda: gradtx.accumulate(gradtx.sgd(0.1, momentum=0.9), 2),
        lambda: gradtx.apply_if_finite(gradtx.rmsprop(0.1), 3),
        lambda: gradtx.named_chain(("m", gradtx.trace(0.9)), ("s", gradtx.scale(0.1))),
        lambda: gradtx.divide(gradtx.ema(0.9), gradtx.chain(gradtx.square(), gradtx.ema(0.99))),
        lambda: gradtx.monitor_norms(gradtx.trace(0.9)),
        lambda: gradtx.chain(gradtx.chain(gradtx.scale_by_rss()), gradtx.reduce_on_plateau()),
        lambda: gradtx.scale_by_adam_composed(),
    ],
)
def test_optax_tree_map_params_over_gradtx_states(make):
    opt = make()
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    state = opt.init(params)
    mapped = run_optax(
        lambda: optax.tree_utils.tree_map_params(
            opt,
            lambda p: p if isinstance(p, gradtx.MaskedNode) else p + 1.0,
            state,
            transform_non_params=lambda x: x,
            is_leaf=lambda x: isinstance(x, gradtx.MaskedNode),
        )
    )
    assert jax.tree.structure(mapped) == jax.tree.structure(state)
    # every copy of the params (moments, accumulators) moved by exactly one; the rest untouched
    moved = 0
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(mapped), strict=True):
        if jnp.shape(a) in [(2, 3), (3,)]:
            np.testing.assert_array_equal(np.asarray(b) - np.asarray(a), 1.0)
            moved += 1
        else:
            np.testing.assert_array_equal(a, b)
    assert moved >= 2


# ----------------------------------------------------------------------------
# Edge inputs as optax treats them.


def test_none_leaves():
    params = {"w": jnp.ones(2), "f": None}
    assert gradtx.apply_updates(params, {"w": jnp.ones(2), "f": None})["f"] is None
    # a whole model as params: a static leaf (a function) where the updates hold None
    model = {"w": jnp.ones(2), "act": jnp.tanh}
    grads = {"w": jnp.ones(2), "act": None}
    for opt in [gradtx.adamw(0.1), gradtx.add_decayed_weights(0.1), gradtx.sgd(0.1)]:
        state = opt.init({"w": jnp.ones(2), "act": None})
        updates, _ = opt.update(grads, state, model)
        assert updates["act"] is None
    ours, _ = gradtx.adamw(0.1).update(grads, gradtx.adamw(0.1).init(grads), model)
    ref, _ = run_optax(lambda: optax.adamw(0.1).update(grads, optax.adamw(0.1).init(grads), model))
    _close(ours["w"], ref["w"])


def test_list_states_in_chain_and_named_chain():
    params = {"x": jnp.ones(2)}
    opt = gradtx.chain(gradtx.trace(0.9), gradtx.scale(-0.1))
    state = list(opt.init(params))
    u, new = opt.update(params, state)
    assert type(new) is tuple
    named = gradtx.named_chain(("m", gradtx.trace(0.9)), ("s", gradtx.scale(-0.1)))
    u2, _ = named.update(params, list(named.init(params).values()))
    _close(u, u2)
    with pytest.raises(ValueError, match=r"named_chain: state must be the dict"):
        named.update(params, {"m": (), "other": ()})


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "amsgrad"])
def test_python_number_leaves(name):
    params = {"a": 1.0, "b": 2.0}
    grads = {"a": 0.5, "b": -1.0}
    ours = getattr(gradtx, name)(0.1)
    ref = getattr(optax, name)(0.1)
    u1, _ = ours.update(grads, ours.init(params), params)
    arrays = lambda t: jax.tree.map(jnp.asarray, t)  # noqa: E731  (optax's adagrad needs arrays)
    u2, _ = run_optax(lambda: ref.update(arrays(grads), ref.init(arrays(params)), arrays(params)))
    _close(u1, u2)


def test_integer_valued_float_step_counts():
    assert float(gradtx.linear_schedule(1.0, 0.0, 10.0)(5)) == 0.5
    assert float(gradtx.join_schedules([gradtx.constant_schedule(1.0)] * 2, [10.0])(11)) == 1.0
    assert float(gradtx.piecewise_constant_schedule(1.0, {10.0: 0.5})(11)) == 0.5
    np.testing.assert_allclose(
        gradtx.warmup_cosine_decay_schedule(0.0, 1.0, 10.0, 100.0)(50),
        run_optax(lambda: optax.warmup_cosine_decay_schedule(0.0, 1.0, 10.0, 100.0)(50)),
        rtol=1e-6,
    )
    with pytest.raises(TypeError, match=r"transition_steps must be a whole number of steps"):
        gradtx.linear_schedule(1.0, 0.0, 10.5)


def test_schedules_past_int32():
    steps = 3_000_000_000
    s = gradtx.linear_schedule(1.0, 0.0, steps)
    assert float(s(steps // 2)) == pytest.approx(0.5)
    assert float(s(4_000_000_000)) == 0.0
    e = gradtx.exponential_decay(1.0, steps, 0.5)
    assert float(e(steps)) == pytest.approx(0.5)


def test_exponential_decay_may_grow():
    ours = gradtx.exponential_decay(1e-4, 10, 2.0)
    ref = optax.exponential_decay(1e-4, 10, 2.0)
    for t in [0, 5, 10, 100]:
        assert float(ours(t)) == pytest.approx(float(run_optax(lambda t=t: ref(t))), rel=1e-6)


def test_stateful_schedules_in_inject_hyperparams():
    class LossScaled:
        """A stateful schedule: the rate follows the last loss seen."""

        def init(self):
            return {"last": jnp.asarray(1.0)}

        def update(self, state, value=None, **extra):
            return {"last": jnp.asarray(value, jnp.float32)}

        def __call__(self, state, **extra):
            return 0.1 * state["last"]

    params = {"x": jnp.ones(2)}
    ours = gradtx.inject_stateful_hyperparams(gradtx.sgd)(learning_rate=LossScaled())
    with pytest.warns(DeprecationWarning):
        ref = optax.inject_stateful_hyperparams(optax.sgd)(learning_rate=LossScaled())
    s1, s2 = ours.init(params), ref.init(params)
    for loss in [1.0, 0.5, 0.25]:
        u1, s1 = ours.update(params, s1, params, value=jnp.asarray(loss))
        u2, s2 = run_optax(
            lambda s2=s2, loss=loss: ref.update(params, s2, params, value=jnp.asarray(loss))
        )
        _close(u1, u2)
    assert float(gradtx.get_hyperparam(s1, "learning_rate")) == pytest.approx(0.05)


# ----------------------------------------------------------------------------
# State layouts: an optax checkpoint restores into gradtx and continues the same path.


def _kinds(state):
    """Each node's kind and field names, and each leaf's shape and dtype."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        out.append((jax.tree_util.keystr(path), jnp.shape(leaf), jnp.result_type(leaf).name))
    return out


_SCHEDULE = optax.linear_schedule(0.1, 0.01, 10)
LAYOUTS = {
    "sgd": (lambda m: m.sgd(0.1)),
    "sgd_schedule": (lambda m: m.sgd(_SCHEDULE)),
    "sgd_momentum": (lambda m: m.sgd(0.1, momentum=0.9)),
    "adam": (lambda m: m.adam(0.1)),
    "adamw": (lambda m: m.adamw(0.1)),
    "adamw_mask": (lambda m: m.adamw(0.1, mask={"w": True, "b": False, "s": False})),
    "adamw_schedule_decay": (lambda m: m.adamw(0.1, weight_decay=_SCHEDULE)),
    "nadam": (lambda m: m.nadam(0.1)),
    "amsgrad": (lambda m: m.amsgrad(0.1)),
    "adagrad": (lambda m: m.adagrad(0.1)),
    "rmsprop": (lambda m: m.rmsprop(0.1)),
    "rmsprop_centered": (lambda m: m.rmsprop(0.1, centered=True)),
    "rmsprop_momentum": (lambda m: m.rmsprop(0.1, momentum=0.9)),
    "rmsprop_bias": (lambda m: m.rmsprop(0.1, bias_correction=True, centered=True)),
    "ema": (lambda m: m.ema(0.9, debias=True)),
    "trace": (lambda m: m.trace(0.9)),
    "scale_by_schedule": (lambda m: m.scale_by_schedule(_SCHEDULE)),
    "clip_by_global_norm": (lambda m: m.chain(m.clip_by_global_norm(1.0), m.adam(0.1))),
    "masked": (lambda m: m.masked(m.adam(0.1), {"w": True, "b": False, "s": True})),
    "inject": (lambda m: m.inject_hyperparams(m.adam)(0.1)),
    "inject_schedule": (lambda m: m.inject_hyperparams(m.adam)(_SCHEDULE)),
    "apply_if_finite": (lambda m: m.apply_if_finite(m.adam(0.1), 3)),
    "zero_nans": (lambda m: m.chain(m.zero_nans(), m.sgd(0.1))),
}


def _both(name):
    make = LAYOUTS[name]
    return make(gradtx), make(optax)


def _multi_steps(m):
    if m is gradtx:
        return gradtx.accumulate(gradtx.adam(0.1), 3)
    return optax.MultiSteps(optax.adam(0.1), 3).gradient_transformation()


@pytest.mark.parametrize("name", sorted(LAYOUTS) + ["multi_steps", "partition", "plateau"])
def test_state_layout_is_optax_s(name):
    if name == "multi_steps":
        ours, ref = _multi_steps(gradtx), _multi_steps(optax)
    elif name == "partition":
        ours = gradtx.partition(
            {"a": gradtx.adam(0.1), "s": gradtx.sgd(0.1)}, {"w": "a", "b": "s", "s": "s"}
        )
        ref = optax.multi_transform(
            {"a": optax.adam(0.1), "s": optax.sgd(0.1)}, {"w": "a", "b": "s", "s": "s"}
        )
    elif name == "plateau":
        ours, ref = gradtx.reduce_on_plateau(), optax.contrib.reduce_on_plateau()
    else:
        ours, ref = _both(name)
    params = _params()
    s_ours, s_ref = ours.init(params), ref.init(params)
    assert _kinds(s_ours) == _kinds(s_ref)
    fields = lambda s: [  # noqa: E731
        (type(x).__name__ if not hasattr(x, "_fields") else x._fields)
        for x in jax.tree.leaves(s, is_leaf=lambda x: hasattr(x, "_fields") and x is not s)
    ]
    assert fields(s_ours) == fields(s_ref)


@pytest.mark.parametrize(
    "name", ["adam", "adamw_mask", "rmsprop_momentum", "inject_schedule", "ema"]
)
def test_an_optax_checkpoint_resumes_in_gradtx_and_back(name):
    ours, ref = _both(name)
    params = _params()
    # 5 steps with optax, saved as Flax does; restored into gradtx; 5 more steps
    path_ref, s_ref = run_optax(lambda: _trajectory(ref, params, 5, standard=True))
    saved = flax.serialization.to_state_dict(s_ref)
    restored = flax.serialization.from_state_dict(ours.init(params), saved)
    p = path_ref[-1]

    def go(opt, params, state, steps, standard=False):
        for t in range(5, 5 + steps):
            g = _grad(params, jnp.asarray(t, jnp.float32))
            u, state = opt.update(g, state, params)
            params = (optax if standard else gradtx).apply_updates(params, u)
        return params, state

    p_ours, s_ours = go(ours, p, restored, 5)
    p_ref, s_ref2 = run_optax(lambda: go(ref, p, s_ref, 5, standard=True))
    _close(p_ours, p_ref)
    # and back: the gradtx state restores into optax
    back = flax.serialization.from_state_dict(
        ref.init(params), flax.serialization.to_state_dict(s_ours)
    )
    _close(jax.tree.leaves(back), jax.tree.leaves(s_ref2))


def test_bfloat16_first_moment_is_rounded_once_per_step():
    """A deliberate difference: gradtx matches float32 math with bfloat16 storage of m."""
    x0 = jax.random.normal(KEY, (256,))

    def run(lib):
        opt = lib.adam(1e-2, mu_dtype=jnp.bfloat16)
        state, x, out = opt.init({"w": x0}), {"w": x0}, []
        for t in range(5):
            g = jax.tree.map(lambda a, t=t: jnp.sin(a * (1 + 0.1 * t)), x)
            u, state = opt.update(g, state, x)
            x = lib.apply_updates(x, u)
            out.append(u["w"])
        return out

    def by_hand():
        m, v, x, out = jnp.zeros(256, jnp.bfloat16), jnp.zeros(256), x0, []
        for t in range(1, 6):
            g = jnp.sin(x * (1 + 0.1 * (t - 1)))
            m32 = 0.9 * m.astype(jnp.float32) + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            u = -1e-2 * (m32 / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
            m, x = m32.astype(jnp.bfloat16), x + u
            out.append(u)
        return out

    ours, ref = run(gradtx), run_optax(lambda: run(optax))
    exact = run_optax(by_hand)
    rel = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))  # noqa: E731
    assert all(rel(a, b) < 1e-4 for a, b in zip(ours, exact))
    assert rel(ours[0], ref[0]) < 1e-6 and rel(ours[2], ref[2]) > 1e-3  # optax drifts


def test_restore_state_bridges_optax_complex_second_moments():
    params = _params(jnp.complex64)
    _, s_ref = run_optax(lambda: _trajectory(optax.adam(0.05), params, 3, standard=True))
    assert s_ref[0].nu["w"].dtype == jnp.complex64  # optax: complex zeros + |g|^2
    template = gradtx.adam(0.05).init(params)
    restored = gradtx.restore_state(template, flax.serialization.to_state_dict(s_ref))
    assert restored[0].nu["w"].dtype == jnp.float32
    np.testing.assert_array_equal(restored[0].nu["w"], np.real(s_ref[0].nu["w"]))
    bad = flax.serialization.to_state_dict(s_ref)
    bad["0"]["nu"]["w"] = bad["0"]["nu"]["w"] + 1j
    with pytest.raises(
        ValueError, match=r"restore_state: state\[0\]\.nu\['w'\] is complex64 with a"
    ):
        gradtx.restore_state(template, bad)


def test_schedules_are_jittable_and_weakly_referenced():
    schedule = gradtx.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100)
    np.testing.assert_allclose(jax.jit(schedule)(50), schedule(50), rtol=1e-6)
    assert float(jax.jit(gradtx.linear_schedule(1.0, 0.0, 10))(3)) == pytest.approx(0.7)


def test_optax_pieces_in_gradtx_chains_get_their_keyword_arguments():
    params = {"x": jnp.ones(3)}
    ours = gradtx.chain(optax.scale_by_polyak(), gradtx.scale(-1.0))  # update(..., *, value)
    ref = optax.chain(optax.scale_by_polyak(), optax.scale(-1.0))
    with standard_promotion():
        u1, _ = ours.update(params, ours.init(params), params, value=jnp.asarray(2.0))
        u2, _ = ref.update(params, ref.init(params), params, value=jnp.asarray(2.0))
    _close(u1, u2)

    def plain_update(updates, state, params=None, *, scale=1.0):
        return jax.tree.map(lambda u: u * scale, updates), state

    plain = optax.GradientTransformation(lambda p: (), plain_update)  # not an ExtraArgs one
    u, _ = gradtx.chain(plain).update(params, ((),), None, scale=3.0, other=1)
    np.testing.assert_array_equal(u["x"], 3.0)  # the named one passed, the other dropped


def test_learning_rate_none_means_no_scaling():
    params = {"x": jnp.full(2, 0.5)}
    for lib in (gradtx, optax):
        tx = lib.scale_by_learning_rate(None)
        u, _ = tx.update(params, tx.init(params))
        np.testing.assert_array_equal(u["x"], 0.5)
    assert repr(gradtx.scale_by_learning_rate(None)) == "scale_by_learning_rate(None)"


@pytest.mark.parametrize("name", sorted(LAYOUTS) + ["plateau"])
def test_optax_s_own_state_objects_drive_gradtx(name):
    """optax's state objects themselves (optax's NamedTuple classes, not a restored copy) go
    into gradtx's jitted update and give optax's trajectory."""
    if name == "plateau":
        ours, ref = (
            gradtx.reduce_on_plateau(patience=1),
            optax.contrib.reduce_on_plateau(patience=1),
        )
        extra = lambda t: {"value": jnp.asarray(1.0)}  # noqa: E731  # a plateau: reduces
    elif name == "rmsprop_bias":  # eps=1e-8 there: step one's variance is 0 +- round-off,
        # which gradtx clips at 0 (documented) and optax does not; a larger eps is comparable
        make = lambda m: m.rmsprop(0.1, bias_correction=True, centered=True, eps=0.1)  # noqa: E731
        (ours, ref), extra = (make(gradtx), make(optax)), (lambda t: {})
    else:
        (ours, ref), extra = _both(name), (lambda t: {})
    params = _params()

    def go(opt, lib, state, steps):
        p = params
        step = jax.jit(lambda p, s, t, kw: opt.update(_grad(p, t), s, p, **kw))
        for t in range(steps):
            u, state = step(p, state, jnp.asarray(t, jnp.float32), extra(t))
            p = lib.apply_updates(p, u)
        return p, state

    p_ours, s_ours = go(ours, gradtx, ref.init(params), 4)
    p_ref, s_ref = run_optax(lambda: go(ref, optax, ref.init(params), 4))
    _close(p_ours, p_ref)
    _close(s_ours, s_ref)


def test_masked_node_is_optax_s_class():
    """One class: a masked state made by optax and one made by gradtx have one structure."""
    assert gradtx.MaskedNode is optax.MaskedNode
    params = _params()
    mask = {"w": True, "b": False, "s": True}
    ours = gradtx.masked(gradtx.adam(0.1), mask).init(params)
    ref = optax.masked(optax.adam(0.1), mask).init(params)
    assert jax.tree.structure(ours.inner_state[0].mu) == jax.tree.structure(ref.inner_state[0].mu)
