"""optax 0.2.8's own test files, run against gradtx.

    python tools/optax_suite.py check                  # from the repository root
    python tools/optax_suite.py report
    python tools/optax_suite.py run --json out.json    # per-test outcomes, for regenerating
    python tools/optax_suite.py update out.json        # rewrite the known-failures file

optax ships its tests in its wheel (`optax/**/*_test.py`, absl `parameterized` and chex).
Before pytest imports them, every public gradtx name that optax has under the same name and
for the same idea (`gradtx.__all__` against optax's top level and its public subpackages) is
routed to gradtx's object: the attribute is replaced in every optax module where it is that
same object (`optax.adam`, `optax._src.alias.adam`, `optax.transforms.masked`, ...). So the
tests call gradtx wherever they name an optax piece that gradtx has, and optax's own
composites (`optax.lamb` calls `transform.scale_by_adam`) run on gradtx's pieces too.
`EXCLUDED` lists the shared names that are not routed, each with its reason.

Routed functions are wrapped to record their calls: a test *exercises gradtx* when it called
one (directly from the test module, or through optax's own code); the counts are of those
tests only. Routed classes (the state NamedTuples) are not wrapped (isinstance must hold),
so a test that touches only them is not counted.

optax's tests run in their own pytest invocation, under optax's usual settings: no
`pyproject.toml` or `tests/conftest.py` of this repository (standard dtype promotion,
warnings not errors), rootdir at optax's site-packages folder, no cache.

Every failing test that exercises gradtx is listed in `tools/optax_suite_known.toml`, in
groups by root cause, each with a category: `deliberate` (a documented difference of
gradtx's) or `bug` (an incompatibility still to fix). `check` fails when a test fails that
is not listed, or when a listed one passes or no longer exercises gradtx. A third category,
`upstream`, holds the tests that fail with plain optax too (`run --no-route`).

The tests run in a child process; a test that kills it (XLA has segfaulted in `jax.jit` of
a gradtx schedule, which cannot be weak-referenced) is recorded as `crashed`, a failure, and
the run goes on in a new child without the tests done.

A full run takes about 55 minutes on 2 busy cores (40 CPU-minutes), so `check` and
`report` run the tests that exercised gradtx in the last full run (the known file's
`[suite] tests`); `--all` runs every test. They refuse to run when the routed names differ
from the ones `[suite]` was made with: then do a full `run --json` and `update`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import os
import pkgutil
import sys
import time
from pathlib import Path
from typing import Any

import tomllib

# As optax's sharding_test.py asks (it sets this itself, too late once a test has started JAX).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parent.parent
KNOWN = ROOT / "tools" / "optax_suite_known.toml"
if str(ROOT) not in sys.path:  # the checkout this file is in, not an installed gradtx
    sys.path.insert(0, str(ROOT))

# optax's public subpackages whose names are looked up when optax's top level lacks one
# (`reduce_on_plateau` is `optax.contrib.reduce_on_plateau`).
SUBPACKAGES = ("contrib", "schedules", "transforms", "tree_utils", "projections")

# Shared names that are not routed, and why.
EXCLUDED = {
    "bias_correction": (
        "another idea under the same word: optax.bias_correction(moment, decay, count) is a "
        "tree helper (otu.tree_bias_correction), gradtx.bias_correction(decay) a transformation"
    ),
    "GradientTransformation": (
        "the base type: optax's code builds it everywhere and isinstance-checks against it "
        "(its GradientTransformationExtraArgs subclasses it); kept, so that the tests check "
        "what gradtx's factories return against optax's own class"
    ),
    "schedules": "a module, not a piece: its schedules are routed one by one",
    "OptState": "a typing alias: nothing to run",
    "Params": "a typing alias: nothing to run",
    "Updates": "a typing alias: nothing to run",
    "Schedule": "a typing alias: nothing to run",
    "ScalarOrSchedule": "a typing alias: nothing to run",
}
# Not in the intersection, so not routed, noted here for the reader: gradtx.monitor is a
# module (its piece is monitor_norms), optax.monitor a transformation; gradtx's
# ScaleByStddevState and ReduceOnPlateauState are optax's ScaleByRStdDevState and
# ReduceLROnPlateauState under other names.

CATEGORIES = ("deliberate", "bug", "upstream")

# Per test: the routed names called while it ran, and how (the caller's module).
_calls: dict[str, set[str]] = {}
# Where the test process writes its progress as it goes (JSON lines), so that the test
# that killed it (a segfault in XLA, say) is known and the others are not lost.
_events: Any = None


def _event(**what: Any) -> None:
    if _events is not None:
        _events.write(json.dumps(what) + "\n")
        _events.flush()


def _optax_modules() -> list[Any]:
    """optax and every module of it that is not a test module, imported."""
    import optax

    for info in pkgutil.walk_packages(optax.__path__, "optax."):
        if info.name.endswith("_test"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception:  # an optional dependency missing: its tests fail to import too
            continue
    return [m for n, m in sorted(sys.modules.items()) if n == "optax" or n.startswith("optax.")]


def _reference(name: str) -> Any:
    """optax's object for `name`: its top-level one, else one of its public subpackages'."""
    import optax

    if hasattr(optax, name):
        return getattr(optax, name)
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"optax.{sub}")
        if hasattr(module, name):
            return getattr(module, name)
    return None


def _recording(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def routed(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        how = "direct" if caller.endswith("_test") else "optax"
        if how not in _calls.setdefault(name, set()):
            _calls[name].add(how)
            _event(call=name, how=how)
        return fn(*args, **kwargs)

    return routed


def route_names() -> list[str]:
    """The names `route` routes: gradtx's public names that optax has, less `EXCLUDED`."""
    import gradtx

    _optax_modules()
    return [n for n in sorted(gradtx.__all__) if n not in EXCLUDED and _reference(n) is not None]


