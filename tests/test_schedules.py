"""Schedules: closed forms (IDEAS §7), optax parity, jit/vmap/dtype, properties, errors."""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradtx
import gradtx.schedules as S

COUNTS = np.concatenate([np.arange(0, 401), [1_000, 12_345, 2**20 + 3, 2**31 - 1]])
LARGE = np.array([0, 1, 2, 10**6, 2**24 + 1, 2**30, 2**31 - 1])


def values(schedule, counts=COUNTS):
    """The schedule at every count, as one int32 array (the schedule vectorises over counts)."""
    return np.asarray(schedule(jnp.asarray(counts, jnp.int32)))


def cos_ramp(start, end, f):
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * f))


def lin_ramp(start, end, f):
    return start + (end - start) * f


def ref_warmup_cosine(t, i, p, w, d, e=0.0, x=1.0):
    if t < w:
        return i + (p - i) * t / w
    f = min((t - w) / (d - w), 1)
    return e + (p - e) * (0.5 * (1 + math.cos(math.pi * f))) ** x


def ref_cosine_onecycle(t, n, p, ps=0.3, d=25.0, df=1e4):
    rise, v0 = int(ps * n), p / d
    if t < rise:
        return cos_ramp(v0, p, t / rise)
    return cos_ramp(p, v0 / df, min((t - rise) / (n - rise), 1))


def ref_linear_onecycle(t, n, p, ps=0.3, pf=0.85, d=25.0, df=1e4):
    rise, fall, v0 = int(ps * n), int(pf * n), p / d
    if t < rise:
        return lin_ramp(v0, p, t / rise)
    if t < fall:
        return lin_ramp(p, v0, (t - rise) / (fall - rise))
    return lin_ramp(v0, v0 / df, min((t - fall) / (n - fall), 1))


