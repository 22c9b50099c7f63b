r"""RMS scaling (IDEAS §5): divide each coordinate by the root of its mean square."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import DTypeLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, factory
from gradtx.ewa import debias_factor, moment_update, zeros_like_tree


# optax's layouts: the step count is kept only when `bias_correction` needs it.
class ScaleByRmsState(NamedTuple):
    nu: PyTree  # EWA of squared updates (real, also for complex params)


class ScaleByRmsWithCountState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken, for `bias_correction`
    nu: PyTree


class ScaleByRStdDevState(NamedTuple):
    mu: PyTree  # EWA of updates
    nu: PyTree  # EWA of squared updates


class ScaleByRStdDevWithCountState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken, for `bias_correction`
    mu: PyTree
    nu: PyTree


ScaleByStddevState = ScaleByRStdDevState  # gradtx's earlier name


class ScaleByRssState(NamedTuple):
    sum_of_squares: PyTree  # running sum of squared updates


def _inverse_root(s: Array, eps: float, eps_in_sqrt: bool) -> Array:
    r"""$1/\sqrt{s + \epsilon}$ or $1/(\sqrt{s} + \epsilon)$, in float32 or wider."""
    dtype = numerics.compute_dtype(s)
    s, e = numerics.cast(s, dtype), numerics.as_compute(eps, dtype)
    if eps_in_sqrt:
        return jax.lax.rsqrt(s + e)
    return 1 / (jnp.sqrt(s) + e)


def _rms_scaling(
    fn: str,
    centered: bool,
    decay: float,
    eps: float,
    initial_scale: float,
    eps_in_sqrt: bool,
    bias_correction: bool,
    accumulator_dtype: DTypeLike | None,
) -> GradientTransformation:
    """The one builder behind `scale_by_rms` (`centered=False`) and `scale_by_stddev`."""
    checks.check_decay(fn, "decay", decay)
    checks.check_non_negative(fn, "eps", eps)
    checks.check_non_negative(fn, "initial_scale", initial_scale)
    checks.check_bool(fn, "eps_in_sqrt", eps_in_sqrt)
    checks.check_bool(fn, "bias_correction", bias_correction)
    dtype = checks.canonicalize_dtype(fn, "accumulator_dtype", accumulator_dtype)

    if centered:
        layout: type = ScaleByRStdDevWithCountState if bias_correction else ScaleByRStdDevState
    else:
        layout = ScaleByRmsWithCountState if bias_correction else ScaleByRmsState

    def make_state(count, mu, nu):
        if centered:
            if bias_correction:
                return ScaleByRStdDevWithCountState(count, mu, nu)
            return ScaleByRStdDevState(mu, nu)
        return ScaleByRmsWithCountState(count, nu) if bias_correction else ScaleByRmsState(nu)

    def init(params):
        nu = zeros_like_tree(params, dtype, fill=initial_scale, real=True)
        mu = zeros_like_tree(params, dtype, fn=fn, arg="accumulator_dtype") if centered else None
        return make_state(numerics.zero_count(), mu, nu)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates, old = numerics.as_arrays(updates), state
        checks.check_state(fn, old, layout)
        checks.check_tree_match(fn, updates, old.nu)
        count = numerics.safe_increment(old.count) if bias_correction else None
        nu = jax.tree.map(lambda s, g: moment_update(decay, s, g, order=2), old.nu, updates)
        factor = debias_factor(decay, count) if count is not None else None

        def debiased(x):
            return x if factor is None else numerics.scale_leaf(x, factor)

        if not centered:

            def scaled(g, s):
                return numerics.scale_leaf(g, _inverse_root(debiased(s), eps, eps_in_sqrt))

            return jax.tree.map(scaled, updates, nu), make_state(count, None, nu)

        mu = jax.tree.map(lambda m, g: moment_update(decay, m, g), old.mu, updates)

        def centred(g, m, s):
            m, s = debiased(m), debiased(s)
            variance = jnp.maximum(s - numerics.abs_sq(m), 0)
            return numerics.scale_leaf(g, _inverse_root(variance, eps, eps_in_sqrt))

        return jax.tree.map(centred, updates, mu, nu), make_state(count, mu, nu)

    return GradientTransformation(init, update)


@factory
def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""RMSprop's scaling: divide by the root of an EWA of squared updates.

    $$S_t = \beta S_{t-1} + (1-\beta) g_t^2, \qquad
      u_t = \frac{g_t}{\sqrt{\hat S_t + \epsilon}}
      \;\text{or}\; \frac{g_t}{\sqrt{\hat S_t} + \epsilon}$$

    with $\hat S_t = S_t / (1 - \beta^t)$ when `bias_correction`, else $S_t$.
    Directions with large, oscillating gradients are slowed down, flat ones
    sped up. The course's formula is `eps_in_sqrt=False`; the default follows
    optax (`True`). `scale_by_rms(b2, eps_in_sqrt=False, bias_correction=True)`
    is Adam with $\beta_1 = 0$. Emits $u_t$; stores $S_t$ and $t$.

    Args:
        decay: $\beta$, in $[0, 1)$.
        eps: $\epsilon \geq 0$, for numerical safety.
        initial_scale: $S_0 \geq 0$.
        eps_in_sqrt: add $\epsilon$ inside the root (True) or outside it.
        bias_correction: divide $S_t$ by $1 - \beta^t$.
        accumulator_dtype: storage dtype of $S$ (e.g. float32 for bfloat16
            params); None keeps each parameter's dtype. gradtx only.

    Returns:
        A `GradientTransformation` with state `ScaleByRmsState(nu)`, or
        `ScaleByRmsWithCountState(count, nu)` with `bias_correction` (optax's layouts).

    Raises:
        ValueError: for `decay` outside $[0, 1)$ or negative `eps`/`initial_scale`.
    """
    return _rms_scaling(
        "scale_by_rms",
        False,
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        bias_correction,
        accumulator_dtype,
    )


