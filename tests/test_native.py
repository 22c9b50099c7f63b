"""The native kernels: built at install time, loaded without a compiler, explained when absent."""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gradtx
from gradtx import fused, native

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(gradtx.__file__).resolve().parent


def test_the_native_kernel_is_there_in_ci():
    """CI (`CI` set) fails without the kernel; elsewhere the summary says why it is absent."""
    status = gradtx.native_status()
    if os.environ.get("CI"):
        assert gradtx.native_available(), f"the native kernel is not loaded in CI: {status}"
    elif status is not None:
        pytest.skip(f"native kernel unavailable here (would fail with CI set): {status}")
    assert gradtx.native_available() and status is None


def _run_child(code: str, **env: str) -> dict:
    """Runs `code` in a fresh interpreter importing this gradtx; the JSON it prints last."""
    base = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"] == gradtx.__file__
    return out


_STEP = """
import functools, json, jax, jax.numpy as jnp, numpy as np
opt = gradtx.adam(1e-3)
params = {"w": jnp.linspace(-1.0, 1.0, 300).reshape(3, 100), "b": jnp.ones(7)}
def run(native):
    step = jax.jit(functools.partial(gradtx.apply_step, opt, native=native), donate_argnums=(1, 2))
    p, s = jax.tree.map(jnp.copy, params), opt.init(params)
    for t in range(5):
        p, s = step(jax.tree.map(lambda x: x * (t + 1), params), s, p)
    return p
native = gradtx.native_available()
try:
    first, error = run(True), None
except ValueError as err:
    first, error = run(None), str(err)
diff = max(float(np.max(np.abs(a - b))) for a, b in
           zip(jax.tree.leaves(first), jax.tree.leaves(run(False))))
"""


def test_gradtx_native_0_switches_the_kernel_off_and_says_so():
    out = _run_child(
        "import gradtx" + _STEP + "print(json.dumps({'file': gradtx.__file__, 'native': native, "
        "'status': gradtx.native_status(), 'error': error, 'diff': diff}))",
        GRADTX_NATIVE="0",
    )
    assert out["native"] is False
    assert out["status"].startswith("GRADTX_NATIVE=0 is set: the native kernels are switched off")
    assert "unset GRADTX_NATIVE" in out["status"]
    assert out["error"] == f"apply_step: the native kernel does not apply: {out['status']}"
    assert out["diff"] == 0.0  # the pure-JAX step, bit for bit


def test_no_compiler_or_subprocess_runs_at_import_or_in_the_first_step(tmp_path):
    """No compiler on PATH, `CXX` broken, an empty home: importing and stepping still works.

    Any process started (compiler or other) is recorded and refused in the child.
    """
    for name in ["bin", "home", "cache"]:
        (tmp_path / name).mkdir()
    guard = """
import os, subprocess
started = []
def refuse(*args, **kwargs):
    started.append(repr(args[:2]))
    raise RuntimeError("gradtx must not start a process")
subprocess.Popen.__init__ = lambda self, *a, **k: refuse(*a, **k)
os.system = os.posix_spawn = os.posix_spawnp = os.execv = os.execve = refuse
import gradtx
"""
    out = _run_child(
        guard
        + _STEP
        + "print(json.dumps({'file': gradtx.__file__, 'native': native, 'error': error, "
        "'status': gradtx.native_status(), 'started': started, 'diff': diff}))",
        PATH=str(tmp_path / "bin"),
        HOME=str(tmp_path / "home"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        GRADTX_CACHE_DIR=str(tmp_path / "cache"),
        CXX="/nonexistent/c++",
        CC="/nonexistent/cc",
    )
    assert out["started"] == []
    assert (out["native"], out["status"]) == (gradtx.native_available(), gradtx.native_status())
    if out["native"]:
        assert out["error"] is None and out["diff"] < 1e-6  # the kernel ran and is right
    else:
        assert out["error"].endswith(out["status"]) and out["diff"] == 0.0
    assert not any((tmp_path / "home").iterdir()) and not any((tmp_path / "cache").iterdir())


# ----------------------------------------------------------------------------
# What the status says when the library is missing, was not built, or is stale.


def _status_for(monkeypatch, directory: Path) -> str | None:
    monkeypatch.setattr(native, "_HERE", directory)
    return native._load()  # not load(): nothing process-global is touched


def _record(directory: Path, **fields) -> None:
    (directory / native.RECORD).write_text(json.dumps(fields))


def test_an_install_without_a_compiler_says_why_and_how_to_get_the_kernel(monkeypatch, tmp_path):
    package = tmp_path / "site-packages" / "gradtx"
    package.mkdir(parents=True)
    reason = "no C++ compiler was found at install time (CXX='/nonexistent' is not an executable)"
    _record(package, built=False, reason=reason)
    status = _status_for(monkeypatch, package)
    assert status.startswith(f"gradtx was installed without its native kernels: {reason}; ")
    assert "install a C++ compiler and reinstall with `CXX=g++ pip install --force-reinstall" in (
        status
    )


@pytest.mark.parametrize(
    "direct_url, source",
    [
        (None, "gradtx"),  # from an index
        ({"url": "file:///home/me/src/grad%20tx", "dir_info": {}}, "'/home/me/src/grad tx'"),
        (
            {"url": "https://github.com/me/gradtx", "vcs_info": {"vcs": "git", "commit_id": "ab1"}},
            "git+https://github.com/me/gradtx@ab1",
        ),
        ({"url": "https://example.org/gradtx-0.1.0.tar.gz", "archive_info": {}}, None),
    ],
)
def test_the_reinstall_command_names_where_gradtx_came_from(
    monkeypatch, tmp_path, direct_url, source
):
    site = tmp_path / "site-packages"
    (site / "gradtx").mkdir(parents=True)
    info = site / "gradtx-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gradtx\nVersion: 0.1.0\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    dist = importlib.metadata.PathDistribution(info)
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: dist)
    _record(site / "gradtx", built=False, reason="no C++ compiler was found at install time")
    status = _status_for(monkeypatch, site / "gradtx")
    source = source or direct_url["url"]
    assert status.endswith(
        f"reinstall with `CXX=g++ pip install --force-reinstall --no-deps --no-cache-dir {source}`"
    )


