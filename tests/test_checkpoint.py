"""Checkpoints: every optimiser's state round-trips through Orbax and Flax, bit for bit."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import gradtx
from gradtx.checkpoint import restore_state, state_summary
from gradtx.guards import apply_if_finite
from gradtx.hyperparams import inject_hyperparams, set_hyperparam
from gradtx.monitor import monitor_norms
from gradtx.plateau import reduce_on_plateau

OPTIMISERS = {
    "sgd": lambda: gradtx.sgd(0.05),
    "sgd_momentum": lambda: gradtx.sgd(0.05, momentum=0.9, nesterov=True),
    "momentum_ewa": lambda: gradtx.momentum_ewa(0.05, debias=True),
    "rmsprop": lambda: gradtx.rmsprop(0.01, centered=True, momentum=0.5),
    "adagrad": lambda: gradtx.adagrad(0.1),
    "adam": lambda: gradtx.adam(0.01),
    "adamw": lambda: gradtx.adamw(0.01, weight_decay=0.1),
    "nadam": lambda: gradtx.nadam(0.01),
    "amsgrad": lambda: gradtx.amsgrad(0.01),
    "adam_bf16_moments": lambda: gradtx.adam(0.01, mu_dtype=jnp.bfloat16),
    "injected_adam": lambda: inject_hyperparams(gradtx.adam)(learning_rate=lambda t: 0.01),
    "guarded_plateau_monitor": lambda: monitor_norms(
        apply_if_finite(gradtx.chain(gradtx.adam(0.01), reduce_on_plateau(patience=1)), 2)
    ),
}


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
        "dense": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
        "scale": jnp.asarray(rng.normal(), jnp.float32),
    }


NOISE = [jax.tree.map(lambda p: 0.1 * p, make_params(seed)) for seed in range(1, 7)]


def stepper(opt):
    @jax.jit
    def step(params, state, noise):
        grads = jax.tree.map(lambda p, n: 2.0 * p + n, params, noise)
        loss = sum(jnp.sum(p * p) for p in jax.tree.leaves(params))
        updates, state = opt.update(grads, state, params, value=loss)
        return gradtx.apply_updates(params, updates), state

    return step


def run(step, params, state, start, stop):
    for t in range(start, stop):
        params, state = step(params, state, NOISE[t])
    return params, state


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_orbax_and_flax_round_trips_are_bit_identical(name, tmp_path):
    opt = OPTIMISERS[name]()
    step, params = stepper(opt), make_params()
    ref_params, ref_state = run(step, params, opt.init(params), 0, 6)

    mid_params, mid_state = run(step, params, opt.init(params), 0, 3)
    template = jax.eval_shape(opt.init, params)
    with ocp.StandardCheckpointer() as ckptr:
        # Saved with the params, as in training (Orbax refuses an empty tree, e.g. sgd's state).
        ckptr.save(tmp_path / "ckpt", {"params": mid_params, "opt_state": mid_state})
        ckptr.wait_until_finished()
        raw = ckptr.restore(tmp_path / "ckpt")["opt_state"]  # plain dicts and lists
        targeted = ckptr.restore(tmp_path / "ckpt", {"params": mid_params, "opt_state": template})[
            "opt_state"
        ]
    from_raw = restore_state(template, raw)
    assert jax.tree.structure(from_raw) == jax.tree.structure(mid_state)
    assert_trees_equal(from_raw, mid_state)
    assert_trees_equal(restore_state(template, targeted), mid_state)

    data = flax.serialization.to_bytes(mid_state)
    from_flax = restore_state(template, flax.serialization.msgpack_restore(data))
    assert_trees_equal(from_flax, flax.serialization.from_bytes(opt.init(params), data))

    for restored in (from_raw, from_flax):
        end_params, end_state = run(step, mid_params, restored, 3, 6)
        assert_trees_equal(end_params, ref_params)
        assert_trees_equal(end_state, ref_state)


def test_a_changed_hyperparameter_survives_the_round_trip(tmp_path):
    opt = inject_hyperparams(gradtx.adam)(learning_rate=0.01)
    params = make_params()
    state = set_hyperparam(opt.init(params), "learning_rate", 0.003)
    data = flax.serialization.to_bytes(state)
    restored = restore_state(opt.init(params), flax.serialization.msgpack_restore(data))
    assert restored.hyperparams["learning_rate"] == np.float32(0.003)


# ----------------------------------------------------------------------------
# A state restored into the wrong optimiser fails, naming the first mismatch.


@pytest.fixture(scope="module")
def adam_checkpoint(tmp_path_factory):
    params = make_params()
    state = stepper(gradtx.adam(0.01))(params, gradtx.adam(0.01).init(params), NOISE[0])[1]
    path = tmp_path_factory.mktemp("ckpt") / "adam"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state)
        ckptr.wait_until_finished()
        raw = ckptr.restore(path)
    return state, raw


def test_restoring_into_a_different_optimiser_names_the_missing_leaf(adam_checkpoint):
    _, raw = adam_checkpoint
    template = gradtx.sgd(0.1, momentum=0.9).init(make_params())
    with pytest.raises(
        ValueError,
        match=r"restore_state: the optimiser's state has state\[0\]\.trace\['bias'\], "
        r"the restored state does not \(it has restored\[0\]\['count'\]",
    ):
        restore_state(template, raw)
    with pytest.raises(ValueError, match=r"has state\[0\]\.nu_max\['bias'\]"):
        restore_state(gradtx.amsgrad(0.1).init(make_params()), raw)


def test_restoring_with_other_params_names_the_shape(adam_checkpoint):
    state, raw = adam_checkpoint
    params = make_params()
    params["dense"]["w"] = jnp.zeros((3, 4))
    template = gradtx.adam(0.01).init(params)
    match = r"state\[0\]\.mu\['dense'\]\['w'\] has shape \(3, 2\) in the restored state, \(3, 4\)"
    with pytest.raises(ValueError, match=match):
        restore_state(template, raw)
    # Flax alone accepts the wrong shape without a word:
    silently = flax.serialization.from_bytes(template, flax.serialization.to_bytes(state))
    assert silently[0].mu["dense"]["w"].shape == (3, 2)
    with pytest.raises(ValueError, match=match):
        restore_state(template, silently)


def test_restoring_other_dtypes_or_extra_leaves_fails(adam_checkpoint):
    _, raw = adam_checkpoint
    params = make_params()
    template = gradtx.adam(0.01, mu_dtype=jnp.bfloat16).init(params)
    with pytest.raises(ValueError, match=r"mu\['bias'\] has dtype float32 .* bfloat16"):
        restore_state(template, raw)
    del params["scale"]
    with pytest.raises(ValueError, match=r"has restored\[0\]\['mu'\]\['scale'\], which the"):
        restore_state(gradtx.adam(0.01).init(params), raw)


# ----------------------------------------------------------------------------
# What the state costs.


def test_state_summary_lists_leaves_and_bytes():
    params = make_params()
    summary = state_summary(gradtx.adam(0.01).init(params), params)
    assert [x.path for x in summary.leaves] == [
        "[0].count",
        "[0].mu['bias']",
        "[0].mu['dense']['w']",
        "[0].mu['scale']",
        "[0].nu['bias']",
        "[0].nu['dense']['w']",
        "[0].nu['scale']",
    ]
    assert summary.leaves[2].shape == (3, 2) and summary.leaves[2].dtype == "float32"
    assert summary.total_bytes == 4 + 2 * 4 * 9
    assert summary.param_count == 9 and summary.param_bytes == 36
    assert summary.bytes_per_param == pytest.approx(76 / 9)
    assert summary.relative_to_params == pytest.approx(76 / 36)
    text = str(summary)
    assert text.splitlines()[0].split() == ["path", "shape", "dtype", "bytes"]
    assert text.splitlines()[-1] == (
        "7 leaves, 76 bytes; params: 9 values, 36 bytes -> 8.44 bytes per parameter, "
        "2.11x the params"
    )


def test_state_summary_of_shapes_only_and_mixed_precision():
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), make_params())
    opt = gradtx.adam(0.01, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    shapes = jax.eval_shape(opt.init, params)
    summary = state_summary(shapes, params)
    assert summary.total_bytes == 4 + 2 * 4 * 9
    assert summary.relative_to_params == pytest.approx(76 / 18)
    assert state_summary(()).total_bytes == 0 and str(state_summary(())) == (
        "path  shape  dtype  bytes\n0 leaves, 0 bytes"
    )
