"""gradtx.microbatching against optax.microbatching (same calls, same results) and by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax.microbatching as om
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import gradtx
from gradtx import microbatching as gm

B = 8


def _batch():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "x": jax.random.normal(k1, (B, 3)),
        "y": jax.random.normal(k2, (B,)),
        "w": jax.random.uniform(k3, (B, 2, 2)),
    }


def _params():
    return {"a": jnp.array([0.5, -1.0, 2.0]), "c": jnp.array(0.3)}


def _close(a, b, rtol=1e-6):
    # the same key paths (gradtx's Aux namedtuple is its own class, with optax's fields)
    paths = lambda t: [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(t)]
    assert paths(a) == paths(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert jnp.shape(x) == jnp.shape(y)
        assert jnp.result_type(x) == jnp.result_type(y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-6)


def _optax_microbatching_runs():
    # optax 0.2.8 reads `AbstractMesh.are_all_axes_explicit` on every call from jax 0.7.0 on
    # (by a string comparison of versions, which 0.10 escapes); jax 0.7.0 lacks it.
    try:
        om.reshape_batch_axis(jnp.zeros((2, 1)), 1)
    except AttributeError:
        return False
    return True


OPTAX_RUNS = _optax_microbatching_runs()
needs_optax = pytest.mark.skipif(
    not OPTAX_RUNS,
    reason="optax 0.2.8's microbatching fails on this jax (no are_all_axes_explicit): the "
    "parity runs on the pinned jax; the by-hand checks of this file run here",
)


def _mods():
    optax = [(om, om.AccumulationType)] if OPTAX_RUNS else []
    return [(gm, gm.AccumulationType), *optax]


def _both(make):
    """`make(module, AccumulationType)` for gradtx, then for optax where optax's runs here."""
    return [make(m, t) for m, t in _mods()]


def test_the_names_are_optaxs():
    for name in om.__dict__:
        if not name.startswith("_") and name != "_microbatching":
            assert hasattr(gm, name), name
    assert gradtx.microbatch is gm.microbatch
    assert [t.name for t in gm.AccumulationType] == [t.name for t in om.AccumulationType]
    assert gm.IndividualOutputs._fields == ("values", "metrics", "aux")


@pytest.mark.parametrize("axis", [0, 1])
def test_reshape_batch_axis_matches_optax(axis):
    tree = {"a": jnp.arange(2 * 8 * 3.0).reshape(2, 8, 3), "b": [jnp.arange(16.0).reshape(2, 8)]}
    if axis == 0:
        tree = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), tree)
    ours = gm.reshape_batch_axis(tree, 2, axis)
    if OPTAX_RUNS:
        _close(ours, om.reshape_batch_axis(tree, 2, axis))
    # column-major: microbatch i holds rows i, i + 4, ...
    rows = jnp.take(tree["a"], jnp.array([1, 5]), axis=axis)
    np.testing.assert_array_equal(jnp.take(ours["a"], 1, axis=axis), rows)


def _fun(params, batch, scale=1.0):
    pred = batch["x"] @ params["a"] + params["c"]
    err = pred - batch["y"]
    return {"err": err * scale, "sq": jnp.sum(err**2), "w": jnp.sum(batch["w"], axis=0)}


ACCUMULATORS = {
    "sum": lambda t: t.SUM,
    "mean": lambda t: t.MEAN,
    "running_mean": lambda t: t.RUNNING_MEAN,
    "tree": lambda t: {"err": t.CONCAT, "sq": t.MEAN, "w": t.SUM},
    "prefix": lambda t: {"err": t.CONCAT, "sq": t.RUNNING_MEAN, "w": t.MEAN},
}


@needs_optax
@pytest.mark.parametrize("acc", ACCUMULATORS, ids=str)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("num_real", [None, 3])
def test_microbatch_matches_optax(acc, jit, num_real):
    outs = []
    for m, t in _mods():
        f = m.microbatch(_fun, 1, 2, ACCUMULATORS[acc](t), num_real_microbatches=num_real)
        outs.append((jax.jit(f) if jit else f)(_params(), _batch()))
    _close(*outs)


