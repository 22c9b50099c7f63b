"""gradtx's native kernels: finding, loading and registering the library built at install time.

`apply_step` (`gradtx.fused`) runs its one-pass optimiser steps through `jax.ffi` with the C++
kernels in `fused.cc`. They are compiled once, when the package is installed (`setup.py`:
`pip install gradtx`, `pip install .`, `pip install -e .`), against the XLA FFI headers of
jaxlib, into `libgradtx_fused.so` beside this file. This module loads that library with
`ctypes` and registers its kernels with XLA for the CPU, once per process, on first use. It
never compiles anything: without the library, `apply_step` takes the pure-JAX step, and
`native_status()` says why and how to get the kernels.

An install that could not compile them (no C++ compiler, say) still succeeds and records why in
`_native_build.json` beside this file. In a source checkout used through `PYTHONPATH`, build the
library in place with `pip install -e .` or `python setup.py build_ext --inplace`.
`GRADTX_NATIVE=0` in the environment turns the kernels off for the process.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import threading
import urllib.parse
from pathlib import Path

import jax

LIBRARY = "libgradtx_fused.so"  # the names setup.py builds
RECORD = "_native_build.json"
SOURCE = "fused.cc"

_HERE = Path(__file__).resolve().parent
_lock = threading.Lock()
_loaded: list[str | None] = []  # once tried: [None] when loaded, else [why not]


def native_status() -> str | None:
    """Why the native kernels are not in use, or None when they are loaded.

    Loads them on the first call (see `load`). The reason names the cause and the fix, e.g.
    that gradtx was installed without a C++ compiler and the command that reinstalls it with
    one, or `GRADTX_NATIVE=0`. `gradtx.native_available()` is `native_status() is None`.

    Returns:
        None when `apply_step` can use the native kernels, else a human-readable reason.
    """
    return load()


def load() -> str | None:
    """Loads and registers the kernels once per process; None on success, else why not."""
    with _lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


def _load() -> str | None:
    if getattr(jax, "ffi", None) is None:
        return f"jax {jax.__version__} has no jax.ffi (it needs jax>=0.5.0); upgrade jax"
    if os.environ.get("GRADTX_NATIVE", "1") == "0":
        return (
            "GRADTX_NATIVE=0 is set: the native kernels are switched off and apply_step takes "
            "the pure-JAX step; unset GRADTX_NATIVE to use them"
        )
    library, record = _HERE / LIBRARY, _read_record()
    if record is None or (record.get("built") and not library.is_file()):
        if _checkout_root() is not None:
            return (
                f"the native kernels are not built in this source checkout ({library} is "
                f"missing); build them in place with {_rebuild_command()}"
            )
        return f"gradtx's native library {library} is missing; reinstall with {_rebuild_command()}"
    if not record.get("built"):
        return (
            f"gradtx was installed without its native kernels: {record.get('reason')}; "
            "apply_step takes the pure-JAX step (same results, slower). To get the kernels, "
            f"install a C++ compiler and reinstall with {_rebuild_command()}"
        )
    source = _HERE / SOURCE
    if source.is_file() and hashlib.sha256(source.read_bytes()).hexdigest() != record.get(
        "source_sha256"
    ):
        return (
            f"{source} has changed since the native kernels were built; rebuild them with "
            f"{_rebuild_command()}"
        )
    built_api, running_api = record.get("ffi_api"), _running_ffi_api()
    built_with = f"jaxlib {record.get('jaxlib')} (XLA FFI API {built_api})"
    if running_api and built_api and running_api.split(".")[0] != built_api.split(".")[0]:
        return (
            f"the native kernels were built against {built_with}, whose FFI is incompatible "
            f"with the running jaxlib {_jaxlib_version()} (XLA FFI API {running_api}); "
            f"rebuild them against it with {_rebuild_command(isolated=False)}"
        )
    try:
        handle = ctypes.CDLL(str(library))
        for name, symbol in _targets().items():
            capsule = jax.ffi.pycapsule(getattr(handle, symbol))
            jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    except Exception as err:  # any failure to load or register means: take the pure-JAX step
        return (
            f"could not load the native kernels from {library} (built against {built_with}; "
            f"running jaxlib {_jaxlib_version()}): {type(err).__name__}: {err}; "
            f"rebuild them with {_rebuild_command(isolated=False)}"
        )
    return None


def _targets() -> dict[str, str]:
    """XLA FFI target name -> symbol in the library, from the kernels' records.

    Each record (`gradtx.fused.KERNELS`) names its target and its entry point in `fused.cc`
    (`XLA_FFI_DEFINE_HANDLER_SYMBOL`); read at load time, since `gradtx.fused` imports this module.
    """
    from gradtx.fused import KERNELS

    return {kernel.target: kernel.symbol for kernel in KERNELS}


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _read_record() -> dict | None:
    try:
        record = json.loads((_HERE / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _running_ffi_api() -> str | None:
    """The XLA FFI API version of the running jaxlib's headers, when it ships them."""
    try:
        text = (Path(jax.ffi.include_dir()) / "xla/ffi/api/c_api.h").read_text(errors="replace")
    except (OSError, RuntimeError):
        return None
    major = re.search(r"#define XLA_FFI_API_MAJOR (\d+)", text)
    minor = re.search(r"#define XLA_FFI_API_MINOR (\d+)", text)
    return f"{major.group(1)}.{minor.group(1)}" if major and minor else None


def _checkout_root() -> Path | None:
    """The source checkout this package runs from (editable or PYTHONPATH), if it is one."""
    root = _HERE.parent
    return root if (root / "setup.py").is_file() and (root / "pyproject.toml").is_file() else None


def _rebuild_command(isolated: bool = True) -> str:
    """The shell command that (re)builds the kernels for this installation."""
    root = _checkout_root()
    if root is not None:
        return f"`pip install -e {root}` (or `python setup.py build_ext --inplace` in {root})"
    # --no-cache-dir: pip would otherwise reuse the wheel it built without the kernels.
    command = "CXX=g++ pip install --force-reinstall --no-deps --no-cache-dir"
    if isolated:
        return f"`{command} {_install_source()}`"
    # Against the jaxlib installed here: no build isolation, so setuptools (with its own
    # bdist_wheel) must be installed here too.
    return f"`pip install 'setuptools>=70.1' && {command} --no-build-isolation {_install_source()}`"


def _install_source() -> str:
    """What pip installed this gradtx from (PEP 610's direct_url.json), else its name."""
    try:
        dist = importlib.metadata.distribution("gradtx")
        if Path(str(dist.locate_file(""))).resolve() != _HERE.parent:
            return "gradtx"  # another installation's metadata
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        return "gradtx"
    url = info.get("url", "") if isinstance(info, dict) else ""
    vcs = info.get("vcs_info") if url else None
    if isinstance(vcs, dict) and vcs.get("vcs"):
        commit = vcs.get("commit_id")
        return shlex.quote(f"{vcs['vcs']}+{url}" + (f"@{commit}" if commit else ""))
    if url.startswith("file://"):
        return shlex.quote(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    return shlex.quote(url) if url else "gradtx"
