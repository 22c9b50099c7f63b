"""gradtx's benchmark suite: one command, one report.

    python benchmarks/run.py [--quick] [--out benchmarks/RESULTS.md]

Sections: the roofline (measured memory bandwidth), optimiser step time against optax and
torch.optim on four trees, compile time, Adam composed from pieces vs fused, memory, a full
train step with grouped parameters, and the epoch benchmark (host loop vs `batches` vs
`scan_epoch`). The report ends with each target of the benchmark issue, met or missed, with
its number. `--quick` runs small versions of everything in about a minute (a smoke test; its
numbers are not the reference ones). torch is optional (`pip install torch==2.13.0`, the
`bench` extra): without it the torch columns are skipped and the report says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "gradtx" / "__init__.py").is_file() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: benchmark this checkout's gradtx

import bench_composition  # noqa: E402
import bench_memory  # noqa: E402
import bench_roofline  # noqa: E402
import bench_step  # noqa: E402
import bench_train  # noqa: E402
import bench_zoo  # noqa: E402
import harness  # noqa: E402

LARGE = ["16M leaf", "ResNet-50-like tree", "transformer-like tree"]
MANY = "2,000 x 4,096 leaves"


def _epochs(quick: bool) -> list[str]:
    try:
        import bench_epochs
    except ImportError as err:
        return [f"The epoch benchmark (`benchmarks/bench_epochs.py`) is not available: {err}.", ""]
    report = bench_epochs.run(quick)
    # Nest its headings under this section's.
    return [("###" + line[1:] if line.startswith("#") else line) for line in report.splitlines()]


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}x"


def closing_note(
    step: dict[str, Any], composition: dict[str, Any], train: dict[str, Any], quick: bool
) -> list[str]:
    """Each target of the issue with its number, from this run's measurements.

    gradtx has two fast steps: `apply_step` on the parameter tree (a drop-in for update +
    apply_updates) and `apply_step` on `group`ed parameters (one buffer per dtype). Each
    target is judged for both.
    """
    s = bench_step.summary_numbers(step)
    opts = list(next(iter(step.values())))
    lines = ["## Closing note: the targets", ""]
    if quick:
        lines += ["(Quick mode: small trees; the verdicts below are not the reference ones.)", ""]
    lines += [
        "Each target is judged for gradtx's two fast steps: `apply_step` on the parameter tree "
        "(a drop-in for `update` + `apply_updates`) and `apply_step` on grouped parameters "
        "(`gradtx.group`: one buffer per dtype, the model reads `gradtx.ungroup(params)`).",
        "",
    ]

    def verdicts(tree_ok: bool | None, grouped_ok: bool | None) -> str:
        return f"grouped {_verdict(grouped_ok)}, tree {_verdict(tree_ok)}"

    def ratios(tree: str, key: str) -> str:
        return ", ".join(f"{o} {_x(s[(tree, o)][key])}" for o in opts)

    for tree, limit in zip(LARGE, [1.00, 0.95, 0.95]):
        tree_r = [s[(tree, o)]["apply_step/optax"] for o in opts]
        grouped_r = [s[(tree, o)]["grouped/optax"] for o in opts]
        lines.append(
            f"- gradtx <= {limit:.2f}x optax's step on the {tree}, every optimiser — "
            f"{verdicts(max(tree_r) <= limit, max(grouped_r) <= limit)}: grouped "
            f"{ratios(tree, 'grouped/optax')}; tree {ratios(tree, 'apply_step/optax')}"
        )
    fr = {t: s[(t, "adam")]["adam fraction"] for t in LARGE}
    lines.append(
        "- Adam at >= 0.80 of the in-place triad's bandwidth (same rounds) — "
        + verdicts(
            min(fr[t]["gradtx apply_step"] for t in LARGE) >= 0.80,
            min(fr[t]["gradtx grouped"] for t in LARGE) >= 0.80,
        )
        + ": "
        + "; ".join(
            f"{t} grouped {fr[t]['gradtx grouped']:.2f}, tree {fr[t]['gradtx apply_step']:.2f} "
            f"(optax {fr[t]['optax']:.2f}"
            + (f", torch fused {fr[t]['torch fused']:.2f}" if fr[t]["torch fused"] else "")
            + ")"
            for t in LARGE
        )
    )
    speed = [s[(MANY, o)]["grouped/optax"] for o in opts]
    lines.append(
        f"- {MANY}: grouped >= 3x faster than optax per step — {_verdict(max(speed) <= 1 / 3)}: "
        + ", ".join(f"{o} {1 / r:.1f}x faster" for o, r in zip(opts, speed))
        + f" (tree `apply_step`: {ratios(MANY, 'apply_step/optax')} of optax's time)"
    )
    comp = [s[(MANY, o)]["compile grouped/optax"] for o in opts]
    lines.append(
        f"- {MANY}: grouped compile time <= 0.1x optax's — {_verdict(max(comp) <= 0.1)}: "
        + ", ".join(f"{o} {r:.3f}x" for o, r in zip(opts, comp))
    )
    lines.append(
        f"  - in a full train step (loss, grad, update) on the {MANY}: grouped gradtx "
        f"{1 / train['vs optax']['gradtx apply_step, grouped']:.1f}x faster than optax on the "
        f"tree; grouped and tree gradtx parameters differ by at most {train['max_diff']:.3g}"
    )
    trees_all = [*LARGE, MANY]
    adam = {t: s[(t, "adam")] for t in trees_all}
    if any(adam[t]["grouped/torch"] is None for t in trees_all):
        lines.append("- faster than torch.optim's best CPU Adam on every tree — n/a: no torch")
    else:
        lines.append(
            "- faster than torch.optim's best CPU Adam on every tree (gradtx / torch < 1) — "
            + verdicts(
                max(adam[t]["apply_step/torch"] for t in trees_all) < 1.0,
                max(adam[t]["grouped/torch"] for t in trees_all) < 1.0,
            )
            + ": "
            + "; ".join(
                f"{t} grouped {_x(adam[t]['grouped/torch'])}, tree "
                f"{_x(adam[t]['apply_step/torch'])}"
                for t in trees_all
            )
        )
    cs = {t: r["composed/fused"] for t, r in composition.items()}
    lines.append(
        "- Adam composed from the pieces <= 1.05x fused `scale_by_adam` — "
        f"{_verdict(max(cs.values()) <= bench_composition.TARGET)}: "
        + ", ".join(f"{t} {_x(r)}" for t, r in cs.items())
    )
    lines += ["", "Where a target is missed or tied, the measurements that bound it:", ""]
    lines += _limits(s, adam, fr, opts)
    lines.append("")
    return lines


def _limits(s: dict, adam: dict[str, Any], fractions: dict[str, Any], opts: list) -> list[str]:
    """For each miss, the numbers that explain it (from this run)."""
    lines = []
    for t, a in adam.items():
        m = a["median"]
        close = a["grouped/torch"] is not None and a["grouped/torch"] >= 0.97
        if close and t in fractions:
            f = fractions[t]
            lines.append(
                f"- {t}, grouped vs torch ({_x(a['grouped/torch'])}): a tie. gradtx's kernel and "
                "torch's fused Adam both make one pass over memory (28 bytes/parameter) and "
                f"reach {f['gradtx grouped']:.2f} and {f['torch fused']:.2f} of the in-place "
                "triad's bandwidth: both at the memory roofline (above the triad, which keeps "
                "fewer memory streams in flight than an Adam pass). No single-pass update moves "
                "fewer bytes. What separates them is within run-to-run spread (a few percent) "
                f"and of the size of JAX's own dispatch of a step ({harness.ms(m['jit identity'])}"
                f" ms for the jitted identity on this tree, of {harness.ms(m['gradtx grouped'])}"
                " ms)."
            )
        tree_misses = t != LARGE[0] and (
            (a["apply_step/torch"] is not None and a["apply_step/torch"] >= 1.0)
            or any(s[(t, o)]["apply_step/optax"] > 0.95 for o in opts)
            or (t in fractions and fractions[t]["gradtx apply_step"] < 0.80)
        )
        if tree_misses:
            lines.append(
                f"- {t}, tree `apply_step`: a jitted identity that takes and returns the same "
                f"params and state (donated) costs {harness.ms(m['jit identity'])} ms in these "
                f"rounds; the Adam step on the tree takes {harness.ms(m['gradtx apply_step'])} ms "
                f"and on grouped parameters (the same kernel, same bytes) "
                f"{harness.ms(m['gradtx grouped'])} ms. That per-buffer cost of JAX's dispatch "
                "is paid by every step that keeps each leaf in its own buffer, optax's included; "
                "it is what `gradtx.group` removes."
            )
    return lines or ["- (none)"]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)
    quick = args.quick
    start, load_before = time.perf_counter(), harness.load()
    sections: list[str] = []

    def section(title: str, module_run) -> Any:
        t0 = time.perf_counter()
        body, results = module_run(quick)
        sections.extend([f"## {title}", "", *body])
        print(f"[{time.perf_counter() - t0:6.1f} s] {title}", file=sys.stderr, flush=True)
        return results

    section("1. Roofline: memory bandwidth", bench_roofline.run)
    step = section("2-3. Optimiser step time and compile time", bench_step.run)
    composition = section("4. Composition: Adam from the pieces", bench_composition.run)
    section("5. Memory", bench_memory.run)
    train = section("Full train step with grouped parameters", bench_train.run)
    t0 = time.perf_counter()
    sections.extend(["## 6. Epochs", "", *_epochs(quick), ""])
    print(f"[{time.perf_counter() - t0:6.1f} s] 6. Epochs", file=sys.stderr, flush=True)
    section("7. The zoo: every optimiser against optax's", bench_zoo.run)
    elapsed = time.perf_counter() - start
    head = [
        "# gradtx benchmark results",
        "",
        "Produced by `python benchmarks/run.py" + (" --quick" if quick else "") + "` in one "
        f"run of {elapsed / 60:.1f} minutes.",
        "",
        *harness.environment(),
        f"- load average (1 / 5 / 15 min): {load_before} at the start, {harness.load()} at "
        "the end (2 cores, shared with other work: every comparison is interleaved in one "
        "process and reported as medians)",
        f"- mode: {'quick (small trees, few rounds)' if quick else 'full'}",
        "",
    ]
    report = (
        "\n".join(head + sections + closing_note(step, composition, train, quick)).rstrip() + "\n"
    )
    if args.out:
        Path(args.out).write_text(report)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
