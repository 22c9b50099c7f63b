"""The optimiser zoo: every gradtx optimiser beside the optax one of the same name.

    python benchmarks/zoo.py      # prints the README's zoo table (tests/test_readme.py checks it)

`ZOO` is read by `bench_zoo.py` (step and compile time, gradtx vs optax) and by the README
table, so the two list the same optimisers, built with the same arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "gradtx" / "__init__.py").is_file() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: this checkout's gradtx

import optax  # noqa: E402

import gradtx  # noqa: E402
from gradtx.spec import spec_of  # noqa: E402

LR = 1e-3


class Entry(NamedTuple):
    """One optimiser: its gradtx and optax names and how both are built."""

    name: str  # gradtx's path, e.g. "adamw" or "contrib.muon"
    gradtx: Callable[[], Any]
    optax: Callable[[], Any]
    # the extra arguments of `update` (value=, ...), from the params and gradients
    extra: Callable[[Any, Any], dict[str, Any]] | None = None


def _same(
    path: str, *args: Any, extra: Callable[..., dict[str, Any]] | None = None, **kwargs: Any
) -> Entry:
    """The optimiser at `path` in both libraries, with the same arguments."""

    def get(root: Any) -> Callable[..., Any]:
        for part in path.split("."):
            root = getattr(root, part)
        return root

    return Entry(
        path, lambda: get(gradtx)(*args, **kwargs), lambda: get(optax)(*args, **kwargs), extra
    )


ZOO: list[Entry] = [
    _same("sgd", LR, momentum=0.9),
    _same("rmsprop", LR),
    _same("adagrad", LR),
    _same("adam", LR),
    _same("adamw", LR),
    _same("nadam", LR),
    _same("amsgrad", LR),
]


def pieces(tx: Any) -> str:
    """The chain of pieces that make `tx`, outermost first: `scale_by_adam → ...`."""
    spec = spec_of(tx)
    if spec is None:
        return "?"
    if spec.name == "chain":  # an `identity` is a switched-off part (no momentum), not shown
        inner = [pieces(t) for t in spec.inner() if spec_of(t).name != "identity"]
        return " → ".join(inner) or "identity"
    return spec.name


def readme_table() -> list[str]:
    """Markdown rows: each optimiser, its chain of pieces, and optax's name for it."""
    rows = ["| optimiser | its chain of pieces | optax |", "|---|---|---|"]
    for entry in ZOO:
        rows.append(f"| `{entry.name}` | {pieces(entry.gradtx())} | `optax.{entry.name}` |")
    return rows


if __name__ == "__main__":
    print("\n".join(readme_table()))
