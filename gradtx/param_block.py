r"""Scaling each update block by the size of its parameter block (Adafactor's relative step).

A *block* is one leaf of the tree: a weight vector, a weight matrix, a convolution kernel.
Multiplying a block's update by the norm (or RMS) of the parameters it moves makes the step
relative to the size of those parameters, as `adafactor` does with
`multiply_by_parameter_scale=True`.
"""

from __future__ import annotations

import jax

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, factory
from gradtx.safe_math import safe_norm, safe_root_mean_squares


def _param_block_scaling(fn: str, measure, min_scale) -> GradientTransformation:
    """The stateless pair behind both pieces: $u = g \\cdot \\mathrm{measure}(\\theta)$."""
    checks.check_non_negative(fn, "min_scale", min_scale)

    def f(updates, params):
        if params is None:
            raise checks.missing_argument(fn, "params", "opt.update(grads, state, params)")
        updates = numerics.as_arrays(updates)
        params = numerics.as_arrays(params)
        checks.check_tree_match(fn, updates, params, "updates", "params")

        def leaf(u, p):
            p = numerics.cast(p, numerics.compute_dtype(p))
            low = numerics.as_compute(min_scale, numerics.real_dtype(p.dtype))
            return numerics.scale_leaf(u, measure(p, low))

        return jax.tree.map(leaf, updates, params)

    return base.stateless_pair(f)


@factory
def scale_by_param_block_norm(min_scale: float = 1e-3) -> GradientTransformation:
    r"""Scales each block of updates by the norm of its parameter block.

    $$u = g \cdot \max\bigl(\lVert \theta \rVert_2, s_{\min}\bigr)$$

    per leaf, with $\lVert\theta\rVert_2$ the Frobenius norm of the whole leaf (complex
    entries by their modulus), taken in float32 or wider. Emits $u$ in the updates' dtype;
    stores nothing.

    Args:
        min_scale: $s_{\min} \geq 0$, the smallest factor (for zero or tiny parameters).

    Returns:
        A stateless `GradientTransformation` (optax's `scale_by_param_block_norm`).

    Raises:
        ValueError: for a negative `min_scale`.
        TypeError: in `update`, when `params` is not passed.
    """
    return _param_block_scaling("scale_by_param_block_norm", safe_norm, min_scale)


@factory
def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
    r"""Scales each block of updates by the root mean square of its parameter block.

    $$u = g \cdot \max\Bigl(\sqrt{\tfrac{1}{n}\textstyle\sum_i |\theta_i|^2}, s_{\min}\Bigr)$$

    per leaf of $n$ entries, taken in float32 or wider. This is Adafactor's relative step
    size (`adafactor(multiply_by_parameter_scale=True)`). Emits $u$ in the updates' dtype;
    stores nothing.

    Args:
        min_scale: $s_{\min} \geq 0$, the smallest factor (for zero or tiny parameters).

    Returns:
        A stateless `GradientTransformation` (optax's `scale_by_param_block_rms`).

    Raises:
        ValueError: for a negative `min_scale`.
        TypeError: in `update`, when `params` is not passed.
    """
    return _param_block_scaling("scale_by_param_block_rms", safe_root_mean_squares, min_scale)