def route() -> dict[str, list[str]]:
    """Routes the shared names to gradtx in every optax module; returns name -> modules."""
    import gradtx

    modules = _optax_modules()
    routed: dict[str, list[str]] = {}
    for name in route_names():
        reference = _reference(name)
        target = getattr(gradtx, name)
        replacement = target if inspect.isclass(target) else _recording(name, target)
        for module in modules:
            if module.__dict__.get(name, None) is reference:
                setattr(module, name, replacement)
                routed.setdefault(name, []).append(module.__name__)
    return routed


class Plugin:
    """Routes before collection; records each test's outcome, error line and use of gradtx.

    A test uses gradtx when it calls a routed function (`gradtx`: the names, and whether the
    test or optax's code called them) or when a line of gradtx's code runs while it runs
    (`gradtx_code`, measured with coverage.py, one context per test): the second catches the
    tests that only use a transformation their module built at import (optax's
    sharding_test.py builds its optimisers so).
    """

    def __init__(self, routing: bool = True):
        self.routing = routing
        self.routed: dict[str, list[str]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.import_calls: dict[str, dict[str, list[str]]] = {}
        self.coverage: Any = None

    def pytest_configure(self, config: Any) -> None:
        import jax

        if jax.config.jax_numpy_dtype_promotion != "standard":  # optax's tests assume it
            raise SystemExit("optax's tests need jax_numpy_dtype_promotion='standard'")
        if not self.routing:
            return
        self.routed = route()
        import coverage

        import gradtx

        where = str(Path(gradtx.__file__).parent)
        self.coverage = coverage.Coverage(data_file=None, include=[f"{where}/*"], config_file=False)
        self.coverage.start()

    def pytest_collectstart(self, collector: Any) -> None:
        if self.coverage is not None:
            self.coverage.switch_context(f"import {collector.nodeid}")

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        _calls.clear()  # before the test's setup
        _event(start=nodeid)
        if nodeid == os.environ.get("OPTAX_SUITE_CRASH_IN"):  # for the tool's own test
            os.abort()
        if self.coverage is not None:
            self.coverage.switch_context(nodeid)

    def pytest_sessionfinish(self, session: Any) -> None:
        if self.coverage is None:
            return
        self.coverage.stop()
        data = self.coverage.get_data()
        ran: set[str] = set()
        for path in data.measured_files():
            for contexts in data.contexts_by_lineno(path).values():
                ran.update(contexts)
        for nodeid, entry in self.results.items():
            entry["gradtx_code"] = nodeid in ran or f"import {nodeid}" in ran

    def pytest_runtest_logreport(self, report: Any) -> None:
        entry = self.results.setdefault(
            report.nodeid, {"outcome": "passed", "error": "", "duration": 0.0}
        )
        entry["duration"] = round(entry["duration"] + report.duration, 3)
        if report.failed and entry["outcome"] != "failed":
            entry["outcome"] = "failed"
            entry["error"] = _error_line(report)
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"
        if report.when == "teardown":
            entry["gradtx"] = {name: sorted(how) for name, how in sorted(_calls.items())}
            _event(done=report.nodeid, entry=entry)

    def pytest_collectreport(self, report: Any) -> None:
        # Calls made while a test module is imported (optimisers built for its parameters).
        calls = {name: sorted(how) for name, how in sorted(_calls.items())}
        _calls.clear()
        if calls and report.nodeid.endswith(".py"):
            self.import_calls[report.nodeid] = calls
        if report.failed:  # the module's tests never ran: one failure, in their stead
            entry = {"outcome": "error", "error": _error_line(report), "duration": 0.0}
            self.results[report.nodeid] = {**entry, "gradtx": calls}
            _event(done=report.nodeid, entry=self.results[report.nodeid])


def _error_line(report: Any) -> str:
    """The exception line of a failure (`ValueError: ...`), cut to 300 characters; a bare
    `AssertionError:` gets the lines after it (numpy's "Not equal to tolerance", ...)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if crash is None:  # a collection error: its last line is the exception
        lines = lines[-1:]
    out = lines[0] if lines else ""
    for line in lines[1:]:
        if len(out) > 100 or line.startswith("-----"):
            break
        out += " | " + line
    return out[:300]


def optax_dir() -> Path:
    import optax

    return Path(optax.__file__).resolve().parent


def _run_here(
    tests: list[str], pytest_args: list[str], routing: bool = True, events: str | None = None
) -> dict[str, Any]:
    """Runs optax's tests in this process: all, or `tests` (files or test ids as pytest
    names them, `optax/_src/alias_test.py::AliasTest::test_x`)."""
    global _events
    import pytest

    if events is not None:
        _events = open(events, "a")  # noqa: SIM115 (open for the whole run)

    base = optax_dir()
    files = [str(base.parent / t) for t in tests]
    files = files or sorted(str(p) for p in base.rglob("*_test.py"))
    plugin = Plugin(routing)
    args = [
        *("-c", os.devnull, "--rootdir", str(base.parent), "-p", "no:cacheprovider"),
        *("-q", "--tb=no", "--disable-warnings", "--continue-on-collection-errors"),
        *pytest_args,
        *files,
    ]
    start = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(base.parent)  # no conftest.py or ini file of this repository is in reach
    try:
        code = pytest.main(args, plugins=[plugin])
    finally:
        os.chdir(cwd)
    import optax

    import gradtx

    return {
        "optax": optax.__version__,
        "gradtx": str(Path(gradtx.__file__).parent),
        "routing": routing,
        "complete": not tests and not pytest_args,
        "exit_code": int(code),
        "seconds": round(time.perf_counter() - start, 1),
        "routed": plugin.routed,
        "import_calls": plugin.import_calls,
        "excluded": EXCLUDED,
        "tests": plugin.results,
    }


def run(tests: list[str], pytest_args: list[str], routing: bool = True) -> dict[str, Any]:
    """`_run_here` in a child process, restarted after a crash without the tests that ran.

    A test during which the process dies (XLA has segfaulted on `jax.jit` of an object it
    cannot weak-reference) is recorded as `crashed`, with the routed names it had called.
    """
    import subprocess
    import tempfile

    finished: dict[str, dict[str, Any]] = {}
    crashes, start = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        while True:
            events, out = Path(tmp, f"events{crashes}.jsonl"), Path(tmp, f"out{crashes}.json")
            skip = [a for t in finished for a in ("--deselect", t)]
            spec = {"tests": tests, "pytest_args": [*pytest_args, *skip], "routing": routing}
            spec_file = Path(tmp, "spec.json")
            spec_file.write_text(json.dumps({**spec, "events": str(events), "out": str(out)}))
            code = subprocess.call([sys.executable, __file__, "_child", str(spec_file)])
            if out.exists():
                result = json.loads(out.read_text())
                break
            started, calls = None, {}
            lines = events.read_text().splitlines() if events.exists() else []
            for what in map(json.loads, lines):
                if "start" in what:
                    started, calls = what["start"], {}
                elif "call" in what:
                    calls.setdefault(what["call"], []).append(what["how"])
                elif "done" in what:
                    finished[what["done"]] = what["entry"]
                    started = None
            if started is None:
                raise SystemExit(f"the test process died (exit {code}) outside a test")
            crashes += 1
            finished[started] = {
                "outcome": "crashed",
                "error": f"the test process died (exit {code}) during this test",
                "duration": 0.0,
                "gradtx": calls,
            }
            print(f"\noptax_suite: {started} crashed the test process; going on without it")
    result["tests"] = {**finished, **result["tests"]}
    result["complete"] = not tests and not pytest_args
    result["crashes"] = crashes
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ----------------------------------------------------------------------------
# The known failures, and the tests that `check` runs.


def load_known(path: Path = KNOWN) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`(suite, groups)`: the routed names and tests of the last full run, and the known
    failures, group name -> {category, reason, tests}, each test in one group at most."""
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    suite = data.get("suite", {"routed": [], "tests": []})
    groups = data.get("group", {})
    seen: dict[str, str] = {}
    for name, group in groups.items():
        if group.get("category") not in CATEGORIES:
            raise SystemExit(f"{path}: group {name}: category must be one of {CATEGORIES}")
        for test in group["tests"]:
            if test in seen:
                raise SystemExit(f"{path}: {test} is in groups {seen[test]} and {name}")
            seen[test] = name
    return suite, groups


