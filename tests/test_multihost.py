"""Several processes for real: JAX's distributed runtime on this machine, 2 and 4 processes.

Each launch starts N local processes of 2 CPU devices each (`tests/_multihost.py`), joined by
`jax.distributed.initialize` over 127.0.0.1 with gloo collectives, all running
`tests/multihost/worker.py`. Four launches, each shared by the tests that read it:

* `two`: 2 processes: data-parallel training (replicated state), the same with the optimizer
  state split over the 4 devices (ZeRO-1) saving an Orbax checkpoint mid-epoch, bad input;
* `four`: 4 processes: resume that checkpoint (2 -> 4), train data-parallel and ZeRO-1 from
  scratch, the latter saving a checkpoint mid-epoch;
* `died`: 2 processes, checkpointing every 2 steps; one is killed (SIGKILL) mid-epoch;
* `restarted`: 2 processes: restart the killed run from its last checkpoint, and resume the
  4-process checkpoint (4 -> 2).

The oracle is `common.reference()`: the same run in this one process, on the same global
batches (`gd.batches` with the same key).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from gradtx import data as gd
from tests import _multihost as mh
from tests.multihost import common

WORKER = Path(__file__).resolve().parent / "multihost" / "worker.py"
B, T, M = common.GLOBAL_BATCH, common.STEPS_PER_EPOCH, common.NUM_EXAMPLES
MID_EPOCH_2P = (1, 2)  # the 2-process run's checkpoint: epoch 1, before its batch 2
MID_EPOCH_4P = (0, 4)
DIE_AT = (1, 3)  # the killed run: checkpoints after every 2 steps, killed after step 3 of epoch 1


def launch(out: Path, num_processes: int, jobs: list[dict], *, timeout: float, **kwargs):
    results = mh.run_processes(
        WORKER,
        num_processes,
        ["--out", str(out), "--jobs", json.dumps(jobs)],
        log_dir=out,
        timeout=timeout,
        **kwargs,
    )
    ends = ", ".join(f"process {r.index} ended at {r.seconds:.1f} s" for r in results)
    print(f"\n{out.name}: {num_processes} processes, {ends}")  # shown with pytest -s
    return results


def load(out: Path, name: str, num_processes: int) -> list[dict]:
    return [pickle.loads((out / f"{name}.p{p}.pkl").read_bytes()) for p in range(num_processes)]


@pytest.fixture
def launched(request):
    """The launch with `num_processes` processes that trained "dp" and "zero" from scratch."""
    return lambda num_processes: request.getfixturevalue({2: "two", 4: "four"}[num_processes])


@pytest.fixture(scope="module")
def reference():
    return common.reference()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    jobs = [
        {"job": "train", "name": "dp"},
        {
            "job": "train",
            "name": "zero",
            "zero": True,
            "ckpt": str(out / "ckpt"),
            "save_at": [MID_EPOCH_2P],
        },
        {"job": "bad_input"},
    ]
    mh.check(launch(out, 2, jobs, timeout=150))
    return out


@pytest.fixture(scope="module")
def four(tmp_path_factory, two):
    out = tmp_path_factory.mktemp("four")
    jobs = [
        {"job": "train", "name": "resumed", "zero": True, "resume": str(two / "ckpt")},
        {"job": "train", "name": "dp"},
        {
            "job": "train",
            "name": "zero",
            "zero": True,
            "ckpt": str(out / "ckpt"),
            "save_at": [MID_EPOCH_4P],
        },
    ]
    mh.check(launch(out, 4, jobs, timeout=240))
    return out


@pytest.fixture(scope="module")
def died(tmp_path_factory):
    out = tmp_path_factory.mktemp("died")
    every_2 = [(e, t) for e in range(common.EPOCHS) for t in range(2, T + 1, 2)]
    jobs = [
        {
            "job": "train",
            "name": "died",
            "zero": True,
            "ckpt": str(out / "ckpt"),
            "save_at": every_2,
            "die_at": DIE_AT,
            "victim": 1,
        }
    ]
    kill = {1: (f"ready to be killed at {DIE_AT}", signal.SIGKILL)}
    results = launch(out, 2, jobs, timeout=150, signal_on=kill)
    return out, results


@pytest.fixture(scope="module")
def restarted(tmp_path_factory, died, four):
    out = tmp_path_factory.mktemp("restarted")
    jobs = [
        {"job": "train", "name": "restart", "zero": True, "resume": str(died[0] / "ckpt")},
        {"job": "train", "name": "resumed", "zero": True, "resume": str(four / "ckpt")},
    ]
    mh.check(launch(out, 2, jobs, timeout=150))
    return out


def assert_same_params(runs, reference):
    for run in runs:
        for name, want in reference["params"].items():
            np.testing.assert_allclose(run["params"][name], want, rtol=1e-5, atol=1e-6)
    for run in runs[1:]:  # every process holds the same replicated params, bit for bit
        for name in reference["params"]:
            np.testing.assert_array_equal(run["params"][name], runs[0]["params"][name])


def expected_ids(epoch: int, step: int, rows: list[int]) -> np.ndarray:
    """The real examples of rows `rows` of global batch `step` of `epoch`, from the plan."""
    plan = gd.epoch_indices(common.epoch_key(jax.random.key(common.SEED), epoch), M, B)
    return np.asarray(plan.indices)[step, rows][np.asarray(plan.mask)[step, rows]]


def assert_reads(runs, positions):
    """Each process read exactly its rows of each global batch at `positions`: the processes'
    rows are disjoint and together make the batch."""
    num_processes = len(runs)
    for p, run in enumerate(runs):  # jax.make_mesh puts each process's devices in a block
        np.testing.assert_array_equal(
            run["rows"], np.arange(p * B // num_processes, (p + 1) * B // num_processes)
        )
        assert [(e, t) for e, t, _ in run["ids"]] == positions
        for e, t, ids in run["ids"]:
            np.testing.assert_array_equal(ids, expected_ids(e, t, run["rows"]))
    for i, (e, t) in enumerate(positions):
        together = np.concatenate([run["ids"][i][2] for run in runs])
        assert len(set(together.tolist())) == len(together)  # disjoint
        np.testing.assert_array_equal(
            np.sort(together), np.sort(expected_ids(e, t, list(range(B))))
        )


def epoch_counts(*id_lists) -> dict[int, np.ndarray]:
    """How often each example was read in each epoch, over the given runs' reads."""
    counts = {e: np.zeros(M, np.int64) for e in range(common.EPOCHS)}
    for ids in id_lists:
        for e, _, batch_ids in ids:
            np.add.at(counts[e], batch_ids, 1)
    return counts


