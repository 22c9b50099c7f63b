"""The benchmark suite runs end to end (`--quick`) and writes every table. No timing is checked."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_quick_suite_runs_and_reports_every_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    # A fresh process, configured as a user's would be: no test-only XLA or promotion flags.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = out.read_text()
    for heading in [
        "# gradtx benchmark results",
        "## 1. Roofline",
        "## 2-3. Optimiser step time and compile time",
        "### Adam against the roofline",
        "### Compile time",
        "## 4. Composition",
        "## 5. Memory",
        "## Full train step with grouped parameters",
        "## 6. Epochs",
        "## 7. The zoo: every optimiser against optax's",
        "## Closing note: the targets",
    ]:
        assert heading in report, heading
    assert "- date: " in report and "- machine: " in report and "jax 0." in report
    assert report.count("| ---") >= 10  # the tables are there
    assert not re.search(r"\bnan\b", report, re.IGNORECASE)  # every number was measured
