"""L-BFGS and the line searches: parity with optax 0.2.8 on Rosenbrock and a quadratic,
optax states restored into gradtx, the secant law, bad input, and no NaN at a zero gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx
from gradtx.lbfgs import _precondition
from tests._util import assert_trees_close, standard_promotion

# ----------------------------------------------------------------------------
# Problems: a nested Rosenbrock and a nested ill-conditioned quadratic.

ROSEN_START = {"x": jnp.array([-1.2, 1.0, -0.5, 0.8]), "y": {"z": jnp.array([[0.5, -1.5]])}}


def rosenbrock(params):
    x = jnp.concatenate([params["x"], params["y"]["z"].ravel()])
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


QUAD_START = {
    "w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
    "blocks": [jnp.linspace(0.0, 1.0, 12).reshape(2, 2, 3), jnp.asarray(3.0)],
}


def quadratic(params, scale=1.0):
    leaves = jax.tree.leaves(params)
    return scale * sum(
        0.5 * (i + 1.0) ** 2 * jnp.sum((x - 0.1 * i) ** 2) for i, x in enumerate(leaves)
    )


def least_squares(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def runner(lib, opt, f, steps, *, reuse=True, states=False):
    """A jitted `lax.scan` of `steps` updates: `(params, state, **data) -> (iterates, values,
    last state)`, and the state after each step too with `states=True`."""
    vag_from_state = lib.value_and_grad_from_state(f) if reuse else None

    def step(carry, _, data):
        p, s = carry
        if vag_from_state is None:
            v, g = jax.value_and_grad(f)(p, **data)
        else:
            v, g = vag_from_state(p, state=s, **data)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=f, **data)
        p = lib.apply_updates(p, u)
        return (p, s), ((p, v, s) if states else (p, v))

    @jax.jit
    def loop(params, state, **data):
        (_, last), out = jax.lax.scan(
            functools.partial(step, data=data), (params, state), None, length=steps
        )
        return (*out, last)

    return loop


def run(lib, opt, f, params, steps, *, reuse=True, states=False, **data):
    loop = runner(lib, opt, f, steps, reuse=reuse, states=states)
    return loop(params, opt.init(params), **data)


def run_optax(opt, f, params, steps, **kwargs):
    with standard_promotion():  # optax 0.2.8 mixes dtypes that strict promotion refuses
        return run(optax, opt, f, params, steps, **kwargs)


def layout(tree):
    """Key paths, shapes and dtypes of the leaves (None kept), and the NamedTuples' fields:
    a state's layout up to the identity of its classes."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    nodes = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "_fields") and x is not tree)
    fields = [getattr(x, "_fields", None) for x in nodes]
    return [
        (jax.tree_util.keystr(p), None if x is None else (jnp.shape(x), jnp.result_type(x)))
        for p, x in leaves
    ], fields