def positions_from(epoch: int, step: int) -> list[tuple[int, int]]:
    every = [(e, t) for e in range(common.EPOCHS) for t in range(T)]
    return every[every.index((epoch, step)) :]


# ----------------------------------------------------------------------------
# The harness itself.


def test_harness_fails_with_every_log_tail_and_leaves_no_process(tmp_path):
    script = Path(__file__).resolve().parent / "multihost" / "misbehave.py"
    results = mh.run_processes(script, 2, log_dir=tmp_path, timeout=5)
    assert results[1].returncode == 3 and not results[1].timed_out
    assert results[0].timed_out and results[0].returncode is None
    with pytest.raises(mh.MultiProcessError) as failure:
        mh.check(results)
    message = str(failure.value)
    assert "process 1 fails now" in message and "process 0 waits forever" in message
    assert "process 0: timed out, killed" in message and "process 1: exit status 3" in message
    for result in results:  # the whole process group of each child is gone
        with pytest.raises(ProcessLookupError):
            os.killpg(result.pid, 0)


def test_children_get_their_own_device_count_and_a_free_loopback_port():
    env = mh.child_env(3)
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
    assert env["JAX_PLATFORMS"] == "cpu"
    assert "8" not in env["XLA_FLAGS"]  # not pytest's 8 devices (tests/conftest.py)
    assert 0 < mh.free_port() < 65536


# ----------------------------------------------------------------------------
# Data-parallel training and ZeRO-1 across processes.


