"""Epoch benchmark: a host-driven loop, `gradtx.data.batches` and `gradtx.data.scan_epoch`.

Two models, each trained for whole epochs three ways in the same run (the last two also with
a cheaper shuffle):

* **host loop**: numpy shuffle, numpy slicing of each batch on the host, one jitted step per
  batch (the batch is copied to the device at every call);
* **batches**: `for batch in gradtx.data.batches(...)`, the dataset on the device, each batch
  gathered there, one jitted step per batch; shuffled with `jax.random.permutation` (the
  default);
* **scan_epoch**: the whole epoch as one compiled `lax.scan`, same shuffle;
* **... + feistel**: the same, shuffled with `gradtx.data.feistel_permutation` (one
  single-operand sort instead of `jax.random.permutation`'s key-value sorts, which on XLA:CPU
  cost ~0.3 us per example, i.e. ~10 us per step at batch 32).

Models: (i) dispatch-bound softmax regression on 64 features, batch 32, SGD; (ii)
compute-bound 784-256-10 MLP on 60,000 synthetic examples, batch 128, Adam. Every step is
jitted with donated parameters and optimizer state. Each method first runs one warm-up
epoch (compilation); then the methods are timed in turn, one epoch each, repeatedly. The
table reports median epoch times as samples per second, and ratios to the host loop as the
median of the ratios within each turn (robust to the load of other processes), for wall
time and for this process's CPU time.

Usage: `python benchmarks/bench_epochs.py [--quick]` prints a markdown table. `run(quick)`
returns the same markdown, for a suite runner.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Benchmark the checkout this file lives in (run as a script, sys.path[0] is benchmarks/).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "gradtx", "__init__.py")) and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import gradtx  # noqa: E402
from gradtx import data as gd  # noqa: E402

METHODS = ("host loop", "batches", "batches + feistel", "scan_epoch", "scan_epoch + feistel")


@dataclass
class Model:
    name: str
    num_examples: int
    batch_size: int
    optimizer: str
    target: float  # scan_epoch / host loop must reach this
    reps: int  # timed epochs per method
    init: Callable[[np.random.Generator], dict[str, np.ndarray]]
    per_example_loss: Callable[[Any, Any], jax.Array]
    make_data: Callable[[np.random.Generator, int], dict[str, np.ndarray]]
    make_optimizer: Callable[[], gradtx.GradientTransformation]


def _classification_data(features: int, classes: int) -> Callable[..., dict[str, np.ndarray]]:
    def make(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        x = rng.normal(size=(n, features)).astype(np.float32)
        teacher = rng.normal(size=(features, classes)).astype(np.float32)
        y = np.argmax(x @ teacher + rng.normal(size=(n, classes)), axis=1).astype(np.int32)
        return {"x": x, "y": y}

    return make


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    # one_hot rather than take_along_axis: the gradient of a gather is a scatter, several
    # times slower on XLA:CPU for 10 classes (for every method alike)
    log_p = jax.nn.log_softmax(logits)
    return -jnp.sum(log_p * jax.nn.one_hot(labels, logits.shape[-1], dtype=log_p.dtype), axis=1)


def _softmax_init(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": (0.01 * rng.normal(size=(64, 10))).astype(np.float32),
        "b": np.zeros((10,), np.float32),
    }


def _softmax_loss(params: Any, batch: Any) -> jax.Array:
    return _cross_entropy(batch["x"] @ params["w"] + params["b"][None, :], batch["y"])


def _mlp_init(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def dense(n_in: int, n_out: int) -> dict[str, np.ndarray]:
        w = rng.normal(size=(n_in, n_out)) * np.sqrt(2.0 / n_in)
        return {"w": w.astype(np.float32), "b": np.zeros((n_out,), np.float32)}

    return {"hidden": dense(784, 256), "out": dense(256, 10)}


def _mlp_loss(params: Any, batch: Any) -> jax.Array:
    h = jax.nn.relu(batch["x"] @ params["hidden"]["w"] + params["hidden"]["b"][None, :])
    logits = h @ params["out"]["w"] + params["out"]["b"][None, :]
    return _cross_entropy(logits, batch["y"])


def _models(quick: bool) -> list[Model]:
    return [
        Model(
            name="softmax regression (64 features, 10 classes)",
            num_examples=4_096 if quick else 16_384,
            batch_size=32,
            optimizer="gradtx.sgd(0.1)",
            target=3.0,
            reps=9 if quick else 25,
            init=_softmax_init,
            per_example_loss=_softmax_loss,
            make_data=_classification_data(64, 10),
            make_optimizer=lambda: gradtx.sgd(0.1),
        ),
        Model(
            name="MLP 784-256-10",
            num_examples=6_000 if quick else 60_000,
            batch_size=128,
            optimizer="gradtx.adam(1e-3)",
            target=1.0,
            reps=5 if quick else 9,
            init=_mlp_init,
            per_example_loss=_mlp_loss,
            make_data=_classification_data(784, 10),
            make_optimizer=lambda: gradtx.adam(1e-3),
        ),
    ]


def _runners(model: Model, seed: int = 0) -> dict[str, Callable[[int], None]]:
    """One `run_epoch(epoch)` per method, each training its own copy of the model."""
    rng = np.random.default_rng(seed)
    host_data = model.make_data(rng, model.num_examples)
    device_data = jax.device_put(host_data)
    params0 = model.init(rng)
    opt = model.make_optimizer()
    n, b = model.num_examples, model.batch_size
    key = jax.random.key(seed)

    def train_step(params: Any, state: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(model.per_example_loss(p, batch)))(
            params
        )
        updates, state = opt.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state, loss

    def scan_step(carry: Any, batch: Any, mask: jax.Array) -> tuple[Any, jax.Array]:
        params, state = carry
        loss, grads = jax.value_and_grad(
            lambda p: gd.masked_mean(model.per_example_loss(p, batch), mask)
        )(params)
        updates, state = opt.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), loss

    step = jax.jit(train_step, donate_argnums=(0, 1))

    def fresh() -> list[Any]:
        params = jax.device_put(params0)
        return [params, opt.init(params)]

    states = {method: fresh() for method in METHODS}

    def host_loop(epoch: int) -> None:
        params, state = states["host loop"]
        perm = np.random.default_rng((seed, epoch)).permutation(n)
        losses = []
        for start in range(0, n, b):
            idx = perm[start : start + b]
            batch = {"x": host_data["x"][idx], "y": host_data["y"][idx]}
            params, state, loss = step(params, state, batch)
            losses.append(loss)
        jax.block_until_ready((params, losses))
        states["host loop"] = [params, state]

    def batches_loop(method: str, permutation: Any) -> Callable[[int], None]:
        def run_epoch(epoch: int) -> None:
            params, state = states[method]
            losses = []
            epoch_key = jax.random.fold_in(key, epoch)
            for batch in gd.batches(epoch_key, device_data, b, permutation=permutation):
                params, state, loss = step(params, state, batch)
                losses.append(loss)
            jax.block_until_ready((params, losses))
            states[method] = [params, state]

        return run_epoch

    def scan(method: str, permutation: Any) -> Callable[[int], None]:
        def run_epoch(epoch: int) -> None:
            carry, losses = gd.scan_epoch(
                scan_step,
                tuple(states[method]),
                device_data,
                jax.random.fold_in(key, epoch),
                b,
                permutation=permutation,
            )
            jax.block_until_ready((carry, losses))
            states[method] = list(carry)

        return run_epoch

    return {
        "host loop": host_loop,
        "batches": batches_loop("batches", jax.random.permutation),
        "batches + feistel": batches_loop("batches + feistel", gd.feistel_permutation),
        "scan_epoch": scan("scan_epoch", jax.random.permutation),
        "scan_epoch + feistel": scan("scan_epoch + feistel", gd.feistel_permutation),
    }


@dataclass
class Timings:
    wall: dict[str, list[float]]  # seconds per epoch, one entry per repetition
    cpu: dict[str, list[float]]  # CPU seconds of this process (all threads) per epoch


def _time_model(model: Model) -> Timings:
    runners = _runners(model)
    for method in METHODS:  # warm-up: compile (full and short last batch)
        runners[method](0)
    timings = Timings({m: [] for m in METHODS}, {m: [] for m in METHODS})
    for rep in range(model.reps):
        shift = rep % len(METHODS)
        for method in METHODS[shift:] + METHODS[:shift]:  # rotate who goes first
            cpu, wall = time.process_time(), time.perf_counter()
            runners[method](rep + 1)
            timings.wall[method].append(time.perf_counter() - wall)
            timings.cpu[method].append(time.process_time() - cpu)
    return timings


def _paired_ratio(times: dict[str, list[float]], method: str) -> float:
    """Median over repetitions of host-loop time / `method` time, taken within each repetition
    (the two ran seconds apart), which cancels most of the load other processes add."""
    return statistics.median(h / t for h, t in zip(times["host loop"], times[method]))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _header(quick: bool) -> list[str]:
    device = jax.devices()[0]
    return [
        "# Epoch benchmark: host loop vs `gradtx.data.batches` vs `gradtx.data.scan_epoch`",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        f"- python {platform.python_version()}, jax {jax.__version__}, "
        f"jaxlib {_version('jaxlib')}, numpy {np.__version__}, gradtx {_version('gradtx')}",
        f"- device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s)",
        f"- mode: {'quick' if quick else 'full'}; after one warm-up epoch per method, the "
        "methods run one epoch each in turn (rotating who goes first); times are medians, "
        "ratios are medians of the ratios within each turn",
        f"- load average when starting: {os.getloadavg()[0]:.2f} (other processes share the "
        "CPUs: compare ratios, not absolute times)",
        "",
    ]


def run(quick: bool = False) -> str:
    """Runs the benchmark and returns the markdown report."""
    lines = _header(quick)
    summary = []
    for model in _models(quick):
        timings = _time_model(model)
        wall, cpu = timings.wall, timings.cpu
        n, b = model.num_examples, model.batch_size
        lines += [
            f"## {model.name}",
            "",
            f"{n:,} examples, batch {b} ({gd.num_batches(n, b)} steps per epoch, last batch "
            f"{n % b or b}), {model.optimizer}; medians of {model.reps} interleaved epochs per "
            "method",
            "",
            "| method | epoch (ms) | min..max (ms) | samples/s | vs host loop | "
            "CPU ms/epoch | vs host loop (CPU) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method in METHODS:
            t = statistics.median(wall[method])
            lines.append(
                f"| {method} | {1e3 * t:.1f} | {1e3 * min(wall[method]):.1f}.."
                f"{1e3 * max(wall[method]):.1f} | {n / t:,.0f} | "
                f"{_paired_ratio(wall, method):.2f}x | "
                f"{1e3 * statistics.median(cpu[method]):.1f} | "
                f"{_paired_ratio(cpu, method):.2f}x |"
            )
        lines.append("")
        for method in ("scan_epoch", "scan_epoch + feistel"):
            ratio = _paired_ratio(wall, method)
            verdict = "met" if ratio >= model.target else "NOT met"
            text = (
                f"{method} / host loop = {ratio:.2f}x samples/s (CPU time: "
                f"{_paired_ratio(cpu, method):.2f}x); target >= {model.target:g}x: {verdict}"
            )
            lines.append(f"- {text}")
            summary.append(f"- {model.name}: {text}")
        lines.append("")
    lines += ["## Summary", "", *summary, ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args = parser.parse_args(argv)
    report = run(quick=args.quick)
    print(report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
