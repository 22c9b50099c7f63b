r"""Measurements of the updates at a point of a chain, kept in the state for logging.

* `snapshot(name, measure)`: stores `measure(updates)` under `name`.
* `monitor({name: measure, ...})`: several measurements, each a function of the updates
  or a transformation with its own state, e.g. `measure_with_ema(measure, decay)`.

All pass the updates through unchanged. Read a measurement back by its name with
`gradtx.tree_utils.tree_get(state, name)`:

```python
opt = chain(sgd(0.1, momentum=0.9),
            monitor({"norm": global_norm, "norm_ema": measure_with_ema(global_norm, 0.9)}),
            clip_by_global_norm(1.0))
updates, state = opt.update(grads, state)
tree_get(state, "norm"), tree_get(state, "norm_ema")
```

gradtx's own `monitor_norms(inner)` records the usual norms and ratios without a measure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradtx import base, checks
from gradtx.base import GradientTransformation, OptState, PyTree, Updates, factory
from gradtx.combine import chain
from gradtx.ewa import ema


class SnapshotState(NamedTuple):
    measurement: dict[str, Any]  # {measure_name: measure(updates)}


class MonitorState(NamedTuple):
    measurements: dict[str, PyTree]  # {name: the measurement of the last updates}
    measure_states: tuple[OptState, ...]  # each measure's own state, in the dict's order


def _check_measure(fn: str, name: str, measure: Any) -> None:
    if not callable(measure):
        raise TypeError(
            f"{fn}: {name} must be a function of the updates, got {type(measure).__name__}"
        )


@factory
def snapshot(measure_name: str, measure: Callable[[Updates], PyTree]) -> GradientTransformation:
    r"""Stores a measurement of the updates reaching it, and passes them on unchanged.

    $$u_t = g_t, \qquad s_t = \{\text{name}: \text{measure}(g_t)\}$$

    Emits $g_t$; stores `SnapshotState({measure_name: measure(g_t)})`, at `init`
    `measure(params)` (as optax does). In a chain, $g_t$ is the update as transformed so far.

    Args:
        measure_name: the key the measurement is stored under.
        measure: a pure, jittable function of the updates, e.g. `global_norm`.

    Returns:
        A `GradientTransformation` with state `SnapshotState(measurement)`.

    Raises:
        TypeError: for a `measure_name` that is not a string or a `measure` that is not
            callable.
    """
    fn = "snapshot"
    if not isinstance(measure_name, str):
        raise TypeError(f"{fn}: measure_name must be a string, got {measure_name!r}")
    _check_measure(fn, "measure", measure)

    def init(params):
        return SnapshotState({measure_name: measure(params)})

    def update(updates, state, params=None, **extra_args):
        del state, params, extra_args
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init, update)


def _zeros_like_measurement(tx: GradientTransformation, state: OptState, params: PyTree) -> Any:
    """Zeros shaped like what `tx` emits for updates shaped like `params` (not computed)."""
    shapes = jax.eval_shape(lambda p: tx.update(p, state, p)[0], params)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@factory
def monitor(
    measures: dict[str, GradientTransformation | Callable[[Updates], PyTree]],
) -> GradientTransformation:
    r"""Several measurements of the updates reaching it, some with state; the updates pass on
    unchanged.

    $$u_t = g_t, \qquad m^{(k)}_t, s^{(k)}_t = M_k(g_t, s^{(k)}_{t-1})$$

    for each named measure $M_k$: a function of the updates (stateless), or a
    transformation whose emitted value is the measurement (e.g. `measure_with_ema`), fed
    the updates, the params and any extra arguments. Emits $g_t$; stores
    `MonitorState({name: m_t}, (s_1, ...))`.

    Unlike optax, whose `init` leaves `measurements` empty until the first update, `init`
    stores zeros shaped like each measurement (found by `jax.eval_shape`, nothing
    computed), so the state keeps one tree structure (`jit` does not retrace,
    `lax.scan` runs it). A measure that cannot be traced without extra arguments is left
    out until the first update, as in optax. An optax `MonitorState` works in `update`.

    Args:
        measures: `{name: measure}`, each a function of the updates or a transformation.

    Returns:
        A `GradientTransformation` with state `MonitorState(measurements, measure_states)`.

    Raises:
        TypeError: for `measures` that is not a dict, or a value that is neither callable
            nor a transformation.
    """
    fn = "monitor"
    if not isinstance(measures, Mapping):
        raise TypeError(
            f"{fn}: measures must be a dict {{name: measure}}, got {type(measures).__name__}"
        )
    txs: dict[Any, GradientTransformation] = {}
    for name, measure in measures.items():
        if callable(measure):
            txs[name] = base.stateless(lambda u, p, m=measure: m(u))
        else:
            txs[name] = base.as_transformation(fn, f"measures[{name!r}]", measure)

    def init(params):
        states = tuple(tx.init(params) for tx in txs.values())
        measurements = {}
        for (name, tx), state in zip(txs.items(), states):
            try:
                measurements[name] = _zeros_like_measurement(tx, state, params)
            except (TypeError, ValueError):  # needs extra arguments: filled at the update
                continue
        return MonitorState(measurements, states)

    def update(updates, state, params=None, **extra_args):
        measure_states = state.measure_states
        if type(measure_states) is list:  # restored from a checkpoint as a list
            measure_states = tuple(measure_states)
        if type(measure_states) is not tuple or len(measure_states) != len(txs):
            raise ValueError(
                f"{fn}: state.measure_states must be the tuple of {len(txs)} states made by "
                f"this monitor's init, got {type(measure_states).__name__}; was it built by "
                "a different optimiser?"
            )
        measurements, new_states = {}, []
        for (name, tx), s in zip(txs.items(), measure_states):
            measurements[name], s = tx.update(updates, s, params, **extra_args)
            new_states.append(s)
        return updates, MonitorState(measurements, tuple(new_states))

    return GradientTransformation(init, update)


def _as_floating(x: Any) -> jax.Array:
    """`x` as an array of a floating (or complex) dtype: bools and integers become floats."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float))