# (schedule, closed form in plain Python floats). Each formula is IDEAS §7 or optax's, by hand.
CASES = {
    "constant": (S.constant_schedule(0.3), lambda t: 0.3),
    "exponential": (S.exponential_decay(0.5, 7, 0.9), lambda t: 0.5 * 0.9 ** (t / 7)),
    "exponential_staircase_begin": (
        S.exponential_decay(0.5, 7, 0.9, transition_begin=20, staircase=True),
        lambda t: 0.5 * 0.9 ** (max(t - 20, 0) // 7),
    ),
    "exponential_end_lower": (
        S.exponential_decay(1.0, 10, 0.5, transition_begin=5, end_value=0.1),
        lambda t: max(1.0 * 0.5 ** (max(t - 5, 0) / 10), 0.1),
    ),
    "exponential_growth_capped": (
        S.exponential_decay(0.1, 10, 1.5, staircase=True, end_value=2.0),
        lambda t: min(0.1 * 1.5 ** min(t // 10, 99), 2.0),  # 1.5^99 > 20 already
    ),
    "exponential_end_above_init": (
        S.exponential_decay(1.0, 10, 0.5, end_value=3.0),
        lambda t: 3.0,
    ),
    # The course's 0.95^epoch * α0, with 10 mini-batches per epoch.
    "exponential_per_epoch": (
        S.exponential_decay(0.2, transition_steps=10, decay_rate=0.95, staircase=True),
        lambda t: 0.95 ** (t // 10) * 0.2,
    ),
    "inverse_time": (S.inverse_time_decay(1.0, 0.5), lambda t: 1.0 / (1 + 0.5 * t)),
    "inverse_time_epochs": (
        S.inverse_time_decay(0.3, 1.0, transition_steps=10, staircase=True),
        lambda t: 0.3 / (1 + 1.0 * (t // 10)),
    ),
    "inverse_sqrt": (S.inverse_sqrt_decay(0.4), lambda t: 0.4 / math.sqrt(max(t, 1))),
    "inverse_sqrt_epochs": (
        S.inverse_sqrt_decay(0.4, k=2.0, transition_steps=10),
        lambda t: 2.0 / math.sqrt(max(t / 10, 1)) * 0.4,
    ),
    "inverse_sqrt_staircase": (
        S.inverse_sqrt_decay(0.4, k=0.5, transition_steps=10, staircase=True),
        lambda t: 0.5 / math.sqrt(max(t // 10, 1)) * 0.4,
    ),
    "piecewise": (
        S.piecewise_constant_schedule(2.0, {120: 0.1, 50: 0.5, 300: 0.0}),
        lambda t: 2.0 * (0.5 if t >= 50 else 1) * (0.1 if t >= 120 else 1) * (t < 300),
    ),
    "piecewise_at_zero": (S.piecewise_constant_schedule(1.0, {0: 0.5}), lambda t: 0.5),
    "piecewise_none": (S.piecewise_constant_schedule(0.7), lambda t: 0.7),
    "linear": (S.linear_schedule(1.0, 0.1, 100), lambda t: 1.0 + (0.1 - 1.0) * min(t / 100, 1)),
    "linear_up_begin": (
        S.linear_schedule(0.0, 1.0, 50, transition_begin=30),
        lambda t: min(max(t - 30, 0) / 50, 1),
    ),
    "polynomial": (
        S.polynomial_schedule(1.0, 0.01, 2, 100),
        lambda t: (1.0 - 0.01) * (1 - min(t / 100, 1)) ** 2 + 0.01,
    ),
    "polynomial_sqrt_begin": (
        S.polynomial_schedule(0.5, 0.0, 0.5, 80, transition_begin=40),
        lambda t: 0.5 * (1 - min(max(t - 40, 0) / 80, 1)) ** 0.5,
    ),
    "cosine": (
        S.cosine_decay_schedule(1.0, 100),
        lambda t: 0.5 * (1 + math.cos(math.pi * min(t, 100) / 100)),
    ),
    "cosine_alpha_exponent": (
        S.cosine_decay_schedule(0.8, 150, alpha=0.1, exponent=2.0),
        lambda t: 0.8 * (0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi * min(t, 150) / 150))) ** 2),
    ),
    "warmup_cosine": (
        S.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, end_value=0.1),
        lambda t: ref_warmup_cosine(t, 0.0, 1.0, 10, 100, 0.1),
    ),
    "warmup_cosine_no_warmup": (
        S.warmup_cosine_decay_schedule(0.5, 1.0, 0, 60, exponent=3.0),
        lambda t: ref_warmup_cosine(t, 0.5, 1.0, 0, 60, 0.0, 3.0),
    ),
    "join": (
        S.join_schedules(
            [S.constant_schedule(1.0), S.linear_schedule(1.0, 0.0, 50), S.inverse_time_decay(2, 1)],
            [20, 100],
        ),
        lambda t: 1.0 if t < 20 else (1 - min((t - 20) / 50, 1) if t < 100 else 2 / (1 + t - 100)),
    ),
    "cosine_onecycle": (
        S.cosine_onecycle_schedule(100, 1.0),
        lambda t: ref_cosine_onecycle(t, 100, 1.0),
    ),
    "cosine_onecycle_args": (
        S.cosine_onecycle_schedule(150, 2.0, pct_start=0.25, div_factor=10, final_div_factor=100),
        lambda t: ref_cosine_onecycle(t, 150, 2.0, 0.25, 10, 100),
    ),
    "cosine_onecycle_no_rise": (
        S.cosine_onecycle_schedule(50, 1.0, pct_start=0.0),
        lambda t: cos_ramp(1.0, 1 / 25 / 1e4, min(t / 50, 1)),
    ),
    "linear_onecycle": (
        S.linear_onecycle_schedule(100, 1.0),
        lambda t: ref_linear_onecycle(t, 100, 1.0),
    ),
    "linear_onecycle_args": (
        S.linear_onecycle_schedule(200, 0.5, 0.2, 0.6, div_factor=5, final_div_factor=50),
        lambda t: ref_linear_onecycle(t, 200, 0.5, 0.2, 0.6, 5, 50),
    ),
    # 0.3·10 and 0.31·10 floor to the same step: the fall back to P/d is a jump.
    "linear_onecycle_jump": (
        S.linear_onecycle_schedule(10, 1.0, 0.3, 0.31),
        lambda t: ref_linear_onecycle(t, 10, 1.0, 0.3, 0.31),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_closed_form(name):
    schedule, formula = CASES[name]
    expected = np.array([formula(int(t)) for t in COUNTS])
    np.testing.assert_allclose(values(schedule), expected, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize(
    "schedule, boundary, before, after",
    [
        (S.exponential_decay(1.0, 10, 0.5, transition_begin=7, staircase=True), 17, 1.0, 0.5),
        (S.exponential_decay(1.0, 10, 0.5, transition_begin=7, staircase=True), 27, 0.5, 0.25),
        (S.exponential_decay(1.0, 10, 0.5, transition_begin=7, staircase=True), 7, 1.0, 1.0),
        (S.inverse_time_decay(1.0, 1.0, transition_steps=10, staircase=True), 10, 1.0, 0.5),
        (S.inverse_sqrt_decay(1.0, transition_steps=10, staircase=True), 40, 1 / 3**0.5, 0.5),
        (S.piecewise_constant_schedule(1.0, {50: 0.5, 80: 0.5}), 50, 1.0, 0.5),
        (S.piecewise_constant_schedule(1.0, {50: 0.5, 80: 0.5}), 80, 0.5, 0.25),
    ],
)
def test_steps_at_boundaries(schedule, boundary, before, after):
    got = values(schedule, [boundary - 1, boundary, boundary + 1])
    np.testing.assert_allclose(got, [before, after, after], rtol=1e-6)


@pytest.mark.parametrize("k, transition_steps", [(1.0, 1), (3.0, 1), (2.0, 25)])
def test_inverse_sqrt_first_epoch_is_k_alpha0(k, transition_steps):
    """Epoch 0 (the whole first epoch, step 0 included) gives k·α0, then k·α0/√epoch."""
    v = values(S.inverse_sqrt_decay(0.1, k=k, transition_steps=transition_steps))
    np.testing.assert_allclose(v[: transition_steps + 1], k * 0.1, rtol=1e-6)
    np.testing.assert_allclose(v[4 * transition_steps], k * 0.1 / 2, rtol=1e-6)


# ----------------------------------------------------------------------------
# Parity with optax.

PARITY = [
    ("constant_schedule", dict(value=0.3)),
    ("exponential_decay", dict(init_value=0.5, transition_steps=7, decay_rate=0.9)),
    (
        "exponential_decay",
        dict(
            init_value=0.5,
            transition_steps=7,
            decay_rate=0.9,
            transition_begin=20,
            staircase=True,
            end_value=0.2,
        ),
    ),
    ("exponential_decay", dict(init_value=0.1, transition_steps=9, decay_rate=1.2, end_value=1.0)),
    ("piecewise_constant_schedule", dict(init_value=2.0, boundaries_and_scales={50: 0.5, 9: 3.0})),
    ("piecewise_constant_schedule", dict(init_value=2.0)),
    ("linear_schedule", dict(init_value=1.0, end_value=0.1, transition_steps=100)),
    (
        "linear_schedule",
        dict(init_value=0.0, end_value=1, transition_steps=50, transition_begin=30),
    ),
    ("polynomial_schedule", dict(init_value=1.0, end_value=0.01, power=2, transition_steps=100)),
    (
        "polynomial_schedule",
        dict(init_value=0.5, end_value=0.0, power=3, transition_steps=80, transition_begin=40),
    ),
    ("cosine_decay_schedule", dict(init_value=1.0, decay_steps=100)),
    ("cosine_decay_schedule", dict(init_value=0.8, decay_steps=150, alpha=0.1, exponent=2.0)),
    (
        "warmup_cosine_decay_schedule",
        dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100, end_value=0.1),
    ),
    (
        "warmup_cosine_decay_schedule",
        dict(init_value=0.5, peak_value=1.0, warmup_steps=0, decay_steps=60, exponent=3.0),
    ),
    ("cosine_onecycle_schedule", dict(transition_steps=100, peak_value=1.0)),
    (
        "cosine_onecycle_schedule",
        dict(
            transition_steps=150, peak_value=2.0, pct_start=0.25, div_factor=10, final_div_factor=1
        ),
    ),
    ("linear_onecycle_schedule", dict(transition_steps=100, peak_value=1.0)),
    (
        "linear_onecycle_schedule",
        dict(transition_steps=200, peak_value=0.5, pct_start=0.2, pct_final=0.6, div_factor=5),
    ),
]


@pytest.mark.parametrize("name, kwargs", PARITY)
def test_matches_optax(name, kwargs):
    counts = jnp.arange(0, 401, dtype=jnp.int32)
    ours = jax.jit(jax.vmap(getattr(S, name)(**kwargs)))(counts)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
        theirs = jax.jit(jax.vmap(lambda c: jnp.asarray(getattr(optax, name)(**kwargs)(c))))(counts)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_join_schedules_matches_optax():
    pieces = [
        S.linear_schedule(0.0, 1.0, 10),
        S.exponential_decay(1.0, 5, 0.8),
        S.constant_schedule(0.1),
    ]
    counts = jnp.arange(0, 200, dtype=jnp.int32)
    ours = jax.vmap(S.join_schedules(pieces, [10, 60]))(counts)
    theirs = jax.vmap(optax.join_schedules(pieces, [10, 60]))(counts)
    np.testing.assert_array_equal(ours, theirs)


# ----------------------------------------------------------------------------
# jit, vmap, dtypes, traced hyper-parameters.


@pytest.mark.parametrize("name", CASES)
def test_jit_matches_eager_and_keeps_float32(name):
    schedule = CASES[name][0]
    traces = []
    jitted = jax.jit(lambda c: (traces.append(c), schedule(c))[1])
    for t in [0, 17, 150]:
        eager_int, eager_array = schedule(t), schedule(jnp.int32(t))
        jit_value = jitted(jnp.int32(t))
        for v in (eager_int, eager_array, jit_value):
            assert v.dtype == jnp.float32 and v.shape == ()
        np.testing.assert_array_equal(eager_int, eager_array)
        np.testing.assert_allclose(jit_value, eager_array, rtol=1e-6)
    assert len(traces) == 1  # one compilation for every count: same dtype at every step

    large = jax.vmap(schedule)(jnp.asarray(LARGE, jnp.int32))
    assert large.dtype == jnp.float32 and large.shape == LARGE.shape
    assert np.all(np.isfinite(large))


@pytest.mark.parametrize(
    "make",
    [
        lambda lr, rate: S.exponential_decay(lr, 10, rate, end_value=0.01),
        lambda lr, rate: S.inverse_time_decay(lr, rate, 10),
        lambda lr, rate: S.inverse_sqrt_decay(lr, rate),
        lambda lr, rate: S.piecewise_constant_schedule(lr, {5: rate}),
        lambda lr, rate: S.warmup_cosine_decay_schedule(0.0, lr, 5, 50, exponent=rate),
        lambda lr, rate: S.cosine_onecycle_schedule(50, lr, final_div_factor=rate),
    ],
)
def test_traced_hyper_parameters(make):
    """Hyper-parameters may be traced (e.g. swept under jit); their checks are skipped."""
    jitted = jax.jit(lambda lr, rate, c: make(lr, rate)(c))
    for t in [0, 7, 30, 60]:
        got = jitted(jnp.float32(0.1), jnp.float32(0.5), jnp.int32(t))
        np.testing.assert_allclose(got, make(0.1, 0.5)(t), rtol=1e-6)


def test_doctests():
    assert doctest.testmod(S).failed == 0


# ----------------------------------------------------------------------------
# Properties.

inits = st.floats(1e-4, 10.0)
transition_steps = st.integers(1, 40)
steps = jnp.arange(0, 300, dtype=jnp.int32)
decays = st.one_of(
    st.builds(
        lambda a, T, rate, B, stair: S.exponential_decay(a, T, rate, B, stair),
        inits,
        transition_steps,
        st.floats(0.01, 1.0),
        st.integers(0, 50),
        st.booleans(),
    ),
    st.builds(S.inverse_time_decay, inits, st.floats(0.0, 10.0), transition_steps, st.booleans()),
    st.builds(S.inverse_sqrt_decay, inits, st.floats(0.01, 10.0), transition_steps, st.booleans()),
)


@settings(max_examples=30, deadline=None)
@given(decays)
def test_decays_are_non_increasing(schedule):
    v = values(schedule, steps)
    assert np.all(np.isfinite(v)) and np.all(v >= 0)
    assert np.all(np.diff(v) <= 1e-6 * v[:-1])


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["exponential", "inverse_time", "inverse_sqrt"]),
    inits,
    st.floats(0.05, 0.99),
    transition_steps,
)
def test_staircase_is_constant_within_an_epoch(kind, init, rate, steps_per_epoch):
    make = {
        "exponential": lambda: S.exponential_decay(init, steps_per_epoch, rate, staircase=True),
        "inverse_time": lambda: S.inverse_time_decay(init, rate, steps_per_epoch, staircase=True),
        "inverse_sqrt": lambda: S.inverse_sqrt_decay(init, rate, steps_per_epoch, staircase=True),
    }[kind]
    per_epoch = values(make())[: 6 * steps_per_epoch].reshape(6, steps_per_epoch)
    assert np.all(per_epoch == per_epoch[:, :1])
    assert np.all(np.diff(per_epoch[:, 0])[1 if kind == "inverse_sqrt" else 0 :] < 0)


pieces = st.one_of(
    st.builds(S.constant_schedule, st.floats(-5, 5)),
    st.builds(S.linear_schedule, st.floats(0, 1), st.floats(0, 1), st.integers(1, 30)),
    st.builds(S.exponential_decay, inits, transition_steps, st.floats(0.1, 1.0)),
)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(pieces, min_size=1, max_size=4),
    st.lists(st.integers(0, 200), min_size=3, max_size=3, unique=True),
)
def test_join_uses_the_right_piece_on_each_side_of_a_boundary(schedules, some_boundaries):
    boundaries = sorted(some_boundaries)[: len(schedules) - 1]
    joined = S.join_schedules(schedules, boundaries)
    starts = [0, *boundaries]
    for t in sorted({max(b + d, 0) for b in starts for d in (-1, 0, 1)}):
        i = max(j for j, b in enumerate(starts) if t >= b)
        np.testing.assert_array_equal(joined(t), schedules[i](t - starts[i]))


@settings(max_examples=30, deadline=None)
@given(
    inits,
    st.dictionaries(st.integers(0, 300), st.floats(0.0, 2.0), max_size=4),
    st.integers(0, 350),
)
def test_piecewise_constant_is_the_product_of_passed_scales(init, boundaries_and_scales, t):
    expected = init * math.prod(s for b, s in boundaries_and_scales.items() if t >= b)
    got = S.piecewise_constant_schedule(init, boundaries_and_scales)(t)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-30)


# ----------------------------------------------------------------------------
# Errors: each names the function and the argument.

ERRORS = [
    (S.constant_schedule, dict(value=math.nan), ValueError, "constant_schedule: value"),
    (S.constant_schedule, dict(value="1"), TypeError, "constant_schedule: value"),
    (S.constant_schedule, dict(value=jnp.ones(3)), ValueError, "constant_schedule: value .*scalar"),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=0, decay_rate=0.9),
        ValueError,
        "exponential_decay: transition_steps must be an integer >= 1, got 0",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=2.5, decay_rate=0.9),
        TypeError,
        "exponential_decay: transition_steps",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=-0.5),
        ValueError,
        r"exponential_decay: decay_rate must be in \(0, inf\), got -0.5",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=0.0),
        ValueError,
        "exponential_decay: decay_rate .*constant_schedule",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=0.9, transition_begin=-1),
        ValueError,
        "exponential_decay: transition_begin must be an integer >= 0, got -1",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=0.9, staircase=1),
        TypeError,
        "exponential_decay: staircase",
    ),
    (
        S.exponential_decay,
        dict(init_value=1.0, transition_steps=10, decay_rate=0.9, end_value=math.inf),
        ValueError,
        "exponential_decay: end_value",
    ),
    (
        S.exponential_decay,
        dict(init_value=None, transition_steps=10, decay_rate=0.9),
        TypeError,
        "exponential_decay: init_value",
    ),
    (
        S.inverse_time_decay,
        dict(init_value=1.0, decay_rate=-1.0),
        ValueError,
        r"inverse_time_decay: decay_rate must be in \[0, inf\), got -1.0",
    ),
    (
        S.inverse_time_decay,
        dict(init_value=1.0, decay_rate=1.0, transition_steps=0),
        ValueError,
        "inverse_time_decay: transition_steps",
    ),
    (S.inverse_sqrt_decay, dict(init_value=1.0, k=0.0), ValueError, "inverse_sqrt_decay: k"),
    (
        S.inverse_sqrt_decay,
        dict(init_value=1.0, transition_steps=-3),
        ValueError,
        "inverse_sqrt_decay: transition_steps",
    ),
    (
        S.piecewise_constant_schedule,
        dict(init_value=1.0, boundaries_and_scales={10: -0.5}),
        ValueError,
        r"piecewise_constant_schedule: boundaries_and_scales\[10\] .*got -0.5",
    ),
    (
        S.piecewise_constant_schedule,
        dict(init_value=1.0, boundaries_and_scales={-10: 0.5}),
        ValueError,
        "piecewise_constant_schedule: boundaries_and_scales key .*got -10",
    ),
    (
        S.piecewise_constant_schedule,
        dict(init_value=1.0, boundaries_and_scales={1.5: 0.5}),
        TypeError,
        "piecewise_constant_schedule: boundaries_and_scales key",
    ),
    (
        S.piecewise_constant_schedule,
        dict(init_value=1.0, boundaries_and_scales=[(10, 0.5)]),
        TypeError,
        "piecewise_constant_schedule: boundaries_and_scales must be a dict",
    ),
    (
        S.linear_schedule,
        dict(init_value=1.0, end_value=0.0, transition_steps=0),
        ValueError,
        "linear_schedule: transition_steps",
    ),
    (
        S.linear_schedule,
        dict(init_value=1.0, end_value=0.0, transition_steps=5, transition_begin=-2),
        ValueError,
        "linear_schedule: transition_begin",
    ),
    (
        S.polynomial_schedule,
        dict(init_value=1.0, end_value=0.0, power=0.0, transition_steps=5),
        ValueError,
        "polynomial_schedule: power",
    ),
    (
        S.polynomial_schedule,
        dict(init_value=1.0, end_value=math.nan, power=1.0, transition_steps=5),
        ValueError,
        "polynomial_schedule: end_value",
    ),
    (
        S.cosine_decay_schedule,
        dict(init_value=1.0, decay_steps=0),
        ValueError,
        "cosine_decay_schedule: decay_steps",
    ),
    (
        S.cosine_decay_schedule,
        dict(init_value=1.0, decay_steps=10, alpha=1.5),
        ValueError,
        r"cosine_decay_schedule: alpha must be in \[0, 1\]",
    ),
    (
        S.cosine_decay_schedule,
        dict(init_value=1.0, decay_steps=10, exponent=-1.0),
        ValueError,
        "cosine_decay_schedule: exponent",
    ),
    (
        S.warmup_cosine_decay_schedule,
        dict(init_value=0.0, peak_value=1.0, warmup_steps=100, decay_steps=100),
        ValueError,
        "warmup_cosine_decay_schedule: decay_steps must exceed warmup_steps.*warmup included",
    ),
    (
        S.warmup_cosine_decay_schedule,
        dict(init_value=0.0, peak_value=1.0, warmup_steps=-1, decay_steps=100),
        ValueError,
        "warmup_cosine_decay_schedule: warmup_steps",
    ),
    (
        S.warmup_cosine_decay_schedule,
        dict(init_value=0.0, peak_value=math.inf, warmup_steps=1, decay_steps=100),
        ValueError,
        "warmup_cosine_decay_schedule: peak_value",
    ),
    (S.join_schedules, dict(schedules=[], boundaries=[]), ValueError, "join_schedules: schedules"),
    (
        S.join_schedules,
        dict(schedules=[S.constant_schedule(1.0), 0.5], boundaries=[3]),
        TypeError,
        r"join_schedules: schedules\[1\] must be callable",
    ),
    (
        S.join_schedules,
        dict(schedules=[S.constant_schedule(1.0)] * 3, boundaries=[10]),
        ValueError,
        r"join_schedules: boundaries must hold one step fewer than schedules \(2\), got 1",
    ),
    (
        S.join_schedules,
        dict(schedules=[S.constant_schedule(1.0)] * 3, boundaries=[10, 10]),
        ValueError,
        "join_schedules: boundaries must be strictly increasing",
    ),
    (
        S.join_schedules,
        dict(schedules=[S.constant_schedule(1.0)] * 2, boundaries=[-5]),
        ValueError,
        r"join_schedules: boundaries\[0\]",
    ),
    (
        S.cosine_onecycle_schedule,
        dict(transition_steps=0, peak_value=1.0),
        ValueError,
        "cosine_onecycle_schedule: transition_steps",
    ),
    (
        S.cosine_onecycle_schedule,
        dict(transition_steps=100, peak_value=1.0, pct_start=1.0),
        ValueError,
        r"cosine_onecycle_schedule: pct_start must be in \[0, 1\), got 1.0",
    ),
    (
        S.cosine_onecycle_schedule,
        dict(transition_steps=100, peak_value=1.0, div_factor=0.0),
        ValueError,
        "cosine_onecycle_schedule: div_factor",
    ),
    (
        S.linear_onecycle_schedule,
        dict(transition_steps=100, peak_value=1.0, pct_start=-0.1),
        ValueError,
        "linear_onecycle_schedule: pct_start",
    ),
    (
        S.linear_onecycle_schedule,
        dict(transition_steps=100, peak_value=1.0, pct_start=0.5, pct_final=0.4),
        ValueError,
        r"linear_onecycle_schedule: pct_final must be in \(0.5, 1\), got 0.4",
    ),
    (
        S.linear_onecycle_schedule,
        dict(transition_steps=100, peak_value=1.0, final_div_factor=-1.0),
        ValueError,
        "linear_onecycle_schedule: final_div_factor",
    ),
]


