r"""Re-centring and re-scaling the update: gradient centralisation, normalisation by the
update's norm, and `scale_gradient`, which scales a gradient on its way back through the
model (a function of the inputs of a loss, not a transformation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, PyTree, factory
from gradtx.clipping import global_norm


@factory
def centralize() -> GradientTransformation:
    r"""Gradient centralisation: subtracts from each leaf its mean over all axes but the first.

    $$u_{j, \dots} = g_{j, \dots} - \frac{1}{m} \sum_{k} g_{j, k}$$

    for a leaf of rank 2 or more, with $k$ running over the $m$ coordinates of the other
    axes; scalars and vectors pass unchanged. Emits $u$, in each leaf's dtype (the mean is
    taken in float32 or wider; complex leaves get the complex mean); stores nothing.

    Returns:
        A stateless `GradientTransformation` (state `EmptyState()`).

    References:
        Yong et al., Gradient Centralization: A New Optimization Technique for Deep Neural
        Networks, 2020.
    """

    def leaf(g):
        g = jnp.asarray(g)
        if g.ndim <= 1:
            return g
        x = numerics.cast(g, numerics.compute_dtype(g))
        centred = x - jnp.mean(x, axis=tuple(range(1, g.ndim)), keepdims=True)
        return numerics.cast(centred, g.dtype)

    return base.stateless_pair(lambda updates, params: jax.tree.map(leaf, updates))


@factory
def normalize_by_update_norm(
    scale_factor: float = 1.0, eps: float = 1e-6
) -> GradientTransformation:
    r"""Divides the whole update by its global norm (plus $\epsilon$), times $s$.

    $$u = \frac{s \, g}{\lVert g \rVert + \epsilon}, \quad
      \lVert g \rVert = \sqrt{\textstyle\sum_i |g_i|^2}$$

    over every leaf (`global_norm`). A zero update stays zero (also with $\epsilon = 0$).
    Emits $u$, in each leaf's dtype; stores nothing. A negative $s$ gives a descent step:
    `normalize_by_update_norm(-0.1)` moves by 0.1 against the gradient.

    Args:
        scale_factor: $s$, a finite real number (the length of the emitted update).
        eps: $\epsilon \geq 0$, keeps the division finite for tiny updates.

    Returns:
        A stateless `GradientTransformation` (state `EmptyState()`).

    Raises:
        ValueError: for a non-finite `scale_factor`, or an `eps` that is negative or not
            finite.
    """
    fn = "normalize_by_update_norm"
    checks.check_finite(fn, "scale_factor", scale_factor)
    checks.check_finite(fn, "eps", eps, 0.0, low_open=False)

    def f(updates):
        updates = numerics.as_arrays(updates)
        norm = global_norm(updates)
        total = norm + numerics.as_compute(eps, norm.dtype)
        safe = jnp.where(total > 0, total, 1)
        divisor = safe / numerics.as_compute(scale_factor, norm.dtype)

        def leaf(g):
            dtype = numerics.compute_dtype(g, divisor)
            return numerics.cast(numerics.cast(g, dtype) / numerics.cast(divisor, dtype), g.dtype)

        return jax.tree.map(leaf, updates)

    return base.stateless_pair(lambda updates, params: f(updates))


@jax.custom_vjp
def _scaled_backward(inputs: PyTree, scale: Array) -> PyTree:
    """The identity, whose derivative rule scales the cotangents by `scale`."""
    del scale
    return inputs


def _scaled_forward(inputs: PyTree, scale: Array) -> tuple[PyTree, Array]:
    return inputs, scale


def _scale_cotangent(g: Array, scale: Array) -> Array:
    if g.dtype == jax.dtypes.float0:  # the zero cotangent of an integer input
        return g
    dtype = numerics.compute_dtype(g)
    return numerics.cast(numerics.cast(g, dtype) * numerics.cast(scale, dtype), g.dtype)


def _scaled_backward_rule(scale: Array, cotangents: PyTree) -> tuple[PyTree, None]:
    return jax.tree.map(lambda g: _scale_cotangent(g, scale), cotangents), None


_scaled_backward.defvjp(_scaled_forward, _scaled_backward_rule)


def scale_gradient(inputs: PyTree, scale: float) -> PyTree:
    r"""Returns `inputs` unchanged, with their gradient scaled by $s$ on the backward pass.

    $$y = x, \qquad \frac{\partial L}{\partial x} = s \, \frac{\partial L}{\partial y}$$

    Use it inside a loss, e.g. to slow a sub-network's learning without touching the
    optimiser: `h = scale_gradient(encoder(x), 0.1)`. $s = 1$ is the identity and
    $s = 0$ `jax.lax.stop_gradient`; cotangents keep their dtype (the product is taken in
    float32 or wider).

    Args:
        inputs: a pytree of arrays.
        scale: $s$, a real scalar (may be traced).

    Returns:
        `inputs`, the same values, with the scaled derivative rule.

    Raises:
        TypeError: for a `scale` that is not a real number.
        ValueError: for a `scale` that is an array of more than one value.
    """
    value = checks.as_float("scale_gradient", "scale", scale)
    if value == 1.0:
        return inputs
    if value == 0.0:
        return jax.lax.stop_gradient(inputs)
    return _scaled_backward(inputs, jnp.asarray(scale))
