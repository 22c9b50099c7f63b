"""Timing and reporting helpers shared by the benchmarks.

Every comparison runs its contenders in the same process, one step each in turn, for a number
of rounds (the order rotates every round), and reports medians: on a shared machine a burst of
load then hits every contender alike instead of one of them.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def interleaved(
    steps: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each step, over `rounds` interleaved rounds after `warmup` rounds.

    Each step must block until its work is done (`jax.block_until_ready`).
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a[i] / b[i]: robust to load that changes between rounds."""
    return statistics.median(x / y for x, y in zip(a, b))


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """`(fn(), seconds)`."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1e3 * seconds:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def x(value: float | None) -> str:
    """A ratio as `0.87x`."""
    return "n/a" if value is None else f"{value:.2f}x"


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    """A markdown table; `align` is one character per column, 'l' or 'r' (default: l then r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gradtx", "benchmarks"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        changed = [line for line in dirty.stdout.splitlines() if "RESULTS.md" not in line]
        return out.stdout.strip() + (" + uncommitted changes" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> list[str]:
    """Markdown bullet lines: date, machine, versions."""
    import jax

    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {_cpu_model()}, {os.cpu_count()} cores, {_memory_gib()} RAM, "
        f"{platform.platform()}",
        "- accelerator: none (no GPU is available to this task; every number is CPU)",
        f"- jax backend: {jax.default_backend()}, {jax.device_count()} device(s)",
        f"- python {platform.python_version()}, jax {jax.__version__}, "
        f"jaxlib {version('jaxlib')}, optax {version('optax')}, torch {version('torch')}, "
        f"numpy {version('numpy')}",
        f"- gradtx {version('gradtx')} at commit {_commit()}",
    ]
