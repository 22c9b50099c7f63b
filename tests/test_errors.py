"""Bad input gets a clear error naming the function, the argument and the value."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

BAD_HYPERPARAMS = [
    (lambda: gradtx.ema(1.0), ValueError, "ema: decay must be in [0, 1), got 1.0"),
    (lambda: gradtx.ema(-0.1), ValueError, "ema: decay must be in [0, 1), got -0.1"),
    (lambda: gradtx.ema(1 - 1e-9), ValueError, "rounds to 1.0 in float32"),
    (lambda: gradtx.ema(float("nan")), ValueError, "ema: decay must be in [0, 1), got nan"),
    (lambda: gradtx.ema(True), TypeError, "ema: decay must be a real number, got True"),
    (lambda: gradtx.ema("0.9"), TypeError, "ema: decay must be a real number"),
    (lambda: gradtx.ema(jnp.ones(2)), ValueError, "ema: decay must be a scalar"),
    (lambda: gradtx.ema(0.9, accumulator_dtype=jnp.int32), ValueError, "floating or complex dtype"),
    (lambda: gradtx.bias_correction(1.5), ValueError, "bias_correction: decay"),
    (lambda: gradtx.trace(1.0), ValueError, "trace: decay must be in [0, 1)"),
    (lambda: gradtx.trace(0.9, nesterov=1), TypeError, "trace: nesterov must be True or False"),
    (lambda: gradtx.scale_by_rms(eps=-1e-8), ValueError, "scale_by_rms: eps must be in [0, inf]"),
    (lambda: gradtx.scale_by_rms(initial_scale=-1), ValueError, "scale_by_rms: initial_scale"),
    (lambda: gradtx.scale_by_stddev(decay=2), ValueError, "scale_by_stddev: decay"),
    (lambda: gradtx.scale_by_rss(eps=-1), ValueError, "scale_by_rss: eps"),
    (lambda: gradtx.scale_by_adam(b1=1.0), ValueError, "scale_by_adam: b1 must be in [0, 1)"),
    (lambda: gradtx.scale_by_adam(b2=-0.5), ValueError, "scale_by_adam: b2 must be in [0, 1)"),
    (lambda: gradtx.scale_by_adam(eps_root=-1), ValueError, "scale_by_adam: eps_root"),
    (lambda: gradtx.scale_by_adam(mu_dtype="int8"), ValueError, "scale_by_adam: mu_dtype"),
    (lambda: gradtx.scale_by_adam(nu_dtype="nonsense"), TypeError, "scale_by_adam: nu_dtype"),
    (lambda: gradtx.scale_by_adam_composed(b1=1), ValueError, "scale_by_adam_composed: b1"),
    (lambda: gradtx.scale_by_amsgrad(b2=1), ValueError, "scale_by_amsgrad: b2"),
    (lambda: gradtx.adam(-1e-3), ValueError, "learning_rate must be in [0, inf], got -0.001"),
    (lambda: gradtx.adam("fast"), TypeError, "learning_rate must be a real number"),
    (lambda: gradtx.sgd(0.1, nesterov=True), ValueError, "sgd: nesterov=True needs a momentum"),
    (lambda: gradtx.rmsprop(0.1, nesterov=True), ValueError, "rmsprop: nesterov=True needs"),
    (lambda: gradtx.scale_by_schedule(0.1), TypeError, "scale_by_schedule: step_size_fn"),
    (lambda: gradtx.add_decayed_weights(-1.0), ValueError, "add_decayed_weights: weight_decay"),
    (lambda: gradtx.adamw(1e-3, weight_decay=-0.5), ValueError, "adamw: weight_decay must be"),
    (lambda: gradtx.clip(-1.0), ValueError, "clip: max_delta"),
    (lambda: gradtx.clip_by_global_norm(0.0), ValueError, "clip_by_global_norm: max_norm"),
    (lambda: gradtx.add_constant(float("inf")), ValueError, "add_constant: value must be finite"),
    (lambda: gradtx.chain(gradtx.sgd(0.1), "adam"), TypeError, "chain: argument 1 must be a"),
    (
        lambda: gradtx.named_chain(("a", gradtx.identity()), ("a", gradtx.identity())),
        ValueError,
        "named_chain: name 'a' is used twice",
    ),
    (lambda: gradtx.named_chain(gradtx.identity()), TypeError, "named_chain: argument 0"),
    (lambda: gradtx.partition({}, {}), TypeError, "partition: transforms must be a non-empty"),
    (lambda: gradtx.stateless(3), TypeError, "stateless: f must be callable"),
]

# Every check names its function and its argument: one row per check of each factory.
NAMED_CHECKS = [
    (lambda: gradtx.ema(0.9, debias=1), TypeError, "ema: debias must be True or False, got 1"),
    (lambda: gradtx.ema(0.9, accumulator_dtype="x"), TypeError, "ema: accumulator_dtype must be"),
    (
        lambda: gradtx.trace(0.9, accumulator_dtype=jnp.int32),
        ValueError,
        "trace: accumulator_dtype",
    ),
    (lambda: gradtx.scale_by_rms(decay=1.0), ValueError, "scale_by_rms: decay must be in [0, 1)"),
    (lambda: gradtx.scale_by_rms(eps_in_sqrt=1), TypeError, "scale_by_rms: eps_in_sqrt must be"),
    (lambda: gradtx.scale_by_rms(bias_correction=0), TypeError, "scale_by_rms: bias_correction"),
    (
        lambda: gradtx.scale_by_rms(accumulator_dtype=jnp.int8),
        ValueError,
        "scale_by_rms: accumulator_dtype must be a floating or complex dtype, got int8",
    ),
    (lambda: gradtx.scale_by_stddev(eps=-1.0), ValueError, "scale_by_stddev: eps must be in [0"),
    (
        lambda: gradtx.scale_by_stddev(initial_scale=-1),
        ValueError,
        "scale_by_stddev: initial_scale",
    ),
    (
        lambda: gradtx.scale_by_rss(initial_accumulator_value=-0.1),
        ValueError,
        "scale_by_rss: initial_accumulator_value must be in [0, inf], got -0.1",
    ),
    (lambda: gradtx.scale_by_rss(eps=-1.0), ValueError, "scale_by_rss: eps must be in [0, inf]"),
    (
        lambda: gradtx.scale_by_rss(accumulator_dtype=jnp.int32),
        ValueError,
        "scale_by_rss: accumulator_dtype must be a floating or complex dtype",
    ),
    (lambda: gradtx.scale_by_adam(eps=-1.0), ValueError, "scale_by_adam: eps must be in [0, inf]"),
    (lambda: gradtx.scale_by_adam(nesterov=1), TypeError, "scale_by_adam: nesterov must be True"),
    (lambda: gradtx.scale_by_amsgrad(b1=1.0), ValueError, "scale_by_amsgrad: b1 must be in [0, 1)"),
    (lambda: gradtx.scale_by_amsgrad(eps=-1), ValueError, "scale_by_amsgrad: eps must be in [0"),
    (lambda: gradtx.scale_by_amsgrad(eps_root=-1), ValueError, "scale_by_amsgrad: eps_root must"),
    (
        lambda: gradtx.scale_by_amsgrad(mu_dtype=jnp.int32),
        ValueError,
        "scale_by_amsgrad: mu_dtype must be a floating or complex dtype",
    ),
    (lambda: gradtx.scale("x"), TypeError, "scale: step_size must be a real number"),
    (
        lambda: gradtx.scale_by_learning_rate(-1.0),
        ValueError,
        "scale_by_learning_rate: learning_rate must be in [0, inf], got -1.0",
    ),
    (
        lambda: gradtx.scale_by_learning_rate(0.1, flip_sign=0),
        TypeError,
        "scale_by_learning_rate: flip_sign must be True or False",
    ),
    (lambda: gradtx.add_constant("x"), TypeError, "add_constant: value must be a real number"),
    (
        lambda: gradtx.inject_hyperparams(gradtx.sgd, hyperparam_dtype=jnp.int32),
        ValueError,
        "inject_hyperparams: hyperparam_dtype must be a floating dtype, got int32",
    ),
]


@pytest.mark.parametrize("factory, error, message", BAD_HYPERPARAMS + NAMED_CHECKS)
def test_bad_hyperparameter_is_refused_at_construction(factory, error, message):
    with pytest.raises(error, match=re.escape(message)):
        factory()


def test_traced_hyperparameters_are_not_checked_under_jit():
    """A hyper-parameter that is a tracer cannot be inspected: no crash, no check."""

    @jax.jit
    def step(decay, lr, g):
        opt = gradtx.chain(gradtx.trace(decay), gradtx.scale_by_learning_rate(lr))
        u, _ = opt.update(g, opt.init(g), g)
        return u

    out = step(jnp.float32(0.5), jnp.float32(0.1), jnp.ones(3))
    np.testing.assert_allclose(out, -0.1 * np.ones(3))


PARAMS = {"dense": {"w": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}


@pytest.mark.parametrize(
    "opt, name",
    [
        (gradtx.scale_by_adam(), "scale_by_adam"),
        (gradtx.trace(0.9), "trace"),
        (gradtx.ema(0.9), "ema"),
        (gradtx.scale_by_rms(), "scale_by_rms"),
        (gradtx.adam(1e-3), "scale_by_adam"),
        (gradtx.scale_by_stddev(), "scale_by_stddev"),
        (gradtx.scale_by_rss(), "scale_by_rss"),
        (gradtx.scale_by_amsgrad(), "scale_by_amsgrad"),
    ],
)
def test_update_with_wrong_leaf_shape_names_the_transform_and_the_key_path(opt, name):
    state = opt.init(PARAMS)
    bad = {"dense": {"w": jnp.ones((4, 3)), "bias": jnp.zeros(4)}}
    expected = f"{name}: updates['dense']['bias'] has shape (4,), state has (3,)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.update(bad, state, PARAMS)
    with pytest.raises(ValueError, match=re.escape(expected)):
        jax.jit(opt.update)(bad, state, PARAMS)


def test_update_with_wrong_tree_names_the_differing_key():
    opt = gradtx.adam(1e-3)
    state = opt.init(PARAMS)
    bad = {"dense": {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=r"scale_by_adam: tree structures differ: .*\['b'\]"):
        opt.update(bad, state, PARAMS)
    missing = {"dense": {"w": jnp.ones((4, 3))}}
    with pytest.raises(ValueError, match=r"scale_by_adam: tree structures differ"):
        opt.update(missing, state, PARAMS)


def test_apply_updates_with_wrong_shape():
    with pytest.raises(ValueError, match=re.escape("apply_updates: updates['dense']['w'] has")):
        gradtx.apply_updates(PARAMS, {"dense": {"w": jnp.ones(3), "bias": jnp.zeros(3)}})


def test_state_from_another_optimiser_is_refused():
    state = gradtx.adam(0.1).init(PARAMS)
    with pytest.raises(
        ValueError, match="chain: state must be the tuple of 3 states .* got 2 entries"
    ):
        gradtx.adamw(0.1).update(PARAMS, state, PARAMS)
    # the same length, another layout: the piece names what it needed
    state = gradtx.sgd(0.1).init(PARAMS)  # (EmptyState(), EmptyState()), as optax's
    with pytest.raises(
        ValueError, match=r"trace: state must be a TraceState\(trace\) .* got EmptyState\(\)"
    ):
        gradtx.sgd(0.1, momentum=0.9).update(PARAMS, state, PARAMS)


def test_add_decayed_weights_needs_params():
    opt = gradtx.add_decayed_weights(1e-4)
    with pytest.raises(TypeError, match=r"add_decayed_weights: update needs params; pass it as"):
        opt.update(PARAMS, opt.init(PARAMS))


def test_partition_with_an_unknown_label():
    opt = gradtx.partition({"a": gradtx.sgd(0.1)}, {"dense": {"w": "a", "bias": "b"}})
    expected = "partition: label(s) 'b' in param_labels have no transformation; transforms has 'a'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.init(PARAMS)


def test_mask_must_be_static_bools():
    # a concrete 0-d JAX bool is static (optax's masks take it); a traced one, or a bool
    # array of another shape, cannot say which leaves to mask while tracing
    concrete = gradtx.masked(gradtx.sgd(0.1), {"dense": {"w": jnp.array(True), "bias": False}})
    python = gradtx.masked(gradtx.sgd(0.1), {"dense": {"w": True, "bias": False}})
    assert jax.tree.structure(concrete.init(PARAMS)) == jax.tree.structure(python.init(PARAMS))

    def init_with(flag):
        return gradtx.masked(gradtx.sgd(0.1), {"dense": {"w": flag, "bias": False}}).init(PARAMS)

    with pytest.raises(TypeError, match=re.escape("masked: mask['dense']['w'] must be a Python")):
        jax.jit(init_with)(jnp.array(True))
    with pytest.raises(TypeError, match=re.escape("masked: mask['dense']['w'] must be a Python")):
        init_with(jnp.array([True, False]))


def test_mask_with_wrong_structure():
    opt = gradtx.masked(gradtx.sgd(0.1), {"other": True})
    with pytest.raises(ValueError, match="masked: the mask's tree must match the params' tree"):
        opt.init(PARAMS)


def test_no_nan_from_bias_correction_at_the_first_step():
    for opt in [gradtx.bias_correction(0.999), gradtx.ema(0.9999, debias=True)]:
        u, _ = opt.update(PARAMS, opt.init(PARAMS))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
    # Adam's first step from zero gradients: 0 / (0 + eps) = 0, not NaN.
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    opt = gradtx.adam(1e-3)
    u, _ = opt.update(zeros, opt.init(PARAMS), PARAMS)
    assert all(bool(jnp.all(u_ == 0)) for u_ in jax.tree.leaves(u))


def test_centred_variance_is_clipped_at_zero():
    """eps outside the root: a round-off-negative variance must not give NaN."""
    opt = gradtx.scale_by_stddev(0.9, 1e-8, eps_in_sqrt=False, bias_correction=True)
    g = {"x": jnp.array([0.1, 1e-3, 3.3], jnp.float32)}
    state = opt.init(g)
    for _ in range(5):
        u, state = opt.update(g, state)
        assert bool(jnp.all(jnp.isfinite(u["x"])))


def test_tree_mismatch_names_the_first_differing_or_missing_key():
    opt = gradtx.ema(0.9)
    state = opt.init(PARAMS)
    renamed = {"dense": {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}}
    expected = (
        "ema: tree structures differ: updates has updates['dense']['b'] where state has "
        "state['dense']['bias']; pass updates with the same tree as the params given to init"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.update(renamed, state)
    fewer = {"dense": {"bias": jnp.zeros(3)}}
    expected = (
        "ema: tree structures differ: state has state['dense']['w'] which updates lacks "
        "(1 leaves in updates, 2 in state)"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.update(fewer, state)
    more = {"dense": {**PARAMS["dense"], "z": jnp.zeros(2)}}
    expected = (
        "ema: tree structures differ: updates has updates['dense']['z'] which state lacks "
        "(3 leaves in updates, 2 in state)"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.update(more, state)
    # Same key paths, other containers: the two tree definitions are shown.
    listed = [jnp.zeros(2), jnp.ones(3)]
    state = opt.init(listed)
    with pytest.raises(
        ValueError, match=r"ema: tree structures differ: updates is PyTreeDef\(\(\*"
    ):
        opt.update(tuple(listed), state)


@pytest.mark.parametrize(
    "opt, expected",
    [
        (
            gradtx.add_decayed_weights(0.1),
            "add_decayed_weights: updates['dense']['bias'] has shape (4,), params has (3,)",
        ),
        (
            gradtx.accumulate(gradtx.sgd(0.1), 2),
            "accumulate: updates['dense']['bias'] has shape (4,), state.acc_grads has (3,)",
        ),
    ],
)
def test_tree_mismatch_names_what_the_updates_were_compared_with(opt, expected):
    bad = {"dense": {"w": jnp.ones((4, 3)), "bias": jnp.zeros(4)}}
    with pytest.raises(ValueError, match=re.escape(expected)):
        opt.update(bad, opt.init(PARAMS), PARAMS)


def test_tree_mismatch_of_same_named_classes_says_they_come_from_two_libraries():
    import collections

    ours = collections.namedtuple("Node", ["x"])
    theirs = collections.namedtuple("Node", ["x"])
    opt = gradtx.ema(0.9)
    state = opt.init({"a": ours(jnp.zeros(2))})
    with pytest.raises(
        ValueError,
        match=r"ema: tree structures differ: the same key paths, but "
        r"updates has a .*Node node where state has a .*Node one \(two classes",
    ):
        opt.update({"a": theirs(jnp.ones(2))}, state)


# add_decayed_weights admits factors in (-1, 0) (fromage's shrink after the learning rate);
# every optimiser's weight decay is a decay: a negative one is refused, naming the optimiser.
NEGATIVE_DECAYS = {
    "adamw": lambda: gradtx.adamw(1e-3, weight_decay=-0.5),
    "adamaxw": lambda: gradtx.adamaxw(1e-3, weight_decay=-0.5),
    "nadamw": lambda: gradtx.nadamw(1e-3, weight_decay=-0.5),
    "lion": lambda: gradtx.lion(1e-3, weight_decay=-0.5),
    "lamb": lambda: gradtx.lamb(1e-3, weight_decay=-0.5),
    "lars": lambda: gradtx.lars(1e-3, weight_decay=-0.5),
    "adan": lambda: gradtx.adan(1e-3, weight_decay=-0.5),
    "adadelta": lambda: gradtx.adadelta(1e-3, weight_decay=-0.5),
    "adafactor": lambda: gradtx.adafactor(1e-3, weight_decay_rate=-0.5),
    "cocob": lambda: gradtx.contrib.cocob(weight_decay=-0.5),
    "dog": lambda: gradtx.contrib.dog(weight_decay=-0.5),
    "dowg": lambda: gradtx.contrib.dowg(weight_decay=-0.5),
    "madgrad": lambda: gradtx.contrib.madgrad(1e-3, weight_decay=-0.5),
    "ademamix": lambda: gradtx.contrib.ademamix(1e-3, weight_decay=-0.5),
    "simplified_ademamix": lambda: gradtx.contrib.simplified_ademamix(1e-3, weight_decay=-0.5),
    "muon": lambda: gradtx.contrib.muon(1e-3, weight_decay=-0.5),
    "schedule_free_adamw": lambda: gradtx.contrib.schedule_free_adamw(1e-3, weight_decay=-0.5),
    "schedule_free_sgd": lambda: gradtx.contrib.schedule_free_sgd(1e-3, weight_decay=-0.5),
    "prodigy": lambda: gradtx.contrib.prodigy(weight_decay=-0.5),
    "dadapt_adamw": lambda: gradtx.contrib.dadapt_adamw(weight_decay=-0.5),
    "mechanize": lambda: gradtx.contrib.mechanize(gradtx.adam(1e-3), weight_decay=-0.5),
}


@pytest.mark.parametrize("name", NEGATIVE_DECAYS)
def test_a_negative_weight_decay_is_refused_by_every_optimiser(name):
    with pytest.raises(ValueError, match=rf"^{name}: weight_decay(_rate)? must be"):
        NEGATIVE_DECAYS[name]()


def test_add_decayed_weights_admits_a_shrink_factor_above_minus_one():
    params = {"w": jnp.array([2.0, -4.0])}
    updates, _ = gradtx.add_decayed_weights(-0.25).update({"w": jnp.zeros(2)}, None, params)
    np.testing.assert_allclose(updates["w"], [-0.5, 1.0])
