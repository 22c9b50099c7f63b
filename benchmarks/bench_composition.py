"""Composition costs nothing once compiled: Adam from the pieces vs fused vs optax.

Three Adams, each `u, s = tx.update(g, s, p); p = apply_updates(p, u)` under `jax.jit` with
params and state donated, in the same interleaved rounds:

* composed: `chain(scale_by_adam_composed(), scale_by_learning_rate(lr))`, i.e.
  `divide(chain(ema, bias_correction), chain(square, ema, bias_correction, add_constant, sqrt,
  add_constant))`;
* fused: `gradtx.adam(lr)` = `chain(scale_by_adam(), scale_by_learning_rate(lr))`;
* `optax.adam(lr)`.

The target is composed / fused <= 1.05 in step time.
"""

from __future__ import annotations

import gc
from typing import Any

import harness
import jax
import optax
import trees

import gradtx

LR = 1e-3
TARGET = 1.05
TREES = ["16M leaf", "ResNet-50-like tree", "transformer-like tree"]


def _adams() -> dict[str, Any]:
    composed = gradtx.chain(gradtx.scale_by_adam_composed(), gradtx.scale_by_learning_rate(LR))
    return {
        "composed": (composed, gradtx.apply_updates),
        "fused": (gradtx.adam(LR), gradtx.apply_updates),
        "optax.adam": (optax.adam(LR), optax.apply_updates),
    }


def measure(shapes, rounds: int) -> dict[str, Any]:
    grads = trees.arrays(shapes, seed=1, scale=1e-3)
    steps, compile_s = {}, {}
    for name, (tx, apply_updates) in _adams().items():

        def step(p, s, g, tx=tx, apply_updates=apply_updates):
            u, s = tx.update(g, s, p)
            return apply_updates(p, u), s

        params = trees.arrays(shapes, seed=0)
        state = tx.init(params)
        compiled, compile_s[name] = harness.timed(
            lambda step=step, params=params, state=state: (
                jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
            )
        )
        carry = [params, state]

        def run(compiled=compiled, carry=carry):
            carry[0], carry[1] = compiled(carry[0], carry[1], grads)
            jax.block_until_ready(carry)

        steps[name] = run
    times = harness.interleaved(steps, rounds, warmup=2)
    del steps
    gc.collect()
    return {
        "median": {k: harness.median(v) for k, v in times.items()},
        "composed/fused": harness.paired_ratio(times["composed"], times["fused"]),
        "fused/optax": harness.paired_ratio(times["fused"], times["optax.adam"]),
        "compile": compile_s,
    }


def run(quick: bool) -> tuple[list[str], dict[str, Any]]:
    rounds = 3 if quick else 31
    names = TREES[:2] if quick else TREES
    results = {name: measure(trees.TREES[name](quick), rounds) for name in names}
    rows = []
    for name, r in results.items():
        m, c = r["median"], r["compile"]
        rows.append(
            [
                name,
                harness.ms(m["composed"]),
                harness.ms(m["fused"]),
                harness.ms(m["optax.adam"]),
                harness.x(r["composed/fused"]),
                harness.x(r["fused/optax"]),
                f"{c['composed']:.2f}",
                f"{c['fused']:.2f}",
                f"{c['optax.adam']:.2f}",
            ]
        )
    lines = [
        f"Step time in ms (medians of {rounds} interleaved rounds; ratios are medians of the "
        f"per-round ratios) and compile time in seconds; target composed / fused <= {TARGET}.",
        "",
        *harness.table(
            [
                "tree",
                "composed",
                "fused",
                "optax.adam",
                "composed / fused",
                "fused / optax",
                "compile composed (s)",
                "compile fused (s)",
                "compile optax (s)",
            ],
            rows,
        ),
        "",
    ]
    return lines, results
