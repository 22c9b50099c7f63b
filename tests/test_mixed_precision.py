"""Mixed precision: bfloat16 params with float32 moments; no state leaf changes dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx
from gradtx.guards import apply_if_finite
from gradtx.hyperparams import inject_hyperparams
from gradtx.monitor import monitor_norms
from gradtx.plateau import reduce_on_plateau

F32, BF16 = jnp.float32, jnp.bfloat16

# A small ill-conditioned quadratic, L(w) = 1/2 sum_i h_i (w_i - w*_i)^2, |w|, |w*| <= 1.
_rng = np.random.default_rng(0)
TARGET = jnp.asarray(_rng.uniform(-1, 1, 32), F32)
CURVATURE = jnp.linspace(0.5, 2.0, 32, dtype=F32)
W0 = jnp.asarray(_rng.uniform(-1, 1, 32), F32)


def loss(w):
    d = w.astype(F32) - TARGET
    return 0.5 * jnp.sum(CURVATURE * d * d)


def train(opt, w, steps):
    """`steps` jitted steps in one `lax.scan`; the gradient comes in the params' dtype."""

    def step(carry, _):
        w, state = carry
        updates, state = opt.update(jax.grad(loss)(w), state, w)
        w = gradtx.apply_updates(w, updates)
        return (w, state), (loss(w), w.astype(F32))

    run = jax.jit(lambda w: jax.lax.scan(step, (w, opt.init(w)), None, length=steps))
    (w, state), (losses, path) = run(w)
    return w, state, losses, path


@pytest.mark.parametrize(
    "name, make",
    [
        ("adam", lambda dt: gradtx.adam(1e-2, mu_dtype=dt, nu_dtype=dt)),
        ("sgd_momentum", lambda dt: gradtx.sgd(1e-2, momentum=0.9, accumulator_dtype=dt)),
        ("rmsprop", lambda dt: gradtx.rmsprop(1e-2, accumulator_dtype=dt)),
    ],
)
def test_bfloat16_params_track_the_float32_run_over_1000_steps(name, make):
    """bfloat16 params with float32 moments vs all-float32, same 1,000 steps.

    Stated tolerance: at every step the losses differ by at most 3% of the starting
    loss, and the params by at most 0.15 (|w| <= 1; bfloat16 spaces values 2^-8..2^-7
    apart there, and Adam's steps of ~1e-2 round to that grid); at the end the
    bfloat16 run has cut the loss at least 500-fold.
    """
    w32, _, losses32, path32 = train(make(None), W0, 1000)
    w16, state16, losses16, path16 = train(make(F32), W0.astype(BF16), 1000)
    assert w16.dtype == BF16 and w32.dtype == F32
    assert all(x.dtype in (F32, jnp.int32) for x in jax.tree.leaves(state16))
    start = float(loss(W0))
    assert float(jnp.max(jnp.abs(losses16 - losses32))) <= 0.03 * start
    assert float(jnp.max(jnp.abs(path16 - path32))) <= 0.15
    assert float(losses16[-1]) <= start / 500
    assert float(losses32[-1]) <= start / 500


def _dtypes(tree):
    return jax.tree.map(lambda x: jnp.result_type(x), tree)


OPTIMISERS = {
    "sgd": lambda: gradtx.sgd(0.1),
    "sgd_momentum_f32": lambda: gradtx.sgd(0.1, momentum=0.9, accumulator_dtype=F32),
    "sgd_nesterov_bf16": lambda: gradtx.sgd(0.1, momentum=0.9, nesterov=True),
    "momentum_ewa_f32": lambda: gradtx.momentum_ewa(0.1, accumulator_dtype=F32),
    "rmsprop": lambda: gradtx.rmsprop(0.01),
    "rmsprop_f32": lambda: gradtx.rmsprop(0.01, momentum=0.9, accumulator_dtype=F32),
    "rmsprop_centered_f32": lambda: gradtx.rmsprop(0.01, centered=True, accumulator_dtype=F32),
    "adagrad_f32": lambda: gradtx.adagrad(0.1, accumulator_dtype=F32),
    "rmsprop_centered_momentum": lambda: gradtx.rmsprop(0.01, centered=True, momentum=0.9),
    "adagrad": lambda: gradtx.adagrad(0.1),
    "adam": lambda: gradtx.adam(1e-3),
    "adam_f32": lambda: gradtx.adam(1e-3, mu_dtype=F32, nu_dtype=F32),
    "adam_mixed": lambda: gradtx.adam(1e-3, mu_dtype=BF16, nu_dtype=F32),
    "adamw_f32": lambda: gradtx.adamw(1e-3, mu_dtype=F32, nu_dtype=F32),
    "nadam_f32": lambda: gradtx.nadam(1e-3, mu_dtype=F32, nu_dtype=F32),
    "amsgrad_mu32": lambda: gradtx.amsgrad(1e-3, mu_dtype=F32),  # nu follows the params
    "injected_adam_f32": lambda: inject_hyperparams(gradtx.adam)(1e-3, mu_dtype=F32, nu_dtype=F32),
    "guarded_monitored_plateau": lambda: monitor_norms(
        apply_if_finite(gradtx.chain(gradtx.adam(1e-3), reduce_on_plateau()), 3)
    ),
}


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_no_state_leaf_changes_dtype_under_jit(name):
    opt = OPTIMISERS[name]()
    params = {"w": jnp.ones((3, 2), BF16), "b": jnp.full((2,), 0.5, BF16)}
    state = opt.init(params)
    traces = []

    @jax.jit
    def update(*args, **kwargs):
        traces.append(None)
        return opt.update(*args, **kwargs)

    expected = _dtypes(state)
    for t in range(2):
        grads = jax.tree.map(lambda p: (p * (t + 1.0)).astype(BF16), params)
        updates, state = update(grads, state, params, value=jnp.asarray(1.0))
        assert _dtypes(state) == expected, f"step {t}"
        assert _dtypes(updates) == _dtypes(params)
        params = gradtx.apply_updates(params, updates)
        assert _dtypes(params) == {"w": BF16, "b": BF16}
    assert len(traces) == 1  # the second step reused the first compilation
    wanted = F32 if name.endswith("_f32") else None
    if wanted is not None:
        # Every floating moment (params-shaped leaf) is in the requested dtype.
        moments = [x for x in jax.tree.leaves(state) if jnp.shape(x) in ((3, 2), (2,))]
        assert moments and all(x.dtype == wanted for x in moments)