def assert_same_state(ours, theirs, rtol=1e-5, atol=1e-6):
    assert layout(ours) == layout(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        if jnp.issubdtype(jnp.result_type(a), jnp.floating):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------
# Parity with optax.

CASES = {
    "lbfgs": (lambda lib: lib.lbfgs(), True),
    "lbfgs_small_memory_unscaled": (
        lambda lib: lib.lbfgs(memory_size=3, scale_init_precond=False),
        True,
    ),
    "sgd_zoom_options": (
        lambda lib: lib.chain(
            lib.sgd(1.0),
            lib.scale_by_zoom_linesearch(
                12,
                max_learning_rate=0.8,
                increase_factor=3.0,
                curv_rtol=0.5,
                approx_dec_rtol=None,
                stepsize_precision=1e-6,
                initial_guess_strategy="one",
            ),
        ),
        True,
    ),
    "lbfgs_backtracking": (
        lambda lib: lib.lbfgs(
            0.5,
            linesearch=lib.scale_by_backtracking_linesearch(
                20, slope_rtol=1e-3, decrease_factor=0.6, increase_factor=2.0, store_grad=True
            ),
        ),
        True,
    ),
    "lbfgs_no_linesearch": (lambda lib: lib.lbfgs(2e-3, memory_size=4, linesearch=None), False),
    "sgd_backtracking": (
        lambda lib: lib.chain(lib.sgd(1.0), lib.scale_by_backtracking_linesearch(15)),
        False,
    ),
    "sgd_backtracking_options": (
        lambda lib: lib.chain(
            lib.sgd(1.0),
            lib.scale_by_backtracking_linesearch(
                10, 0.1, 0.5, 1.2, max_learning_rate=0.3, atol=1e-6, rtol=1e-4, store_grad=True
            ),
        ),
        True,
    ),
    "sgd_zoom": (lambda lib: lib.chain(lib.sgd(1.0), lib.scale_by_zoom_linesearch(15)), True),
}


X = jnp.linspace(-1.0, 1.0, 15).reshape(5, 3)
Y = jnp.array([1.0, -1.0, 0.5, 0.0, 2.0])
PROBLEMS = {
    "rosen": (rosenbrock, ROSEN_START, 20, {}),
    "quad": (quadratic, QUAD_START, 6, {}),
    # extra keyword arguments of update go to value_fn
    "data": (least_squares, {"w": jnp.zeros(3), "b": jnp.asarray(0.0)}, 8, {"x": X, "y": Y}),
}
PARITY = [
    ("lbfgs_small_memory_unscaled", "quad"),
    ("sgd_zoom_options", "rosen"),
    ("lbfgs_backtracking", "rosen"),
    ("lbfgs_no_linesearch", "quad"),
    ("sgd_backtracking", "data"),
    ("sgd_backtracking_options", "quad"),
    ("sgd_zoom", "rosen"),
]


def assert_same_runs(ours, theirs, name):
    assert_trees_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)  # every iterate
    assert_trees_close(ours[1], theirs[1], rtol=1e-5, atol=1e-6)  # every value
    assert_same_state(ours[-1], theirs[-1])
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(ours))
    if name != "lbfgs_no_linesearch":
        assert float(ours[1][-1]) < 0.7 * float(ours[1][0])  # it trains


@pytest.mark.parametrize("name, problem", PARITY, ids=[f"{n}-{p}" for n, p in PARITY])
def test_same_iterates_and_states_as_optax(name, problem):
    make, reuse = CASES[name]
    f, start, steps, data = PROBLEMS[problem]
    ours = run(gradtx, make(gradtx), f, start, steps, reuse=reuse, **data)
    theirs = run_optax(make(optax), f, start, steps, reuse=reuse, **data)
    assert_same_runs(ours, theirs, name)


def test_lbfgs_as_optax_and_an_optax_state_resumes_in_gradtx():
    f, start, steps = rosenbrock, ROSEN_START, 30
    ours = run(gradtx, gradtx.lbfgs(), f, start, steps, states=True)
    theirs = run_optax(optax.lbfgs(), f, start, steps, states=True)
    assert_same_runs(ours, theirs, "lbfgs")
    assert_same_state(ours[2], theirs[2])  # the states after every step, leaf by leaf
    # optax's state after 10 steps (its classes), resumed by gradtx's update.
    k = 10
    params = jax.tree.map(lambda x: x[k - 1], theirs[0])
    state = jax.tree.map(lambda x: x[k - 1], theirs[2])
    rest = runner(gradtx, gradtx.lbfgs(), f, steps - k)(params, state)
    assert_trees_close(rest[0], jax.tree.map(lambda x: x[k:], theirs[0]))
    assert_trees_close(rest[1], theirs[1][k:])
    assert layout(rest[-1]) == layout(state)  # optax's classes kept
    assert_same_state(rest[-1], theirs[-1])


def test_without_jit_as_optax():
    opt, ref = gradtx.scale_by_lbfgs(memory_size=2), optax.scale_by_lbfgs(memory_size=2)
    p = q = jnp.array([1.0, -2.0, 0.5])
    s, t = opt.init(p), ref.init(q)
    for _ in range(2):
        u, s = opt.update(jax.grad(quadratic)(p), s, p)
        p = p - 0.1 * u
        r, t = ref.update(jax.grad(quadratic)(q), t, q)
        q = q - 0.1 * r
    assert_trees_close(p, q)
    assert_same_state(s, t)


