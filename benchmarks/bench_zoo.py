"""The zoo: every optimiser of `zoo.ZOO`, gradtx against optax, step time and compile time.

On the ResNet-50-like tree, each optimiser's two-line step (`update` then `apply_updates`)
under `jax.jit` with params and state donated, for gradtx and for optax, timed in the same
interleaved rounds (`harness.interleaved`); the ratio is the median over rounds of gradtx's
time over optax's. Compile time is `jit(...).lower(...).compile()`, fresh for each.
Targets (issue 11): step ratio <= 1.05, compile ratio <= 1.1.
"""

from __future__ import annotations

import gc
from typing import Any

import bench_step
import harness
import jax
import optax
import trees
import zoo

import gradtx

STEP_TARGET = 1.05
COMPILE_TARGET = 1.10


def _runner(tx: Any, apply_updates: Any, params: Any, grads: Any, extra: dict[str, Any]):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, **extra)
        return apply_updates(params, updates), state

    params = jax.tree.map(lambda x: x.copy(), params)
    # a state may hold the params themselves (Prodigy's, D-Adaptation's initial point):
    # copied, so that donating params and state never donates one buffer twice
    state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tx.init(params))
    return bench_step._jax_runner(step, params, state, grads)


def measure(entry: zoo.Entry, params: Any, grads: Any, rounds: int) -> dict[str, Any]:
    extra = entry.extra(params, grads) if entry.extra is not None else {}
    steps, compile_s = {}, {}
    for name, tx, apply in [
        ("optax", entry.optax(), optax.apply_updates),
        ("gradtx", entry.gradtx(), gradtx.apply_updates),
    ]:
        steps[name], compile_s[name] = _runner(tx, apply, params, grads, extra)
    times = harness.interleaved(steps, rounds, warmup=2)
    del steps
    gc.collect()
    return {
        "median": {k: harness.median(v) for k, v in times.items()},
        "step": harness.paired_ratio(times["gradtx"], times["optax"]),
        "compile": compile_s["gradtx"] / compile_s["optax"],
        "compile_s": compile_s,
    }


# --quick: a few leaves of the shapes a ResNet has, so that every optimiser compiles in a
# fraction of a second (a smoke test of the table; its numbers are not the reference ones).
QUICK_SHAPES = {"conv": (3, 3, 16, 16), "dense": (64, 32), "bias": (32,), "scale": (32,)}


def run(quick: bool) -> tuple[list[str], dict[str, Any]]:
    shapes = QUICK_SHAPES if quick else trees.resnet()
    params = trees.arrays(shapes, seed=0)
    grads = trees.arrays(shapes, seed=1, scale=1e-3)
    rounds = 5 if quick else 30
    results = {entry.name: measure(entry, params, grads, rounds) for entry in zoo.ZOO}
    tree = "quick mode's 4-leaf tree" if quick else "ResNet-50-like tree"
    lines = [
        f"Each optimiser of the zoo on the {tree} ({trees.size(shapes):,} parameters, "
        f"{len(shapes)} leaves), learning rate {zoo.LR}: `update` + `apply_updates` under "
        f"`jax.jit` with donation, gradtx and optax interleaved over {rounds} rounds; step "
        "ratio = median over rounds of gradtx / optax; compile = `lower().compile()` wall "
        f"time. Targets: step <= {STEP_TARGET}, compile <= {COMPILE_TARGET}.",
        "",
    ]
    rows = []
    for name, r in results.items():
        m, c = r["median"], r["compile_s"]
        rows.append(
            [
                f"`{name}`",
                harness.ms(m["optax"]),
                harness.ms(m["gradtx"]),
                f"{r['step']:.3f}x",
                f"{c['optax']:.2f}",
                f"{c['gradtx']:.2f}",
                f"{r['compile']:.2f}x",
            ]
        )
    lines += harness.table(
        ["optimiser", "optax ms", "gradtx ms", "step ratio", "optax compile s",
         "gradtx compile s", "compile ratio"],
        rows,
    )  # fmt: skip
    slow = [n for n, r in results.items() if r["step"] > STEP_TARGET]
    slow_c = [n for n, r in results.items() if r["compile"] > COMPILE_TARGET]
    lines += [
        "",
        f"Step ratio above {STEP_TARGET}: {', '.join(slow) or 'none'}; compile ratio above "
        f"{COMPILE_TARGET}: {', '.join(slow_c) or 'none'}.",
        "",
    ]
    return lines, results


if __name__ == "__main__":  # python benchmarks/bench_zoo.py [--quick]: this section alone
    import sys

    body, _ = run("--quick" in sys.argv[1:])
    print("\n".join(["## 7. The zoo: every optimiser against optax's", "", *harness.environment(),
                     "", *body]))  # fmt: skip