@pytest.mark.parametrize("factory, kwargs, error, match", ERRORS)
def test_bad_hyper_parameters_raise(factory, kwargs, error, match):
    with pytest.raises(error, match=match):
        factory(**kwargs)


# ----------------------------------------------------------------------------
# Warmups, restarts, interpolated steps (gradtx.warmup) against optax.

WARMUP_CASES = {
    "warmup_constant": lambda m: m.warmup_constant_schedule(0.1, 1.0, 4),
    "warmup_constant_float_steps": lambda m: m.warmup_constant_schedule(0.0, 2.0, 7.0),
    "warmup_exponential": lambda m: m.warmup_exponential_decay_schedule(0.0, 1.0, 5, 3, 0.5),
    "warmup_exponential_all": lambda m: m.warmup_exponential_decay_schedule(
        0.0, 1.0, 5, 3, 0.5, transition_begin=2, staircase=True, end_value=0.1
    ),
    "warmup_exponential_growing": lambda m: m.warmup_exponential_decay_schedule(
        0.1, 1.0, 2, 4, 1.5, end_value=3.0
    ),
    "sgdr": lambda m: m.sgdr_schedule(
        [
            {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 2, "decay_steps": 10},
            {
                "init_value": 0.1,
                "peak_value": 0.5,
                "warmup_steps": 1,
                "decay_steps": 5,
                "end_value": 0.05,
                "exponent": 2.0,
            },
        ]
    ),
    "interpolate_linear": lambda m: m.piecewise_interpolate_schedule(
        "linear", 1.0, {4: 0.1, 8: 0.01}
    ),
    "interpolate_cosine": lambda m: m.piecewise_interpolate_schedule(
        "cosine", 2.0, {0: 0.5, 3: 2.0, 10: 0.1}
    ),
    "interpolate_none": lambda m: m.piecewise_interpolate_schedule("linear", 0.3),
}


