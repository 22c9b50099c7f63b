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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
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


def _line_search_args(params: Any, grads: Any) -> dict[str, Any]:
    """What a line search's `update` needs: the value, its gradient and the function."""
    value_fn = lambda p: sum(0.5 * jnp.sum(x**2) for x in jax.tree.leaves(p))
    return {"value": value_fn(params), "grad": grads, "value_fn": value_fn}


def _loss_value(params: Any, grads: Any) -> dict[str, Any]:
    return {"value": jnp.asarray(1.0, jnp.float32)}


def _mechanize() -> Entry:
    return Entry(
        "contrib.mechanize",
        lambda: gradtx.contrib.mechanize(gradtx.adam(LR)),
        lambda: optax.contrib.mechanize(optax.adam(LR)),
    )


ZOO: list[Entry] = [
    # the course's optimisers
    _same("sgd", LR, momentum=0.9),
    _same("rmsprop", LR),
    _same("adagrad", LR),
    _same("adam", LR),
    _same("adamw", LR),
    _same("nadam", LR),
    _same("amsgrad", LR),
    # optax's other aliases
    _same("adabelief", LR),
    _same("adadelta", LR),
    _same("adafactor", LR),
    _same("adamax", LR),
    _same("adamaxw", LR),
    _same("adan", LR),
    _same("fromage", LR),
    _same("lamb", LR),
    _same("lars", LR),
    _same("lbfgs", extra=_line_search_args),
    _same("lion", LR),
    _same("nadamw", LR),
    _same("noisy_sgd", LR, key=jax.random.key(0)),
    _same("novograd", LR),
    _same("optimistic_gradient_descent", LR),
    _same("optimistic_adam_v2", LR),
    _same("polyak_sgd", extra=_loss_value),
    _same("radam", LR),
    _same("rprop", LR),
    _same("sign_sgd", LR),
    _same("signum", LR),
    _same("sm3", LR),
    _same("yogi", LR),
    # optax.contrib's
    _same("contrib.ademamix", LR),
    _same("contrib.simplified_ademamix", LR),
    _same("contrib.adopt", LR),
    _same("contrib.cocob"),
    _same("contrib.dadapt_adamw"),
    _same("contrib.dog"),
    _same("contrib.dowg"),
    _same("contrib.madgrad", LR),
    _mechanize(),
    _same("contrib.muon", LR),
    _same("contrib.prodigy"),
    _same("contrib.schedule_free_adamw", LR),
    _same("contrib.schedule_free_sgd", LR),
]


def pieces(tx: Any) -> str:
    """The chain of pieces that make `tx`, outermost first: `scale_by_adam → ...`."""
    spec = spec_of(tx)
    if spec is None:
        return "?"
    inner = [pieces(t) for t in spec.inner() if spec_of(t).name != "identity"]
    if spec.name == "chain":  # an `identity` is a switched-off part (no momentum), not shown
        return " → ".join(inner) or "identity"
    if inner:  # a wrapper (masked, partition, schedule_free, ...) around its transformations
        return f"{spec.name}({'; '.join(inner)})"
    return spec.name


def readme_table() -> list[str]:
    """Markdown rows: each optimiser, its chain of pieces, and optax's name for it."""
    rows = ["| optimiser | its chain of pieces | optax |", "|---|---|---|"]
    for entry in ZOO:
        rows.append(f"| `{entry.name}` | {pieces(entry.gradtx())} | `optax.{entry.name}` |")
    return rows


if __name__ == "__main__":
    print("\n".join(readme_table()))
