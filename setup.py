"""Builds gradtx's native kernels when the package is installed.

`pip install .` and `pip install -e .` compile `gradtx/fused.cc` into `gradtx/libgradtx_fused.so`
against the XLA FFI headers of the jaxlib in the build environment (a build requirement in
`pyproject.toml`), and ship it inside the package: the wheel carries it, an editable install
(or `python setup.py build_ext --inplace`) leaves it beside the sources. `gradtx.native` loads it
with ctypes; nothing is compiled after installation.

A build that cannot succeed (no C++ compiler, no FFI headers, a compile error) does not fail the
install: the package is installed without the library, and `gradtx/_native_build.json` records
why, which `gradtx.native_status()` reports together with the command that builds it.

The compiler is `$CXX`, else the first of c++, g++, clang++ on PATH. The flags are fixed (no
`$CXXFLAGS`): the kernels are tested against the pure-JAX step to float32 round-off, which
`-ffp-contract=off` (no fused multiply-adds) guarantees and flags like `-ffast-math` would break.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NAME = "gradtx.libgradtx_fused"  # the Extension's name; the file is gradtx/libgradtx_fused.so
LIBRARY = "libgradtx_fused.so"  # gradtx/native.py looks for these two names
RECORD = "_native_build.json"
SOURCE = "gradtx/fused.cc"
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=off", "-w"]
COMPILERS = ("c++", "g++", "clang++")
TIMEOUT_S = 600


class _NotBuilt(Exception):
    """Why the library cannot be built here; the message completes "installed without ...: "."""


def _ffi_headers() -> tuple[Path, str, str]:
    """jaxlib's include directory, jaxlib's version, and the XLA FFI API version it declares."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise _NotBuilt(
            "jaxlib, whose XLA FFI headers the kernels are compiled against, is not installed in "
            f"the build environment ({sys.executable})"
        )
    include = Path(next(iter(spec.submodule_search_locations))) / "include"  # jax.ffi.include_dir
    version = importlib.metadata.version("jaxlib")
    c_api = include / "xla/ffi/api/c_api.h"
    if not (include / "xla/ffi/api/ffi.h").is_file() or not c_api.is_file():
        raise _NotBuilt(f"jaxlib {version} has no XLA FFI headers ({include}/xla/ffi/api)")
    text = c_api.read_text(errors="replace")
    major = re.search(r"#define XLA_FFI_API_MAJOR (\d+)", text)
    minor = re.search(r"#define XLA_FFI_API_MINOR (\d+)", text)
    api = f"{major.group(1)}.{minor.group(1)}" if major and minor else "unknown"
    return include, version, api


def _compiler() -> list[str]:
    """The C++ compiler's command: `$CXX` (may carry flags), else c++, g++ or clang++ on PATH."""
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        command = shlex.split(cxx)
        if shutil.which(command[0]) is None:
            raise _NotBuilt(
                f"no C++ compiler was found at install time (CXX={cxx!r} is not an executable)"
            )
        return command
    for name in COMPILERS:
        path = shutil.which(name)
        if path is not None:
            return [path]
    raise _NotBuilt(
        "no C++ compiler was found at install time ($CXX is unset and none of "
        f"{', '.join(COMPILERS)} is on PATH)"
    )


def _compile(source: Path, target: Path) -> dict:
    """Compiles `source` into `target`; the build record (`built`, and `reason` when not)."""
    record: dict = {"built": False, "reason": None, "source_sha256": None}
    try:
        record["source_sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
        if sys.platform == "win32":
            raise _NotBuilt("the native kernels are built on Linux and macOS only, not on Windows")
        include, record["jaxlib"], record["ffi_api"] = _ffi_headers()
        compiler = _compiler()
        command = [*compiler, *FLAGS, f"-I{include}", str(source), "-o", str(target)]
        record["command"] = shlex.join(command)
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            message = f"the C++ compiler took over {TIMEOUT_S} s: {record['command']}"
            raise _NotBuilt(message) from err
        except OSError as err:
            raise _NotBuilt(f"the C++ compiler {compiler[0]} could not be run: {err}") from err
        record["seconds"] = round(time.perf_counter() - start, 2)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()[-1500:]
            raise _NotBuilt(
                f"the C++ compiler failed at install time (exit {result.returncode}): "
                f"{record['command']}\n{output}"
            )
        record["built"] = True
    except _NotBuilt as err:
        record["reason"] = str(err)
    except Exception as err:  # a bug here must not fail the install: record it instead
        record["reason"] = f"the build step failed unexpectedly: {type(err).__name__}: {err}"
    if not record["built"] and target.exists():
        target.unlink()  # never ship a library left over from an earlier build
    return record


class build_native(build_ext):
    """`build_ext` for the kernels: a plain shared library, built or recorded as not built."""

    def get_ext_filename(self, fullname: str) -> str:
        # Called with the full name and (by get_ext_fullpath) with its last part alone.
        *package, name = fullname.split(".")
        if name == NAME.rpartition(".")[2]:
            return os.path.join(*package, LIBRARY)  # no Python ABI tag: ctypes loads it
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if ext.name != NAME:
            return super().build_extension(ext)
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        record = _compile(Path(ext.sources[0]), target)
        (target.parent / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if record["built"]:
            print(f"gradtx: built the native kernels in {record['seconds']} s: {record['command']}")
        else:
            print(
                "gradtx: WARNING: installing without the native kernels (apply_step will take "
                f"the pure-JAX step): {record['reason']}",
                file=sys.stderr,
            )

    def _record_paths(self) -> tuple[str, str]:
        """The build record in the build directory, and in the source tree."""
        built = os.path.join(self.build_lib, "gradtx", RECORD)
        package_dir = self.get_finalized_command("build_py").get_package_dir("gradtx")
        return built, os.path.join(package_dir, RECORD)

    def copy_extensions_to_source(self) -> None:
        """Editable installs and `--inplace`: the library (when built) and its record."""
        built, in_tree = self._record_paths()
        library = os.path.join(os.path.dirname(in_tree), LIBRARY)
        if os.path.exists(library):
            os.remove(library)  # a failed rebuild must not leave the last one behind
        super().copy_extensions_to_source()  # the Extension is optional: skipped when not built
        self.copy_file(built, in_tree, level=self.verbose)

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        built, _ = self._record_paths()
        return outputs if self.inplace else [*outputs, built]

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()
        if self.inplace:
            built, in_tree = self._record_paths()
            mapping[built] = in_tree
        return mapping


if __name__ == "__main__":  # as pip's build backend (setuptools.build_meta) runs it
    setup(
        ext_modules=[Extension(NAME, sources=[SOURCE], language="c++", optional=True)],
        cmdclass={"build_ext": build_native},
    )
