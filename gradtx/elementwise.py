r"""Element-wise pieces: the small maps that, chained with EWAs, spell out RMS scaling and Adam.

Each is stateless and acts leaf by leaf, keeping every leaf's dtype. They
exist so that compositions read like the formulas, e.g. the RMS denominator
$\sqrt{\hat v_t} + \epsilon$ is `chain(square(), ema(b2), bias_correction(b2),
sqrt(), add_constant(eps))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation


def _leafwise(f) -> GradientTransformation:
    return base.stateless_pair(lambda updates, params: jax.tree.map(f, updates))


@base.factory
def square() -> GradientTransformation:
    r"""$u = |g|^2$ element-wise (the input of an RMS average).

    $g^2$ for real $g$; $g \bar g$ for complex $g$ (real-valued, kept in $g$'s dtype).
    """
    return _leafwise(lambda g: numerics.abs_sq(jnp.asarray(g)).astype(jnp.result_type(g)))


@base.factory
def sqrt() -> GradientTransformation:
    r"""$u = \sqrt{g}$ element-wise. Expects non-negative updates (e.g. a mean square)."""
    return _leafwise(jnp.sqrt)


@base.factory
def add_constant(value: float) -> GradientTransformation:
    r"""$u = g + c$ element-wise, in each leaf's dtype (e.g. the $\epsilon$ of a denominator).

    Args:
        value: $c$, a finite real number.
    """
    checks.check_range("add_constant", "value", value)
    if checks.is_concrete(value) and not jnp.isfinite(value):
        raise ValueError(f"add_constant: value must be finite, got {value!r}")
    return _leafwise(lambda g: g + jnp.asarray(value).astype(g.dtype))