@pytest.mark.parametrize("name", sorted(WARMUP_CASES))
def test_warmup_and_restart_schedules_match_optax(name):
    ours = WARMUP_CASES[name](gradtx)
    with jax.numpy_dtype_promotion("standard"):
        theirs = WARMUP_CASES[name](optax)
        steps = jnp.arange(25)
        expected = jax.vmap(theirs)(steps)
    np.testing.assert_allclose(jax.jit(jax.vmap(ours))(steps), expected, rtol=1e-6, atol=1e-7)
    assert float(ours(3)) == pytest.approx(float(expected[3]), rel=1e-6)  # a Python int count
    again = eval(repr(ours), vars(gradtx))  # prints as the call that made it
    np.testing.assert_array_equal(jax.vmap(again)(steps), jax.vmap(ours)(steps))


def test_warmup_schedules_bad_input():
    with pytest.raises(ValueError, match="piecewise_interpolate_schedule: interpolate_type"):
        gradtx.piecewise_interpolate_schedule("cubic", 1.0, {1: 0.5})
    with pytest.raises(ValueError, match=r"piecewise_interpolate_schedule: boundaries_and_scales"):
        gradtx.piecewise_interpolate_schedule("linear", 1.0, {1: -0.5})
    with pytest.raises(ValueError, match=r"sgdr_schedule: cosine_kwargs\[0\] has no decay_steps"):
        gradtx.sgdr_schedule([{"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 1}])
    with pytest.raises(ValueError, match="sgdr_schedule: cosine_kwargs must hold"):
        gradtx.sgdr_schedule([])
    with pytest.raises(ValueError, match="warmup_exponential_decay_schedule: warmup_steps"):
        gradtx.warmup_exponential_decay_schedule(0.0, 1.0, 0, 3, 0.5)
    assert gradtx.schedules.inject_hyperparams is gradtx.inject_hyperparams
    assert gradtx.schedules.sgdr_schedule is gradtx.sgdr_schedule
