"""zoo-c: Polyak's step, gradient noise, optimism, Adan and DoG, against optax 0.2.8.

Parity runs 300 jitted steps (one `lax.scan`) on a nested tree with gradients (and the loss,
for `value=`) taken at the current parameters, for default and non-default arguments; the
emitted updates, the losses and the final states are compared leaf by leaf.
"""

import contextlib
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx

SHAPES = {"w": (3, 4), "b": (4,), "blocks": [(2, 2, 3), ()]}
STEPS = 300


def make_params(dtype=jnp.float32, seed=0):
    leaves, treedef = jax.tree.flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    arrays = [0.8 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, [a.astype(dtype) for a in arrays])


def loss(params):
    """A fixed quadratic plus quartic bowl, minimum 0 at 0, a different curvature per leaf."""
    total = jnp.zeros([], jnp.float32)
    for i, p in enumerate(jax.tree.leaves(params)):
        x = p.astype(jnp.float32)
        total = total + jnp.sum(0.5 * (1.0 + i) * x * x + 0.1 * x**4)
    return total


value_and_grad = jax.jit(jax.value_and_grad(loss))


def lr_schedule(count):
    return 0.02 * 0.995 ** count.astype(jnp.float32)


def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def as_optax_promotion():
    """optax does `float ** int32` and (DoG) broadcasts a (1,) factor: standard rules."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    return stack


def run(opt, params, steps=STEPS, *, jit=True):
    """`steps` steps with feedback gradients: returns (losses, stacked updates, final state).

    Updates are reshaped to their parameter's shape (optax's DoG gives a scalar parameter a
    (1,)-shaped update) and applied by `gradtx.apply_updates`, the same for both libraries.
    """

    def step(carry, _):
        params, state = carry
        value, grads = value_and_grad(params)
        updates, state = opt.update(grads, state, params, value=value)
        updates = jax.tree.map(lambda u, p: jnp.reshape(u, jnp.shape(p)), updates, params)
        return (gradtx.apply_updates(params, updates), state), (value, updates)

    state = opt.init(params)
    if jit:
        scan = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))
        (_, state), (values, updates) = scan((params, state))
        return values, updates, state
    values, updates = [], []
    carry = (params, state)
    for _ in range(steps):
        carry, (v, u) = step(carry, None)
        values.append(v)
        updates.append(u)
    return jnp.stack(values), jax.tree.map(lambda *xs: jnp.stack(xs), *updates), carry[1]


def layout(tree):
    """The tree's layout up to class identity: NamedTuple field names, nesting, leaf shapes
    and dtypes (optax's state and gradtx's must agree on it for checkpoints to restore)."""
    if hasattr(tree, "_fields"):
        return ("namedtuple", [(f, layout(getattr(tree, f))) for f in tree._fields])
    if isinstance(tree, (tuple, list)):
        return (type(tree).__name__, [layout(x) for x in tree])
    if isinstance(tree, dict):
        return ("dict", [(k, layout(v)) for k, v in sorted(tree.items())])
    return (jnp.shape(tree), str(jnp.result_type(tree)))


def leaves_as_numbers(tree):
    """Leaves as float64 arrays; typed PRNG keys by their key data."""
    out = []
    for x in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(np.asarray(x, np.float64))
    return out


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = leaves_as_numbers(a), leaves_as_numbers(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y.reshape(x.shape), rtol=rtol, atol=atol)


def quiet(make):
    """`make()` with optax's and gradtx's deprecation warnings of `optimistic_adam` silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return make()


def dog_sgd(lib, *args, **kwargs):
    return lib.chain(lib.scale_by_distance_over_gradients(*args, **kwargs), lib.scale(-1.0))