def _toml_list(key: str, items: list[str]) -> list[str]:
    # A JSON string is a TOML basic string.
    return [f"{key} = [", *(f"    {json.dumps(t)}," for t in items), "]"]


def write_known(suite: dict[str, Any], groups: dict[str, dict[str, Any]], path: Path = KNOWN):
    lines = [
        "# optax's own tests run against gradtx: tools/optax_suite.py (see its docstring).",
        "# [suite]: what the last full run routed, and its tests that exercised gradtx (the",
        "# ones `check` runs). [group.*]: those that fail, one group per root cause, with a",
        "# category: deliberate (a documented difference of gradtx's, cited in the reason), bug",
        "# (an incompatibility still to fix) or upstream (fails with plain optax too: `run",
        "# --no-route`). Regenerate: `python tools/optax_suite.py run",
        "# --json out.json`, then `python tools/optax_suite.py update out.json` (new failures",
        "# land in group `unclassified`: give them a group and a reason).",
        "",
        "[suite]",
        f"optax = {json.dumps(suite['optax'])}",
        *_toml_list("routed", sorted(suite["routed"])),
        *_toml_list("tests", sorted(suite["tests"])),
    ]
    for name, group in groups.items():
        if not group["tests"]:
            continue
        lines += ["", f"[group.{name}]", f"category = {json.dumps(group['category'])}"]
        lines.append(f"reason = {json.dumps(group['reason'])}")
        lines += _toml_list("tests", sorted(group["tests"]))
    path.write_text("\n".join(lines) + "\n")


