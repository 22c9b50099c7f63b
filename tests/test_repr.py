"""Readable optimisers: they print as their composition, and stay optax/Flax compatible."""

import ast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import gradtx
from gradtx import base, schedules
from gradtx.guards import apply_if_finite, zero_nans
from gradtx.hyperparams import inject_hyperparams
from gradtx.monitor import monitor_norms
from gradtx.plateau import reduce_on_plateau


def _double(updates, params):
    return jax.tree.map(lambda g: 2 * g, updates)


def test_adam_prints_its_composition():
    assert str(gradtx.adam(1e-3)) == (
        "chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-08), scale_by_learning_rate(0.001))"
    )
    opt = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(3e-4, weight_decay=0.01))
    assert repr(opt) == (
        "chain(clip_by_global_norm(1.0), chain(scale_by_adam(b1=0.9, b2=0.999, "
        "eps=1e-08), add_decayed_weights(weight_decay=0.01), scale_by_learning_rate(0.0003)))"
    )


@pytest.mark.parametrize(
    "opt, expected",
    [
        # Off switches (None, False, 0 at their default) are left out...
        (gradtx.trace(0.9), "trace(0.9)"),
        (gradtx.ema(0.9), "ema(0.9)"),
        (gradtx.add_decayed_weights(), "add_decayed_weights()"),
        # ...and shown once switched on; defaults that are not off are always shown.
        (
            gradtx.scale_by_adam(eps_root=1e-6, mu_dtype=jnp.bfloat16, nesterov=True),
            "scale_by_adam(b1=0.9, b2=0.999, eps=1e-08, eps_root=1e-06, mu_dtype=jnp.bfloat16, "
            "nesterov=True)",
        ),
        (gradtx.ema(0.9, debias=True), "ema(0.9, debias=True)"),
        # Flags at their default are left out too, whichever way they point.
        (gradtx.scale_by_rms(), "scale_by_rms(decay=0.9, eps=1e-08)"),
        (
            gradtx.scale_by_rms(initial_scale=0.1, eps_in_sqrt=False),
            "scale_by_rms(decay=0.9, eps=1e-08, initial_scale=0.1, eps_in_sqrt=False)",
        ),
        (gradtx.add_constant(0.0), "add_constant(0.0)"),  # required: always shown, by position
        (
            gradtx.scale_by_learning_rate(0.1, flip_sign=False),
            "scale_by_learning_rate(0.1, flip_sign=False)",
        ),
        # Schedules print as their call; a callable without a record in angle brackets.
        (
            gradtx.sgd(schedules.cosine_decay_schedule(0.1, 100)),
            "chain(identity(), scale_by_learning_rate(cosine_decay_schedule(0.1, 100, "
            "exponent=1.0)))",
        ),
        (
            gradtx.sgd(lambda count: 0.1),
            "chain(identity(), scale_by_learning_rate(<lambda count>))",
        ),
        (gradtx.stateless(_double), "stateless(<function _double>)"),
        # The training-grade wrappers.
        (
            monitor_norms(apply_if_finite(gradtx.sgd(0.1), 3)),
            "monitor_norms(inner=apply_if_finite(chain(identity(), "
            "scale_by_learning_rate(0.1)), 3))",
        ),
        (gradtx.chain(zero_nans(), monitor_norms()), "chain(zero_nans(), monitor_norms())"),
        (
            inject_hyperparams(gradtx.sgd)(0.1, momentum=0.9),
            "inject_hyperparams(sgd)(0.1, momentum=0.9)",
        ),
    ],
)
def test_printing_rules(opt, expected):
    assert repr(opt) == expected


OPTIMISERS = [
    "sgd(0.1)",
    "sgd(0.1, momentum=0.9, nesterov=True, accumulator_dtype=jnp.float32)",
    "momentum_ewa(0.1, debias=True)",
    "rmsprop(0.01, centered=True, momentum=0.9, eps_in_sqrt=False)",
    "adagrad(0.1)",
    "adam(0.001)",
    "adam(0.001, eps_root=1e-08, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32)",
    "adamw(0.001, weight_decay=0.1)",
    "nadam(0.001)",
    "amsgrad(0.001, mu_dtype=jnp.float32)",
    "scale_by_adam_composed()",
    "chain(clip_by_global_norm(1.0), adam(0.001))",
    "chain(clip(1.0), sgd(0.1), reduce_on_plateau(patience=3, mode='max'))",
]


