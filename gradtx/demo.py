r"""The main example: five optimisers on the 8x8 handwritten digits.

    python -m gradtx.demo [--epochs N] [--batch-size B] [--out PATH]

Trains one small MLP (64-64-10, tanh, softmax cross-entropy, written in plain `jax.numpy`)
with `sgd`, heavy-ball momentum, `rmsprop`, `adam` and `adam` with a decayed learning rate
(IDEAS §1-§7), each on exactly the same mini-batches (`gradtx.data.scan_epoch` with one fixed
key), shows a progress bar per optimiser, prints a table (final train loss, test accuracy,
wall time) and saves the loss curves as a PNG.

The digits (1,797 images that scikit-learn ships inside its package, no download) are split
once, with a fixed key, into 1,437 training and 360 test images. Needs the `notebooks` extra:
`pip install "gradtx[notebooks]"` (scikit-learn and matplotlib); the core library never
imports this module.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import gradtx
from gradtx import data as gdata

DEFAULT_OUT = os.path.join(tempfile.gettempdir(), "gradtx-demo-loss.png")
HIDDEN = 64
TEST_SIZE = 360
DATA_KEY, INIT_KEY, BATCH_KEY = 0, 1, 2  # fixed seeds: the same split, weights and batches

_MISSING = (
    "gradtx.demo needs scikit-learn (for the digits) and matplotlib (for the plot); "
    'install them with: pip install "gradtx[notebooks]"'
)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise SystemExit(f"{_MISSING} ({err})") from None
    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise SystemExit(f"{_MISSING} ({err})") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------
# Data and model, in plain jax.numpy.


def split(x: np.ndarray, y: np.ndarray, key: jax.Array) -> tuple[dict, dict]:
    """A fixed random train/test split, as device arrays `{"x": [m, 64], "y": [m]}`."""
    order = np.asarray(jax.random.permutation(key, len(x)))
    test, train = order[:TEST_SIZE], order[TEST_SIZE:]
    as_data = lambda idx: {"x": jnp.asarray(x[idx]), "y": jnp.asarray(y[idx])}
    return as_data(train), as_data(test)


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
    """Weights drawn N(0, 1/fan_in), zero biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b)) / math.sqrt(a), "b": jnp.zeros((b,))}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def predict(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Logits of the MLP: tanh hidden layers, linear output."""
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def per_example_loss(params: list[dict[str, jax.Array]], batch: dict) -> jax.Array:
    """Softmax cross-entropy of each example."""
    log_probs = jax.nn.log_softmax(predict(params, batch["x"]))
    return -jnp.take_along_axis(log_probs, batch["y"][:, None], axis=1)[:, 0]


@jax.jit
def evaluate(params: list[dict[str, jax.Array]], data: dict) -> tuple[jax.Array, jax.Array]:
    """(mean loss, accuracy) on a whole dataset."""
    loss = jnp.mean(per_example_loss(params, data))
    accuracy = jnp.mean(jnp.argmax(predict(params, data["x"]), axis=-1) == data["y"])
    return loss, accuracy.astype(jnp.float32)


# ----------------------------------------------------------------------------
# Training.


def optimisers(steps_per_epoch: int) -> dict[str, tuple[gradtx.GradientTransformation, str]]:
    """The contenders: name -> (transformation, how its learning rate is set)."""
    decayed = gradtx.exponential_decay(
        1e-2, transition_steps=steps_per_epoch, decay_rate=0.9, staircase=True
    )
    return {
        "sgd": (gradtx.sgd(0.1), "0.1"),
        "momentum": (gradtx.sgd(0.1, momentum=0.9), "0.1, heavy-ball β=0.9"),
        "rmsprop": (gradtx.rmsprop(3e-3), "3e-3"),
        "adam": (gradtx.adam(3e-3), "3e-3"),
        "adam+decay": (gradtx.adam(decayed), "1e-2 · 0.9^epoch"),
    }


class Result(NamedTuple):
    train_loss: list[float]  # on the whole training set, after each epoch
    test_accuracy: list[float]  # after each epoch
    seconds: float  # training wall time, JIT compilation included (evaluation excluded)
    first_epoch_seconds: float  # the first epoch's share of `seconds`: mostly compilation


class ProgressBar:
    """A one-line text progress bar; redrawn in place on a terminal, printed once otherwise."""

    def __init__(self, name: str, total: int, width: int = 24, stream: Any = None):
        self.name, self.total, self.width = name, total, width
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()

    def line(self, done: int, loss: float, seconds: float) -> str:
        filled = round(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        return (
            f"{self.name:<11} |{bar}| {done:>3}/{self.total} epochs  "
            f"train loss {loss:.4f}  {seconds:5.1f} s"
        )

    def update(self, done: int, loss: float, seconds: float) -> None:
        if self.live:
            self.stream.write("\r" + self.line(done, loss, seconds))
            self.stream.flush()
        if done == self.total:
            self.stream.write("\n" if self.live else self.line(done, loss, seconds) + "\n")
            self.stream.flush()


def train(
    tx: gradtx.GradientTransformation,
    params: list[dict[str, jax.Array]],
    train_data: dict,
    test_data: dict,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    on_epoch: Callable[[int, float, float], None] = lambda *_: None,
) -> Result:
    """Trains with `tx`, one compiled `lax.scan` per epoch, on the batches drawn from `key`."""

    def step(carry, batch, mask):
        params, state = carry
        loss, grads = jax.value_and_grad(
            lambda p: gdata.masked_mean(per_example_loss(p, batch), mask)
        )(params)
        updates, state = tx.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), loss

    carry = (params, tx.init(params))
    losses, accuracies, seconds, first = [], [], 0.0, 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        carry, _ = gdata.scan_epoch(
            step, carry, train_data, jax.random.fold_in(key, epoch), batch_size, donate=False
        )
        jax.block_until_ready(carry)
        seconds += time.perf_counter() - start
        if epoch == 0:
            first = seconds
        train_loss, _ = evaluate(carry[0], train_data)
        _, test_accuracy = evaluate(carry[0], test_data)
        losses.append(float(train_loss))
        accuracies.append(float(test_accuracy))
        on_epoch(epoch + 1, losses[-1], seconds)
    return Result(losses, accuracies, seconds, first)


# ----------------------------------------------------------------------------
# Output.


def format_table(results: dict[str, Result], rates: dict[str, str]) -> str:
    """The comparison table, one row per optimiser."""
    header = (
        f"{'optimiser':<11}  {'learning rate':<24}  {'train loss':>10}  "
        f"{'test accuracy':>13}  {'time (s)':>8}  {'1st epoch (s)':>13}  {'later (ms/epoch)':>16}"
    )
    rows = [header, "-" * len(header)]
    for name, r in results.items():
        epochs = len(r.train_loss)
        later = (
            f"{1e3 * (r.seconds - r.first_epoch_seconds) / (epochs - 1):>16.1f}"
            if epochs > 1
            else f"{'-':>16}"
        )
        rows.append(
            f"{name:<11}  {rates[name]:<24}  {r.train_loss[-1]:>10.4f}  "
            f"{100 * r.test_accuracy[-1]:>12.1f}%  {r.seconds:>8.2f}  "
            f"{r.first_epoch_seconds:>13.2f}  {later}"
        )
    return "\n".join(rows)


def plot(results: dict[str, Result], path: str, title: str) -> None:
    """Saves the train-loss and test-accuracy curves of every optimiser to `path`."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        epochs = np.arange(1, len(r.train_loss) + 1)
        ax_loss.semilogy(epochs, r.train_loss, marker="o", ms=3, label=name)
        ax_acc.plot(epochs, 100 * np.asarray(r.test_accuracy), marker="o", ms=3, label=name)
    ax_loss.set(xlabel="epoch", ylabel="train loss (log scale)", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    ax_acc.set_ylim(80, 100)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Result]:
    parser = argparse.ArgumentParser(
        prog="python -m gradtx.demo",
        description="Train sgd, momentum, rmsprop, adam and adam with decay on the 8x8 digits.",
    )
    parser.add_argument("--epochs", type=int, default=20, help="passes over the data (20)")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (64)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"where to save the loss curves (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")

    x, y = _load_digits()
    _pyplot()  # fail early, before training, when matplotlib is missing
    train_data, test_data = split(x, y, jax.random.key(DATA_KEY))
    m = gdata.num_examples(train_data)
    if args.batch_size > m:
        parser.error(f"--batch-size must be at most {m} (the training set), got {args.batch_size}")
    steps = gdata.num_batches(m, args.batch_size)
    params = init_mlp(jax.random.key(INIT_KEY), (x.shape[1], HIDDEN, 10))
    print(
        f"digits: {m} train / {gdata.num_examples(test_data)} test images; "
        f"MLP {x.shape[1]}-{HIDDEN}-10; {args.epochs} epochs of {steps} mini-batches "
        f"of {args.batch_size}; jax {jax.__version__} on {jax.default_backend()}"
    )

    contenders = optimisers(steps)
    results = {}
    for name, (tx, _) in contenders.items():
        bar = ProgressBar(name, args.epochs)
        results[name] = train(
            tx,
            params,
            train_data,
            test_data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            key=jax.random.key(BATCH_KEY),
            on_epoch=bar.update,
        )
    print()
    print(format_table(results, {name: rate for name, (_, rate) in contenders.items()}))
    print(
        "time: training wall time, evaluation excluded. The 1st epoch includes JIT compilation;\n"
        "each later epoch is one call of the compiled lax.scan over its mini-batches."
    )
    plot(results, args.out, f"gradtx on the 8x8 digits: MLP, batch {args.batch_size}")
    print(f"loss curves saved to {args.out}")
    return results


if __name__ == "__main__":
    main()