def test_microbatch_equals_the_full_batch():
    full = _fun(_params(), _batch())
    t = gm.AccumulationType
    f = gm.microbatch(_fun, 1, 2, {"err": t.CONCAT, "sq": t.SUM, "w": t.SUM})
    _close(f(_params(), _batch()), full, rtol=1e-5)
    g = gm.microbatch(_fun, 1, 4, {"err": t.CONCAT, "sq": t.MEAN, "w": t.RUNNING_MEAN})
    out = g(_params(), _batch())
    np.testing.assert_allclose(out["sq"], full["sq"] / 2, rtol=1e-5)
    np.testing.assert_allclose(out["w"], full["w"] / 2, rtol=1e-5)


def test_microbatch_argnames_in_axes_and_traced_num_real():
    def fun(params, xs, *, ys, scale):
        return jnp.sum((xs.T @ params["a"] - ys) ** 2) * scale

    xs = _batch()["x"].T  # batch on axis 1
    ys = _batch()["y"]
    outs = []
    for m, t in _mods():
        f = m.microbatch(fun, 1, 2, t.SUM, argnames="ys", in_axes=(1, 0))
        outs.append(f(_params(), xs, ys=ys, scale=2.0))
    for theirs in outs[1:]:
        _close(outs[0], theirs)
    np.testing.assert_allclose(outs[0], fun(_params(), xs, ys=ys, scale=2.0), rtol=1e-5)

    outs = []
    for m, t in _mods():

        def run(n, m=m, t=t):
            f = m.microbatch(fun, 1, 2, t.RUNNING_MEAN, argnames=("ys",), in_axes=(1, 0),
                             num_real_microbatches=n)  # fmt: skip
            return f(_params(), xs, ys=ys, scale=1.0)

        outs.append(jax.jit(run)(jnp.asarray(3)))
    for theirs in outs[1:]:
        _close(outs[0], theirs)
    # the mean over the 3 real of 4 microbatches; microbatch i holds examples i and i + 4
    pair = lambda i: jnp.array([i, i + 4])
    by_hand = np.mean([fun(_params(), xs[:, pair(i)], ys=ys[pair(i)], scale=1.0)
                       for i in range(3)])  # fmt: skip
    np.testing.assert_allclose(outs[0], by_hand, rtol=1e-5)


def test_microbatch_size_none_is_the_function():
    assert gm.microbatch(_fun, 1, None) is _fun


def test_optax_enums_and_custom_accumulators_are_accepted():
    ours = gm.microbatch(_fun, 1, 2, om.AccumulationType.MEAN)(_params(), _batch())
    _close(ours, gm.microbatch(_fun, 1, 2, gm.AccumulationType.MEAN)(_params(), _batch()))
    if OPTAX_RUNS:
        _close(ours, om.microbatch(_fun, 1, 2, om.AccumulationType.MEAN)(_params(), _batch()))
    # a max accumulator, written once for each library's Accumulator class
    for acc_cls in (gm.Accumulator, om.Accumulator):
        acc = acc_cls(
            init=lambda s: jax.tree.map(lambda x: jnp.full(x.shape, -jnp.inf, x.dtype), s),
            update=lambda c, v, i: jax.tree.map(jnp.maximum, c, v),
            finalize=lambda c: c,
            aggregate=lambda v: jax.tree.map(lambda x: jnp.max(x, axis=0), v),
        )
        got = gm.microbatch(lambda b: jnp.max(b["y"]), 0, 2, acc)(_batch())
        np.testing.assert_allclose(got, jnp.max(_batch()["y"]))


