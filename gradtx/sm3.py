r"""SM3: Adagrad-style scaling with one accumulator per axis instead of one per entry.

Each leaf of shape $(n_1, \dots, n_k)$ keeps $k$ vectors $\mu^{(i)} \in \mathbb{R}^{n_i}$; the
entry $(j_1, \dots, j_k)$'s sum of squares is bounded by $\min_i \mu^{(i)}_{j_i}$, and after the
step each vector keeps the maxima of the new sums over the other axes. Memory
$\sum_i n_i$ instead of $\prod_i n_i$ (Anil et al., 2019, SM3-II).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.ewa import moment_update, zeros_like_tree
from gradtx.scale import scale_by_learning_rate


class ScaleBySM3State(NamedTuple):
    mu: PyTree  # per leaf, a list of one accumulator per axis (real)
    nu: PyTree  # EWA of the scaled updates (momentum)


def _cover(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shapes of a leaf's accumulators: one per axis; a scalar has one scalar."""
    return [(n,) for n in shape] if shape else [()]


def _broadcast(mu: Array, axis: int, ndim: int) -> Array:
    """The accumulator of `axis` shaped to broadcast over a leaf of rank `ndim`."""
    return jnp.reshape(mu, [1] * axis + [-1] + [1] * (ndim - axis - 1))


@factory
def scale_by_sm3(b1: float = 0.9, b2: float = 1.0, eps: float = 1e-8) -> GradientTransformation:
    r"""SM3-II's scaling, with an EWA of the scaled updates (momentum).

    For a leaf of rank $k$ with accumulators $\mu^{(1)}, \dots, \mu^{(k)}$ (one per axis):

    $$\nu_t(j) = c\, |g_t(j)|^2 + \beta_2 \min_i \mu^{(i)}_{t-1}(j_i), \qquad
      c = \begin{cases} 1 & \beta_2 = 1 \\ 1 - \beta_2 & \text{else}\end{cases}$$
    $$s_t = \frac{g_t}{\sqrt{\nu_t + \epsilon}} \;(0 \text{ where } \nu_t = 0), \qquad
      m_t = \beta_1 m_{t-1} + (1 - \beta_1) s_t, \qquad
      \mu^{(i)}_t(j) = \max_{j' : j'_i = j} \nu_t(j')$$

    With $\beta_2 = 1$ (the default) $\nu$ is a running sum, as in Adagrad. A leaf of rank
    1 keeps $\nu$ itself, and so does a scalar (optax's update fails on scalars). Emits
    $m_t$ in the updates' dtype; stores the $\mu^{(i)}_t$ (real, also for complex leaves:
    squares are $|g|^2$) and $m_t$.

    Args:
        b1: $\beta_1 \in [0, 1)$, the decay of the momentum EWA (0 for none).
        b2: $\beta_2 \in [0, 1]$, the decay of the squared-gradient accumulators.
        eps: $\epsilon \geq 0$, inside the root.

    Returns:
        A `GradientTransformation` with state `ScaleBySM3State(mu, nu)`.

    Raises:
        ValueError: for `b1` outside $[0, 1)$, `b2` outside $[0, 1]$ or a negative `eps`,
            and in `update` for updates that do not fit the state.
    """
    fn = "scale_by_sm3"
    checks.check_decay(fn, "b1", b1)
    checks.check_range(fn, "b2", b2, 0.0, 1.0)
    checks.check_non_negative(fn, "eps", eps)

    def init(params):
        def leaf(p):
            dtype = numerics.real_dtype(jnp.result_type(p))
            return [jnp.zeros(s, dtype) for s in _cover(jnp.shape(p))]

        params = numerics.as_arrays(params)
        return ScaleBySM3State(jax.tree.map(leaf, params), zeros_like_tree(params))

    def check_fits(updates, state):
        paths, treedef = numerics.flatten_with_path(updates)
        for (path, g), mu in zip(paths, treedef.flatten_up_to(state.mu)):
            got = [jnp.shape(m) for m in mu] if type(mu) in (list, tuple) else mu
            if got != _cover(g.shape) and not (g.ndim == 0 and got == []):
                raise ValueError(
                    f"{fn}: updates{jax.tree_util.keystr(path)} has shape {g.shape}, whose "
                    f"accumulators would have shapes {_cover(g.shape)}, but the state holds "
                    f"{got}; build the state with init on params of these shapes"
                )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleBySM3State)
        checks.check_tree_match(fn, updates, state.nu)
        check_fits(updates, state)

        def leaf(g, mu, nu):
            dtype = numerics.compute_dtype(g, nu, *mu)
            real = numerics.real_dtype(dtype)
            stored_dtypes = [m.dtype for m in mu] or [real]
            mu = [numerics.cast(m, real) for m in mu]
            if g.ndim < 2:  # optax's initial state of a scalar has no accumulator: zero
                prev = mu[0] if mu else jnp.zeros((), real)
            else:
                prev = functools.reduce(
                    jnp.minimum, [_broadcast(m, i, g.ndim) for i, m in enumerate(mu)]
                )
            beta2 = numerics.as_compute(b2, real)
            if checks.is_concrete(b2):
                c = 1.0 if float(b2) == 1.0 else 1 - beta2
            else:
                c = jnp.where(beta2 == 1, 1, 1 - beta2)
            accum = c * numerics.abs_sq(numerics.cast(g, dtype)) + beta2 * prev
            inv = jnp.where(accum > 0, jax.lax.rsqrt(accum + numerics.as_compute(eps, real)), 0)
            scaled = numerics.scale_leaf(numerics.cast(g, dtype), inv)
            new_nu = moment_update(b1, nu, scaled)
            if g.ndim < 2:
                new_mu = [accum]
            else:
                axes = range(g.ndim)
                new_mu = [jnp.max(accum, axis=tuple(a for a in axes if a != i)) for i in axes]
            stored = [numerics.cast(m, d) for m, d in zip(new_mu, stored_dtypes)]
            return numerics.cast(new_nu, g.dtype), stored, new_nu

        out, mu, nu = numerics.tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return out, ScaleBySM3State(mu, nu)

    return GradientTransformation(init, update)


def sm3(learning_rate: ScalarOrSchedule, momentum: float | None = 0.9) -> GradientTransformation:
    r"""SM3: memory-efficient Adagrad (one accumulator per axis), with momentum.

    $$\theta \leftarrow \theta - \alpha\, m_t$$

    with $m_t$ from `scale_by_sm3` ($\beta_2 = 1$: sums of squares).

    `chain(scale_by_sm3(momentum), scale_by_learning_rate(learning_rate))`.

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ (or a `count -> value` schedule).
        momentum: $\beta_1 \in [0, 1)$, the decay of the momentum EWA; None for none
            ($\beta_1 = 0$; optax fails on None).

    Returns:
        The chain above, a `GradientTransformation`.

    Raises:
        ValueError: for a negative `learning_rate` or `momentum` outside $[0, 1)$.
    """
    checks.check_scalar_or_schedule("sm3", "learning_rate", learning_rate)
    return chain(
        scale_by_sm3(0.0 if momentum is None else momentum),
        scale_by_learning_rate(learning_rate),
    )
