"""Re-executes the notebooks in place, storing their outputs and key figures.

    python notebooks/build.py                 # every notebook
    python notebooks/build.py 02 03_momentum  # those whose file name starts with a prefix

The `.ipynb` files are the source: edit them in Jupyter, then run this script so that the
stored outputs (the figures shown on the repository page) match the code. Each notebook runs
top to bottom in a fresh kernel on this Python interpreter, with `notebooks/` as its working
directory and `GRADTX_NOTEBOOK_FIGURES=notebooks/figures`, which makes the notebooks'
`save(fig, name)` write `notebooks/figures/<name>.png`. Without that variable (as in
`tests/test_notebooks.py`, which uses `run` below) the figures are only shown and nothing is
written.

Needs the `notebooks` extra: `pip install -e ".[notebooks]"`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import default

NOTEBOOKS = Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
FIGURES = NOTEBOOKS / "figures"
CELL_TIMEOUT_S = 300


class ThisInterpreter(KernelSpecManager):
    """Every kernel name means ipykernel on this interpreter.

    A `python3` kernelspec installed for the user (or system-wide) may point at another Python,
    one without gradtx; the notebooks must run where gradtx and the extra are installed.
    """

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python 3 ({sys.executable})",
            language="python",
        )


class ThisInterpreterKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, resolving kernel names with `ThisInterpreter`."""

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return ThisInterpreter(data_dir=self.data_dir)


def kernel_env(figures: Path | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment: gradtx importable from this checkout, figures on or off."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("GRADTX_NOTEBOOK_FIGURES", None)
    if figures is not None:
        env["GRADTX_NOTEBOOK_FIGURES"] = str(figures)
    return env


def run(
    nb: Any,
    cwd: Path,
    *,
    figures: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_func: Callable[[Any], int] | None = None,
) -> float:
    """Executes `nb` (a notebook node) in memory, top to bottom; returns the seconds taken.

    Raises `nbclient.exceptions.CellExecutionError` on the first failing cell and
    `CellTimeoutError` when a cell runs past its timeout (`CELL_TIMEOUT_S`, or `timeout_func`).
    """
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        timeout_func=timeout_func,
        kernel_name="python3",
        kernel_manager_class=ThisInterpreterKernelManager,
        resources={"metadata": {"path": str(cwd)}},
        record_timing=False,
    )
    start = time.perf_counter()
    client.execute(env=kernel_env(figures, env))
    return time.perf_counter() - start


def build(path: Path) -> float:
    """Runs the notebook at `path` and writes it back with its outputs and figures."""
    nb = nbformat.read(path, as_version=4)
    elapsed = run(nb, NOTEBOOKS, figures=FIGURES)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return elapsed


def main(prefixes: list[str]) -> None:
    FIGURES.mkdir(exist_ok=True)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(x) for x in prefixes)]
    if not paths:
        raise SystemExit(f"no notebook matches {prefixes}")
    for path in paths:
        print(f"{path.name}: {build(path):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