@pytest.mark.parametrize("acc", ["concat", "sum", "mean"])
@pytest.mark.parametrize("size", [None, 2, 4])
def test_micro_vmap_matches_optax_and_vmap(acc, size):
    def fun(x, p, *, z):
        return {"v": jnp.tanh(x @ p["a"]) + z, "n": jnp.sum(x**2)}

    def make(m, t):
        kind = {"concat": t.CONCAT, "sum": t.SUM, "mean": t.MEAN}[acc]
        f = m.micro_vmap(fun, in_axes=(0, None), microbatch_size=size, accumulator=kind)
        return jax.jit(f)(_batch()["x"], _params(), z=_batch()["y"])

    ours, *theirs = _both(make)
    for t in theirs:
        _close(ours, t)
    stacked = jax.vmap(fun, in_axes=(0, None))(_batch()["x"], _params(), z=_batch()["y"])
    reduce = {"concat": lambda x: x, "sum": lambda x: x.sum(0), "mean": lambda x: x.mean(0)}[acc]
    _close(ours, jax.tree.map(reduce, stacked), rtol=1e-5)


def _loss(params, batch):
    pred = batch["x"] @ params["a"] + params["c"]
    return jnp.mean((pred - batch["y"]) ** 2)


def _loss_aux(params, batch):
    return _loss(params, batch), {"pred": batch["x"] @ params["a"]}


def _clipped(g, limit):
    """One example's gradient scaled to a global norm of at most `limit` (DP-SGD style)."""
    norm = gradtx.global_norm(g)
    return jax.tree.map(lambda x: x * jnp.minimum(1.0, limit / norm), g)


@pytest.mark.parametrize("size", [None, 2])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_micro_grad_matches_optax(size, jit):
    def make(m, t):
        f = m.micro_grad(
            _loss_aux,
            has_aux=True,
            microbatch_size=size,
            accumulator=t.MEAN,
            transform_fn=lambda g: (_clipped(g, 1.0), g),
            metrics_fn=gradtx.global_norm,
        )
        return (jax.jit(f) if jit else f)(_params(), _batch())

    ours, *theirs = _both(make)
    for t in theirs:
        _close(ours, t, rtol=1e-5)
    # the unclipped mean of per-example gradients is the mean loss's gradient
    _close(ours[0][1], jax.grad(_loss)(_params(), _batch()), rtol=1e-5)
    assert ours[1].values.shape == (B,) and ours[1].aux["pred"].shape == (B, 1)


def test_micro_grad_sum_without_batch_dim_and_argnums():
    def per_example(params, x, y):  # one example, no batch axis
        return (x @ params["a"] + params["c"] - y) ** 2

    def make(m, t):
        f = m.micro_grad(per_example, argnums=0, batch_argnums=(1, 2), keep_batch_dim=False,
                         microbatch_size=4, num_real_microbatches=1)  # fmt: skip
        return f(_params(), _batch()["x"], _batch()["y"])

    ours, *theirs = _both(make)
    for t in theirs:
        _close(ours, t, rtol=1e-5)
    rows = (0, 2, 4, 6)
    by_hand = jax.tree.map(
        lambda *g: sum(g),
        *[jax.grad(per_example)(_params(), _batch()["x"][i], _batch()["y"][i]) for i in rows],
    )
    _close(ours[0], by_hand, rtol=1e-5)  # microbatch 0 of 2 is rows 0, 2, 4, 6


# the context manager that makes `mesh` the current one: `jax.set_mesh` from jax 0.8 on,
# `jax.sharding.use_mesh` before (jax.sharding.set_mesh there sets it for good)
_use_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh


@pytest.fixture
def mesh():
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)