@pytest.mark.parametrize("num_processes", [2, 4])
def test_data_parallel_training_equals_one_process(num_processes, launched, reference):
    runs = load(launched(num_processes), "dp", num_processes)
    assert {r["num_devices"] for r in runs} == {2 * num_processes}
    assert_same_params(runs, reference)
    for run in runs:
        np.testing.assert_allclose([x for *_, x in run["losses"]], reference["losses"], rtol=1e-5)


@pytest.mark.parametrize("num_processes", [2, 4])
def test_every_example_is_read_once_per_epoch_across_processes(num_processes, launched):
    runs = load(launched(num_processes), "dp", num_processes)
    assert_reads(runs, positions_from(0, 0))
    counts = epoch_counts(*(run["ids"] for run in runs))
    for e in range(common.EPOCHS):
        np.testing.assert_array_equal(counts[e], np.ones(M))


@pytest.mark.parametrize("num_processes", [2, 4])
def test_zero1_state_is_split_over_every_process_with_the_same_trajectory(
    num_processes, launched, reference
):
    out = launched(num_processes)
    zero, dp = load(out, "zero", num_processes), load(out, "dp", num_processes)
    assert_same_params(zero, reference)
    for z, d in zip(zero, dp):
        np.testing.assert_allclose(
            [x for *_, x in z["losses"]], [x for *_, x in d["losses"]], rtol=1e-6
        )
    devices = 2 * num_processes
    layout = zero[0]["state_layout"]
    split = [leaf for leaf, info in layout.items() if info["spec"] != "P()"]
    assert "[0].mu['w1']" in split and "[0].nu['w2']" in split
    for leaf in layout:
        infos = [z["state_layout"][leaf] for z in zero]
        if leaf in split:
            # This process holds 2 of the `devices` slices, and no process holds another's.
            for info in infos:
                assert not info["fully_addressable"]
                assert sum(nbytes for *_, nbytes in info["shards"]) == info["nbytes"] * 2 // devices
            slices = [s for info in infos for _, s, _ in info["shards"]]
            assert len(set(slices)) == devices == len(slices)
        else:  # scalars and odd shapes stay replicated: a full copy per device
            for info in infos:
                assert all(nbytes == info["nbytes"] for *_, nbytes in info["shards"])
    # In all, a process holds 2/devices of every split leaf and 2 copies of the others.
    held = lambda run: sum(n for info in run["state_layout"].values() for *_, n in info["shards"])
    total = sum(info["nbytes"] for info in layout.values())
    split_bytes = sum(layout[leaf]["nbytes"] for leaf in split)
    for z, d in zip(zero, dp):
        assert held(z) == split_bytes * 2 // devices + (total - split_bytes) * 2
        assert held(d) == total * 2


# ----------------------------------------------------------------------------
# Checkpoints: resume mid-epoch with the same or another number of processes.


def test_checkpoint_mid_epoch_resumes_with_4_processes_as_if_never_stopped(two, four, reference):
    before = load(two, "zero", 2)
    after = load(four, "resumed", 4)
    assert before[0]["saved"] == [MID_EPOCH_2P[0] * T + MID_EPOCH_2P[1]]
    for run in after:
        assert run["resumed"]["num_processes"] == 2
        assert (run["resumed"]["epoch"], run["resumed"]["step"]) == MID_EPOCH_2P
    assert_reads(after, positions_from(*MID_EPOCH_2P))
    assert_same_params(after, reference)
    # The 2-process run up to the checkpoint and the 4-process run after it read every example
    # exactly once per epoch.
    upto = [[r for r in run["ids"] if (r[0], r[1]) < MID_EPOCH_2P] for run in before]
    counts = epoch_counts(*upto, *(run["ids"] for run in after))
    for e in range(common.EPOCHS):
        np.testing.assert_array_equal(counts[e], np.ones(M))