def test_complex_params_follow_optax():
    """optax's complex formulas (inner products conjugate the first tree), leaf by leaf."""

    def directions(lib, opt):
        def step(carry, k):
            p, s = carry
            g = p * jnp.array([1.0 + 0.5j, 2.0, 3.0 - 1.0j]) + 0.1 * k.astype(p.dtype)
            u, s = opt.update(g, s, p)
            return (p - 0.1 * u, s), u

        p = jnp.array([1.0 + 1.0j, -2.0, 0.5j], jnp.complex64)
        return jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), jnp.arange(4.0)))(p)

    ours = directions(gradtx, gradtx.scale_by_lbfgs(memory_size=2))
    with standard_promotion():
        theirs = directions(optax, optax.scale_by_lbfgs(memory_size=2))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# What the pieces do.


@functools.partial(jax.jit, static_argnums=(0, 1))
def _secant_gap(memory_size, scale_init_precond, key):
    keys = jax.random.split(key, 4)
    w0, w1, u0 = (jax.random.normal(k, (5,)) for k in keys[:3])
    u1 = u0 + (w1 - w0) * (1.0 + jax.random.uniform(keys[3], (5,)))  # <du, dw> > 0
    opt = gradtx.scale_by_lbfgs(memory_size, scale_init_precond)
    state = opt.init(w0)
    _, state = opt.update(u0, state, w0)
    _, state = opt.update(u1, state, w1)
    got = _precondition(
        u1 - u0,
        state.diff_params_memory,
        state.diff_updates_memory,
        state.weights_memory,
        0.7,  # the secant condition holds whatever the initial estimate
        (state.count - 1) % memory_size,
    )
    return got, w1 - w0


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), memory_size=st.sampled_from([1, 3]))
def test_the_estimate_meets_the_secant_condition(seed, memory_size):
    r"""After a pair $(\delta w, \delta u)$ enters the memory, $P \delta u = \delta w$."""
    got, want = _secant_gap(memory_size, True, jax.random.key(seed))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_first_direction_is_the_gradient_within_the_unit_ball():
    opt = gradtx.scale_by_lbfgs()
    for g, factor in ((jnp.array([3.0, 4.0]), 0.2), (jnp.array([0.3, 0.4]), 1.0)):
        u, _ = opt.update(g, opt.init(jnp.zeros(2)), jnp.zeros(2))
        np.testing.assert_allclose(u, factor * g, rtol=1e-6)


def test_lbfgs_is_its_chain():
    assert repr(gradtx.lbfgs(0.1, linesearch=None)) == (
        "chain(scale_by_lbfgs(memory_size=10), scale_by_learning_rate(0.1), identity())"
    )
    default = repr(gradtx.lbfgs())
    assert default.startswith("chain(scale_by_lbfgs(memory_size=10), ")
    assert "scale(-1.0), scale_by_zoom_linesearch(20, " in default
    assert "initial_guess_strategy='one'" in default


@pytest.mark.parametrize("name", ["lbfgs", "sgd_backtracking_options"])
def test_no_nan_at_a_zero_gradient_or_at_the_optimum(name):
    make, reuse = CASES[name]
    optimum = jax.tree.unflatten(
        jax.tree.structure(QUAD_START),
        [jnp.full_like(x, 0.1 * i) for i, x in enumerate(jax.tree.leaves(QUAD_START))],
    )
    loop = runner(gradtx, make(gradtx), quadratic, 25, reuse=reuse)
    # From the optimum (a zero gradient at the first step), and on towards it.
    opt = make(gradtx)
    for start in (optimum, QUAD_START):
        iterates, values, state = loop(start, opt.init(start))
        for leaf in jax.tree.leaves((iterates, values, state)):
            assert bool(jnp.all(jnp.isfinite(leaf))), name
        assert float(values[-1]) <= 1e-3 * float(values[0]) + 1e-6


