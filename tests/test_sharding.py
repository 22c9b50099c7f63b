"""Tests for gradtx.data on several devices: shard, data parallelism, ZeRO-1, multi-host rows.

conftest gives this process 8 CPU devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradtx
from gradtx import data as gd
from gradtx import sharding

KEY = jax.random.key(0)
N_DEV = 8


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    assert jax.device_count() == N_DEV, "conftest should give 8 CPU devices"


def _mesh(kind="explicit"):
    types = (AxisType.Explicit if kind == "explicit" else AxisType.Auto,)
    return jax.make_mesh((N_DEV,), ("data",), axis_types=types)


def _problem(n=64, features=16, classes=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int32)
    params = {
        "w": (0.1 * rng.normal(size=(features, classes))).astype(np.float32),
        "b": np.zeros((classes,), np.float32),
    }
    return jax.device_put({"x": x, "y": y}), jax.device_put(params)


def _loss(params, batch):
    logits = batch["x"] @ params["w"] + params["b"][None, :]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]))


def _make_step(opt):
    def step(params, state, batch):
        value, grads = jax.value_and_grad(_loss)(params, batch)
        updates, state = opt.update(grads, state, params)
        return gradtx.apply_updates(params, updates), state, value

    return step


def _assert_trees_close(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


def _per_device_bytes(tree):
    """Bytes that device 0 stores for `tree`."""
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------
# shard / replicate.


def test_shard_splits_the_leading_axis():
    mesh = _mesh()
    batch = {"x": jnp.arange(32.0).reshape(16, 2), "mask": jnp.ones((16,), jnp.bool_)}
    placed = gd.shard(batch, mesh)
    for leaf, original in zip(jax.tree.leaves(placed), jax.tree.leaves(batch)):
        assert leaf.sharding.spec == P("data")
        assert len(leaf.addressable_shards) == N_DEV
        assert leaf.addressable_shards[0].data.shape[0] == 2
        np.testing.assert_array_equal(leaf, original)
    replicated = gd.replicate({"w": jnp.ones((3, 3))}, mesh)
    assert replicated["w"].sharding.spec == P()
    assert replicated["w"].addressable_shards[0].data.shape == (3, 3)


def test_shard_over_two_mesh_axes():
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    placed = gd.shard(jnp.arange(16.0), mesh, axis=("data", "model"))
    assert placed.addressable_shards[0].data.shape == (2,)
    assert gd.shard(jnp.arange(8.0), mesh).addressable_shards[0].data.shape == (2,)


def test_shard_errors_name_the_sizes():
    mesh = _mesh()
    with pytest.raises(ValueError, match=r"shard: batch size 12 of batch\['x'\] does not divide "
                       r"over the 8 devices of mesh axis 'data'; use a batch size that is a "
                       r"multiple of 8"):  # fmt: skip
        gd.shard({"x": jnp.zeros((12, 3))}, mesh)
    with pytest.raises(ValueError, match=r"shard: axis 'batch' is not an axis of the mesh"):
        gd.shard(jnp.zeros((8,)), mesh, axis="batch")
    with pytest.raises(ValueError, match=r"shard: batch\['s'\] is a scalar"):
        gd.shard({"s": jnp.zeros(())}, mesh)
    with pytest.raises(TypeError, match="shard: mesh must be a jax.sharding.Mesh"):
        gd.shard(jnp.zeros((8,)), "data")
    with pytest.raises(ValueError, match=r"scan_epoch: batch_size 12 does not divide over the 8"):
        gd.scan_epoch(lambda c, b, m: (c, 0.0), 0.0, jnp.zeros(24), KEY, 12, mesh=mesh)


# ----------------------------------------------------------------------------
# Data parallelism.


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_data_parallel_step_matches_single_device(kind):
    mesh = _mesh(kind)
    data, params = _problem()
    opt = gradtx.sgd(0.1, momentum=0.9)
    step = jax.jit(_make_step(opt))
    single = (params, opt.init(params))
    parallel = gd.replicate((params, opt.init(params)), mesh)
    for epoch in range(2):
        for batch in gd.batches(jax.random.fold_in(KEY, epoch), data, 16):
            p, s, loss_1 = step(*single, batch)
            single = (p, s)
            p, s, loss_n = step(*parallel, gd.shard(batch, mesh))
            parallel = (p, s)
            np.testing.assert_allclose(loss_n, loss_1, rtol=1e-5)
    _assert_trees_close(parallel, single)
    assert parallel[0]["w"].sharding.is_fully_replicated
    # jit inserted the gradient all-reduce
    batch = gd.shard(next(gd.batches(KEY, data, 16)), mesh)
    assert "all-reduce" in step.lower(*parallel, batch).compile().as_text()


@pytest.mark.parametrize("kind", ["explicit", "auto"])
def test_scan_epoch_on_a_mesh_matches_one_device(kind):
    mesh = _mesh(kind)
    data, params = _problem(n=60)
    opt = gradtx.adam(1e-2)

    def step(carry, batch, mask):
        params, state = carry

        def loss(p):
            logits = batch["x"] @ p["w"] + p["b"][None, :]
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
            return gd.masked_mean(per_example, mask)

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), value

    single, losses_1 = gd.scan_epoch(
        step,
        (params, opt.init(params)),
        data,
        KEY,
        16,
        donate=False,  # params are reused
    )
    carry = gd.replicate((params, opt.init(params)), mesh)
    parallel, losses_n = gd.scan_epoch(step, carry, gd.replicate(data, mesh), KEY, 16, mesh=mesh)
    np.testing.assert_allclose(losses_n, losses_1, rtol=1e-5)
    _assert_trees_close(parallel, single)


def test_zero1_state_sharding_saves_memory_and_trains_the_same():
    mesh = _mesh()
    data, params = _problem(n=64, features=16, classes=8)
    opt = gradtx.adam(1e-2)
    step = _make_step(opt)
    state = opt.init(params)
    replicated = gd.replicate(state, mesh)
    sharded = gd.shard_state(state, mesh)
    shardings = gd.state_sharding(state, mesh)

    moments = lambda s: (s[0].mu, s[0].nu)  # noqa: E731
    assert _per_device_bytes(moments(sharded)) * N_DEV == _per_device_bytes(moments(replicated))
    counter_bytes = sharded[0].count.nbytes  # the step counter stays replicated
    assert (
        _per_device_bytes(sharded)
        == (_per_device_bytes(replicated) - counter_bytes) // N_DEV + counter_bytes
    )

    rep = NamedSharding(mesh, P())
    plain = jax.jit(step)
    zero = jax.jit(step, out_shardings=(rep, shardings, rep))
    p1, s1 = gd.replicate(params, mesh), replicated
    p2, s2 = gd.replicate(params, mesh), sharded
    for batch in gd.batches(KEY, data, 16):
        batch = gd.shard(batch, mesh)
        p1, s1, _ = plain(p1, s1, batch)
        p2, s2, _ = zero(p2, s2, batch)
    _assert_trees_close(p2, p1)
    _assert_trees_close(s2, s1)
    # the state stayed split: still 1/N of the moments per device after training
    assert _per_device_bytes(moments(s2)) * N_DEV == _per_device_bytes(moments(s1))
    assert s2[0].mu["w"].sharding.spec == P("data")


def test_state_sharding_picks_a_divisible_dimension():
    mesh = _mesh()
    state = {
        "a": jnp.zeros((3, 16)),
        "b": jnp.zeros((5,)),
        "c": jnp.zeros(()),
        "d": jnp.zeros((8, 8)),
    }
    specs = jax.tree.map(lambda s: s.spec, gd.state_sharding(state, mesh))
    assert specs == {"a": P(None, "data"), "b": P(), "c": P(), "d": P("data")}


# ----------------------------------------------------------------------------
# Several processes, simulated.


@pytest.mark.parametrize("processes", [1, 2, 4, 8])
@pytest.mark.parametrize("layout", ["blocks", "interleaved"])
def test_process_rows_partition_every_batch(processes, layout):
    mesh = _mesh()
    per = N_DEV // processes
    # "blocks": jax.make_mesh on a GPU/CPU cluster, each host's devices in a row;
    # "interleaved": a mesh whose devices alternate between hosts.
    blocks = layout == "blocks"
    owner = (lambda d: d.id // per) if blocks else (lambda d: d.id % processes)
    b = 32
    rows = [
        gd.process_rows(b, mesh, process_index=p, device_process=owner) for p in range(processes)
    ]
    assert all(len(r) == b // processes for r in rows)
    assert sorted(np.concatenate(rows).tolist()) == list(range(b))
    if blocks:
        for p, r in enumerate(rows):
            np.testing.assert_array_equal(
                r, np.arange(p * b // processes, (p + 1) * b // processes)
            )

    # Each process reads only its rows of the plan; together they read every example once.
    n = 100
    plan = gd.epoch_indices(KEY, n, b)
    local = [np.asarray(plan.indices)[:, r] for r in rows]
    local_masks = [np.asarray(plan.mask)[:, r] for r in rows]
    seen = np.concatenate([ix[m] for ix, m in zip(local, local_masks)])
    assert sorted(seen.tolist()) == list(range(n))

    # And the local rows are what jax.make_array_from_process_local_data maps onto each
    # device: the shards a process addresses, in ascending order of their start.
    global_batch = np.asarray(plan.indices[0])
    index_map = NamedSharding(mesh, P("data")).devices_indices_map((b,))
    for p in range(processes):
        local_batch = global_batch[rows[p]]
        mine = {d: i for d, i in index_map.items() if owner(d) == p}
        starts = sorted({i[0].start or 0 for i in mine.values()})
        for index in mine.values():
            pos = starts.index(index[0].start or 0) * (b // N_DEV)
            np.testing.assert_array_equal(
                local_batch[pos : pos + b // N_DEV], global_batch[index[0]]
            )


def test_process_rows_errors():
    mesh = _mesh()
    with pytest.raises(
        ValueError, match="process_rows: global batch size 12 does not divide over the 8"
    ):
        gd.process_rows(12, mesh)
    with pytest.raises(ValueError, match="process 3 owns no device"):
        gd.process_rows(16, mesh, process_index=3)


def test_process_batches_in_one_process_equal_sharded_batches():
    mesh = _mesh()
    rng = np.random.default_rng(0)
    host = {"x": rng.normal(size=(40, 3)).astype(np.float32), "y": np.arange(40, dtype=np.int32)}
    key = jax.random.fold_in(KEY, 2)
    got = list(gd.process_batches(key, host, 16, mesh, with_mask=True, start_step=1))
    want = list(gd.batches(key, host, 16, with_mask=True, start_step=1))
    assert len(got) == len(want) == 2
    for (gb, gm), (wb, wm) in zip(got, want):
        assert gb["x"].sharding.spec == P("data") and gm.sharding.spec == P("data")
        np.testing.assert_array_equal(gb["x"], wb["x"])
        np.testing.assert_array_equal(gb["y"], wb["y"])
        np.testing.assert_array_equal(gm, wm)
    with pytest.raises(ValueError, match=r"process_batches: 40 examples .* batches of 16"):
        gd.process_batches(key, host, 16, mesh)
    assert len(list(gd.process_batches(key, host, 16, mesh, drop_remainder=True))) == 2


# ----------------------------------------------------------------------------
# Several processes: the same arguments everywhere (the real runs are in test_multihost.py).


def test_process_batches_errors_name_the_value_and_the_fix():
    mesh = _mesh()
    host = {"x": np.zeros((40, 3), np.float32)}
    with pytest.raises(
        ValueError,
        match=r"process_batches: global batch size 12 does not divide over the 8 devices of mesh "
        r"axis 'data'; use a multiple of 8 \(e.g. 8 or 16\)",
    ):
        gd.process_batches(KEY, host, 12, mesh, with_mask=True)
    with pytest.raises(
        ValueError,
        match=r"process_batches: axis 'batch' is not an axis of the mesh; its axes are "
        r"\('data',\): pass one of them",
    ):
        gd.process_batches(KEY, host, 16, mesh, "batch", with_mask=True)


def _facts(data, key=KEY, b=16, start=0, permutation=jax.random.permutation):
    mesh = _mesh()
    n = gd.num_examples(data)
    plan = gd.epoch_indices(key, n, b, permutation=permutation)
    return sharding._batch_facts(data, n, b, key, start, False, True, mesh, "data", plan)


def test_disagreement_names_each_process_value_and_the_fix():
    def reports(*facts, errors=None):
        errors = errors or [None] * len(facts)
        return [{"error": e, "facts": f} for e, f in zip(errors, facts)]

    host = {"x": np.zeros((40, 3), np.float32), "y": np.zeros((40,), np.int32)}
    same = _facts(host)
    assert sharding._disagreement("process_batches", reports(same, same, same)) is None

    short = _facts({k: v[:32] for k, v in host.items()})
    message = sharding._disagreement("process_batches", reports(same, short, same))
    assert message.startswith(
        "process_batches: the 3 processes disagree on the number of examples in data: 40 on "
        "processes 0, 2; 32 on process 1; every process passes the whole dataset"
    )
    wider = _facts({"x": np.zeros((40, 4), np.float32), "y": host["y"]})
    assert "disagree on the leaves of data" in sharding._disagreement("f", reports(same, wider))
    other_key = _facts(host, key=jax.random.key(1))
    message = sharding._disagreement("f", reports(same, other_key))
    assert "disagree on key" in message and "jax.process_index()" in message
    assert "disagree on start_step: 0 on process 0; 2 on process 1" in sharding._disagreement(
        "f", reports(same, _facts(host, start=2))
    )
    feistel = _facts(host, permutation=gd.feistel_permutation)
    assert "same permutation" in sharding._disagreement("f", reports(same, feistel))

    # A process that failed comes first, quoted, even when the facts differ too.
    failed = ["ValueError", "process_batches: axis 'batch' is not an axis of the mesh"]
    message = sharding._disagreement("process_batches", reports(same, {}, errors=[None, failed]))
    assert message == (
        "process_batches: 1 of 2 processes rejected their arguments, so every process stops "
        "here rather than wait for them in a collective. process 1: ValueError: "
        "process_batches: axis 'batch' is not an axis of the mesh"
    )


def test_reports_fit_the_fixed_size_buffer():
    host = {"x": np.zeros((40, 3), np.float32)}
    facts = _facts(host)
    buffer = sharding._encode_report(None, facts)
    assert buffer.shape == (sharding._REPORT_BYTES,) and buffer.dtype == np.uint8
    assert sharding._decode_report(buffer) == {"error": None, "facts": facts}

    # Thousands of leaves: compared by checksum, equal for equal data, different otherwise.
    many = {f"leaf{i:04d}": np.zeros((40, 2), np.float32) for i in range(2000)}
    big = sharding._decode_report(sharding._encode_report(None, _facts(many)))
    assert big["facts"]["leaves"].startswith("crc32 ")
    again = sharding._decode_report(sharding._encode_report(None, _facts(dict(many))))
    assert again == big
    many["leaf0000"] = np.zeros((40, 2), np.float64)
    changed = sharding._decode_report(sharding._encode_report(None, _facts(many)))
    assert changed["facts"]["leaves"] != big["facts"]["leaves"]

    # A very long error message keeps its start.
    error = ValueError("f: " + "é" * 20_000)
    report = sharding._decode_report(sharding._encode_report(error, {}))
    assert report["error"][0] == "ValueError" and report["error"][1].startswith("f: éé")
    assert report["error"][1].endswith(" ...")
