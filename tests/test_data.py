"""Tests for gradtx.data: epoch plans, batches, scan_epoch, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx
from gradtx import data as gd

KEY = jax.random.key(0)
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


def _dataset(n, features=3):
    x = np.arange(n * features, dtype=np.float32).reshape(n, features) / (n * features)
    y = (np.arange(n, dtype=np.float32) % 7) / 7.0
    return jax.device_put({"x": x, "y": y, "id": np.arange(n, dtype=np.int32)})


def _real_indices(plan):
    return np.asarray(plan.indices)[np.asarray(plan.mask)]


# ----------------------------------------------------------------------------
# Epoch plans.


@given(
    n=st.integers(1, 48),
    b=st.integers(1, 12),
    drop=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
@SETTINGS
def test_every_example_once_or_reported_dropped(n, b, drop, seed):
    b = min(b, n)
    key = jax.random.key(seed)
    plan = gd.epoch_indices(jax.random.fold_in(key, 0), n, b, drop)
    t = gd.num_batches(n, b, drop)
    assert plan.indices.shape == plan.mask.shape == (t, b)
    assert plan.indices.dtype == jnp.int32 and plan.mask.dtype == jnp.bool_
    used = _real_indices(plan)
    if drop:
        dropped = np.asarray(gd.dropped_indices(jax.random.fold_in(key, 0), n, b))
        assert plan.mask.all()
    else:
        dropped = np.zeros(0, np.int32)
    assert len(dropped) == gd.num_dropped(n, b, drop)
    assert sorted(np.concatenate([used, dropped]).tolist()) == list(range(n))
    # padding slots hold valid indices, so a gather never reads out of bounds
    assert ((np.asarray(plan.indices) >= 0) & (np.asarray(plan.indices) < n)).all()
    # same key, same order; another epoch, another order (n! orders: n >= 10 never collides)
    again = gd.epoch_indices(jax.random.fold_in(key, 0), n, b, drop)
    np.testing.assert_array_equal(plan.indices, again.indices)
    np.testing.assert_array_equal(plan.mask, again.mask)
    if n >= 10:
        other = gd.epoch_indices(jax.random.fold_in(key, 1), n, b, drop)
        assert not np.array_equal(_real_indices(other), used)


@given(n=st.integers(1, 5000), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=5, deadline=None, derandomize=True)
def test_feistel_permutation_is_a_permutation(n, seed):
    perm = np.asarray(gd.feistel_permutation(jax.random.key(seed), n))
    assert perm.dtype == np.int32
    assert sorted(perm.tolist()) == list(range(n))


def _uniformity_z(counts, expected):
    """(chi^2 - dof) / sqrt(2 dof): about N(0, 1) for uniform counts."""
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = counts.size - 1
    return (chi2 - dof) / np.sqrt(2 * dof)


@pytest.mark.parametrize("n", [3, 5, 10, 37])
def test_feistel_permutation_looks_uniform(n):
    keys = jax.random.split(jax.random.key(7), 12_000)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: gd.feistel_permutation(k, n)))(keys))
    # every element equally likely at every position
    at = np.stack([np.bincount(perms[:, j], minlength=n) for j in range(n)])
    assert abs(_uniformity_z(at, len(keys) / n)) < 5
    if n <= 5:  # and every one of the n! orders equally likely
        codes = (perms * n ** np.arange(n)).sum(axis=1)
        _, counts = np.unique(codes, return_counts=True)
        assert len(counts) == np.prod(np.arange(1, n + 1))
        assert abs(_uniformity_z(counts, len(keys) / len(counts))) < 5
    other = np.asarray(gd.feistel_permutation(jax.random.key(8), 64))
    assert not np.array_equal(other, np.asarray(gd.feistel_permutation(jax.random.key(9), 64)))


def test_permutation_argument():
    data = _dataset(10)
    perm = np.asarray(gd.feistel_permutation(KEY, 10))
    plan = gd.epoch_indices(KEY, 10, 4, permutation=gd.feistel_permutation)
    np.testing.assert_array_equal(plan.indices.reshape(-1)[:10], perm)
    got = [b["id"] for b in gd.batches(KEY, data, 4, permutation=gd.feistel_permutation)]
    np.testing.assert_array_equal(np.concatenate(got), perm)
    np.testing.assert_array_equal(
        gd.dropped_indices(KEY, 10, 4, permutation=gd.feistel_permutation), perm[8:]
    )

    def step(carry, batch, mask):
        return carry, jnp.where(mask, batch["id"], -1)

    _, ids = gd.scan_epoch(step, 0, data, KEY, 4, permutation=gd.feistel_permutation)
    np.testing.assert_array_equal(np.asarray(ids).reshape(-1)[:10], perm)
    with pytest.raises(TypeError, match="epoch_indices: permutation must be a function"):
        gd.epoch_indices(KEY, 10, 4, permutation="feistel")


def test_plan_layout_follows_the_permutation():
    perm = np.asarray(jax.random.permutation(KEY, 10))
    plan = gd.epoch_indices(KEY, 10, 4)
    np.testing.assert_array_equal(plan.indices[:2].reshape(-1), perm[:8])
    np.testing.assert_array_equal(plan.indices[2], np.concatenate([perm[8:], perm[:2]]))
    np.testing.assert_array_equal(plan.mask[2], [True, True, False, False])
    np.testing.assert_array_equal(gd.dropped_indices(KEY, 10, 4), perm[8:])
    assert gd.dropped_indices(KEY, 12, 4).shape == (0,)


def test_plan_under_jit_and_with_legacy_keys():
    planned = jax.jit(gd.epoch_indices, static_argnums=(1, 2, 3))(KEY, 11, 4, False)
    np.testing.assert_array_equal(planned.indices, gd.epoch_indices(KEY, 11, 4).indices)

    @jax.jit
    def inside(key):
        return gd.epoch_indices(jax.random.fold_in(key, 3), 11, 4).indices.sum()

    assert int(inside(KEY)) == int(
        gd.epoch_indices(jax.random.fold_in(KEY, 3), 11, 4).indices.sum()
    )
    legacy = gd.epoch_indices(jax.random.PRNGKey(1), 9, 3)
    assert sorted(_real_indices(legacy).tolist()) == list(range(9))


@pytest.mark.parametrize(
    ("n", "b", "drop", "batches", "dropped"),
    [(10, 4, False, 3, 0), (10, 4, True, 2, 2), (12, 4, False, 3, 0), (12, 4, True, 3, 0),
     (5, 5, False, 1, 0), (7, 1, True, 7, 0)],
)  # fmt: skip
def test_counts(n, b, drop, batches, dropped):
    assert gd.num_batches(n, b, drop) == batches
    assert gd.num_dropped(n, b, drop) == dropped


# ----------------------------------------------------------------------------
# Batches.


def test_batches_follow_the_plan_and_are_on_device():
    data = _dataset(10)
    plan = gd.epoch_indices(KEY, 10, 4)
    got = list(gd.batches(KEY, data, 4))
    assert [b["id"].shape for b in got] == [(4,), (4,), (2,)]
    for t, batch in enumerate(got):
        rows = np.asarray(plan.indices[t])[np.asarray(plan.mask[t])]
        np.testing.assert_array_equal(batch["id"], rows)
        np.testing.assert_array_equal(batch["x"], np.asarray(data["x"])[rows])
        assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(batch))


def test_batches_with_mask_and_drop_remainder():
    data = _dataset(10)
    masked = list(gd.batches(KEY, data, 4, with_mask=True))
    assert [b["x"].shape for b, _ in masked] == [(4, 3)] * 3
    np.testing.assert_array_equal(masked[-1][1], [True, True, False, False])
    ids = np.concatenate([np.asarray(b["id"])[np.asarray(m)] for b, m in masked])
    assert sorted(ids.tolist()) == list(range(10))
    dropped = list(gd.batches(KEY, data, 4, drop_remainder=True))
    assert len(dropped) == 2
    kept = np.concatenate([b["id"] for b in dropped]).tolist()
    assert sorted(kept + gd.dropped_indices(KEY, 10, 4).tolist()) == list(range(10))


@pytest.mark.parametrize(
    ("n", "b", "start"),
    [(10, 4, 0), (10, 4, 1), (10, 4, 2), (10, 4, 3),
     (69, 2, 15), (69, 2, 16), (69, 2, 17), (69, 2, 34), (69, 2, 35)],
)  # fmt: skip
def test_resume_gives_the_uninterrupted_batches(n, b, start):
    data = _dataset(n)
    key = jax.random.fold_in(KEY, 5)
    full = list(gd.batches(key, data, b, with_mask=True))
    resumed = list(gd.batches(key, data, b, with_mask=True, start_step=start))
    assert len(resumed) == len(full) - start
    for (b1, m1), (b2, m2) in zip(full[start:], resumed):
        np.testing.assert_array_equal(b1["id"], b2["id"])
        np.testing.assert_array_equal(m1, m2)
    short = list(gd.batches(key, data, b, start_step=start))  # unmasked: short last batch
    ids = [np.asarray(x["id"]) for x in short]
    want = [np.asarray(x["id"])[np.asarray(m)] for x, m in full[start:]]
    assert len(ids) == len(want)
    for got, expected in zip(ids, want):
        np.testing.assert_array_equal(got, expected)


def test_batches_accept_numpy_and_nested_trees():
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    data = {"inputs": (x, np.arange(12)), "target": np.ones(12, np.float32)}
    got = list(gd.batches(KEY, data, 5))
    assert [b["target"].shape[0] for b in got] == [5, 5, 2]
    ids = np.concatenate([b["inputs"][1] for b in got])
    assert sorted(ids.tolist()) == list(range(12))
    np.testing.assert_array_equal(got[0]["inputs"][0], x[np.asarray(got[0]["inputs"][1])])
    single = list(gd.batches(KEY, jnp.arange(6), 3))  # a bare array is a pytree too
    assert sorted(np.concatenate(single).tolist()) == list(range(6))


def test_masked_mean():
    values = jnp.array([[1.0, 3.0], [5.0, 7.0], [100.0, 100.0]])
    mask = jnp.array([True, True, False])
    assert float(gd.masked_mean(values, mask)) == pytest.approx(4.0)
    assert float(gd.masked_mean(jnp.array([2.0, 4.0]), jnp.array([True, True]))) == 3.0
    assert float(gd.masked_mean(jnp.array([2.0]), jnp.array([False]))) == 0.0
    with pytest.raises(ValueError, match="masked_mean: mask must have shape"):
        gd.masked_mean(values, jnp.ones((2,), jnp.bool_))


# ----------------------------------------------------------------------------
# scan_epoch.


def _linear_problem(n, seed=0):
    # numpy data: nothing to compile per shape
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x @ rng.normal(size=4) + 0.1).astype(np.float32)
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    return data, {"w": jnp.zeros((4,)), "b": jnp.zeros(())}


def _train(opt):
    def loss(params, batch, mask):
        pred = batch["x"] @ params["w"] + params["b"]
        return gd.masked_mean((pred - batch["y"]) ** 2, mask)

    def step(carry, batch, mask):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params, batch, mask)
        updates, state = opt.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), value

    return step


_SGD = gradtx.sgd(0.05, momentum=0.9)
_SGD_STEP = _train(_SGD)
_SGD_STEP_JIT = jax.jit(_SGD_STEP)


@given(
    n=st.integers(2, 24),
    b=st.integers(1, 6),
    drop=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=6, deadline=None, derandomize=True)
def test_scan_epoch_equals_python_loop(n, b, drop, seed):
    b = min(b, n)
    data, params = _linear_problem(n)
    key = jax.random.key(seed)
    carry = (params, _SGD.init(params))
    losses = []
    for batch, mask in gd.batches(key, data, b, drop_remainder=drop, with_mask=True):
        carry, value = _SGD_STEP_JIT(carry, batch, mask)
        losses.append(value)
    fresh = (params, _SGD.init(params))
    scanned, scan_losses = gd.scan_epoch(_SGD_STEP, fresh, data, key, b, drop_remainder=drop)
    assert scan_losses.shape == (gd.num_batches(n, b, drop),)
    np.testing.assert_allclose(scan_losses, jnp.stack(losses), rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(scanned), jax.tree.leaves(carry)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_scan_epoch_with_adam_equals_the_short_last_batch_loop():
    # The masked last batch trains exactly like the short one `batches` yields by default.
    data, params = _linear_problem(50)
    opt = gradtx.adam(1e-2)

    @jax.jit
    def plain_step(carry, batch):
        params, state = carry

        def loss(p):
            return jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return (gradtx.apply_updates(params, updates), state), value

    carry = (params, opt.init(params))
    for epoch in range(2):
        for batch in gd.batches(jax.random.fold_in(KEY, epoch), data, 16):
            carry, _ = plain_step(carry, batch)
    scanned = (params, opt.init(params))
    for epoch in range(2):
        scanned, losses = gd.scan_epoch(
            _train(opt), scanned, data, jax.random.fold_in(KEY, epoch), 16
        )
    assert losses.shape == (4,)
    for got, want in zip(jax.tree.leaves(scanned), jax.tree.leaves(carry)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_scan_epoch_compiles_once_and_donates_the_carry():
    traces = []

    def step(carry, batch):
        traces.append(1)  # runs only while tracing
        return carry + jnp.sum(batch), jnp.sum(batch)

    data = jnp.arange(12.0)
    carry = jnp.zeros(())
    for epoch in range(3):
        old = carry
        carry, out = gd.scan_epoch(
            step, carry, data, jax.random.fold_in(KEY, epoch), 4, with_mask=False
        )
        assert old.is_deleted()
        assert out.shape == (3,)
    assert float(carry) == 3 * 66.0
    assert len(traces) == 1
    kept = jnp.ones(())
    gd.scan_epoch(step, kept, data, KEY, 4, with_mask=False, donate=False)
    assert not kept.is_deleted()


def test_scan_epoch_cache_does_not_keep_the_step_function_alive():
    import gc
    import weakref

    def make_step():
        offset = jnp.ones(())

        def step(carry, batch, mask):
            return carry + offset, jnp.sum(batch)

        return step

    step = make_step()
    gd.scan_epoch(step, jnp.zeros(()), jnp.arange(8.0), KEY, 4)
    ref = weakref.ref(step)
    del step
    gc.collect()
    assert ref() is None


def test_scan_epoch_step_signatures_and_outputs():
    data = {"x": jnp.arange(10.0)}

    def masked(carry, batch, mask):
        count = jnp.sum(mask.astype(jnp.float32))
        return carry + count, {"sum": jnp.sum(jnp.where(mask, batch["x"], 0.0)), "n": count}

    total, outs = gd.scan_epoch(masked, jnp.zeros(()), data, KEY, 4)
    assert float(total) == 10.0
    np.testing.assert_array_equal(outs["n"], [4.0, 4.0, 2.0])
    assert float(outs["sum"].sum()) == 45.0
    total, outs = gd.scan_epoch(masked, jnp.zeros(()), data, KEY, 4, drop_remainder=True)
    assert float(total) == 8.0
    dropped = gd.dropped_indices(KEY, 10, 4)
    assert float(outs["sum"].sum()) == 45.0 - float(data["x"][dropped].sum())


def test_scan_epoch_without_mask_refuses_a_partial_batch():
    with pytest.raises(ValueError, match=r"scan_epoch: 10 examples .* batches of 4 .* has 2"):
        gd.scan_epoch(lambda c, b: (c, b), jnp.zeros(()), jnp.arange(10.0), KEY, 4, with_mask=False)


# ----------------------------------------------------------------------------
# Errors.


BAD_DATA = {
    "sizes differ": (
        {"x": jnp.zeros((5, 2)), "y": jnp.zeros((4,))},
        r"data\['y'\] has leading size 4, data\['x'\] has 5",
    ),
    "no leaves": ({}, "data has no array leaves"),
    "no examples": ({"x": jnp.zeros((0, 3))}, r"empty \(data\['x'\] has leading size 0\)"),
    "scalar leaf": ({"x": jnp.zeros((4,)), "s": jnp.zeros(())}, r"data\['s'\] is a scalar"),
    "deep leaf": (
        [jnp.zeros((3,)), {"deep": (jnp.zeros((3,)), jnp.zeros((2, 1)))}],
        r"data\[1\]\['deep'\]\[1\] has leading size 2",
    ),
}


@pytest.mark.parametrize(("data", "match"), list(BAD_DATA.values()), ids=list(BAD_DATA))
@pytest.mark.parametrize("fn", ["batches", "scan_epoch", "num_examples"])
def test_bad_data_names_the_leaf(data, match, fn):
    with pytest.raises(ValueError, match=match):
        if fn == "batches":
            gd.batches(KEY, data, 1)  # raised at the call, before any iteration
        elif fn == "scan_epoch":
            gd.scan_epoch(lambda c, b, m: (c, 0.0), 0.0, data, KEY, 1)
        else:
            gd.num_examples(data)


@pytest.mark.parametrize(
    ("batch_size", "match"),
    [(0, "batch_size must be an integer >= 1, got 0"), (-3, "got -3"),
     (11, "batch_size must be <= the number of examples, got batch_size=11 for 10 examples"),
     (2.5, r"batch_size must be an integer >= 1, got 2.5 \(float\)"),
     (4.0, r"got 4.0 \(float\)"), ("4", "got '4'"), (True, "got True")],
)  # fmt: skip
def test_bad_batch_sizes(batch_size, match):
    data = {"x": jnp.zeros((10, 2))}
    for call in (
        lambda: gd.epoch_indices(KEY, 10, batch_size),
        lambda: gd.batches(KEY, data, batch_size),
        lambda: gd.scan_epoch(lambda c, b, m: (c, 0.0), 0.0, data, KEY, batch_size),
        lambda: gd.num_batches(10, batch_size),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_non_integers_are_both_type_and_value_errors():
    with pytest.raises(TypeError, match="epoch_indices: num_examples must be an integer"):
        gd.epoch_indices(KEY, 10.0, 2)
    with pytest.raises(ValueError, match="epoch_indices: num_examples must be an integer"):
        gd.epoch_indices(KEY, 10.0, 2)
    with pytest.raises(ValueError, match="num_examples must be a static Python int"):
        jax.jit(lambda n: gd.epoch_indices(KEY, n, 2))(10)
    assert gd.num_batches(np.int64(10), np.int32(3)) == 4  # numpy integers are fine


def test_other_argument_errors():
    data = {"x": jnp.zeros((10, 2))}
    with pytest.raises(ValueError, match=r"batches: start_step must be in \[0, 3\].*got 4"):
        gd.batches(KEY, data, 4, start_step=4)
    with pytest.raises(ValueError, match="start_step must be an integer >= 0, got -1"):
        gd.batches(KEY, data, 4, start_step=-1)
    with pytest.raises(TypeError, match=r"batches: key must be a PRNG key such as jax.random.key"):
        gd.batches(0, data, 4)
    with pytest.raises(TypeError, match="drop_remainder must be True or False"):
        gd.epoch_indices(KEY, 10, 4, drop_remainder=1)
    with pytest.raises(ValueError, match="key must be a single PRNG key"):
        gd.epoch_indices(jax.random.split(KEY, 2), 10, 4)
    with pytest.raises(TypeError, match="scan_epoch: step_fn must be callable"):
        gd.scan_epoch(None, 0.0, data, KEY, 2)


def test_data_reexports_the_split_modules():
    """`gradtx.data` keeps every name it had before the split into epochs, shuffle, scan and
    sharding, and holds nothing of its own."""
    from gradtx import epochs, scan, sharding, shuffle

    homes = {name: epochs for name in epochs.__all__}
    homes.update({name: shuffle for name in shuffle.__all__ if name != "Permutation"})
    homes.update({name: scan for name in scan.__all__})
    homes.update({name: sharding for name in sharding.__all__})
    assert set(homes) <= set(gd.__all__)
    for name, module in homes.items():
        assert getattr(gd, name) is getattr(module, name), name
    for name in gd.__all__:
        assert getattr(gd, name).__module__.startswith("gradtx."), name
    assert gd.Axis is sharding.Axis and gd.StepFn is scan.StepFn
    assert gd.Permutation is shuffle.Permutation