@factory
def scale_by_stddev(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Centred RMS scaling: divide by an estimate of the standard deviation.

    $$m_t = \beta m_{t-1} + (1-\beta) g_t, \quad S_t = \beta S_{t-1} + (1-\beta) g_t^2,
      \quad u_t = \frac{g_t}{\sqrt{\max(\hat S_t - \hat m_t^2, 0) + \epsilon}}$$

    (or $\epsilon$ outside the root), with hats as in `scale_by_rms`. The
    variance is clipped at 0: round-off can make $\hat S - \hat m^2$ slightly
    negative, which would give NaN with `eps_in_sqrt=False`. Emits $u_t$;
    stores $m_t$, $S_t$ and $t$.

    Args:
        decay: $\beta$, the decay of both EWAs, in $[0, 1)$.
        eps: $\epsilon \geq 0$, for numerical safety.
        initial_scale: $S_0 \geq 0$ ($m_0 = 0$).
        eps_in_sqrt: add $\epsilon$ inside the root (True) or outside it.
        bias_correction: divide $m_t$ and $S_t$ by $1 - \beta^t$.
        accumulator_dtype: storage dtype of $m$ and $S$; None keeps each parameter's dtype.

    Returns:
        A `GradientTransformation` with state `ScaleByRStdDevState(mu, nu)`, or
        `ScaleByRStdDevWithCountState(count, mu, nu)` with `bias_correction` (optax's).

    Raises:
        ValueError: for `decay` outside $[0, 1)$ or negative `eps`/`initial_scale`.
    """
    return _rms_scaling(
        "scale_by_stddev",
        True,
        decay,
        eps,
        initial_scale,
        eps_in_sqrt,
        bias_correction,
        accumulator_dtype,
    )


@factory
def scale_by_rss(
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    r"""Adagrad's scaling: divide by the root of the sum of all squared updates so far.

    $$G_t = G_{t-1} + g_t^2, \quad u_t = \frac{g_t}{\sqrt{G_t + \epsilon}}$$

    ($u_t = 0$ where $G_t = 0$).

    Emits $u_t$; stores $G_t$.

    Args:
        initial_accumulator_value: $G_0 \geq 0$.
        eps: $\epsilon \geq 0$.
        accumulator_dtype: storage dtype of $G$; None keeps each parameter's dtype.

    Returns:
        A `GradientTransformation` with state `ScaleByRssState(sum_of_squares)`.
    """
    checks.check_non_negative(
        "scale_by_rss", "initial_accumulator_value", initial_accumulator_value
    )
    checks.check_non_negative("scale_by_rss", "eps", eps)

    dtype = checks.canonicalize_dtype("scale_by_rss", "accumulator_dtype", accumulator_dtype)

    def init(params):
        return ScaleByRssState(
            zeros_like_tree(params, dtype, fill=initial_accumulator_value, real=True)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state("scale_by_rss", state, ScaleByRssState)
        checks.check_tree_match("scale_by_rss", updates, state.sum_of_squares)

        def accumulate(s, g):
            dtype = numerics.compute_dtype(s, g)
            square = numerics.abs_sq(g.astype(dtype))
            return (s.astype(square.dtype) + square).astype(s.dtype)

        total = jax.tree.map(accumulate, state.sum_of_squares, updates)

        def scaled(g, s):
            s = s.astype(numerics.compute_dtype(s))
            inv = jnp.where(s > 0, jax.lax.rsqrt(s + numerics.as_compute(eps, s.dtype)), 0)
            return numerics.scale_leaf(g, inv)

        return jax.tree.map(scaled, updates, total), ScaleByRssState(total)

    return GradientTransformation(init, update)
