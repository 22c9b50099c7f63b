r"""Element-wise pieces: the small maps that, chained with EWAs, spell out RMS scaling and Adam.

Each is stateless and acts leaf by leaf, keeping every leaf's dtype. They
exist so that compositions read like the formulas, e.g. the RMS denominator
$\sqrt{\hat v_t} + \epsilon$ is `chain(square(), ema(b2), bias_correction(b2),
sqrt(), add_constant(eps))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradtx import base
from gradtx.base import GradientTransformation


def _leafwise(name: str, f, **hparams) -> GradientTransformation:
    return base.named_stateless(name, lambda updates, params: jax.tree.map(f, updates), **hparams)


def square() -> GradientTransformation:
    r"""$u = g^2$ element-wise (the input of an RMS average)."""
    return _leafwise("square", lambda g: g * g)


def sqrt() -> GradientTransformation:
    r"""$u = \sqrt{g}$ element-wise. Expects non-negative updates (e.g. a mean square)."""
    return _leafwise("sqrt", jnp.sqrt)


def add_constant(value: float) -> GradientTransformation:
    r"""$u = g + c$ element-wise, in each leaf's dtype (e.g. the $\epsilon$ of a denominator).

    Args:
        value: $c$, a finite real number.
    """
    base.check_range("add_constant", "value", value)
    if base.is_concrete(value) and not jnp.isfinite(value):
        raise ValueError(f"add_constant: value must be finite, got {value!r}")
    return _leafwise("add_constant", lambda g: g + jnp.asarray(value).astype(g.dtype), value=value)
