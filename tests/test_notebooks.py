"""The notebooks and the main example run headless, without error (needs the `notebooks` extra).

Each notebook runs top to bottom in a fresh `python3` kernel, in memory: its working directory is
a temporary one and `GRADTX_NOTEBOOK_FIGURES` is unset, so nothing in the repository is written
(`notebooks/build.py` is what stores outputs and figures). Any error in a cell fails the test,
and so does running past the per-notebook time budget. The demo runs in a subprocess at its
default settings.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

for _module in ("nbclient", "nbformat", "ipykernel", "matplotlib", "sklearn", "vega_datasets"):
    pytest.importorskip(_module, reason='needs the notebooks extra: pip install -e ".[notebooks]"')

import nbformat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NOTEBOOK_BUDGET_S = 180  # each notebook takes well under a minute on 2 cores; 3x for slow CI
DEMO_BUDGET_S = 60  # the README promises under a minute on 2 cores; 3x stops a hang

# nbclient and jupyter_client warn about their own environment (path migration, event loops,
# zmq): not about the notebooks. Only those are ignored, and only here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Jupyter is migrating its paths:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_client.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:zmq.*"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:jupyter_client.*"),
]


def load_build():
    """notebooks/build.py, the executor that also stores the notebooks (not a package module)."""
    spec = importlib.util.spec_from_file_location(
        "notebooks_build", ROOT / "notebooks" / "build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subprocess_env() -> dict[str, str]:
    """The test's environment for kernels and subprocesses, minus the test-only settings."""
    env = dict(os.environ)
    env.pop("GRADTX_NOTEBOOK_FIGURES", None)  # never write figures from a test
    flags = env.pop("XLA_FLAGS", "")  # conftest's 8 fake CPU devices are for the sharding tests
    flags = " ".join(f for f in flags.split() if "xla_force_host_platform_device_count" not in f)
    if flags:
        env["XLA_FLAGS"] = flags
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + NOTEBOOK_BUDGET_S

    def remaining(cell) -> int:
        return max(1, math.ceil(deadline - time.monotonic()))

    # Raises CellExecutionError on a failing cell, CellTimeoutError past the budget.
    # The budget only stops a hung kernel; speed is measured in benchmarks, not asserted here.
    load_build().run(nb, tmp_path, env=subprocess_env(), timeout_func=remaining)
    images = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images, f"{path.name} shows no figure"
    assert not list(tmp_path.iterdir()), f"{path.name} wrote files: {list(tmp_path.iterdir())}"


def test_stored_notebooks_have_outputs():
    """The notebooks are stored executed, so their figures show on the repository page."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        assert all(cell.execution_count for cell in code), f"{path.name}: run notebooks/build.py"
        assert not any(output.output_type == "error" for cell in code for output in cell.outputs), (
            f"{path.name} is stored with an error"
        )


def test_demo(tmp_path: Path):
    out = tmp_path / "curves" / "loss.png"
    proc = subprocess.run(
        [sys.executable, "-m", "gradtx.demo", "--out", str(out)],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=3 * DEMO_BUDGET_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^optimiser\s+learning rate\s+train loss\s+test accuracy", proc.stdout, re.M)
    rows = {}
    for name in ("sgd", "momentum", "rmsprop", "adam", "adam\\+decay"):
        match = re.search(rf"^{name}\s{{2}}.*?\s(\d+\.\d+)%", proc.stdout, re.M)
        assert match, f"no table row for {name}:\n{proc.stdout}"
        rows[name] = float(match.group(1))
    assert rows["adam"] >= 95.0, proc.stdout
    assert out.stat().st_size > 10_000
    assert not (tmp_path / "gradtx-demo-loss.png").exists()


def test_demo_without_scikit_learn_says_how_to_install():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "from gradtx import demo\n"
        "demo.main(['--epochs', '1'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert 'pip install "gradtx[notebooks]"' in proc.stderr


def test_core_does_not_import_notebook_dependencies():
    code = (
        "import sys, gradtx, gradtx.data, gradtx.demo\n"
        "heavy = {'sklearn', 'matplotlib', 'nbclient', 'vega_datasets', 'tqdm'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
