"""One process of a multi-process test: joins JAX's distributed runtime, then runs jobs.

Started by `tests/_multihost.py` as

    python tests/multihost/worker.py --coordinator 127.0.0.1:PORT --num-processes N
        --process-id I --out DIR --jobs '[{"job": "train", "name": "dp"}, ...]'

Each job writes what this process saw to `DIR/<name>.p<I>.pkl`, read back by
`tests/test_multihost.py`:

* `train`: the run of `common.py` with `gd.process_batches` and a jitted step on the global
  mesh, the optimizer state replicated or split over every device (`zero`), saving Orbax
  checkpoints (params, optimizer state, data position) at given positions, resuming from the
  latest one in a directory, and optionally stopping at a position to be killed there.
* `bad_input`: `process_batches` with arguments that are wrong on every process or on one.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
import warnings
from pathlib import Path

import common
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx
from gradtx import data as gd

KILL_ME = "ready to be killed at"


def log(*parts) -> None:
    print(f"[process {jax.process_index()}]", *parts, flush=True)


def write(out: Path, name: str, result: dict) -> None:
    path = out / f"{name}.p{jax.process_index()}.pkl"
    with open(path.with_suffix(".tmp"), "wb") as f:
        pickle.dump(result, f)
    os.replace(path.with_suffix(".tmp"), path)


def host(tree):
    """This process's copy of a replicated tree, as numpy."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def local_rows(array) -> np.ndarray:
    """The rows of a batch-sharded array this process holds, in the order of the global batch."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def shard_layout(tree) -> dict:
    """Per leaf of a global tree: its size, and the slices and bytes this process holds."""
    layout = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        layout[jax.tree_util.keystr(path)] = {
            "shape": leaf.shape,
            "nbytes": leaf.nbytes,
            "spec": str(leaf.sharding.spec),
            "fully_addressable": leaf.is_fully_addressable,
            "shards": [
                (
                    s.device.id,
                    tuple(
                        (i.start or 0, n if i.stop is None else i.stop)
                        for i, n in zip(s.index, leaf.shape)
                    ),
                    s.data.nbytes,
                )
                for s in leaf.addressable_shards
            ],
        }
    return layout


def train(job: dict, out: Path) -> None:
    name = job["name"]
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = NamedSharding(mesh, P())
    data = common.dataset()
    key = jax.random.key(common.SEED)

    params = gd.replicate(common.init_params(), mesh)
    opt_state = jax.jit(common.OPT.init, out_shardings=replicated)(params)
    if job.get("zero"):
        opt_state = gd.shard_state(opt_state, mesh)
    state_sharding = jax.tree.map(lambda x: x.sharding, opt_state)
    params_sharding = jax.tree.map(lambda x: x.sharding, params)
    step = jax.jit(
        common.train_step,
        out_shardings=(params_sharding, state_sharding, replicated),
        donate_argnums=(0, 1),
    )

    save_at = {tuple(p) for p in job.get("save_at", [])}
    manager = None
    if job.get("ckpt") or job.get("resume"):
        manager = ocp.CheckpointManager(Path(job.get("resume") or job["ckpt"]).resolve())
    first_epoch, first_step, resumed = 0, 0, None
    if job.get("resume"):
        latest = manager.latest_step()
        abstract = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
        )
        restored = manager.restore(
            latest,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract(params)),
                opt_state=ocp.args.StandardRestore(abstract(opt_state)),
                position=ocp.args.JsonRestore(),
            ),
        )
        params = restored.params
        opt_state = gradtx.restore_state(opt_state, restored.opt_state)
        position = restored.position
        key = jax.random.wrap_key_data(np.asarray(position["key"], np.uint32))
        first_epoch, first_step = position["epoch"], position["step"]
        resumed = {"checkpoint": latest, **position}
        log("resumed from checkpoint", latest, position)

    losses, ids, saved = [], [], []
    for epoch in range(first_epoch, common.EPOCHS):
        start = first_step if epoch == first_epoch else 0
        batches = gd.process_batches(
            common.epoch_key(key, epoch),
            data,
            common.GLOBAL_BATCH,
            mesh,
            with_mask=True,
            start_step=start,
        )
        for t, (batch, mask) in enumerate(batches, start=start):
            ids.append((epoch, t, local_rows(batch["id"])[local_rows(mask)]))
            params, opt_state, loss = step(params, opt_state, batch, mask)
            losses.append((epoch, t, float(loss)))
            position = (epoch, t + 1)
            if position in save_at:
                global_step = epoch * common.STEPS_PER_EPOCH + t + 1
                manager.save(
                    global_step,
                    args=ocp.args.Composite(
                        params=ocp.args.StandardSave(params),
                        opt_state=ocp.args.StandardSave(opt_state),
                        position=ocp.args.JsonSave(
                            {
                                "epoch": epoch,
                                "step": t + 1,
                                "key": np.asarray(jax.random.key_data(key)).tolist(),
                                "num_processes": jax.process_count(),
                            }
                        ),
                    ),
                )
                manager.wait_until_finished()
                saved.append(global_step)
                log("saved checkpoint", global_step, "at", position)
            if job.get("die_at") and tuple(job["die_at"]) == position:
                if jax.process_index() == job["victim"]:
                    log(KILL_ME, position)
                    time.sleep(600)  # the harness kills this process now
                log("going on past", position)
    if manager is not None:
        manager.close()
    write(
        out,
        name,
        {
            "params": host(params),
            "losses": losses,
            "ids": ids,
            "saved": saved,
            "rows": gd.process_rows(common.GLOBAL_BATCH, mesh).tolist(),
            "resumed": resumed,
            "state_layout": shard_layout(opt_state),
            "num_devices": jax.device_count(),
            "local_devices": jax.local_device_count(),
        },
    )
    log("job done:", name)


def bad_input(job: dict, out: Path) -> None:
    """Each case calls `process_batches` on every process and records what each one raised; a
    barrier after each case shows that no process is left waiting for the others."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    data = common.dataset()
    key = jax.random.key(common.SEED)
    me = jax.process_index()
    last = jax.process_count() - 1
    b = common.GLOBAL_BATCH
    cases = {
        # wrong on every process
        "batch_not_divisible": lambda: gd.process_batches(key, data, b + 2, mesh, with_mask=True),
        "no_such_axis": lambda: gd.process_batches(key, data, b, mesh, "batch", with_mask=True),
        # wrong on one process only: the others must not wait for it
        "one_process_bad_axis": lambda: gd.process_batches(
            key, data, b, mesh, "batch" if me == last else "data", with_mask=True
        ),
        "one_process_batch_too_big": lambda: gd.process_batches(
            key, data, 1000 if me == last else b, mesh, with_mask=True
        ),
        # right on every process, but not the same everywhere
        "row_counts_differ": lambda: gd.process_batches(
            key,
            {k: v[: len(v) - 8 * (me == last)] for k, v in data.items()},
            b,
            mesh,
            with_mask=True,
        ),
        "batch_sizes_differ": lambda: gd.process_batches(
            key, data, 2 * b if me == last else b, mesh, with_mask=True
        ),
        "keys_differ": lambda: gd.process_batches(
            jax.random.fold_in(key, me), data, b, mesh, with_mask=True
        ),
        "start_steps_differ": lambda: gd.process_batches(
            key, data, b, mesh, with_mask=True, start_step=int(me == last)
        ),
        "permutations_differ": lambda: gd.process_batches(
            key,
            data,
            b,
            mesh,
            with_mask=True,
            permutation=gd.feistel_permutation if me == last else jax.random.permutation,
        ),
    }
    result = {}
    for case, call in cases.items():
        try:
            call()
            result[case] = None
        except Exception as e:  # noqa: BLE001 - recorded for the test to judge
            result[case] = (type(e).__name__, str(e))
        multihost_utils.sync_global_devices(f"after {case}")
        log("case done:", case, result[case] and result[case][0])
    write(out, job.get("name", "bad_input"), result)


JOBS = {"train": train, "bad_input": bad_input}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=json.loads, required=True)
    parser.add_argument("--heartbeat-timeout", type=int, default=10)
    args = parser.parse_args(argv)
    warnings.simplefilter("error")  # as in the test suite (pyproject.toml's filterwarnings)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_numpy_dtype_promotion", "strict")  # as in tests/conftest.py
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.distributed.initialize(
        args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=args.heartbeat_timeout,
        shutdown_timeout_seconds=30,
    )
    log(f"joined: {jax.process_count()} processes, {jax.device_count()} devices")
    args.out.mkdir(parents=True, exist_ok=True)
    for job in args.jobs:
        JOBS[job["job"]](job, args.out)
    log("all jobs done")


if __name__ == "__main__":
    main(sys.argv[1:])