def test_reshape_batch_axis_keeps_batch_sharding(mesh):
    x = jnp.arange(32.0).reshape(16, 2)
    y = jnp.arange(32.0).reshape(2, 16)
    with _use_mesh(mesh):
        xs = jax.device_put(x, P("data"))
        ys = jax.device_put(y, P(None, "data"))
        rx = gm.reshape_batch_axis(xs, 4)
        ry = gm.reshape_batch_axis(ys, 4, axis=1)
        assert jax.typeof(rx).sharding.spec == P(None, "data", None)
        assert jax.typeof(ry).sharding.spec == P(None, None, "data")
        with pytest.raises(ValueError, match="multiple of the 4 shards"):
            gm.reshape_batch_axis(xs, 2)
    # microbatch i holds examples i, i + 4, ... (column-major), written out
    _close(rx, jnp.stack([x[i::4] for i in range(4)]))
    _close(ry, jnp.stack([y[:, i::4] for i in range(4)], axis=1))


def test_microbatch_under_explicit_sharding(mesh):
    batch = {"x": jnp.arange(48.0).reshape(16, 3) / 10, "y": jnp.arange(16.0)}
    params = _params()
    t = gm.AccumulationType

    def fun(p, b):
        err = b["x"] @ p["a"] - b["y"]
        return {"err": err, "sq": jnp.sum(err**2)}

    acc = {"err": t.CONCAT, "sq": t.SUM}
    with _use_mesh(mesh):
        sharded = jax.device_put(batch, P("data"))
        out = jax.jit(gm.microbatch(fun, 1, 4, acc))(params, sharded)
        assert jax.typeof(out["err"]).sharding.spec == P("data")
        replicated = jax.device_put(params, P())  # under an explicit mesh, as jax needs
        grads, aux = jax.jit(gm.micro_grad(_loss, microbatch_size=4))(replicated, sharded)
        assert jax.typeof(aux.values).sharding.spec == P("data")
    # CONCAT and SUM of the microbatches are the full batch's; micro_grad SUMs the 16
    # per-example gradients, 16 times the mean loss's gradient
    _close(out, fun(params, batch), rtol=1e-5)
    _close(grads, jax.tree.map(lambda g: 16 * g, jax.grad(_loss)(params, batch)), rtol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="microbatch: microbatch_size must be an integer >= 1"):
        gm.microbatch(_fun, 1, 0)
    with pytest.raises(TypeError, match="microbatch: microbatch_size must be an integer"):
        gm.microbatch(_fun, 1, 2.5)
    with pytest.raises(ValueError, match="microbatch_size must divide the batch size 8, got 3"):
        gm.microbatch(_fun, 1, 3)(_params(), _batch())
    with pytest.raises(ValueError, match=r"batch axes of one size, got \[8, 6\]"):
        gm.microbatch(lambda a, b: a + b.sum(), (0, 1), 2)(jnp.ones(8), jnp.ones(6))
    with pytest.raises(ValueError, match="the MEAN accumulator needs floating-point results"):
        gm.microbatch(lambda x: x, 0, 2, gm.AccumulationType.MEAN)(jnp.arange(8))
    with pytest.raises(ValueError, match="the RUNNING_MEAN accumulator needs floating-point"):
        gm.microbatch(lambda x: x, 0, 2, gm.AccumulationType.RUNNING_MEAN)(jnp.arange(8))
    with pytest.raises(ValueError, match="accumulator leaves must be an Accumulator"):
        gm.microbatch(lambda x: x, 0, 2, "sum")(jnp.ones(8))
    with pytest.raises(NotImplementedError, match="micro_vmap: out_axes must be 0"):
        gm.micro_vmap(jnp.sin, out_axes=1)
    with pytest.raises(TypeError, match="micro_grad: has_aux must be True or False"):
        gm.micro_grad(_loss, has_aux=1)
    with pytest.raises(ValueError, match="num_real_microbatches must be an integer >= 0"):
        gm.microbatch(_fun, 1, 2, num_real_microbatches=-1)
    with pytest.raises(ValueError, match="at most the 4 microbatches of the batch, got 5"):
        gm.microbatch(_fun, 1, 2, num_real_microbatches=5)(_params(), _batch())
