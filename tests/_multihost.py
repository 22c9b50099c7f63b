"""A harness that runs one script in N local processes joined by JAX's distributed runtime.

`run_processes(script, n, ...)` starts `n` Python processes on this machine, each with
`local_devices` CPU devices, and passes each the coordinator address (a free port on 127.0.0.1),
the process count and its own index; the script calls `jax.distributed.initialize` with them
(see `tests/multihost/worker.py`). Every process writes its output (stdout and stderr) to its
own log. The harness waits until all have ended or `timeout` seconds have passed, then kills
whatever is left (each process is the leader of its own process group, and the whole group is
killed), so no child outlives a test. `check(results)` fails with every process's log tail
unless all of them ended with status 0.

A process can be sent a signal when a line appears in its log (`signal_on`), to kill it at a
known point, mid-epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAIL_LINES = 40


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(local_devices: int) -> dict[str, str]:
    """The environment of one process: this one's, without pytest's device count or any
    distributed settings, with `local_devices` CPU devices and this checkout on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


@dataclasses.dataclass
class ProcessResult:
    """How one process ended."""

    index: int
    pid: int  # also its process group id
    returncode: int | None  # negative: ended by that signal; None: never ended (killed by us)
    seconds: float  # from the start of all processes to the end of this one
    log_path: Path
    timed_out: bool = False
    signalled: int | None = None  # the signal the harness sent it (`signal_on`), if any
    signalled_at: float | None = None  # when, in seconds from the start

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.log.splitlines()[-lines:])


class MultiProcessError(AssertionError):
    """Some process failed or hung; the message holds every process's log tail."""


def describe(results: Sequence[ProcessResult], lines: int = TAIL_LINES) -> str:
    parts = []
    for r in results:
        status = "timed out, killed" if r.timed_out else f"exit status {r.returncode}"
        if r.signalled is not None:
            status += f", sent signal {r.signalled} at {r.signalled_at:.1f} s"
        parts.append(
            f"--- process {r.index}: {status} after {r.seconds:.1f} s; last {lines} lines of "
            f"{r.log_path}:\n{r.tail(lines)}"
        )
    return "\n".join(parts)


def check(results: Sequence[ProcessResult]) -> None:
    """Raises `MultiProcessError` with every log tail unless every process exited with 0."""
    if any(r.timed_out or r.returncode != 0 for r in results):
        raise MultiProcessError("a process failed or hung:\n" + describe(results))


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(proc.pid, sig)


def run_processes(
    script: str | Path,
    num_processes: int,
    args: Sequence[str] = (),
    *,
    log_dir: Path,
    local_devices: int = 2,
    timeout: float = 90.0,
    signal_on: Mapping[int, tuple[str, int]] | None = None,
) -> list[ProcessResult]:
    """Runs `python script --coordinator ADDR --num-processes N --process-id I *args` N times.

    Args:
        script: the script every process runs.
        num_processes: N.
        args: further command-line arguments, the same for every process.
        log_dir: where process I writes `process-I.log`.
        local_devices: CPU devices per process (`--xla_force_host_platform_device_count`).
        timeout: seconds from the start until every process still running is killed.
        signal_on: `{I: (text, signal)}`: send `signal` to process I's group once `text`
            appears in its log.

    Returns:
        One `ProcessResult` per process, in order; pass them to `check` to require success.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    pending_signals = dict(signal_on or {})
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    ended: dict[int, float] = {}
    signalled: dict[int, tuple[int, float]] = {}
    timed_out: set[int] = set()
    start = time.monotonic()
    try:
        for i in range(num_processes):
            log = log_dir / f"process-{i}.log"
            logs.append(log)
            command = [
                sys.executable,
                str(script),
                "--coordinator",
                address,
                "--num-processes",
                str(num_processes),
                "--process-id",
                str(i),
                *args,
            ]
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        command,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=child_env(local_devices),
                        cwd=ROOT,
                        start_new_session=True,  # its own process group, killed as a whole
                    )
                )
        while len(ended) < num_processes:
            now = time.monotonic()
            for i, proc in enumerate(procs):
                if i not in ended and proc.poll() is not None:
                    ended[i] = now - start
            for i, (text, sig) in list(pending_signals.items()):
                if i in ended:
                    del pending_signals[i]
                elif text in logs[i].read_text(errors="replace"):
                    _kill_group(procs[i], sig)
                    signalled[i] = (sig, now - start)
                    del pending_signals[i]
            if now - start > timeout:
                for i, proc in enumerate(procs):
                    if i not in ended:
                        _kill_group(proc)
                        timed_out.add(i)
                break
            time.sleep(0.05)
    finally:
        for proc in procs:  # nothing outlives the harness, even when it is interrupted
            if proc.poll() is None:
                _kill_group(proc)
        for proc in procs:
            proc.wait()
    return [
        ProcessResult(
            index=i,
            pid=proc.pid,
            returncode=None if i in timed_out else proc.returncode,
            seconds=ended.get(i, time.monotonic() - start),
            log_path=logs[i],
            timed_out=i in timed_out,
            signalled=signalled[i][0] if i in signalled else None,
            signalled_at=signalled[i][1] if i in signalled else None,
        )
        for i, proc in enumerate(procs)
    ]