@pytest.mark.parametrize("source", OPTIMISERS)
def test_printed_form_is_python_that_builds_the_same_optimiser(source):
    namespace = {**vars(gradtx), "jnp": jnp, "reduce_on_plateau": reduce_on_plateau}
    opt = eval(source, namespace)
    printed = repr(opt)
    ast.parse(printed)
    rebuilt = eval(printed, namespace)
    assert repr(rebuilt) == printed
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    grads = {"w": jnp.asarray([0.5, -1.0, 2.0, 0.0])}
    outs = []
    for o in (opt, rebuilt):
        state = o.init(params)
        for _ in range(2):
            updates, state = o.update(grads, state, params, value=jnp.asarray(1.0))
        outs.append(updates["w"])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_a_pair_built_by_hand_has_no_record_and_is_never_taken_for_a_factory_call():
    t = gradtx.scale(2.0)
    by_hand = base.GradientTransformation(t.init, t.update)
    assert repr(t) == "scale(2.0)" and by_hand.spec is None
    assert repr(by_hand).startswith("GradientTransformation(init=")
    assert t == by_hand  # the record is not a field: the tuple is the same pair
    assert t._replace(init=t.init).spec is None  # a rebuilt tuple is no longer the call


@pytest.mark.parametrize(
    "opt",
    [
        gradtx.stateless(_double),
        gradtx.stateless_with_tree_map(lambda g, p: 2 * g),
        gradtx.sgd(lambda count: 0.1),
        gradtx.chain(optax.scale(2.0), gradtx.scale(0.5)),
    ],
    ids=repr,
)
def test_what_cannot_evaluate_back_does_not_parse_as_python(opt):
    with pytest.raises(SyntaxError):
        ast.parse(repr(opt))


# ----------------------------------------------------------------------------
# Compatibility: optax inside gradtx, gradtx inside optax and Flax.


def test_optax_transforms_inside_a_gradtx_chain_print_and_run():
    opt = gradtx.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2), gradtx.scale(0.5))
    printed = repr(opt)
    assert "<transformation optax.chain>" in printed and "clip_by_global_norm" in printed
    assert printed.endswith("scale(0.5))")
    params = {"w": jnp.ones(3)}
    ref_opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = opt.update(params, opt.init(params), params)
        ref, _ = ref_opt.update(params, ref_opt.init(params), params)
    np.testing.assert_allclose(updates["w"], 0.5 * ref["w"], rtol=1e-6)


def test_gradtx_inside_optax_chain_runs_like_gradtx_chain():
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    ours = gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-2))
    mixed = optax.chain(gradtx.clip_by_global_norm(1.0), gradtx.adam(1e-2))
    assert "GradientTransformation" in repr(mixed)  # optax's own repr, unbroken
    s1, s2 = ours.init(params), mixed.init(params)
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(3):
            u1, s1 = ours.update(params, s1, params)
            u2, s2 = mixed.update(params, s2, params)
    np.testing.assert_array_equal(u1["w"], u2["w"])


def test_flax_train_state_step_with_a_gradtx_optimiser():
    def apply_fn(params, x):
        return x @ params["w"] + params["b"][None, :]

    params = {"w": jnp.full((3, 2), 0.1), "b": jnp.zeros(2)}
    x, y = jnp.ones((4, 3)), jnp.ones((4, 2))
    tx = gradtx.adamw(1e-2, weight_decay=0.01)
    state = train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=tx)

    @jax.jit
    def train_step(state):
        def loss_fn(p):
            return jnp.mean((state.apply_fn(p, x) - y) ** 2)

        grads = jax.grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), grads

    new_state, grads = train_step(state)
    updates, opt_state = tx.update(grads, tx.init(params), params)
    expected = gradtx.apply_updates(params, updates)
    for k in params:
        np.testing.assert_allclose(new_state.params[k], expected[k], rtol=1e-6)
    assert int(new_state.step) == 1
    assert "scale_by_adam(b1=0.9" in repr(new_state.tx)