# name: (the call, made with gradtx or optax as `lib`)
CASES = {
    "polyak_sgd": lambda lib: lib.polyak_sgd(),
    "polyak_sgd_sps+": lambda lib: lib.polyak_sgd(0.5, 0.7, f_min=-0.5, eps=1e-3, variant="sps+"),
    "noisy_sgd": lambda lib: lib.noisy_sgd(0.01, key=jax.random.key(3)),
    "noisy_sgd_args": lambda lib: lib.noisy_sgd(
        lr_schedule, eta=0.1, gamma=0.3, key=jax.random.key(7, impl="rbg")
    ),
    "optimistic_gradient_descent": lambda lib: lib.optimistic_gradient_descent(0.01),
    "optimistic_gradient_descent_args": lambda lib: lib.optimistic_gradient_descent(
        lr_schedule, alpha=0.5, beta=2.0
    ),
    "optimistic_adam_v2": lambda lib: lib.optimistic_adam_v2(0.01),
    "optimistic_adam_v2_args": lambda lib: lib.optimistic_adam_v2(
        lr_schedule, alpha=0.5, beta=0.3, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8, nesterov=False
    ),
    "optimistic_adam_args": lambda lib: quiet(
        lambda: lib.optimistic_adam(0.02, 0.01, b1=0.85, b2=0.95, eps=1e-3, nesterov=False)
    ),
    "adan": lambda lib: lib.adan(0.01),
    "adan_args": lambda lib: lib.adan(
        lr_schedule, 0.9, 0.8, 0.95, eps=1e-6, eps_root=0.0, weight_decay=0.1, mask=decay_mask
    ),
    "dog": lambda lib: dog_sgd(lib),
    "dog_args": lambda lib: lib.chain(
        lib.scale_by_distance_over_gradients(
            reps_rel=1e-4, eps=1e-6, param_dtype=None, global_scale=-1.0
        )
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_optax_for_300_jitted_steps(name):
    params = make_params()
    values, updates, state = run(CASES[name](gradtx), params)
    with as_optax_promotion():
        values_o, updates_o, state_o = run(CASES[name](optax), params)
    assert_close(updates, updates_o)
    assert_close(values, values_o)
    assert layout(state) == layout(state_o)
    assert_close(state, state_o)
    # the problem is solved as far as optax solves it (the parity loop's loss)
    assert float(values[-1]) < float(values[0])
    np.testing.assert_allclose(float(values[-1]), float(values_o[-1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["optimistic_gradient_descent", "dog"])
def test_matches_optax_without_jit(name):
    params = make_params()
    values, updates, _ = run(CASES[name](gradtx), params, 2, jit=False)
    with as_optax_promotion():
        values_o, updates_o, _ = run(CASES[name](optax), params, 2, jit=False)
    assert_close(updates, updates_o)
    assert_close(values, values_o)


@pytest.mark.parametrize("name", ["noisy_sgd_args", "adan_args", "dog"])
def test_an_optax_state_resumes_in_gradtx(name):
    """A checkpoint of optax's state, restored into gradtx, continues as optax does."""
    params = make_params()
    opt_o = CASES[name](optax)
    with as_optax_promotion():
        state_o = opt_o.init(params)
        step_o = jax.jit(opt_o.update)
        for _ in range(5):
            value, grads = value_and_grad(params)
            updates, state_o = step_o(grads, state_o, params, value=value)
            updates = jax.tree.map(lambda u, p: jnp.reshape(u, jnp.shape(p)), updates, params)
            params = gradtx.apply_updates(params, updates)
        value, grads = value_and_grad(params)
        theirs, next_o = step_o(grads, state_o, params, value=value)
    ours, new_state = jax.jit(CASES[name](gradtx).update)(grads, state_o, params, value=value)
    assert_close(ours, theirs)
    assert layout(new_state) == layout(next_o)
    assert_close(new_state, next_o)


def test_polyak_sgd_passes_value_as_optax_does_and_reaches_the_minimum():
    params = make_params()
    opt = gradtx.polyak_sgd()
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(30):
        value, grads = value_and_grad(params)
        updates, state = update(grads, state, params, value=value)
        params = gradtx.apply_updates(params, updates)
    assert float(loss(params)) < 1e-3 * float(loss(make_params()))
    # inside optax's own chain the gradtx piece gets `value` too
    mixed = optax.chain(optax.sgd(1.0), gradtx.scale_by_polyak())
    value, grads = jax.value_and_grad(loss)(make_params())
    with as_optax_promotion():
        polyak = optax.polyak_sgd()
        theirs, _ = jax.jit(polyak.update)(grads, polyak.init(grads), value=value)
        ours, _ = jax.jit(mixed.update)(grads, mixed.init(grads), value=value)
    assert_close(ours, theirs)


def test_a_missing_value_is_named_with_how_to_pass_it():
    opt = gradtx.polyak_sgd()
    params = make_params()
    with pytest.raises(TypeError, match=r"scale_by_polyak: update needs value=.*value=loss\)"):
        opt.update(params, opt.init(params), params)
    with pytest.raises(ValueError, match="value must be the scalar loss, got an array"):
        opt.update(params, opt.init(params), params, value=jnp.ones(3))


def test_dog_needs_params_and_says_so():
    opt = gradtx.scale_by_distance_over_gradients()
    params = make_params()
    with pytest.raises(TypeError, match=r"update needs params; pass it as opt.update\(grads"):
        opt.update(params, opt.init(params))


# ----------------------------------------------------------------------------
# Formulas written out by hand.


def test_polyak_step_by_hand():
    g = {"a": jnp.asarray([3.0, -4.0]), "c": jnp.asarray([1.0j], jnp.complex64)}
    sq = 9.0 + 16.0 + 1.0  # |g|^2, complex by modulus
    value, f_min, eps = 5.0, 1.0, 0.5
    opt = gradtx.scale_by_polyak(f_min=f_min, max_learning_rate=10.0, eps=eps)
    u, _ = opt.update(g, opt.init(g), value=jnp.asarray(value))
    s = (value - f_min) / (sq + eps)
    np.testing.assert_allclose(u["a"], s * np.array([3.0, -4.0]), rtol=1e-6)
    np.testing.assert_allclose(u["c"], s * np.array([1.0j]), rtol=1e-6)
    capped = gradtx.scale_by_polyak(max_learning_rate=0.01)
    u, _ = capped.update(g, capped.init(g), value=jnp.asarray(value))
    np.testing.assert_allclose(u["a"], 0.01 * np.array([3.0, -4.0]), rtol=1e-6)
    # sps+ drops a negative gap: no step; sps takes it (an ascent, as in optax)
    plus = gradtx.scale_by_polyak(f_min=10.0, variant="sps+")
    u, _ = plus.update(g, plus.init(g), value=jnp.asarray(value))
    np.testing.assert_array_equal(u["a"], 0.0)
    sps = gradtx.scale_by_polyak(f_min=10.0)
    u, _ = sps.update(g, sps.init(g), value=jnp.asarray(value))
    np.testing.assert_allclose(u["a"], (value - 10.0) / sq * np.array([3.0, -4.0]), rtol=1e-6)


def test_adan_first_step_on_complex_params_by_hand():
    g = jnp.asarray([3.0 + 4.0j, -1.0j, 0.0], jnp.complex64)
    opt = gradtx.scale_by_adan(eps=1e-3)
    u, state = opt.update(g, opt.init(g))
    g = np.asarray(g)
    np.testing.assert_allclose(u, g / (np.abs(g) + 1e-3), rtol=1e-5)  # m^ = g, n^ = |g|^2
    assert state.n.dtype == jnp.float32 and state.m.dtype == jnp.complex64
    assert np.all(np.isfinite(np.asarray(u)))


def test_dog_first_steps_by_hand():
    p = jnp.asarray([3.0, 4.0])
    g = jnp.asarray([1.0, 2.0])
    opt = gradtx.scale_by_distance_over_gradients(reps_rel=0.1, eps=0.0)
    state = opt.init(p)
    u, state = opt.update(g, state, p)
    r0 = 0.1 * (1 + 5.0)
    np.testing.assert_allclose(u, r0 / np.sqrt(5.0) * np.asarray(g), rtol=1e-6)
    p1 = p + u
    u2, state = opt.update(g, state, p1)
    r1 = max(r0, float(np.linalg.norm(np.asarray(u))))
    np.testing.assert_allclose(u2, r1 / np.sqrt(10.0) * np.asarray(g), rtol=1e-6)
    assert state.grad_sum_of_squares.shape == (1,)


def test_dog_complex_params_use_the_modulus():
    p = jnp.asarray([3.0j, 4.0], jnp.complex64)
    g = jnp.asarray([1.0j, 0.0], jnp.complex64)
    opt = gradtx.scale_by_distance_over_gradients(reps_rel=0.1, eps=0.0, param_dtype=None)
    u, state = opt.update(g, opt.init(p), p)
    np.testing.assert_allclose(u, 0.1 * 6.0 / 1.0 * np.asarray(g), rtol=1e-6)
    assert state.max_dist.dtype == jnp.float32
    with pytest.raises(TypeError, match="param_dtype=float32 is real but a parameter is complex64"):
        gradtx.scale_by_distance_over_gradients().init(p)


def test_optimistic_gradient_by_hand():
    gs = [jnp.asarray([1.0, -2.0]), jnp.asarray([3.0, 0.5]), jnp.asarray([-1.0, 1.0])]
    opt = gradtx.scale_by_optimistic_gradient(alpha=0.5, beta=2.0)
    state = opt.init(gs[0])
    prev = gs[0]
    for g in gs:
        u, state = opt.update(g, state)
        np.testing.assert_allclose(u, 2.5 * np.asarray(g) - 2.0 * np.asarray(prev), rtol=1e-6)
        prev = g


def test_noise_has_the_annealed_variance():
    zeros = jnp.zeros((20_000,))
    opt = gradtx.add_noise(0.5, 1.0, jax.random.key(0))
    state = opt.init(zeros)
    for t in (1, 2, 3):
        u, state = opt.update(zeros, state)
        np.testing.assert_allclose(np.var(np.asarray(u)), 0.5 / t, rtol=0.05)
    cz = jnp.zeros((20_000,), jnp.complex64)
    u, _ = opt.update(cz, opt.init(cz))
    assert u.dtype == jnp.complex64
    np.testing.assert_allclose(np.mean(np.abs(np.asarray(u)) ** 2), 0.5, rtol=0.05)


def test_a_legacy_key_gives_the_typed_keys_stream():
    g = make_params()
    legacy = gradtx.add_noise(0.1, 0.55, jax.random.PRNGKey(4))
    typed = gradtx.add_noise(0.1, 0.55, jax.random.key(4))
    seed = gradtx.add_noise(0.1, 0.55, 4)
    outs = [t.update(g, t.init(g))[0] for t in (legacy, typed, seed)]
    assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert_close(outs[0], outs[2], rtol=0, atol=0)


# ----------------------------------------------------------------------------
# Laws, for all inputs.

floats = st.floats(-10.0, 10.0, allow_nan=False, allow_subnormal=False, width=32)
vectors = st.lists(floats, min_size=5, max_size=5).map(lambda xs: jnp.asarray(xs, jnp.float32))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(vectors, st.floats(0.0, 20.0, width=32), st.floats(0.0, 5.0, width=32))
def test_polyak_step_reaches_f_min_on_the_linear_model(g, value, f_min):
    """Uncapped sps: the linearised loss at the step's end, f - s |g|^2, is f_min."""
    opt = gradtx.scale_by_polyak(f_min=f_min, max_learning_rate=1e9)
    u, _ = opt.update(g, opt.init(g), value=jnp.asarray(value))
    sq = float(jnp.sum(g * g))
    if sq <= 1e-6:
        np.testing.assert_array_equal(u if sq == 0 else u * 0, 0.0)
        return
    reached = value - float(jnp.sum(u * g))  # u = s g, so <u, g> = s |g|^2
    np.testing.assert_allclose(reached, f_min, rtol=1e-4, atol=1e-3)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(vectors, st.floats(-2.0, 2.0, width=32), st.floats(-2.0, 2.0, width=32))
def test_optimism_on_a_constant_gradient_is_alpha_times_it(g, alpha, beta):
    opt = gradtx.scale_by_optimistic_gradient(alpha=alpha, beta=beta)
    state = opt.init(g)
    for _ in range(3):
        u, state = opt.update(g, state)
        np.testing.assert_allclose(u, np.float32(alpha) * np.asarray(g), rtol=1e-5, atol=1e-5)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(vectors.filter(lambda g: bool(jnp.all(jnp.abs(g) > 1e-2))))
def test_adan_on_a_constant_gradient_is_its_normalised_sign(g):
    opt = gradtx.scale_by_adan(eps=1e-6)
    state = opt.init(g)
    for _ in range(4):
        u, state = opt.update(g, state)
        np.testing.assert_allclose(u, np.asarray(g) / (np.abs(g) + 1e-6), rtol=1e-4, atol=1e-5)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(vectors, st.integers(0, 2**31 - 1))
def test_noise_with_zero_variance_is_the_identity_and_a_key_replays(g, seed):
    silent = gradtx.add_noise(0.0, 0.55, seed)
    u, _ = silent.update(g, silent.init(g))
    np.testing.assert_array_equal(u, g)
    noisy = gradtx.add_noise(1.0, 0.55, jax.random.key(seed))
    a, _ = noisy.update(g, noisy.init(g))
    b, _ = noisy.update(g, noisy.init(g))
    np.testing.assert_array_equal(a, b)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(vectors, vectors, st.floats(1e-6, 1e-2))
def test_dog_steps_never_exceed_the_distance_travelled(p, g, reps_rel):
    """|u_t| = r_t |g_t| / sqrt(G_t + eps) <= r_t, since G_t >= |g_t|^2."""
    opt = gradtx.scale_by_distance_over_gradients(reps_rel=reps_rel)
    state = opt.init(p)
    for _ in range(3):
        u, state = opt.update(g, state, p)
        assert float(jnp.linalg.norm(u)) <= float(state.max_dist) * (1 + 1e-5)
        p = p + u


# ----------------------------------------------------------------------------
# Edges: zero inputs, dtypes, bad input.

ALL = {
    "polyak_sgd": lambda: gradtx.polyak_sgd(),
    "noisy_sgd": lambda: gradtx.noisy_sgd(0.1, key=1),
    "optimistic_gradient_descent": lambda: gradtx.optimistic_gradient_descent(0.1),
    "optimistic_adam_v2": lambda: gradtx.optimistic_adam_v2(0.1),
    "adan": lambda: gradtx.adan(0.1, weight_decay=0.1),
    "scale_by_adan": lambda: gradtx.scale_by_adan(),
    "dog": lambda: gradtx.scale_by_distance_over_gradients(eps=0.0),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_zero_params_and_zero_gradients_stay_finite(name):
    opt = ALL[name]()
    params = jax.tree.map(jnp.zeros_like, make_params())
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(3):
        u, state = update(params, state, params, value=jnp.zeros([]))
        assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves_as_numbers((u, state)))


@pytest.mark.parametrize("name", sorted(ALL))
def test_bfloat16_params_keep_bfloat16_updates_and_state(name):
    opt = ALL[name]()
    params = make_params(jnp.bfloat16)
    state = opt.init(params)
    update = jax.jit(opt.update)
    for _ in range(2):
        value, grads = value_and_grad(params)
        u, new_state = update(grads, state, params, value=value)
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(lambda x: x.dtype, params)
        assert layout(new_state) == layout(state)
        state, params = new_state, gradtx.apply_updates(params, u)
    kept = [x for x in jax.tree.leaves(state) if x.dtype == jnp.bfloat16]
    if name in ("optimistic_gradient_descent", "optimistic_adam_v2", "adan", "scale_by_adan"):
        assert len(kept) >= len(jax.tree.leaves(params))  # moments in the params' dtype


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: gradtx.scale_by_polyak(variant="sps++"), ValueError, "variant must be 'sps'"),
        (lambda: gradtx.scale_by_polyak(max_learning_rate=-1.0), ValueError, "max_learning_rate"),
        (lambda: gradtx.scale_by_polyak(eps=-1e-3), ValueError, r"scale_by_polyak: eps must"),
        (lambda: gradtx.scale_by_polyak(f_min=float("nan")), ValueError, "f_min must be in"),
        (lambda: gradtx.polyak_sgd(scaling=-1.0), ValueError, "learning_rate must be in"),
        (lambda: gradtx.add_noise(-0.1, 0.55, 0), ValueError, r"add_noise: eta must be in \[0"),
        (lambda: gradtx.add_noise(0.1, float("inf"), 0), ValueError, "add_noise: gamma must"),
        (lambda: gradtx.add_noise(0.1, 0.55, "seed"), TypeError, "key must be a PRNG key"),
        (lambda: gradtx.add_noise(0.1, 0.55, True), TypeError, "key must be a PRNG key"),
        (lambda: gradtx.noisy_sgd(-0.1, key=0), ValueError, "noisy_sgd: learning_rate must"),
        (
            lambda: gradtx.scale_by_optimistic_gradient(alpha=lr_schedule),
            TypeError,
            "alpha must be a number, got a schedule",
        ),
        (
            lambda: gradtx.optimistic_gradient_descent(0.1, beta=float("nan")),
            ValueError,
            "scale_by_optimistic_gradient: beta must be in",
        ),
        (lambda: gradtx.optimistic_adam_v2(0.1, b1=1.0), ValueError, "b1 must be in"),
        (lambda: gradtx.scale_by_adan(b3=1.0), ValueError, r"scale_by_adan: b3 must be in \[0"),
        (lambda: gradtx.adan(0.1, eps_root=-1.0), ValueError, "eps_root must be in"),
        (lambda: gradtx.adan(0.1, weight_decay=-1.0), ValueError, "weight_decay must be in"),
        (
            lambda: gradtx.scale_by_distance_over_gradients(reps_rel=0.0),
            ValueError,
            r"reps_rel must be in \(0",
        ),
        (
            lambda: gradtx.scale_by_distance_over_gradients(eps=-1.0),
            ValueError,
            r"eps must be in \[0",
        ),
        (
            lambda: gradtx.scale_by_distance_over_gradients(param_dtype=jnp.int32),
            ValueError,
            "param_dtype must be a floating or complex dtype",
        ),
        (
            lambda: gradtx.scale_by_distance_over_gradients(global_scale=float("inf")),
            ValueError,
            "global_scale must be in",
        ),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_optimistic_adam_is_deprecated_and_refuses_a_schedule_as_optax_does():
    with pytest.warns(DeprecationWarning, match="use optimistic_adam_v2"):
        gradtx.optimistic_adam(0.01)
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match="learning_rate must be a number, got a schedule"),
    ):
        gradtx.optimistic_adam(lr_schedule)


def test_add_noise_key_and_seed_as_optax_takes_them():
    with pytest.warns(UserWarning, match="no key given, so the noise is drawn from seed 0"):
        default = gradtx.add_noise(0.1, 0.55)
    with pytest.warns(DeprecationWarning, match="seed is deprecated"):
        seeded = gradtx.add_noise(0.1, 0.55, seed=0)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="one of key and seed"):
        gradtx.add_noise(0.1, 0.55, 1, seed=1)
    g = make_params()
    a, _ = default.update(g, default.init(g))
    b, _ = seeded.update(g, seeded.init(g))
    assert_close(a, b, rtol=0, atol=0)


