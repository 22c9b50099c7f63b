"""A full train step (loss, gradient, update) with many small leaves: tree vs grouped.

The model has the `many_leaves` tree's 2,000 weight vectors of 4,096 floats, each a
per-feature scale fitted by least squares to a random target on a batch of 4 (the 2,000
losses are summed): little arithmetic per leaf, as in models with many small tensors (norms,
biases, gains), so the per-leaf cost of the step shows. (Element-wise on purpose: a bank of
2,000 small matmuls takes XLA minutes to compile, whatever the optimiser.) Three jitted
steps, params and state donated:

* optax, tree: `jax.grad` on the tree, `optax.adam`, `optax.apply_updates`;
* gradtx, tree: the same gradients, `gradtx.apply_step(gradtx.adam(...))`;
* gradtx, grouped: params held by `gradtx.group`, the model reads `gradtx.ungroup(params)`,
  so the gradients come out grouped, then the same `apply_step`.

The grouped and tree gradtx runs start from the same numbers and must stay equal.
"""

from __future__ import annotations

import gc
from typing import Any

import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import trees

import gradtx
from gradtx import fused, grouped

LR = 1e-3
BATCH = 4


def _loss(params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
    x, y = batch["x"], batch["y"]
    losses = [jnp.mean((x * w[None, :] - y) ** 2) for w in params.values()]
    return jnp.sum(jnp.stack(losses))


def _steps(shapes) -> dict[str, tuple[Any, Any, Any]]:
    """name -> (step function, params, optimiser state)."""
    opt_optax, opt = optax.adam(LR), gradtx.adam(LR)

    def optax_step(params, state, batch):
        loss, grads = jax.value_and_grad(_loss)(params, batch)
        updates, state = opt_optax.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    def tree_step(params, state, batch):
        loss, grads = jax.value_and_grad(_loss)(params, batch)
        params, state = fused.apply_step(opt, grads, state, params)
        return params, state, loss

    def grouped_step(params, state, batch):
        loss, grads = jax.value_and_grad(lambda p: _loss(grouped.ungroup(p), batch))(params)
        params, state = fused.apply_step(opt, grads, state, params)
        return params, state, loss

    out = {}
    for name, step, tx, group in [
        ("optax, tree", optax_step, opt_optax, False),
        ("gradtx apply_step, tree", tree_step, opt, False),
        ("gradtx apply_step, grouped", grouped_step, opt, True),
    ]:
        params = trees.arrays(shapes, seed=0, scale=0.1)
        if group:
            params = grouped.group(params)
        out[name] = (step, params, tx.init(params))
    return out


def run(quick: bool) -> tuple[list[str], dict[str, Any]]:
    rounds = 3 if quick else 15
    shapes = trees.many_leaves(quick)
    if quick:
        shapes = dict(list(shapes.items())[:20])
    key = jax.random.key(7)
    batch = {
        "x": jax.random.normal(key, (BATCH, 4096), jnp.float32),
        "y": jax.random.normal(jax.random.fold_in(key, 1), (BATCH, 4096), jnp.float32),
    }
    runners, compile_s, carries = {}, {}, {}
    for name, (step, params, state) in _steps(shapes).items():
        compiled, compile_s[name] = harness.timed(
            lambda step=step, params=params, state=state: (
                jax.jit(step, donate_argnums=(0, 1)).lower(params, state, batch).compile()
            )
        )
        carries[name] = carry = [params, state, None]

        def run_step(compiled=compiled, carry=carry):
            carry[0], carry[1], carry[2] = compiled(carry[0], carry[1], batch)
            jax.block_until_ready(carry)

        runners[name] = run_step
    times = harness.interleaved(runners, rounds, warmup=2)
    median = {k: harness.median(v) for k, v in times.items()}
    # Every runner took the same number of steps from the same start on the same batch.
    tree_params = carries["gradtx apply_step, tree"][0]
    grouped_params = grouped.ungroup(carries["gradtx apply_step, grouped"][0])
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(tree_params), jax.tree.leaves(grouped_params))
    )
    vs_optax = {k: harness.paired_ratio(times[k], times["optax, tree"]) for k in runners}
    rows = [
        [
            name,
            harness.ms(median[name]),
            harness.x(vs_optax[name]),
            harness.x(1 / vs_optax[name]),
            f"{compile_s[name]:.2f}",
            harness.ratio(compile_s[name], compile_s["optax, tree"]),
        ]
        for name in runners
    ]
    lines = [
        f"{len(shapes):,} weight vectors of 4,096 ({trees.size(shapes):,} parameters), batch "
        f"{BATCH}, Adam; medians of {rounds} interleaved rounds (ratios: medians of the per-round "
        "ratios).",
        "",
        *harness.table(
            [
                "train step",
                "step (ms)",
                "vs optax",
                "speed-up over optax",
                "compile (s)",
                "compile vs optax",
            ],
            rows,
        ),
        "",
        f"Grouped vs tree gradtx after the same {rounds + 2} steps: max |difference| of the "
        f"parameters = {diff:.3g} (0 means bit for bit).",
        "",
    ]
    del runners, carries
    gc.collect()
    return lines, {"median": median, "vs optax": vs_optax, "compile": compile_s, "max_diff": diff}