def test_bfloat16_params_keep_their_dtype_and_train():
    start = jax.tree.map(lambda x: x.astype(jnp.bfloat16), QUAD_START)
    f = lambda p: quadratic(jax.tree.map(lambda x: x.astype(jnp.float32), p))  # noqa: E731
    iterates, values, state = run(gradtx, gradtx.lbfgs(), f, start, 6)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(iterates))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[0].diff_params_memory))
    assert state[2].learning_rate.dtype == optax.lbfgs().init(start)[2].learning_rate.dtype
    assert float(values[-1]) < 1e-2 * float(values[0])


# ----------------------------------------------------------------------------
# Bad input.

BAD = [
    (lambda: gradtx.scale_by_lbfgs(0), ValueError, "scale_by_lbfgs: memory_size must be an int"),
    (lambda: gradtx.scale_by_lbfgs(2.5), TypeError, "scale_by_lbfgs: memory_size must be an int"),
    (lambda: gradtx.scale_by_lbfgs(3, 1), TypeError, "scale_by_lbfgs: scale_init_precond must"),
    (lambda: gradtx.lbfgs(memory_size=0), ValueError, "scale_by_lbfgs: memory_size"),
    (lambda: gradtx.lbfgs(-0.1), ValueError, "lbfgs: learning_rate must be in"),
    (lambda: gradtx.lbfgs(linesearch="zoom"), TypeError, "lbfgs: linesearch must be a line"),
    (
        lambda: gradtx.scale_by_backtracking_linesearch(-1),
        ValueError,
        "scale_by_backtracking_linesearch: max_backtracking_steps must be an integer >= 0",
    ),
    (
        lambda: gradtx.scale_by_backtracking_linesearch(5, slope_rtol=1.0),
        ValueError,
        r"scale_by_backtracking_linesearch: slope_rtol must be in \[0, 1\), got 1.0",
    ),
    (
        lambda: gradtx.scale_by_backtracking_linesearch(5, decrease_factor=1.0),
        ValueError,
        r"decrease_factor must be in \(0, 1\), got 1.0; the step must shrink",
    ),
    (
        lambda: gradtx.scale_by_backtracking_linesearch(5, increase_factor=0.5),
        ValueError,
        r"increase_factor must be in \[1, inf\], got 0.5; use 1.0 to keep the last step",
    ),
    (
        lambda: gradtx.scale_by_backtracking_linesearch(5, max_learning_rate=0.0),
        ValueError,
        r"max_learning_rate must be in \(0, inf\], got 0.0",
    ),
    (
        lambda: gradtx.scale_by_backtracking_linesearch(5, atol=-1.0),
        ValueError,
        "scale_by_backtracking_linesearch: atol must be in",
    ),
    (
        lambda: gradtx.scale_by_backtracking_linesearch(5, rtol=-1.0),
        ValueError,
        "scale_by_backtracking_linesearch: rtol must be in",
    ),
    (
        lambda: gradtx.scale_by_backtracking_linesearch(5, store_grad=1),
        TypeError,
        "scale_by_backtracking_linesearch: store_grad must be True or False",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(0),
        ValueError,
        "scale_by_zoom_linesearch: max_linesearch_steps must be an integer >= 1, got 0",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(5, max_learning_rate=-1.0),
        ValueError,
        "scale_by_zoom_linesearch: max_learning_rate must be in",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(5, tol=-1.0),
        ValueError,
        "scale_by_zoom_linesearch: tol must be in",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(5, increase_factor=1.0),
        ValueError,
        r"increase_factor must be in \(1, inf\], got 1.0; the interval search must grow",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(5, slope_rtol=0.5, curv_rtol=0.4),
        ValueError,
        r"curv_rtol must be in \(0.5, inf\], got 0.4; the Wolfe conditions need slope_rtol <",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(5, approx_dec_rtol=-1.0),
        ValueError,
        "scale_by_zoom_linesearch: approx_dec_rtol must be in",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(5, stepsize_precision=-1.0),
        ValueError,
        "scale_by_zoom_linesearch: stepsize_precision must be in",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(5, initial_guess_strategy="two"),
        ValueError,
        "scale_by_zoom_linesearch: initial_guess_strategy must be 'one' or 'keep', got 'two'",
    ),
    (
        lambda: gradtx.scale_by_zoom_linesearch(5, verbose="yes"),
        TypeError,
        "scale_by_zoom_linesearch: verbose must be True or False",
    ),
    (lambda: gradtx.value_and_grad_from_state(3), TypeError, "value_fn must be the function"),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_are_refused_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradtx.scale_by_backtracking_linesearch(5),
        lambda: gradtx.scale_by_zoom_linesearch(5),
        lambda: gradtx.lbfgs(),
    ],
    ids=["backtracking", "zoom", "lbfgs"],
)
def test_a_missing_extra_argument_is_named_with_the_call_that_passes_it(make):
    opt = make()
    p = {"x": jnp.ones(2)}
    g = jax.grad(lambda p: jnp.sum(p["x"] ** 2))(p)
    state = opt.init(p)
    fn = "scale_by_backtracking_linesearch" if "backtracking" in repr(opt) else "zoom_linesearch"
    call = r"pass it as opt\.update\(grads, state, params, value=value, grad=grads, value_fn=f\)"
    f = lambda p: jnp.sum(p["x"] ** 2)  # noqa: E731
    with pytest.raises(TypeError, match=rf"{fn}: update needs value=f\(params\); {call}"):
        opt.update(g, state, p, grad=g, value_fn=f)
    with pytest.raises(TypeError, match=rf"{fn}: update needs grad=jax.grad\(f\)\(params\)"):
        opt.update(g, state, p, value=2.0, value_fn=f)
    with pytest.raises(TypeError, match=rf"{fn}: update needs value_fn=f, the function"):
        opt.update(g, state, p, value=2.0, grad=g)
    with pytest.raises(TypeError, match=r"update needs params"):
        opt.update(g, state, value=2.0, grad=g, value_fn=f)
    with pytest.raises(TypeError, match=r"keyword arguments \['batch'\] that value_fn does not"):
        opt.update(g, state, p, value=2.0, grad=g, value_fn=f, batch=1)
    with pytest.raises(ValueError, match=r"value must be the scalar f\(params\), got shape"):
        opt.update(g, state, p, value=jnp.ones(2), grad=g, value_fn=f)


