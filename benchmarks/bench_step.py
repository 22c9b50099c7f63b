"""Optimiser step time and compile time: gradtx vs optax vs torch.optim, on four trees.

For each tree and optimiser (sgd with momentum 0.9, rmsprop, adam, adamw with weight decay
1e-4; learning rate 1e-3) the contenders are, each on its own copy of the parameters:

* optax: `u, s = tx.update(g, s, p); p = optax.apply_updates(p, u)` under `jax.jit`, params
  and state donated;
* gradtx update+apply: the same two lines with gradtx's optimiser;
* gradtx apply_step: `gradtx.apply_step(tx, g, s, p)` (one pass per leaf through the native
  kernel where it is built; the same two lines otherwise);
* gradtx grouped: `apply_step` on `gradtx.group(params)`, gradients grouped the same way;
* torch.optim (if installed): `foreach=False`, `foreach=True`, `fused=True` where the optimiser
  has it, and the fused one again with 1 thread (2 threads collapse when another process holds
  a core). `--quick` runs only the 1-thread one.

For Adam two more steps run in the same rounds: an in-place triad over as many floats as the
tree (its bandwidth is the roofline each Adam step is measured against, at 28 bytes per
parameter), and a jitted identity that takes and returns the Adam params and state, donated:
the cost of passing the tree's buffers through `jit`, which every step on the tree pays.
Compile time is `jit(...).lower(...).compile()`, wall clock, fresh for every contender.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import bench_roofline
import harness
import jax
import optax
import trees

import gradtx
from gradtx import fused, grouped

LR = 1e-3
WEIGHT_DECAY = 1e-4
ADAM_BYTES = 28

OPTIMIZERS: dict[str, dict[str, Callable[..., Any]]] = {
    "sgd (momentum 0.9)": {
        "gradtx": lambda: gradtx.sgd(LR, momentum=0.9),
        "optax": lambda: optax.sgd(LR, momentum=0.9),
        "torch": lambda torch, ps, **kw: torch.optim.SGD(ps, lr=LR, momentum=0.9, **kw),
    },
    "rmsprop": {
        "gradtx": lambda: gradtx.rmsprop(LR, decay=0.9, eps=1e-8),
        "optax": lambda: optax.rmsprop(LR, decay=0.9, eps=1e-8),
        "torch": lambda torch, ps, **kw: torch.optim.RMSprop(ps, lr=LR, alpha=0.9, eps=1e-8, **kw),
    },
    "adam": {
        "gradtx": lambda: gradtx.adam(LR),
        "optax": lambda: optax.adam(LR),
        "torch": lambda torch, ps, **kw: torch.optim.Adam(ps, lr=LR, **kw),
    },
    "adamw": {
        "gradtx": lambda: gradtx.adamw(LR, weight_decay=WEIGHT_DECAY),
        "optax": lambda: optax.adamw(LR, weight_decay=WEIGHT_DECAY),
        "torch": lambda torch, ps, **kw: torch.optim.AdamW(
            ps, lr=LR, weight_decay=WEIGHT_DECAY, **kw
        ),
    },
}

JAX_CONTENDERS = ["optax", "gradtx update+apply", "gradtx apply_step", "gradtx grouped"]
TORCH_VARIANTS = {
    "torch foreach=False": ({"foreach": False}, 2),
    "torch foreach=True": ({"foreach": True}, 2),
    "torch fused": ({"fused": True}, 2),
    "torch fused, 1 thread": ({"fused": True}, 1),
}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _two_line_step(tx, apply_updates):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    return step


def _apply_step(tx):
    def step(params, state, grads):
        return fused.apply_step(tx, grads, state, params)

    return step


def _jax_runner(step, params, state, grads) -> tuple[Callable[[], None], float]:
    """A zero-argument step that carries its own params and state, and its compile time."""
    compiled, seconds = harness.timed(
        lambda: jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    )
    carry = [params, state]

    def run():
        carry[0], carry[1] = compiled(carry[0], carry[1], grads)
        jax.block_until_ready(carry)

    return run, seconds


def _torch_runner(torch, make, shapes, kwargs, threads) -> Callable[[], None] | None:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes.values()]
    for p in params:
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen)
    try:
        opt = make(torch, params, **kwargs)
        torch.set_num_threads(threads)
        opt.step()
    except (RuntimeError, ValueError, TypeError):
        return None  # e.g. no fused CPU kernel for this optimiser

    def run():
        torch.set_num_threads(threads)
        opt.step()

    return run


def measure(shapes, opt_name: str, rounds: int, quick: bool = False) -> dict[str, Any]:
    """Step and compile times of every contender for one tree and optimiser."""
    spec = OPTIMIZERS[opt_name]
    params = trees.arrays(shapes, seed=0)
    grads = trees.arrays(shapes, seed=1, scale=1e-3)
    grads_grouped = grouped.group(grads)
    steps: dict[str, Callable[[], None]] = {}
    compile_s: dict[str, float] = {}
    tx_optax, tx = spec["optax"](), spec["gradtx"]()
    for name, step, p, g, t in [
        ("optax", _two_line_step(tx_optax, optax.apply_updates), params, grads, tx_optax),
        ("gradtx update+apply", _two_line_step(tx, gradtx.apply_updates), params, grads, tx),
        ("gradtx apply_step", _apply_step(tx), params, grads, tx),
        ("gradtx grouped", _apply_step(tx), grouped.group(params), grads_grouped, tx),
    ]:
        p = jax.tree.map(lambda x: x.copy(), p)
        steps[name], compile_s[name] = _jax_runner(step, p, t.init(p), g)
    del params
    torch = _torch()
    if torch is not None:
        for name, (kwargs, threads) in TORCH_VARIANTS.items():
            if quick and threads > 1:
                continue  # 2 torch threads collapse on a busy 2-core machine: too slow for CI
            runner = _torch_runner(torch, spec["torch"], shapes, kwargs, threads)
            if runner is not None:
                steps[name] = runner
    n = trees.size(shapes)
    if opt_name == "adam":
        steps["triad"] = bench_roofline.triad_step(n)
        # What any jitted step on this tree pays before arithmetic: passing every buffer in
        # and out (params and state donated, as in the steps above).
        params = trees.arrays(shapes, seed=0)
        steps["jit identity"], _ = _jax_runner(
            lambda p, s, g: (p, s), params, tx.init(params), grads
        )
        del params
    times = harness.interleaved(steps, rounds, warmup=2)
    if torch is not None:
        torch.set_num_threads(2)
    result = {
        "n": n,
        "leaves": len(shapes),
        "times": times,
        "median": {k: harness.median(v) for k, v in times.items()},
        "compile": compile_s,
    }
    del steps
    gc.collect()
    return result


def _best_torch(r: dict[str, Any]) -> str | None:
    """The torch variant with the lowest median step time."""
    found = [(t, k) for k, t in r["median"].items() if k.startswith("torch")]
    return min(found)[1] if found else None


def _ratio(r: dict[str, Any], a: str, b: str | None) -> float | None:
    """Step time of a over b: the median of the ratios within each round."""
    if b is None or a not in r["times"] or b not in r["times"]:
        return None
    return harness.paired_ratio(r["times"][a], r["times"][b])


def _fraction(r: dict[str, Any], key: str) -> float | None:
    """An Adam step's bandwidth (28 B/param) over the triad's (12 B/float), paired by round."""
    ratio = _ratio(r, "triad", key)
    return None if ratio is None else ADAM_BYTES / bench_roofline.TRIAD_BYTES * ratio


QUICK_OPTIMIZERS = ["sgd (momentum 0.9)", "adam"]


def run(quick: bool) -> tuple[list[str], dict[str, Any]]:
    rounds = 3 if quick else 15
    results: dict[str, dict[str, Any]] = {}
    for tree_name, make_tree in trees.TREES.items():
        shapes = make_tree(quick)
        results[tree_name] = {}
        for opt_name in QUICK_OPTIMIZERS if quick else OPTIMIZERS:
            results[tree_name][opt_name] = measure(shapes, opt_name, rounds, quick)
    return report(results, rounds, quick), results


def report(results: dict[str, Any], rounds: int, quick: bool) -> list[str]:
    native = "built and used" if fused.native_available() else "NOT available (pure JAX)"
    torch = _torch()
    lines = [
        f"Milliseconds per step: medians of {rounds} interleaved rounds (after 2 warm-up "
        "rounds). Ratios are medians of the per-round ratios (each round runs every contender "
        f"once, back to back). Native kernel for `apply_step`: {native}. "
        + (
            f"torch {torch.__version__}, 2 threads unless noted; torch best = its fastest "
            "variant here (all are listed below)."
            if torch
            else "torch is not installed: the torch columns are skipped "
            "(`pip install torch==2.13.0`, the `bench` extra)."
        ),
        "",
    ]
    if quick:
        lines += ["**Quick mode: small trees, few rounds; not the reference numbers.**", ""]
    lines += ["### Step time", ""]
    for tree_name, per_opt in results.items():
        first = next(iter(per_opt.values()))
        leaves = f"{first['leaves']:,} leaves" if first["leaves"] > 1 else "1 leaf"
        lines += [f"**{tree_name}**: {first['n']:,} parameters in {leaves}", ""]
        rows = []
        for opt_name, r in per_opt.items():
            m, best = r["median"], _best_torch(r)
            best_text = f"{harness.ms(m[best])} ({best.removeprefix('torch ')})" if best else "n/a"
            rows.append(
                [opt_name]
                + [harness.ms(m[k]) for k in JAX_CONTENDERS]
                + [best_text]
                + [
                    harness.x(_ratio(r, k, "optax"))
                    for k in ["gradtx update+apply", "gradtx apply_step", "gradtx grouped"]
                ]
                + [harness.x(_ratio(r, k, best)) for k in ["gradtx apply_step", "gradtx grouped"]]
            )
        lines += harness.table(
            [
                "optimiser",
                *JAX_CONTENDERS,
                "torch best",
                "update+apply / optax",
                "apply_step / optax",
                "grouped / optax",
                "apply_step / torch",
                "grouped / torch",
            ],
            rows,
        )
        lines.append("")
    if torch:
        lines += ["### torch.optim variants (ms per step)", ""]
        rows = []
        for tree_name, per_opt in results.items():
            for opt_name, r in per_opt.items():
                m = r["median"]
                rows.append([tree_name, opt_name] + [harness.ms(m.get(k)) for k in TORCH_VARIANTS])
        lines += harness.table(["tree", "optimiser", *TORCH_VARIANTS], rows, "ll" + "r" * 4)
        lines += ["", "n/a: the variant does not run (or was not run) for this optimiser.", ""]
    adam_keys = [*JAX_CONTENDERS, "torch fused", "torch fused, 1 thread"]
    lines += [
        "### Adam against the roofline",
        "",
        "Fraction of the in-place triad's bandwidth (the triad runs in the same rounds) that "
        f"each Adam step reaches, counting {ADAM_BYTES} bytes per parameter.",
        "",
    ]
    rows = []
    for tree_name, per_opt in results.items():
        r = per_opt["adam"]
        triad_gbs = bench_roofline.TRIAD_BYTES * r["n"] / r["median"]["triad"] / 1e9
        fractions = [_fraction(r, k) for k in adam_keys]
        rows.append(
            [tree_name, f"{triad_gbs:.1f}"]
            + ["n/a" if f is None else f"{f:.2f}" for f in fractions]
        )
    lines += harness.table(["tree", "triad GB/s", *adam_keys], rows)
    lines += [
        "",
        "Passing the tree through `jit` (the identity step, params and state donated) against "
        "the Adam steps, ms:",
        "",
    ]
    rows = []
    for tree_name, per_opt in results.items():
        m = per_opt["adam"]["median"]
        rows.append(
            [tree_name]
            + [harness.ms(m[k]) for k in ["jit identity", "gradtx grouped", "gradtx apply_step"]]
            + [harness.ms(m.get("torch fused"))]
        )
    lines += harness.table(
        ["tree", "jit identity", "gradtx grouped", "gradtx apply_step", "torch fused"], rows
    )
    lines += ["", "### Compile time (seconds, `lower` + `compile`)", ""]
    rows = []
    for tree_name, per_opt in results.items():
        for opt_name, r in per_opt.items():
            c = r["compile"]
            rows.append(
                [tree_name, opt_name]
                + [f"{c[k]:.2f}" for k in JAX_CONTENDERS]
                + [harness.ratio(c[k], c["optax"]) for k in JAX_CONTENDERS[1:]]
            )
    lines += harness.table(
        [
            "tree",
            "optimiser",
            *JAX_CONTENDERS,
            "update+apply / optax",
            "apply_step / optax",
            "grouped / optax",
        ],
        rows,
        "ll" + "r" * 7,
    )
    lines.append("")
    return lines


def summary_numbers(results: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """The ratios the targets are judged on, per (tree, optimiser)."""
    out: dict[Any, dict[str, Any]] = {}
    for tree_name, per_opt in results.items():
        for opt_name, r in per_opt.items():
            best, c = _best_torch(r), r["compile"]
            out[(tree_name, opt_name)] = {
                "apply_step/optax": _ratio(r, "gradtx apply_step", "optax"),
                "update+apply/optax": _ratio(r, "gradtx update+apply", "optax"),
                "grouped/optax": _ratio(r, "gradtx grouped", "optax"),
                "apply_step/torch": _ratio(r, "gradtx apply_step", best),
                "grouped/torch": _ratio(r, "gradtx grouped", best),
                "torch best": best,
                "compile grouped/optax": c["gradtx grouped"] / c["optax"],
                "median": r["median"],
                "adam fraction": (
                    {k: _fraction(r, k) for k in [*JAX_CONTENDERS, "torch fused"]}
                    if "triad" in r["times"]
                    else None
                ),
            }
    return out
