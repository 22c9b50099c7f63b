"""gradtx in the training frameworks users write: Equinox, Flax (NNX and `TrainState`), numpyro.

Each framework test trains a small model for a few jitted steps the way that framework's
documentation does, once with the gradtx optimiser and once with the optax optimiser of the
same name, and compares the parameters (and losses) at a tight tolerance. gradtx runs under
the suite's strict dtype promotion wherever the framework allows it; optax 0.2.8 computes
`b1 ** count` with an int32 count, so its runs take standard promotion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import gradtx
from tests._util import assert_trees_close, standard_promotion

# The frameworks are in the `test` extra; these spare only an environment without them.
eqx = pytest.importorskip("equinox")
nnx = pytest.importorskip("flax.nnx")
train_state = pytest.importorskip("flax.training.train_state")
numpyro = pytest.importorskip("numpyro")
dist = pytest.importorskip("numpyro.distributions")
infer = pytest.importorskip("numpyro.infer")
numpyro_optim = pytest.importorskip("numpyro.optim")

RTOL, ATOL = 1e-6, 1e-7  # same computation, same order: only float32 rounding may differ


def assert_losses_close(a, b):
    assert_trees_close(jnp.asarray(a), jnp.asarray(b), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------
# gradtx transformations are optax's classes (GPJax, numpyro check isinstance).

TRANSFORMATIONS = {
    "adam": lambda: gradtx.adam(1e-3),
    "adamw_masked": lambda: gradtx.adamw(1e-3, mask={"w": True, "b": False}),
    "chain": lambda: gradtx.chain(gradtx.scale_by_adam(), gradtx.scale(-1e-3)),
    "reduce_on_plateau": lambda: gradtx.reduce_on_plateau(),
    "sgd": lambda: gradtx.sgd(0.1, momentum=0.9),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMATIONS))
def test_transformation_is_an_optax_gradient_transformation(name):
    tx = TRANSFORMATIONS[name]()
    assert isinstance(tx, optax.GradientTransformation)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)


def test_attribute_set_on_a_transformation_reads_back():
    """Training scripts hang their own attributes on the optimiser they build."""
    tx = gradtx.adam(1e-3)
    schedule = optax.constant_schedule(1e-3)
    setattr(tx, "lr_schedule", schedule)  # noqa: B010  (the user's spelling, kept)
    assert tx.lr_schedule is schedule
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update(params, tx.init(params), params)  # still a working optimiser
    assert_trees_close(updates, {"w": jnp.full(3, -1e-3)})


# ----------------------------------------------------------------------------
# Equinox.

EQX_X = jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(5, 3)
EQX_Y = jnp.stack([jnp.sin(EQX_X.sum(1)), jnp.cos(EQX_X[:, 0])], axis=1)


def eqx_model():
    return eqx.nn.MLP(3, 2, width_size=8, depth=2, key=jax.random.key(0))


def eqx_loss(model):
    return jnp.mean((jax.vmap(model)(EQX_X) - EQX_Y) ** 2)


def decay_matrices(tree):
    """The weight-decay mask built from the model tree: an `MLP` of bools (a callable pytree)."""
    return jax.tree.map(lambda x: x.ndim > 1, tree)


def eqx_adamw(make, mask):
    return make(0.05, weight_decay=0.5, mask=mask)


def train_eqx_partitioned(opt, steps=10):
    """`eqx.partition` into arrays and the rest; the loss is a function of the arrays."""
    params, static = eqx.partition(eqx_model(), eqx.is_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: eqx_loss(eqx.combine(p, static)))(params)
        updates, state = opt.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(loss)
    return params, losses


def train_eqx_filtered(opt, params_of, steps=10):
    """Equinox's documented loop: `filter_value_and_grad`, `filter_jit`, `apply_updates`.

    `params_of(model)` is what `update` gets as params: `eqx.filter(model, eqx.is_array)`,
    or the whole model (its activation functions are leaves whose gradient is None).
    """
    model = eqx_model()
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(eqx_loss)(model)
        updates, state = opt.update(grads, state, params_of(model))
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(steps):
        model, state, loss = step(model, state)
        losses.append(loss)
    return eqx.filter(model, eqx.is_array), losses


def mask_as_tree():
    return decay_matrices(eqx.filter(eqx_model(), eqx.is_array))


MASKS = {
    # The mask built once from the model tree: an MLP module, a pytree that defines __call__.
    "model_tree": mask_as_tree,
    # The mask as a function of the params (optax's other spelling).
    "function": lambda: decay_matrices,
}


@pytest.mark.parametrize("mask", sorted(MASKS))
def test_equinox_partition_adamw_with_a_mask_from_the_model_tree(mask):
    with standard_promotion():
        ref, ref_losses = train_eqx_partitioned(eqx_adamw(optax.adamw, MASKS[mask]()))
    params, losses = train_eqx_partitioned(eqx_adamw(gradtx.adamw, MASKS[mask]()))
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)
    assert losses[-1] < 0.5 * losses[0]


def test_equinox_mask_changes_the_run():
    """The mask leaves the biases undecayed: without it the run is a different one."""
    with standard_promotion():
        masked, _ = train_eqx_partitioned(eqx_adamw(optax.adamw, mask_as_tree()))
        unmasked, _ = train_eqx_partitioned(eqx_adamw(optax.adamw, None))
    assert float(jnp.max(jnp.abs(masked.layers[0].bias - unmasked.layers[0].bias))) > 1e-3


@pytest.mark.parametrize("mask", sorted(MASKS))
def test_equinox_filter_idiom_adamw(mask):
    """`opt.init(eqx.filter(model, eqx.is_array))`, `opt.update(grads, state, filtered)`."""
    filtered = lambda m: eqx.filter(m, eqx.is_array)
    with standard_promotion():
        ref, ref_losses = train_eqx_filtered(eqx_adamw(optax.adamw, MASKS[mask]()), filtered)
    params, losses = train_eqx_filtered(eqx_adamw(gradtx.adamw, MASKS[mask]()), filtered)
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)


WHOLE_MODEL_OPTIMISERS = {
    "adam": lambda lib: lib.adam(0.05),
    "adamw": lambda lib: eqx_adamw(lib.adamw, None),
    # The mask built over the whole model, so it has a bool (False) at the activation leaves
    # too. (A mask built from the filtered tree has None there, which optax refuses against
    # the whole model's params: a pytree structure error at `tree.activation`.)
    "adamw_whole_model_mask": lambda lib: eqx_adamw(
        lib.adamw, jax.tree.map(lambda x: eqx.is_array(x) and x.ndim > 1, eqx_model())
    ),
}


@pytest.mark.parametrize("optimiser", sorted(WHOLE_MODEL_OPTIMISERS))
def test_equinox_whole_model_as_params(optimiser):
    """`opt.update(grads, state, model)`: None gradients where the model holds functions."""
    make, whole = WHOLE_MODEL_OPTIMISERS[optimiser], lambda m: m
    with standard_promotion():
        ref, ref_losses = train_eqx_filtered(make(optax), whole)
    params, losses = train_eqx_filtered(make(gradtx), whole)
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)


def test_equinox_adam_filter_idiom():
    """Plain Adam, no weight decay: the None leaves through the moment updates alone."""
    filtered = lambda m: eqx.filter(m, eqx.is_array)
    with standard_promotion():
        ref, ref_losses = train_eqx_filtered(optax.adam(0.05), filtered)
    params, losses = train_eqx_filtered(gradtx.adam(0.05), filtered)
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)


# ----------------------------------------------------------------------------
# Flax: NNX's Optimizer and linen's TrainState.

NNX_X = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(4, 3)
NNX_Y = jnp.stack([NNX_X.sum(1), NNX_X[:, 0] * NNX_X[:, 1]], axis=1)


class NnxMLP(nnx.Module):
    """Two Linear layers and a call counter: `wrt=nnx.Param` leaves the counter out."""

    def __init__(self, rngs):
        self.hidden = nnx.Linear(3, 8, rngs=rngs)
        self.out = nnx.Linear(8, 2, rngs=rngs)
        self.calls = nnx.Variable(jnp.array(0, jnp.int32))

    def __call__(self, x):
        self.calls[...] += 1
        return self.out(nnx.relu(self.hidden(x)))


def nnx_loss(model):
    return jnp.mean((model(NNX_X) - NNX_Y) ** 2)


def train_nnx(tx, steps, *, with_value=False):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(nnx_loss)(model)
        if with_value:
            optimizer.update(model, grads, value=loss)
        else:
            optimizer.update(model, grads)
        return loss

    losses = [step(model, optimizer) for _ in range(steps)]
    assert int(optimizer.step[...]) == steps
    assert int(model.calls[...]) == steps  # the counter is the model's, not the optimiser's
    return nnx.state(model, nnx.Param), losses, optimizer


def test_nnx_optimizer_adam():
    with standard_promotion():
        ref, ref_losses, _ = train_nnx(optax.adam(1e-2), 10)
    params, losses, _ = train_nnx(gradtx.adam(1e-2), 10)
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)
    assert losses[-1] < losses[0]


def plateau_chain(lib, plateau):
    # rtol=0.1: a step that does not cut the loss by 10% is a plateau, so the scale drops
    # within the run (patience 2), and the comparison covers the reductions.
    return lib.chain(lib.adam(5e-2), plateau(factor=0.5, patience=2, rtol=0.1))


def test_nnx_optimizer_reduce_on_plateau_gets_value():
    """`optimizer.update(model, grads, value=loss)` reaches the plateau piece."""
    steps = 30
    with standard_promotion():
        ref, ref_losses, ref_opt = train_nnx(
            plateau_chain(optax, optax.contrib.reduce_on_plateau), steps, with_value=True
        )
    params, losses, opt = train_nnx(
        plateau_chain(gradtx, gradtx.reduce_on_plateau), steps, with_value=True
    )
    scale, ref_scale = float(opt.opt_state[1].scale[...]), float(ref_opt.opt_state[1].scale[...])
    assert ref_scale < 1.0  # the reference did reduce: the test exercises the reductions
    assert scale == ref_scale
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)


def test_flax_train_state_step():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    x = jnp.arange(12.0).reshape(4, 3) / 10
    y = jnp.ones((4, 2))

    def apply_fn(variables, inputs):
        return inputs @ variables["params"]["w"] + variables["params"]["b"][None, :]

    def loss_fn(p, state):
        return jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)

    @jax.jit
    def step(state):
        grads = jax.grad(loss_fn)(state.params, state)
        return state.apply_gradients(grads=grads)

    with standard_promotion():  # flax's apply_gradients goes through optax.apply_updates
        state = train_state.TrainState.create(
            apply_fn=apply_fn, params=params, tx=gradtx.adam(0.05)
        )
        losses = [float(loss_fn(state.params, state))]
        for _ in range(20):
            state = step(state)
            losses.append(float(loss_fn(state.params, state)))
        ref = train_state.TrainState.create(apply_fn=apply_fn, params=params, tx=optax.adam(0.05))
        for _ in range(20):
            ref = step(ref)
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 20
    assert_trees_close(state.params, ref.params, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------
# numpyro: SVI takes an optax optimiser (it checks `isinstance(optim,
# optax.GradientTransformation)`) and passes the loss as `value=` to its update.

DATA = 2.0 + jnp.linspace(-1.0, 1.0, 20, dtype=jnp.float32)


def numpyro_model(data):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("n", data.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def numpyro_guide(data):
    loc = numpyro.param("loc", jnp.float32(0.0))
    scale = numpyro.param("scale", jnp.float32(1.0), constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))


def run_svi(optim, steps=30):
    svi = infer.SVI(numpyro_model, numpyro_guide, optim, infer.Trace_ELBO())
    result = svi.run(jax.random.key(0), steps, DATA, progress_bar=False)
    return result.params, result.losses, result.state


def test_numpyro_svi_adam():
    params, losses, _ = run_svi(gradtx.adam(0.1))
    with standard_promotion():
        ref, ref_losses, _ = run_svi(optax.adam(0.1))
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)
    assert float(params["loc"]) > 1.0  # moved towards the data's mean, 2


def test_numpyro_svi_adam_through_optax_to_numpyro():
    params, losses, _ = run_svi(numpyro_optim.optax_to_numpyro(gradtx.adam(0.1)))
    with standard_promotion():
        ref, ref_losses, _ = run_svi(numpyro_optim.optax_to_numpyro(optax.adam(0.1)))
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)


def test_numpyro_svi_passes_the_loss_to_reduce_on_plateau():
    params, losses, state = run_svi(plateau_chain(gradtx, gradtx.reduce_on_plateau), 40)
    with standard_promotion():
        ref, ref_losses, ref_state = run_svi(
            plateau_chain(optax, optax.contrib.reduce_on_plateau), 40
        )
    # numpyro's optimiser state is (step, (params, opt_state)).
    scale, ref_scale = state.optim_state[1][1][1].scale, ref_state.optim_state[1][1][1].scale
    assert float(ref_scale) < 1.0
    assert float(scale) == float(ref_scale)
    assert_trees_close(params, ref, rtol=RTOL, atol=ATOL)
    assert_losses_close(losses, ref_losses)