@factory
def measure_with_ema(
    measure: Callable[[Updates], PyTree],
    decay: float,
    debias: bool = True,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""The exponentially weighted average of a measurement of the updates (for `monitor`).

    $$x_t = \text{measure}(g_t), \quad m_t = \beta m_{t-1} + (1 - \beta) x_t, \quad
      \text{emits } \frac{m_t}{1 - \beta^t} \text{ (debias) or } m_t$$

    `chain(stateless(measure), ema(decay, debias, accumulator_dtype))` with the average
    shaped like `measure(params)` at `init`. It emits the measurement, not an update: use
    it as a measure of `monitor`. Bool and integer measurements (e.g. `norm > c`, for the
    fraction of clipped steps) are averaged as floats. Stores `(EmptyState(),
    EmaState(count, ema))`, optax's layout.

    Args:
        measure: a pure, jittable function of the updates, e.g. `global_norm`.
        decay: $\beta \in [0, 1)$.
        debias: divide by $1 - \beta^t$ (optax's default, True).
        accumulator_dtype: dtype of the stored average; None keeps the measurement's.

    Returns:
        A `GradientTransformation` with state `(EmptyState(), EmaState(count, ema))`.

    Raises:
        ValueError: for a `decay` outside $[0, 1)$ or a non-floating `accumulator_dtype`.
        TypeError: for a `measure` that is not callable or a `debias` that is not a bool.
    """
    fn = "measure_with_ema"
    _check_measure(fn, "measure", measure)
    checks.check_decay(fn, "decay", decay)
    checks.check_bool(fn, "debias", debias)
    checks.canonicalize_dtype(fn, "accumulator_dtype", accumulator_dtype)

    def measured(tree):
        return jax.tree.map(_as_floating, measure(tree))

    average = ema(decay, debias, accumulator_dtype)
    shaped = GradientTransformation(lambda params: average.init(measured(params)), average.update)
    return chain(base.stateless(lambda updates, params: measured(updates)), shaped)
