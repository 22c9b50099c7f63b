"""The run every multi-process test checks: a tiny MLP regression trained with Adam.

Imported by the worker processes (`worker.py`) and by the test itself, which trains the same
run in its own single process (`reference`) as the oracle: same data, same global batches,
same step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradtx
from gradtx import data as gd

NUM_EXAMPLES = 88  # 5 full global batches and a partial one: the mask is exercised
FEATURES, HIDDEN = 8, 16
GLOBAL_BATCH = 16  # a multiple of every device count used (2 x 2 and 4 x 2 devices)
EPOCHS = 2
SEED = 0
STEPS_PER_EPOCH = gd.num_batches(NUM_EXAMPLES, GLOBAL_BATCH)

OPT = gradtx.adam(1e-2)


def dataset() -> dict[str, np.ndarray]:
    """Host arrays, the same on every process: inputs, a smooth target, and each row's id."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(NUM_EXAMPLES, FEATURES)).astype(np.float32)
    w = rng.normal(size=(FEATURES, 1)).astype(np.float32)
    y = np.tanh(x @ w) + 0.1 * x[:, :1] ** 2
    return {"x": x, "y": y.astype(np.float32), "id": np.arange(NUM_EXAMPLES, dtype=np.int32)}


def init_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED + 1)
    return {
        "w1": (rng.normal(size=(FEATURES, HIDDEN)) / np.sqrt(FEATURES)).astype(np.float32),
        "b1": np.zeros((1, HIDDEN), np.float32),
        "w2": (rng.normal(size=(HIDDEN, 1)) / np.sqrt(HIDDEN)).astype(np.float32),
        "b2": np.zeros((1, 1), np.float32),
    }


def loss_fn(params, batch, mask):
    hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    prediction = hidden @ params["w2"] + params["b2"]
    return gd.masked_mean((prediction - batch["y"]) ** 2, mask)


def train_step(params, opt_state, batch, mask):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, mask)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return gradtx.apply_updates(params, updates), opt_state, loss


def epoch_key(key, epoch: int):
    return jax.random.fold_in(key, epoch)


def reference() -> dict:
    """The run in this one process: final params, every step's loss, and the ids of every
    global batch's real examples (`[epoch][step]`)."""
    key = jax.random.key(SEED)
    data = jax.device_put(dataset())
    params = jax.device_put(init_params())
    opt_state = OPT.init(params)
    step = jax.jit(train_step)
    losses, ids = [], []
    for epoch in range(EPOCHS):
        ids.append([])
        for batch, mask in gd.batches(epoch_key(key, epoch), data, GLOBAL_BATCH, with_mask=True):
            ids[-1].append(np.asarray(batch["id"])[np.asarray(mask)])
            params, opt_state, loss = step(params, opt_state, batch, mask)
            losses.append(float(loss))
    return {"params": jax.device_get(params), "losses": np.asarray(losses), "ids": ids}
