"""Non-finite guards: NaN/Inf steps never reach the params or the moments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx.guards import ApplyIfFiniteState, ZeroNansState, apply_if_finite, zero_nans


def make_params(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 2)), dtype),
        "b": jnp.asarray(rng.normal(size=(2,)), dtype),
    }


def grads_at(params, step):
    return jax.tree.map(lambda p: p + (0.1 * jnp.sin(3.0 * p + step)).astype(p.dtype), params)


def poison(grads, step):
    """Step 2: a NaN in w; step 5: +Inf in b; step 6: -Inf and NaN in w."""
    if step == 2:
        return {**grads, "w": grads["w"].at[0, 1].set(jnp.nan)}
    if step == 5:
        return {**grads, "b": grads["b"].at[1].set(jnp.inf)}
    if step == 6:
        return {**grads, "w": grads["w"].at[0, 0].set(-jnp.inf).at[2, 1].set(jnp.nan)}
    return grads


BAD_STEPS = (2, 5, 6)


def run(opt, params, steps, bad=(), skip_bad=False):
    """Jitted steps with poisoned grads at `bad` steps (or those steps left out)."""
    update = jax.jit(opt.update)
    state = opt.init(params)
    history = []
    for t in range(steps):
        if t in bad and skip_bad:
            continue
        grads = poison(grads_at(params, t), t) if t in bad else grads_at(params, t)
        updates, state = update(grads, state, params)
        params = gradtx.apply_updates(params, updates)
        history.append((updates, state))
    return params, state, history


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


OPTIMISERS = {
    "adam": lambda: gradtx.adam(1e-2),
    "sgd_momentum": lambda: gradtx.sgd(1e-2, momentum=0.9),
    "rmsprop": lambda: gradtx.rmsprop(1e-2),
    "adamw": lambda: gradtx.adamw(1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_bad_steps_leave_params_and_moments_untouched(name):
    params = make_params()
    guarded = apply_if_finite(OPTIMISERS[name](), max_consecutive_errors=5)
    p, state, history = run(guarded, params, 9, bad=BAD_STEPS)
    # The reference never sees the bad steps at all.
    ref_p, ref_state, _ = run(OPTIMISERS[name](), params, 9, bad=BAD_STEPS, skip_bad=True)
    assert_trees_equal(p, ref_p)
    assert_trees_equal(state.inner_state, ref_state)
    for t in BAD_STEPS:
        updates, s = history[t]
        assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates))
        assert not bool(s.last_finite)
        assert_trees_equal(s.inner_state, history[t - 1][1].inner_state)
    assert int(history[6][1].notfinite_count) == 2  # steps 5 and 6 in a row
    assert int(state.total_notfinite) == 3
    assert int(state.notfinite_count) == 0 and bool(state.last_finite)


def test_gives_up_after_max_consecutive_errors():
    params = make_params()
    guarded = apply_if_finite(gradtx.sgd(0.1), max_consecutive_errors=2)
    state = guarded.init(params)
    nan_grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    counts, applied = [], []
    for _ in range(4):
        updates, state = guarded.update(nan_grads, state, params)
        counts.append(int(state.notfinite_count))
        applied.append(bool(np.isnan(updates["b"]).all()))
    assert counts == [1, 2, 3, 4]
    assert applied == [False, False, True, True]  # skipped twice, then let through
    assert int(state.total_notfinite) == 4


def test_a_non_finite_result_of_the_inner_update_is_skipped_too():
    """Finite grads, but the inner chain emits sqrt(negative momentum) = NaN."""
    inner = gradtx.chain(
        gradtx.trace(0.5), gradtx.stateless_with_tree_map(lambda u, p: jnp.sqrt(u))
    )
    guarded = apply_if_finite(inner, max_consecutive_errors=3)
    params = {"x": jnp.ones(2)}
    state = guarded.init(params)
    updates, state = guarded.update({"x": jnp.array([4.0, 1.0])}, state)
    np.testing.assert_array_equal(updates["x"], [2.0, 1.0])
    updates, state = guarded.update({"x": jnp.array([1.0, -9.0])}, state)  # trace: [3, -8.5]
    np.testing.assert_array_equal(updates["x"], [0.0, 0.0])
    np.testing.assert_array_equal(state.inner_state[0].trace["x"], [4.0, 1.0])
    assert not bool(state.last_finite) and int(state.total_notfinite) == 1


def test_matches_optax_apply_if_finite():
    params = make_params()
    with jax.numpy_dtype_promotion("standard"):
        p, state, _ = run(apply_if_finite(gradtx.sgd(0.1, 0.9), 1), params, 8, bad=BAD_STEPS)
        ref_p, ref, _ = run(optax.apply_if_finite(optax.sgd(0.1, 0.9), 1), params, 8, BAD_STEPS)
    assert_trees_equal(p, ref_p)
    assert state._fields == ref._fields
    assert_trees_equal(tuple(state[:3]), tuple(ref[:3]))  # the three counters


def test_state_is_stable_under_jit_and_prints():
    params = make_params(jnp.bfloat16)
    guarded = apply_if_finite(gradtx.adam(1e-3, mu_dtype=jnp.float32), 2)
    state = guarded.init(params)
    assert isinstance(state, ApplyIfFiniteState)
    _, new = jax.jit(guarded.update)(poison(grads_at(params, 0), 2), state, params)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, state)
    assert repr(guarded) == (
        "apply_if_finite(chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-08, "
        "mu_dtype=jnp.float32), scale_by_learning_rate(0.001)), 2)"
    )


@pytest.mark.parametrize(
    "value, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), (None, TypeError)]
)
def test_bad_max_consecutive_errors(value, error):
    with pytest.raises(error, match="apply_if_finite: max_consecutive_errors must be an integer"):
        apply_if_finite(gradtx.sgd(0.1), value)


def test_inner_must_be_a_transformation():
    with pytest.raises(TypeError, match="apply_if_finite: inner must be a gradient transformation"):
        apply_if_finite(gradtx.sgd, 1)


# ----------------------------------------------------------------------------
# zero_nans.


def test_zero_nans_zeroes_nans_flags_leaves_and_keeps_infs():
    tx = zero_nans()
    params = {"a": jnp.zeros(3, jnp.bfloat16), "b": jnp.zeros(2)}
    state = tx.init(params)
    assert state == ZeroNansState({"a": jnp.asarray(False), "b": jnp.asarray(False)})
    grads = {
        "a": jnp.array([1.0, jnp.nan, jnp.inf], jnp.bfloat16),
        "b": jnp.array([2.0, -3.0]),
    }
    updates, state = jax.jit(tx.update)(grads, state)
    np.testing.assert_array_equal(updates["a"].astype(jnp.float32), [1.0, 0.0, np.inf])
    assert updates["a"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(updates["b"], grads["b"])
    assert bool(state.found_nan["a"]) and not bool(state.found_nan["b"])
    with jax.numpy_dtype_promotion("standard"):
        ref_updates, ref_state = optax.zero_nans().update(grads, optax.zero_nans().init(params))
    assert_trees_equal(updates, ref_updates)
    assert_trees_equal(state.found_nan, ref_state.found_nan)


def test_zero_nans_before_an_optimiser_keeps_its_moments_finite():
    opt = gradtx.chain(zero_nans(), gradtx.adam(1e-2))
    params = make_params()
    _, state, _ = run(opt, params, 4, bad=(2,))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    assert repr(opt).startswith("chain(zero_nans(), chain(scale_by_adam(")