def test_checkpoint_mid_epoch_resumes_with_2_processes_as_if_never_stopped(
    four, restarted, reference
):
    before = load(four, "zero", 4)
    after = load(restarted, "resumed", 2)
    assert before[0]["saved"] == [MID_EPOCH_4P[0] * T + MID_EPOCH_4P[1]]
    for run in after:
        assert run["resumed"]["num_processes"] == 4
        assert (run["resumed"]["epoch"], run["resumed"]["step"]) == MID_EPOCH_4P
    assert_reads(after, positions_from(*MID_EPOCH_4P))
    assert_same_params(after, reference)
    upto = [[r for r in run["ids"] if (r[0], r[1]) < MID_EPOCH_4P] for run in before]
    counts = epoch_counts(*upto, *(run["ids"] for run in after))
    for e in range(common.EPOCHS):
        np.testing.assert_array_equal(counts[e], np.ones(M))


# ----------------------------------------------------------------------------
# A process dies.


def test_a_killed_process_stops_the_others_and_a_restart_ends_equal(died, restarted, reference):
    out, results = died
    victim, survivor = results[1], results[0]
    logs = mh.describe(results)
    assert victim.signalled == signal.SIGKILL and victim.returncode == -signal.SIGKILL, logs
    # The survivor waits in the next step's all-reduce; JAX's coordination service sees the
    # missing heartbeats (10 s in worker.py) and ends it with an error, before our timeout.
    assert not survivor.timed_out and survivor.returncode not in (0, None), logs
    assert survivor.seconds > victim.signalled_at, logs  # it was waiting, it did not crash first
    assert "another task died" in survivor.log, logs
    assert "stopped sending heartbeats" in survivor.log, logs
    assert "job done" not in survivor.log, logs
    last = DIE_AT[0] * T + DIE_AT[1] - 1  # checkpoints every 2 steps: the last one before
    assert f"saved checkpoint {last} at" in survivor.log, logs
    assert f"saved checkpoint {last + 2} at" not in survivor.log, logs

    after = load(restarted, "restart", 2)
    for run in after:
        assert run["resumed"]["checkpoint"] == last
    assert_reads(after, positions_from(*divmod(last, T)))
    assert_same_params(after, reference)


# ----------------------------------------------------------------------------
# Bad input: every process raises, none waits.

BAD_INPUT = {
    "batch_not_divisible": [
        "process_batches: global batch size 18 does not divide over the 4 devices of mesh axis "
        "'data'; use a multiple of 4 (e.g. 16 or 20)"
    ]
    * 2,
    "no_such_axis": [
        "process_batches: axis 'batch' is not an axis of the mesh; its axes are ('data',): "
        "pass one of them (or a tuple of them) as axis"
    ]
    * 2,
    "one_process_bad_axis": [
        "process_batches: 1 of 2 processes rejected their arguments, so every process stops "
        "here rather than wait for them in a collective. process 1: ValueError: "
        "process_batches: axis 'batch' is not an axis of the mesh",
        "process_batches: axis 'batch' is not an axis of the mesh",
    ],
    "one_process_batch_too_big": [
        "process 1: ValueError: process_batches: global_batch_size must be <= the number of "
        "examples, got global_batch_size=1000 for 88 examples",
        "process_batches: global_batch_size must be <= the number of examples, "
        "got global_batch_size=1000",
    ],
    "row_counts_differ": [
        "process_batches: the 2 processes disagree on the number of examples in data: 88 on "
        "process 0; 80 on process 1; every process passes the whole dataset"
    ]
    * 2,
    "batch_sizes_differ": [
        "process_batches: the 2 processes disagree on global_batch_size: 16 on process 0; 32 on "
        "process 1; pass the same global_batch_size on every process"
    ]
    * 2,
    "keys_differ": ["process_batches: the 2 processes disagree on key: ["] * 2,
    "start_steps_differ": [
        "process_batches: the 2 processes disagree on start_step: 0 on process 0; 1 on "
        "process 1; resume every process from the same checkpointed (epoch, step)"
    ]
    * 2,
    "permutations_differ": [
        "process_batches: the 2 processes disagree on the epoch plan drawn from the same key "
        "and sizes"
    ]
    * 2,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_raises_a_clear_error_on_every_process(case, two):
    results = load(two, "bad_input", 2)  # written after a barrier following every case
    for p, result in enumerate(results):
        assert result[case] is not None, f"process {p} raised nothing for {case}"
        kind, message = result[case]
        assert kind == "ValueError"
        assert BAD_INPUT[case][p] in message
