r"""Momentum (IDEAS §4): averaging the gradients damps the oscillation across a valley."""

from __future__ import annotations

from typing import NamedTuple

from jax.typing import DTypeLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, PyTree, factory
from gradtx.ewa import zeros_like_tree


class TraceState(NamedTuple):
    trace: PyTree  # same tree as params, in `accumulator_dtype`


@factory
def trace(
    decay: float, nesterov: bool = False, accumulator_dtype: DTypeLike | None = None
) -> GradientTransformation:
    r"""Heavy-ball momentum: a running sum of past updates.

    $$v_t = \beta v_{t-1} + g_t, \quad v_0 = 0$$

    Emits $v_t$, or with `nesterov=True` the look-ahead $g_t + \beta v_t$;
    stores $v_t$. Followed by `scale_by_learning_rate(alpha)` this is
    $W \leftarrow W - \alpha v_t$ (optax's `trace`, torch's `SGD(momentum=β)`).

    Two conventions, one idea. The course writes momentum as an EWA,
    $v_t = \beta v_{t-1} + (1-\beta) g_t$ (`ema(beta)` then a learning rate,
    see `momentum_ewa`). The heavy-ball $v$ is the EWA $v$ times $1/(1-\beta)$,
    so with a constant rate, heavy-ball at $\alpha$ equals EWA at
    $\alpha / (1-\beta)$ — ten times larger for $\beta = 0.9$.

    Under a schedule $\alpha_t$ the two stay equivalent (with
    $\alpha^{ewa}_t = \alpha_t / (1 - \beta)$), because both apply $\alpha_t$ to
    the *whole* velocity at step $t$: lowering the rate slows the step at once,
    including the momentum built up earlier. This differs from the form
    $v_t = \beta v_{t-1} + \alpha_t g_t$, $W \leftarrow W - v_t$ (learning rate
    inside the velocity), where a lowered rate only affects new gradients and
    the old velocity keeps coasting at the old rate.

    Args:
        decay: $\beta$, in $[0, 1)$; 0.9 is the usual choice.
        nesterov: emit Nesterov's look-ahead $g_t + \beta v_t$ instead of $v_t$.
        accumulator_dtype: dtype of the stored $v$; None keeps each param's dtype.

    Returns:
        A `GradientTransformation` with state `TraceState(trace)`.

    Raises:
        ValueError: if `decay` is outside $[0, 1)$.
    """
    checks.check_decay("trace", "decay", decay)
    checks.check_bool("trace", "nesterov", nesterov)
    dtype = checks.canonicalize_dtype("trace", "accumulator_dtype", accumulator_dtype)

    def init(params):
        return TraceState(zeros_like_tree(params, dtype, fn="trace", arg="accumulator_dtype"))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state("trace", state, TraceState)
        checks.check_tree_match("trace", updates, state.trace)

        def leaf(g, v):
            dtype = numerics.compute_dtype(g, v)
            beta = numerics.as_compute(decay, dtype)
            cast = numerics.cast
            v_new = beta * cast(v, dtype) + cast(g, dtype)
            out = cast(g, dtype) + beta * v_new if nesterov else v_new
            return cast(out, g.dtype), cast(v_new, v.dtype)

        out, new_trace = numerics.tree_map_multi(leaf, 2, updates, state.trace)
        return out, TraceState(new_trace)

    return GradientTransformation(init, update)