def exercising(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tests that called a routed name or ran gradtx's code."""
    return {t: r for t, r in result["tests"].items() if r.get("gradtx") or r.get("gradtx_code")}


def _failing(tests: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(t for t, r in tests.items() if r["outcome"] in ("failed", "error", "crashed"))


def compare(
    result: dict[str, Any], suite: dict[str, Any], groups: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """What a run and the known file disagree on; for a run of some tests (not `complete`),
    only about the tests that ran."""
    tests = exercising(result)
    known = {t for group in groups.values() for t in group["tests"]}
    failing = set(_failing(tests))
    expected = known | set(suite["tests"])
    return {
        "failing, not in the known list": sorted(failing - known),
        "in the known list, passing now (remove them)": sorted(
            t for t in known if t in tests and t not in failing
        ),
        "in the known list or [suite] tests, but not exercising gradtx now": sorted(
            t for t in expected if (result["complete"] or t in result["tests"]) and t not in tests
        ),
        "exercising gradtx, not in [suite] tests (update the list)": sorted(
            set(tests) - set(suite["tests"])
        ),
        "in [suite] tests, but did not run": sorted(
            set(result.get("selected", ())) - set(result["tests"])
        ),
    }


def summary(result: dict[str, Any], groups: dict[str, dict[str, Any]]) -> str:
    tests = exercising(result)
    outcomes = [r["outcome"] for r in tests.values()]

    def called(r: dict[str, Any], how: str, but: str = "") -> bool:
        return any(how in h for n, h in r["gradtx"].items() if n != but)

    direct = sum(called(r, "direct") for r in tests.values())
    beyond = sum(called(r, "direct", but="apply_updates") for r in tests.values())
    code_only = sum(not r.get("gradtx") for r in tests.values())
    failing = _failing(tests)
    known = {t: g for g, group in groups.items() for t in group["tests"]}
    by_category: dict[str, int] = {}
    for t in failing:
        category = groups[known[t]]["category"] if t in known else "unlisted"
        by_category[category] = by_category.get(category, 0) + 1
    others = {t: r for t, r in result["tests"].items() if t not in tests}
    scope = result.get("scope") or ("all of optax's tests" if result["complete"] else "some")
    lines = [
        f"optax {result['optax']}: {scope}, against gradtx at {result['gradtx']} "
        f"({result['seconds']} s)",
        f"ran {len(result['tests'])}; not using gradtx: {len(others)} "
        f"({len(_failing(others))} of them failing)",
        f"exercising gradtx: {len(tests)} ({direct} call a routed name themselves, {beyond} "
        f"one other than apply_updates; {len(tests) - direct - code_only} only through "
        f"optax's code; {code_only} only run gradtx's code, e.g. of a transformation built "
        "at import)",
        f"passed: {outcomes.count('passed')}, failed: {len(failing)}, "
        f"skipped: {outcomes.count('skipped')}",
        "failed by category: "
        + (", ".join(f"{c} {n}" for c, n in sorted(by_category.items())) or "none"),
    ]
    if result["complete"] and result["routing"]:
        used = {n for r in tests.values() for n in r.get("gradtx", {})}
        unused = [n for n in result["routed"] if n not in used and not n[:1].isupper()]
        lines.append("routed functions no test called: " + (", ".join(unused) or "none"))
    return "\n".join(lines)


def failing_list(result: dict[str, Any], groups: dict[str, dict[str, Any]]) -> str:
    tests = exercising(result)
    known = {t: g for g, group in groups.items() for t in group["tests"]}
    failing = _failing(tests)
    out = []
    for name, group in [*groups.items(), ("unlisted", {"category": "?", "reason": ""})]:
        members = [t for t in failing if known.get(t, "unlisted") == name]
        if members:
            out.append(f"\n[{group['category']}] {name} ({len(members)}): {group['reason']}")
            out += [f"  {t}\n      {tests[t]['error']}" for t in members]
    return "\n".join(out)


def update(result: dict[str, Any], path: Path = KNOWN) -> str:
    """Rewrites the known file from a full run: [suite] from it, the groups pruned of the
    tests that pass, its new failures added to `unclassified`."""
    if not result["complete"] or not result["routing"]:
        raise SystemExit("update needs the JSON of a full run (`run --json out.json`)")
    suite, groups = load_known(path)
    tests = exercising(result)
    failing = set(_failing(tests))
    for group in groups.values():
        group["tests"] = [t for t in group["tests"] if t in failing]
    known = {t for group in groups.values() for t in group["tests"]}
    new = sorted(failing - known)
    if new:
        groups.setdefault(
            "unclassified", {"category": "bug", "reason": "not classified yet", "tests": []}
        )["tests"] += new
    suite = {"optax": result["optax"], "routed": sorted(result["routed"]), "tests": sorted(tests)}
    write_known(suite, groups, path)
    return f"{path}: {len(tests)} tests, {len(known)} known failures kept, {len(new)} new"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "run": "run optax's tests (all, or those named) and print the counts",
        "check": "run the [suite] tests (--all: every test); fail on a disagreement",
        "report": "as check, and list the failures by group; exits 0",
    }
    for name, text in commands.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("tests", nargs="*", help="files or ids, as `optax/_src/alias_test.py`")
        p.add_argument("--tests-from", help="a file of test ids, one a line")
        p.add_argument("--json", help="write the per-test outcomes here")
        p.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[])
        if name != "run":
            p.add_argument("--all", action="store_true", help="every test, not [suite] tests")
            p.add_argument("--load", help="read a run's JSON instead of running")
    sub.choices["run"].add_argument("--no-route", action="store_true", help="optax as it is")
    p = sub.add_parser("update", help="rewrite the known file from a full run's JSON")
    p.add_argument("load")
    if argv is None and sys.argv[1:2] == ["_child"]:  # the test process of `run`
        spec = json.loads(Path(sys.argv[2]).read_text())
        result = _run_here(spec["tests"], spec["pytest_args"], spec["routing"], spec["events"])
        Path(spec["out"]).write_text(json.dumps(result))
        return 0
    args = parser.parse_args(argv)
    if getattr(args, "tests_from", None):
        args.tests += [t for t in Path(args.tests_from).read_text().splitlines() if t.strip()]
    if args.command == "update":
        print(update(json.loads(Path(args.load).read_text())))
        return 0

    suite, groups = load_known()
    if args.command == "run":
        result = run(args.tests, args.pytest_args, routing=not args.no_route)
    elif args.load:
        result = json.loads(Path(args.load).read_text())
    else:
        if not (args.all or args.tests) and route_names() != sorted(suite["routed"]):
            raise SystemExit(
                "the routed names differ from the known file's [suite] routed: run the "
                "whole suite (`run --json out.json`) and `update out.json`"
            )
        selection = [] if args.all else args.tests or suite["tests"]
        result = run(selection, args.pytest_args)
        result["complete"] = args.all and not args.pytest_args
        if not (args.all or args.tests):
            result["scope"] = "the [suite] tests of tools/optax_suite_known.toml"
            result["selected"] = selection
        if result["exit_code"] not in (0, 1):  # 1: tests failed; others: pytest broke
            raise SystemExit(f"pytest exited {result['exit_code']}: the run is incomplete")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(summary(result, groups))
    if args.command == "report":
        print(failing_list(result, groups))
    if args.command == "check":
        bad = {k: v for k, v in compare(result, suite, groups).items() if v}
        for what, tests in bad.items():
            print(f"\n{what}:")
            for t in tests:
                print(f"  {t}\n      {result['tests'].get(t, {}).get('error', '')}")
        print("check: " + ("FAILED" if bad else "ok, the failures are the known ones"))
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