def test_a_checkout_without_the_library_says_how_to_build_it_in_place(monkeypatch, tmp_path):
    (tmp_path / "setup.py").touch()
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / "gradtx").mkdir()
    status = _status_for(monkeypatch, tmp_path / "gradtx")
    assert status.startswith("the native kernels are not built in this source checkout")
    assert f"`pip install -e {tmp_path}`" in status and "build_ext --inplace" in status


def test_a_library_built_from_another_fused_cc_is_not_loaded(monkeypatch, tmp_path):
    (tmp_path / native.SOURCE).write_text("// edited after the build\n")
    (tmp_path / native.LIBRARY).write_bytes(b"not loaded")
    _record(tmp_path, built=True, source_sha256="0" * 64, jaxlib="0.10.2", ffi_api="0.3")
    status = _status_for(monkeypatch, tmp_path)
    assert status.startswith(f"{tmp_path / native.SOURCE} has changed since the native kernels")


def test_a_library_for_another_ffi_major_version_is_not_loaded(monkeypatch, tmp_path):
    (tmp_path / native.LIBRARY).write_bytes(b"not loaded")
    _record(tmp_path, built=True, jaxlib="9.9", ffi_api="99.0")
    status = _status_for(monkeypatch, tmp_path)
    assert "built against jaxlib 9.9 (XLA FFI API 99.0), whose FFI is incompatible" in status
    assert "--no-build-isolation" in status


def test_a_library_that_cannot_be_loaded_is_reported(monkeypatch, tmp_path):
    (tmp_path / native.LIBRARY).write_bytes(b"not a shared library")
    _record(tmp_path, built=True, jaxlib="0.10.2", ffi_api=native._running_ffi_api())
    status = _status_for(monkeypatch, tmp_path)
    assert status.startswith(f"could not load the native kernels from {tmp_path}")
    assert "OSError" in status


def test_without_the_kernel_apply_step_says_why(monkeypatch):
    monkeypatch.setattr(native, "_loaded", ["no compiler here"])
    assert gradtx.native_status() == "no compiler here" and not gradtx.native_available()
    assert fused._load_native() == "no compiler here"


# ----------------------------------------------------------------------------
# The install-time build (setup.py): it never fails the install.


def _setup_module():
    spec = importlib.util.spec_from_file_location("gradtx_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only as __main__
    return module


needs_checkout = pytest.mark.skipif(
    not (ROOT / "setup.py").is_file(), reason="setup.py is in the source checkout only"
)


@needs_checkout
@pytest.mark.parametrize(
    "env, reason",
    [
        ({"CXX": "/nonexistent/c++"}, "(CXX='/nonexistent/c++' is not an executable)"),
        ({"CXX": "", "PATH": ""}, "($CXX is unset and none of c++, g++, clang++ is on PATH)"),
    ],
)
def test_the_build_without_a_compiler_records_why(monkeypatch, tmp_path, env, reason):
    setup = _setup_module()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    target = tmp_path / setup.LIBRARY
    target.write_bytes(b"left over from an earlier build")
    record = setup._compile(ROOT / setup.SOURCE, target)
    assert record["built"] is False and not target.exists()
    assert record["reason"] == f"no C++ compiler was found at install time {reason}"


@needs_checkout
def test_a_failing_compiler_is_recorded_with_its_output(monkeypatch, tmp_path):
    setup = _setup_module()
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'fused.cc:1: error: broken compiler' >&2\nexit 3\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    record = setup._compile(ROOT / setup.SOURCE, tmp_path / setup.LIBRARY)
    assert record["built"] is False
    assert record["reason"].startswith("the C++ compiler failed at install time (exit 3): ")
    assert record["reason"].endswith("fused.cc:1: error: broken compiler")
    assert record["command"].startswith(f"{compiler} -O3 -std=c++17 -shared -fPIC")


@needs_checkout
def test_setup_py_build_ext_succeeds_without_a_compiler(tmp_path):
    """`setup.py build_ext --inplace` in a copy of the checkout: exit 0, a record, no library."""
    for name in ["setup.py", "pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "gradtx").mkdir()
    for name in ["__init__.py", "fused.cc", "py.typed"]:
        shutil.copy(ROOT / "gradtx" / name, tmp_path / "gradtx" / name)
    env = {**os.environ, "CXX": "/nonexistent/c++", "CC": "/nonexistent/cc", "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gradtx: WARNING: installing without the native kernels" in proc.stderr
    record = json.loads((tmp_path / "gradtx" / native.RECORD).read_text())
    assert record["built"] is False and "no C++ compiler was found" in record["reason"]
    assert not (tmp_path / "gradtx" / native.LIBRARY).exists()
