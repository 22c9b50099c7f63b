r"""Rprop: a step size per coordinate, grown while the gradient keeps its sign, cut on a flip."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, factory
from gradtx.combine import chain
from gradtx.scale import scale


class ScaleByRpropState(NamedTuple):
    step_sizes: PyTree  # the current step size of each coordinate
    prev_updates: PyTree  # the last emitted step (0 where the sign flipped)


def _refuse_complex(fn: str, params: PyTree) -> None:
    for path, p in numerics.flatten_with_path(params)[0]:
        if numerics.is_complex(p):
            raise TypeError(
                f"{fn}: params{jax.tree_util.keystr(path)} is {jnp.result_type(p)}; Rprop "
                "follows the sign of each coordinate, which a complex number does not have; "
                "optimise its real and imaginary parts as two real leaves"
            )


@factory
def scale_by_rprop(
    learning_rate: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> GradientTransformation:
    r"""Rprop's step: the sign of the gradient times a per-coordinate step size.

    With $p = g_t \cdot u_{t-1}$ (the gradient against the last step taken), coordinate by
    coordinate:

    $$\eta_t = \begin{cases}
        \operatorname{clip}(\eta^+ \eta_{t-1}, \eta_{\min}, \eta_{\max}) & p > 0 \\
        \operatorname{clip}(\eta^- \eta_{t-1}, \eta_{\min}, \eta_{\max}) & p < 0 \\
        \eta_{t-1} & p = 0 \end{cases}, \qquad
      u_t = \begin{cases} 0 & p < 0 \\ \eta_t \operatorname{sign}(g_t) & \text{else}
      \end{cases}$$

    with $\eta_0$ = `learning_rate` and $u_0 = 0$: after a sign flip the coordinate rests one
    step (iRprop$^-$). Emits $u_t$, a step along the gradient (`rprop` negates it); stores
    $\eta_t$ and $u_t$.

    Args:
        learning_rate: $\eta_0 > 0$, the initial step size of every coordinate.
        eta_minus: $\eta^- \in (0, 1]$, the factor after a sign flip.
        eta_plus: $\eta^+ \geq 1$, the factor while the sign is kept.
        min_step_size: $\eta_{\min} \geq 0$.
        max_step_size: $\eta_{\max} \geq \eta_{\min}$, finite.

    Returns:
        A `GradientTransformation` with state `ScaleByRpropState(step_sizes, prev_updates)`.

    Raises:
        ValueError: for values outside those ranges.
        TypeError: for a `learning_rate` that is not a number (a schedule), and at `init`
            for complex params.
    """
    fn = "scale_by_rprop"
    checks.check_positive(fn, "learning_rate", learning_rate)
    checks.check_range(fn, "eta_minus", eta_minus, 0.0, 1.0, low_open=True)
    checks.check_range(fn, "eta_plus", eta_plus, 1.0)
    checks.check_finite(fn, "min_step_size", min_step_size, 0.0, low_open=False)
    low = checks.as_float(fn, "min_step_size", min_step_size)
    checks.check_finite(
        fn,
        "max_step_size",
        max_step_size,
        0.0 if low is None else low,
        low_open=False,
        hint="max_step_size must be at least min_step_size",
    )

    def init(params):
        params = numerics.as_arrays(params)
        _refuse_complex(fn, params)
        return ScaleByRpropState(
            jax.tree.map(lambda p: jnp.full(p.shape, learning_rate, p.dtype), params),
            jax.tree.map(jnp.zeros_like, params),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, ScaleByRpropState)
        checks.check_tree_match(fn, updates, state.step_sizes)

        def leaf(g, step, prev):
            dtype = numerics.compute_dtype(g, step, prev)
            g, old = numerics.cast(g, dtype), numerics.cast(step, dtype)
            p = g * numerics.cast(prev, dtype)
            c = lambda x: numerics.as_compute(x, dtype)  # noqa: E731
            grown = old * jnp.where(p > 0, c(eta_plus), c(eta_minus))
            new = jnp.where(p == 0, old, jnp.clip(grown, c(min_step_size), c(max_step_size)))
            u = jnp.where(p < 0, jnp.zeros_like(g), new * jnp.sign(g))
            return (
                numerics.cast(u, prev.dtype),
                numerics.cast(new, step.dtype),
                numerics.cast(u, prev.dtype),
            )

        out, steps, prev = numerics.tree_map_multi(
            leaf, 3, updates, state.step_sizes, state.prev_updates
        )
        return out, ScaleByRpropState(steps, prev)

    return GradientTransformation(init, update)


def rprop(
    learning_rate: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> GradientTransformation:
    r"""Rprop (Riedmiller and Braun, 1993; iRprop$^-$ of Igel and Hüsken, 2003).

    $$\theta \leftarrow \theta - \eta_t \operatorname{sign}(g_t)$$

    per coordinate, with the step sizes $\eta_t$ of `scale_by_rprop` (and no step right
    after a sign flip). Suited to full-batch problems: it reads only the gradient's sign.

    `chain(scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size,
    max_step_size), scale(-1.0))`.

    Args:
        learning_rate: $\eta_0 > 0$, the initial step size of every coordinate.
        eta_minus: $\eta^- \in (0, 1]$, the factor after a sign flip.
        eta_plus: $\eta^+ \geq 1$, the factor while the sign is kept.
        min_step_size: $\eta_{\min} \geq 0$.
        max_step_size: $\eta_{\max} \geq \eta_{\min}$, finite.

    Returns:
        The chain above, a `GradientTransformation`.

    Raises:
        ValueError: for values outside those ranges.
    """
    return chain(
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size),
        scale(-1.0),
    )
