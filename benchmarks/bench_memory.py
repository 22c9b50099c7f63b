"""Memory: optimiser-state bytes per parameter, and the peak memory of a step.

* State: the bytes of every array in `tx.init(params)` over the number of parameters, from
  `jax.eval_shape` (nothing is allocated).
* Peak: each configuration runs in a fresh process on the transformer-like tree. After
  compiling and one warm-up step the process's peak resident size is reset (Linux
  `/proc/self/clear_refs`); it then runs three steps, and the table reports the live JAX
  arrays (params, grads, state), the resident size before the steps (those arrays, the
  runtime, and memory the allocator keeps after freeing it) and the peak during them. Without
  donation each step allocates new params and state before the old ones are freed.

Run as `python bench_memory.py --child CONFIG [--quick]` it measures one configuration and
prints JSON; `run(quick)` drives the children.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmark this checkout
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import gradtx  # noqa: E402
from gradtx import fused, grouped  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import trees  # noqa: E402

LR = 1e-3
TREE = "transformer-like tree"
CONFIGS = {
    "optax.adam, update+apply": ("optax", True),
    "optax.adam, update+apply, no donation": ("optax", False),
    "gradtx.adam, update+apply": ("gradtx", True),
    "gradtx.adam, update+apply, no donation": ("gradtx", False),
    "gradtx.adam, apply_step": ("apply_step", True),
    "gradtx.adam, apply_step, no donation": ("apply_step", False),
    "gradtx.adam, apply_step, grouped": ("grouped", True),
}

QUICK_CONFIGS = ["gradtx.adam, apply_step", "gradtx.adam, apply_step, no donation"]


def _optimizers() -> dict[str, tuple[Any, Any]]:
    return {
        "sgd (momentum 0.9)": (gradtx.sgd(LR, momentum=0.9), optax.sgd(LR, momentum=0.9)),
        "rmsprop": (gradtx.rmsprop(LR), optax.rmsprop(LR)),
        "adam": (gradtx.adam(LR), optax.adam(LR)),
        "adamw": (gradtx.adamw(LR), optax.adamw(LR)),
        "adam, mu_dtype=bfloat16": (
            gradtx.adam(LR, mu_dtype="bfloat16"),
            optax.adam(LR, mu_dtype="bfloat16"),
        ),
    }


def _state_bytes(tx, shapes) -> float:
    params = {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
    state = jax.eval_shape(tx.init, params)
    total = sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    return float(total) / trees.size(shapes)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(config: str, quick: bool) -> dict[str, Any]:
    """Measures one configuration in this (fresh) process."""
    kind, donate = CONFIGS[config]
    shapes = trees.TREES[TREE](quick)
    params = trees.arrays(shapes, seed=0)
    grads = trees.arrays(shapes, seed=1, scale=1e-3)
    if kind == "grouped":
        params, grads = grouped.group(params), grouped.group(grads)
    tx = optax.adam(LR) if kind == "optax" else gradtx.adam(LR)
    apply_updates = optax.apply_updates if kind == "optax" else gradtx.apply_updates

    def two_line(p, s, g):
        u, s = tx.update(g, s, p)
        return apply_updates(p, u), s

    def one_pass(p, s, g):
        return fused.apply_step(tx, g, s, p)

    step = two_line if kind in ("optax", "gradtx") else one_pass
    f = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    state = tx.init(params)
    params, state = f(params, state, grads)
    jax.block_until_ready((params, state))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current
        reset = True
    except OSError:
        reset = False
    before = _status_kib("VmRSS")
    live = sum(x.nbytes for x in jax.live_arrays())
    for _ in range(3):
        params, state = f(params, state, grads)
        jax.block_until_ready((params, state))
    peak = _status_kib("VmHWM")
    return {
        "live_bytes": live,
        "before_kib": before,
        "peak_kib": peak,
        "reset": reset,
        "n": trees.size(shapes),
    }


def _run_child(config: str, quick: bool) -> dict[str, Any] | str:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", config]
    command += ["--quick"] if quick else []
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        return "timed out"
    if out.returncode != 0:
        return f"failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> tuple[list[str], dict[str, Any]]:
    shapes = trees.TREES[TREE](quick)
    rows = []
    for name, (gtx, otx) in _optimizers().items():
        g, o = _state_bytes(gtx, shapes), _state_bytes(otx, shapes)
        rows.append([name, f"{g:.2f}", f"{o:.2f}"])
    lines = [
        "#### Optimiser state, bytes per parameter (float32 params)",
        "",
        *harness.table(["optimiser", "gradtx", "optax"], rows),
        "",
        f"#### Peak resident memory of an Adam step ({TREE}, "
        f"{trees.size(shapes):,} parameters, {4 * trees.size(shapes) / 2**20:.0f} MiB per "
        "float32 copy)",
        "",
    ]
    results: dict[str, Any] = {}
    rows = []
    for config in QUICK_CONFIGS if quick else CONFIGS:
        r = _run_child(config, quick)
        results[config] = r
        if isinstance(r, str):
            rows.append([config, r, "", "", "", ""])
            continue
        extra = (r["peak_kib"] - r["before_kib"]) * 1024
        rows.append(
            [
                config,
                f"{r['live_bytes'] / 2**20:.0f}",
                f"{r['before_kib'] / 1024:.0f}",
                f"{r['peak_kib'] / 1024:.0f}",
                f"{extra / 2**20:.0f}",
                f"{extra / r['n']:.1f}",
            ]
        )
    lines += harness.table(
        [
            "configuration",
            "live arrays (MiB)",
            "resident before steps (MiB)",
            "peak during steps (MiB)",
            "peak - before (MiB)",
            "peak - before (bytes/param)",
        ],
        rows,
    )
    if any(isinstance(r, dict) and not r["reset"] for r in results.values()):
        lines += ["", "(peak not reset: it includes compilation)"]
    lines.append("")
    return lines, results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one memory configuration (internal)")
    parser.add_argument("--child", choices=list(CONFIGS), required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(child(args.child, args.quick)))