def test_update_needs_params_and_its_own_state():
    opt = gradtx.scale_by_lbfgs()
    with pytest.raises(TypeError, match=r"scale_by_lbfgs: update needs params; pass it as"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
    with pytest.raises(ValueError, match=r"scale_by_lbfgs: state must be a ScaleByLBFGSState"):
        opt.update(jnp.ones(2), gradtx.trace(0.9).init(jnp.ones(2)), jnp.ones(2))


def test_value_and_grad_from_state_needs_a_stored_gradient():
    f = functools.partial(quadratic, scale=2.0)
    opt = gradtx.chain(gradtx.sgd(1.0), gradtx.scale_by_backtracking_linesearch(5))
    vag = gradtx.value_and_grad_from_state(f)
    with pytest.raises(ValueError, match=r"stores no grad; .*store_grad=True"):
        vag(QUAD_START, state=opt.init(QUAD_START))
    # At the first step (value +inf) it computes them, then reuses the stored ones.
    opt = gradtx.chain(gradtx.sgd(1.0), gradtx.scale_by_zoom_linesearch(5))
    zero = gradtx.value_and_grad_from_state(lambda p: 0.0 * f(p))

    @jax.jit
    def two_calls(params):
        state = opt.init(params)
        value, grad = vag(params, state=state)
        _, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
        return (value, grad), zero(params, state=state), state

    (value, grad), reused, state = two_calls(QUAD_START)
    want_value, want_grad = jax.value_and_grad(f)(QUAD_START)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    assert_trees_close(grad, want_grad)
    assert float(reused[0]) == float(state[1].value) > 0.0
    assert_trees_close(reused[1], state[1].grad, rtol=0, atol=0)
