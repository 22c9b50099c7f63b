"""reduce_on_plateau against the rule written out by hand, and against optax where they agree."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx import schedules
from gradtx.plateau import ReduceOnPlateauState, reduce_on_plateau


def reference_scales(
    values,
    factor=0.1,
    patience=10,
    rtol=1e-4,
    atol=0.0,
    cooldown=0,
    accumulation_size=1,
    min_scale=0.0,
    mode="min",
):
    """The documented rule, step by step, in Python floats: the scale after each value."""
    sign = 1.0 if mode == "min" else -1.0
    scale, best, plateau, cool, window, out = 1.0, sign * math.inf, 0, 0, [], []
    for v in values:
        window.append(v)
        if len(window) == accumulation_size:
            mean, window = sum(window) / len(window), []
            bar = best if math.isinf(best) else best - sign * (rtol * abs(best) + atol)
            if sign * mean < sign * bar:  # False for NaN
                best, plateau = mean, 0
            else:
                plateau += 1
            if cool > 0:
                plateau, cool = 0, cool - 1
            elif plateau == patience:
                scale, plateau, cool = max(scale * factor, min_scale), 0, cooldown
        out.append(scale)
    return out


def run_scales(values, **kwargs):
    """The scales after each value, from a jitted `lax.scan` over the values."""
    opt = reduce_on_plateau(**kwargs)
    params = {"w": jnp.ones(2)}

    def step(state, value):
        updates, state = opt.update(params, state, params, value=value)
        return state, (state.scale, updates["w"])

    _, (scales, emitted) = jax.jit(lambda s, v: jax.lax.scan(step, s, v))(
        opt.init(params), jnp.asarray(values, jnp.float32)
    )
    np.testing.assert_array_equal(emitted, np.stack([scales, scales], axis=1))
    return np.asarray(scales)


CASES = {
    "min": ([10, 9, 9, 9, 9, 8, 8, 8, 8, 8, 8, 8, 7], dict(patience=3)),
    "negative_constant": ([-1, -2, -2, -2, -2, -2, -2, -2], dict(patience=2, factor=0.5)),
    "log_likelihood_stalls": (
        [-900.0, -800.0, -799.99, -799.98, -799.97, -799.96, -700.0, -699.99, -699.98],
        dict(patience=2, factor=0.5, rtol=1e-3),
    ),
    "max": ([0.1, 0.5, 0.5, 0.5, 0.6, 0.6, 0.6, 0.6, 0.59], dict(patience=2, mode="max")),
    "max_negative": ([-5, -4, -4, -4, -4.5, -4, -3], dict(patience=2, mode="max", factor=0.5)),
    # mode='max' at its tolerance bar b + (r|b| + a): a value on the bar does not improve.
    "max_atol": ([1, 1.5, 1.75, 2.25, 2.3], dict(patience=1, mode="max", rtol=0.0, atol=0.5)),
    "max_rtol": ([4, 5, 5.5, 6.875, 6.9], dict(patience=1, mode="max", rtol=0.25, factor=0.5)),
    "max_rtol_negative": ([-4, -3, -2.5, -2.2, -1.8], dict(patience=1, mode="max", rtol=0.25)),
    "cooldown": ([3] + [4] * 14, dict(patience=2, cooldown=3, factor=0.5)),
    "min_scale": ([1] * 20, dict(patience=1, factor=0.5, min_scale=0.05)),
    "rtol": ([100, 99.99, 99.98, 99.97, 99.96, 90, 89.99, 89.98], dict(patience=2, rtol=1e-3)),
    "atol": ([1, 0.95, 0.9, 0.85, 0.5, 0.45, 0.4], dict(patience=2, atol=0.1, factor=0.5)),
    "no_tolerance": ([2, 2, 1.5, 1.5, 1.5, 1], dict(patience=2, rtol=0.0, factor=0.5)),
    "accumulation": (
        [5, 1, 3, 2, 4, 3, 3, 3, 3, 3, 4, 2, 3, 3, 3, 3, 3, 3],
        dict(patience=2, accumulation_size=3, factor=0.5),
    ),
    "nan_never_improves": ([1, math.nan, math.nan, 0.5, math.nan], dict(patience=2, factor=0.5)),
    "inf_then_finite": ([math.inf, math.inf, 3, 3, 3, 3], dict(patience=3, factor=0.5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_rule_written_out(name):
    values, kwargs = CASES[name]
    expected = reference_scales(values, **kwargs)
    np.testing.assert_allclose(run_scales(values, **kwargs), expected, rtol=1e-6)
    assert expected[-1] < 1.0 or name == "nan_never_improves"  # every case reduces


def test_negative_metric_plateau_reduces_where_optax_does_not():
    values = [-10.0] * 6
    np.testing.assert_allclose(run_scales(values, patience=2)[-1], 0.01, rtol=1e-6)
    opt = optax.contrib.reduce_on_plateau(patience=2)
    params = {"w": jnp.ones(2)}
    state, update = opt.init(params), jax.jit(opt.update)
    with jax.numpy_dtype_promotion("standard"):
        for v in values:
            _, state = update(params, state, params, value=jnp.asarray(v))
    assert float(state.scale) == 1.0  # optax 0.2.8 counts (1 - rtol) * -10 as an improvement


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(patience=3),
        dict(patience=2, cooldown=2, factor=0.5, min_scale=0.1),
        dict(patience=2, rtol=0.0, atol=0.05, accumulation_size=3),
    ],
)
def test_matches_optax_on_positive_losses(kwargs):
    values = 1.0 + np.abs(np.cumsum(np.random.default_rng(0).normal(0, 0.1, 60))).astype("f4")
    ours, theirs = reduce_on_plateau(**kwargs), optax.contrib.reduce_on_plateau(**kwargs)
    params = {"w": jnp.ones(3)}
    state, ref = ours.init(params), theirs.init(params)
    ours_update, theirs_update = jax.jit(ours.update), jax.jit(theirs.update)
    with jax.numpy_dtype_promotion("standard"):
        for v in values:
            _, state = ours_update(params, state, params, value=jnp.asarray(v))
            _, ref = theirs_update(params, ref, params, value=jnp.asarray(v))
            assert state._fields == ref._fields
            for ours_leaf, ref_leaf in zip(state, ref):
                np.testing.assert_allclose(ours_leaf, ref_leaf, rtol=1e-6)
    assert float(state.scale) < 1.0


def test_scales_updates_in_their_dtype():
    opt = reduce_on_plateau(patience=1, factor=0.5)
    params = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2)}
    state = opt.init(params)
    for v in (1.0, 1.0):
        updates, state = jax.jit(opt.update)(params, state, params, value=jnp.asarray(v))
    assert updates["w"].dtype == jnp.bfloat16 and float(updates["w"][0]) == 0.5
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state))


def test_composes_with_a_warmup_cosine_schedule_in_a_chain():
    schedule = schedules.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 12)
    plateau = reduce_on_plateau(patience=2, factor=0.5)
    opt = gradtx.chain(gradtx.adam(schedule), plateau)
    base_opt = gradtx.adam(schedule)
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    state, base_state, plateau_state = opt.init(params), base_opt.init(params), plateau.init(params)
    update, base_update = jax.jit(opt.update), jax.jit(base_opt.update)
    plateau_update = jax.jit(plateau.update)
    losses = [3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    for t, loss in enumerate(losses):
        grads = jax.tree.map(lambda p: p * (1.0 + t), params)
        updates, state = update(grads, state, params, value=jnp.asarray(loss))
        base_updates, base_state = base_update(grads, base_state, params)
        _, plateau_state = plateau_update(grads, plateau_state, value=jnp.asarray(loss))
        np.testing.assert_allclose(
            updates["w"], base_updates["w"] * plateau_state.scale, rtol=1e-6, atol=1e-9
        )
    assert isinstance(state[1], ReduceOnPlateauState)
    assert float(state[1].scale) == reference_scales(losses, patience=2, factor=0.5)[-1] == 0.0625
    # Inside optax.chain: optax passes extra arguments only to its ExtraArgs class.
    plateau = optax.GradientTransformationExtraArgs(*reduce_on_plateau(patience=1, factor=0.5))
    mixed = optax.chain(optax.adam(1e-2), plateau)
    s, mixed_update = mixed.init(params), jax.jit(mixed.update)
    with jax.numpy_dtype_promotion("standard"):
        for loss in (1.0, 1.0):
            _, s = mixed_update(params, s, params, value=jnp.asarray(loss))
    assert float(s[1].scale) == 0.5


def test_update_needs_a_scalar_value():
    opt = reduce_on_plateau()
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"reduce_on_plateau: update needs .*value=loss"):
        opt.update(params, state, params)
    with pytest.raises(ValueError, match=r"value must be a scalar, got shape \(2,\)"):
        opt.update(params, state, params, value=jnp.ones(2))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(factor=1.0), ValueError, r"factor must be in \(0, 1\)"),
        (dict(factor=0.0), ValueError, r"factor must be in \(0, 1\)"),
        (dict(patience=0), ValueError, "patience must be an integer >= 1, got 0"),
        (dict(patience=2.5), TypeError, "patience must be an integer"),
        (dict(rtol=-1e-3), ValueError, "rtol must be in"),
        (dict(atol=-1.0), ValueError, "atol must be in"),
        (dict(cooldown=-1), ValueError, "cooldown must be an integer >= 0"),
        (dict(accumulation_size=0), ValueError, "accumulation_size must be an integer >= 1"),
        (dict(min_scale=1.5), ValueError, r"min_scale must be in \[0, 1\]"),
        (dict(mode="mean"), ValueError, "mode must be 'min' or 'max', got 'mean'"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=f"reduce_on_plateau: {match}"):
        reduce_on_plateau(**kwargs)


def test_prints_its_settings():
    assert repr(reduce_on_plateau(patience=5, cooldown=2, mode="max")) == (
        "reduce_on_plateau(factor=0.1, patience=5, rtol=0.0001, cooldown=2, "
        "accumulation_size=1, mode='max')"
    )