def test_a_state_from_another_optimiser_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match=r"scale_by_adan: state must be a ScaleByAdanState"):
        gradtx.scale_by_adan().update(params, gradtx.scale_by_adam().init(params))
    with pytest.raises(ValueError, match=r"tree structures differ"):
        opt = gradtx.scale_by_optimistic_gradient()
        opt.update({"x": jnp.ones(2)}, opt.init(params))


def test_a_typed_key_prints_and_round_trips_through_config():
    opt = gradtx.noisy_sgd(0.1, key=jax.random.key(5))
    assert "add_noise(0.01, 0.55, key=<PRNG key threefry2x32 [0, 5]>)" in repr(opt)
    rebuilt = gradtx.from_config(json.loads(json.dumps(gradtx.to_config(opt))))
    assert repr(rebuilt) == repr(opt)
    g = make_params()
    assert_close(rebuilt.update(g, rebuilt.init(g))[0], opt.update(g, opt.init(g))[0], 0, 0)


@pytest.mark.parametrize("name", ["noisy_sgd", "adan"])
def test_inject_hyperparams_feeds_traced_hyperparameters_as_optax_does(name):
    """Checks skip traced values; a PRNG key is not taken for a numeric hyperparameter."""
    kwargs = {"learning_rate": 0.05, **({"key": jax.random.key(2)} if name == "noisy_sgd" else {})}
    params = make_params()
    _, grads = value_and_grad(params)
    ours_opt = gradtx.inject_hyperparams(getattr(gradtx, name))(**kwargs)
    ours, _ = jax.jit(ours_opt.update)(grads, ours_opt.init(params), params)
    with as_optax_promotion():
        theirs_opt = optax.inject_hyperparams(getattr(optax, name))(**kwargs)
        theirs, _ = jax.jit(theirs_opt.update)(grads, theirs_opt.init(params), params)
    assert_close(ours, theirs)
