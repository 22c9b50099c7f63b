"""gradtx.averaging: `incremental_update` and `periodic_update` vs optax and the EWA formula."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradtx
from gradtx.checks import NotAnIntegerError
from tests._util import make_params


def _stream(step, dtype):
    """The parameters at training step `step`: a tree that drifts, with noise."""
    base = make_params(0, jnp.float32)
    noise = make_params(100 + step, jnp.float32)
    return jax.tree.map(lambda b, n: (b + 0.1 * step + 0.5 * n).astype(dtype), base, noise)


def _complex_stream(step):
    re, im = _stream(step, jnp.float32), _stream(step + 50, jnp.float32)
    return jax.tree.map(lambda a, b: jax.lax.complex(a, b), re, im)


def _close(a, b, dtype):
    tol = {jnp.bfloat16: 2e-2, jnp.float16: 2e-3}.get(dtype, 1e-6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(
            np.asarray(x, np.complex128 if jnp.iscomplexobj(x) else np.float64),
            np.asarray(y, np.complex128 if jnp.iscomplexobj(y) else np.float64),
            rtol=tol,
            atol=tol,
        )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("step_size", [0.1, 0.5, 1.0, 0.0])
def test_incremental_update_matches_optax(dtype, jit, step_size):
    stream = _complex_stream if dtype == jnp.complex64 else lambda t: _stream(t, dtype)
    ours = jax.jit(gradtx.incremental_update) if jit else gradtx.incremental_update
    theirs = jax.jit(optax.incremental_update) if jit else optax.incremental_update
    v_ours = v_theirs = stream(0)
    for t in range(1, 6):
        v_ours = ours(stream(t), v_ours, step_size)
        v_theirs = theirs(stream(t), v_theirs, step_size)
        _close(v_ours, v_theirs, dtype)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)


def test_incremental_update_traced_step_size_matches_optax():
    step = jax.jit(lambda new, old, a: gradtx.incremental_update(new, old, a))
    v, w = _stream(0, jnp.float32), _stream(0, jnp.float32)
    for t in range(1, 6):
        a = jnp.asarray(1.0 / (t + 1), jnp.float32)
        v = step(_stream(t, jnp.float32), v, a)
        w = optax.incremental_update(_stream(t, jnp.float32), w, a)
    _close(v, w, jnp.float32)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99])
def test_incremental_update_is_the_ewa_of_the_weights(beta):
    # v_t = beta v_{t-1} + (1 - beta) theta_t, written out in numpy in float64
    thetas = [_stream(t, jnp.float32) for t in range(8)]
    v = thetas[0]
    expected = jax.tree.map(lambda x: np.asarray(x, np.float64), thetas[0])
    for theta in thetas[1:]:
        v = gradtx.incremental_update(theta, v, 1 - beta)
        expected = jax.tree.map(
            lambda e, x: beta * e + (1 - beta) * np.asarray(x, np.float64), expected, theta
        )
    for x, e in zip(jax.tree.leaves(v), jax.tree.leaves(expected)):
        assert x.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(x, np.float64), e, rtol=1e-6, atol=1e-6)


def test_incremental_update_of_a_constant_is_that_constant_and_weights_fade():
    # Started from theta_0, the average of a constant stream never moves (no bias to correct);
    # a one-time jump is followed at rate 1 - beta^k.
    c = {"w": jnp.full((3,), 2.5)}
    v = c
    for _ in range(5):
        v = gradtx.incremental_update(c, v, 0.2)
    np.testing.assert_allclose(v["w"], 2.5, rtol=1e-6)
    v = {"w": jnp.zeros(3)}
    for _ in range(4):
        v = gradtx.incremental_update(c, v, 0.2)
    np.testing.assert_allclose(v["w"], 2.5 * (1 - 0.8**4), rtol=1e-6)


def test_incremental_update_none_leaves_and_numbers_as_optax():
    new = {"a": jnp.ones(2), "b": None, "c": 3.0}
    old = {"a": jnp.zeros(2), "b": jnp.ones(4), "c": 1.0}
    ours = gradtx.incremental_update(new, old, 0.25)
    theirs = optax.incremental_update(new, old, 0.25)
    assert ours["b"] is None and theirs["b"] is None
    np.testing.assert_allclose(ours["a"], theirs["a"])
    np.testing.assert_allclose(ours["c"], theirs["c"])


def test_incremental_update_keeps_the_average_dtype():
    # a float32 average of bfloat16 weights stays float32 (optax would give what promotion
    # gives; gradtx keeps the storage dtype of the average)
    new = {"w": jnp.ones(3, jnp.bfloat16)}
    old = {"w": jnp.zeros(3, jnp.float32)}
    out = gradtx.incremental_update(new, old, 0.1)
    assert out["w"].dtype == jnp.float32
    np.testing.assert_allclose(out["w"], 0.1, rtol=1e-6)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), 2])
def test_incremental_update_refuses_step_size_outside_0_1(bad):
    p = make_params()
    with pytest.raises(ValueError, match=r"incremental_update: step_size must be in \[0, 1\]"):
        gradtx.incremental_update(p, p, bad)


def test_incremental_update_refuses_bad_step_size_kinds():
    p = make_params()
    with pytest.raises(ValueError, match="step_size must be a scalar"):
        gradtx.incremental_update(p, p, jnp.ones(2))
    with pytest.raises(TypeError, match="step_size must be a real number"):
        gradtx.incremental_update(p, p, "0.1")


def test_incremental_update_tree_mismatch_names_the_key_path():
    p = make_params()
    q = make_params()
    q["dense"]["b"] = jnp.zeros((4,))
    with pytest.raises(
        ValueError, match=r"incremental_update: new_tensors\['dense'\]\['b'\] has shape \(3,\)"
    ):
        gradtx.incremental_update(p, q, 0.1)
    r = dict(p)
    del r["scale"]
    with pytest.raises(ValueError, match=r"incremental_update: tree structures.*\['scale'\]"):
        gradtx.incremental_update(r, p, 0.1)


def test_incremental_update_refuses_integer_and_imaginary_loss():
    with pytest.raises(TypeError, match=r"old_tensors\['n'\] has dtype int32"):
        gradtx.incremental_update({"n": jnp.ones(2, jnp.int32)}, {"n": jnp.ones(2, jnp.int32)}, 0.1)
    with pytest.raises(TypeError, match=r"new_tensors\['z'\] is complex64.*imaginary"):
        gradtx.incremental_update({"z": jnp.ones(2, jnp.complex64)}, {"z": jnp.ones(2)}, 0.1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.complex64])
@pytest.mark.parametrize("period", [1, 3, 4])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_periodic_update_matches_optax(period, jit, dtype):
    stream = _complex_stream if dtype == jnp.complex64 else lambda t: _stream(t, dtype)
    ours = jax.jit(gradtx.periodic_update) if jit else gradtx.periodic_update
    slow_ours = slow_theirs = stream(0)
    for t in range(1, 9):
        new = stream(t)
        steps = jnp.asarray(t, jnp.int32)
        slow_ours = ours(new, slow_ours, steps, period)
        slow_theirs = optax.periodic_update(new, slow_theirs, steps, period)
        _close(slow_ours, slow_theirs, jnp.float32)  # a copy: exact in every dtype
        if t % period == 0:
            _close(slow_ours, new, jnp.float32)
    assert jax.tree.structure(slow_ours) == jax.tree.structure(slow_theirs)


def test_periodic_update_copies_only_every_period():
    old, new = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    got = [float(gradtx.periodic_update(new, old, t, 3)["w"][0]) for t in range(7)]
    assert got == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("bad", [0, -2])
def test_periodic_update_refuses_update_period_below_1(bad):
    p = make_params()
    match = f"periodic_update: update_period must be an integer >= 1, got {bad}"
    with pytest.raises(ValueError, match=match):
        gradtx.periodic_update(p, p, 3, bad)


def test_periodic_update_refuses_bad_kinds_and_steps():
    p = make_params()
    with pytest.raises(NotAnIntegerError, match="periodic_update: update_period must be a whole"):
        gradtx.periodic_update(p, p, 3, 2.5)
    with pytest.raises(ValueError, match="periodic_update: steps must be an integer >= 0, got -1"):
        gradtx.periodic_update(p, p, -1, 2)


def test_periodic_update_tree_mismatch_names_the_key_path():
    p = make_params()
    q = make_params()
    q["conv"][0] = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"periodic_update: new_tensors\['conv'\]\[0\] has shape"):
        gradtx.periodic_update(p, q, 2, 2)
    r = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)
    with pytest.raises(
        ValueError, match=r"periodic_update: new_tensors\['conv'\]\[0\] has dtype float32"
    ):
        gradtx.periodic_update(p, r, 2, 2)
