r"""Muon: momentum orthogonalised by Newton–Schulz iterations (Jordan, 2024), with Adam for
the leaves that are not matrices.

The pieces: `orthogonalize_via_newton_schulz` (one array), `scale_by_newton_schulz` (a
stateless transformation, usable after any momentum), `scale_by_muon` (Nesterov momentum
then Newton–Schulz, optax's `MuonState`), `scale_by_shape` (the width scaling), and `muon`,
a `partition` of those (matrices) and `adamw` (the rest), labelled by `muon_param_labels`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike, DTypeLike

from gradtx import base, checks, numerics
from gradtx.base import GradientTransformation, PyTree, ScalarOrSchedule, factory
from gradtx.combine import chain, partition
from gradtx.ewa import zeros_like_tree
from gradtx.optimizers import adamw
from gradtx.scale import scale_by_learning_rate
from gradtx.spec import recorded
from gradtx.weight_decay import add_decayed_weights

Preconditioning = Literal["frobenius", "spectral", "aol", "schatten"]
_PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
_DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
_DION_NS_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
_NS_COEFFS_PRESETS = {"standard": _DEFAULT_NS_COEFFS, "dion": _DION_NS_COEFFS}


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a weight form the matrix that Muon orthogonalises.

    The matrix is (reduction axes) x (output axes), as in $x W = y$; every other axis is a
    batch axis, orthogonalised independently. The default is a plain 2-D matrix.
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


class MuonState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken
    mu: PyTree  # the momentum, in `mu_dtype`
    ns_coeffs: Array  # the Newton-Schulz coefficients, (3,) or (steps, 3)


WeightDimNumOrFn = MuonDimensionNumbers | PyTree | Callable[[PyTree], PyTree]


def _is_dims(x: Any) -> bool:
    """A `MuonDimensionNumbers`, gradtx's or optax's (same fields)."""
    return isinstance(x, tuple) and getattr(x, "_fields", None) == MuonDimensionNumbers._fields


def _is_dims_or_none(x: Any) -> bool:
    return x is None or _is_dims(x)


def _axes(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _matrix_axes(
    shape: tuple[int, ...], dims: Any
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | str:
    """`(batch, reduction, output)` axes of an array of `shape`, or why there are none."""
    ndim = len(shape)
    if ndim < 2:
        return f"it has rank {ndim}, and only arrays of rank >= 2 are matrices"
    sides = []
    for name in ("reduction_axis", "output_axis"):
        axes = _axes(getattr(dims, name))
        bad = [a for a in axes if isinstance(a, bool) or not isinstance(a, (int, np.integer))]
        if bad or not axes:
            return f"{name}={getattr(dims, name)!r} must be an int or a non-empty tuple of ints"
        if any(not -ndim <= a < ndim for a in axes):
            return f"{name}={getattr(dims, name)!r} is out of range for rank {ndim}"
        normal = tuple(int(a) % ndim for a in axes)
        if len(set(normal)) != len(normal):
            return f"{name}={getattr(dims, name)!r} repeats an axis"
        sides.append(normal)
    reduction, output = sides
    if set(reduction) & set(output):
        return f"reduction axes {reduction} and output axes {output} overlap"
    batch = tuple(a for a in range(ndim) if a not in reduction and a not in output)
    return batch, reduction, output


def _checked_axes(fn: str, where: str, shape: tuple[int, ...], dims: Any):
    found = _matrix_axes(shape, dims)
    if isinstance(found, str):
        raise ValueError(
            f"{fn}: {where} has shape {shape} and cannot be orthogonalised: {found}; give it "
            "MuonDimensionNumbers(reduction_axis, output_axis) naming its matrix axes, or "
            "leave it to Adam (muon's muon_weight_dimension_numbers=None at that leaf)"
        )
    return found


def _fans(shape: tuple[int, ...], axes) -> tuple[int, int]:
    _, reduction, output = axes
    return math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)


def _gram(x: Array) -> Array:
    return x @ jnp.conj(x).T


def _ns_step(x: Array, c: Array, first: bool, preconditioning: str, eps: Any) -> Array:
    r"""One step $X \leftarrow c_0 X + (c_1 A + c_2 A^2) X$, $A = X X^H$ (preconditioned
    on the first step for `aol` and `schatten`)."""
    a = _gram(x)
    if first and preconditioning == "aol":
        rescaling = jnp.clip(jnp.abs(a).sum(axis=-1), min=eps)
        s = jnp.expand_dims(jax.lax.rsqrt(rescaling), -1).astype(x.dtype)
        x, a = x * s, a * s * s.T
    elif first and preconditioning == "schatten":
        rescaling = jnp.clip(jnp.linalg.norm(a, ord="fro", axis=(-2, -1)), min=eps)
        s = jnp.expand_dims(jax.lax.rsqrt(rescaling), (0, -1)).astype(x.dtype)
        x, a = x * s, a * s**2
    b = c[1] * a + c[2] * a @ a
    return c[0] * x + b @ x


def _orthogonalize_matrix(
    x: Array, coeffs: Array, ns_steps: int, preconditioning: str, eps: Any
) -> Array:
    """Newton-Schulz on one matrix, in its (compute) dtype."""
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # f(X) = f(X^T)^T: iterate on the wide side
        x = x.T
    if preconditioning == "frobenius":
        x = x / (jnp.linalg.norm(x, ord="fro") + eps).astype(x.dtype)
    elif preconditioning == "spectral":
        x = x / (jnp.linalg.norm(x, ord=2) + eps).astype(x.dtype)
    c = coeffs.astype(x.dtype)
    rows = [c] * ns_steps if c.ndim == 1 else [c[i] for i in range(c.shape[0])]
    for i, row in enumerate(rows):
        x = _ns_step(x, row, i == 0, preconditioning, eps)
    return x.T if transposed else x


def _orthogonalize(x: Array, axes, coeffs: Array, ns_steps: int, preconditioning: str, eps):
    """`x` reshaped to (batch, reduction, output), orthogonalised per batch, reshaped back."""
    batch, reduction, output = axes
    order = batch + reduction + output
    shape = x.shape
    sizes = [math.prod(shape[a] for a in part) for part in (batch, reduction, output)]
    flat = x.transpose(order).reshape(sizes)
    done = jax.vmap(lambda m: _orthogonalize_matrix(m, coeffs, ns_steps, preconditioning, eps))(
        flat
    )
    inverse = tuple(sorted(range(x.ndim), key=lambda i: order[i]))
    return done.reshape(tuple(shape[a] for a in order)).transpose(inverse)


def _coefficients(fn: str, ns_coeffs: Any, ns_steps: Any) -> tuple[np.ndarray, int]:
    """`ns_coeffs` as a float32 array of shape (3,) or (n, 3), and the step count."""
    steps = checks.check_int(fn, "ns_steps", ns_steps, 0)
    try:
        coeffs = np.asarray(ns_coeffs, np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{fn}: ns_coeffs must be 3 numbers or a tuple of triples, got {ns_coeffs!r}"
        ) from err
    if coeffs.ndim not in (1, 2) or coeffs.shape[-1] != 3:
        raise ValueError(
            f"{fn}: ns_coeffs must have shape (3,) or (n, 3), got {coeffs.shape}; pass "
            "(a, b, c) for the same step every time or one triple per step"
        )
    if coeffs.ndim == 2:
        if coeffs.shape[0] > steps:
            raise ValueError(
                f"{fn}: ns_coeffs has {coeffs.shape[0]} rows (one per step), more than "
                f"ns_steps={steps}; pass ns_steps={coeffs.shape[0]}"
            )
        steps = coeffs.shape[0]
    if not np.all(np.isfinite(coeffs)):
        raise ValueError(f"{fn}: ns_coeffs must be finite, got {ns_coeffs!r}")
    return coeffs, steps


def _check_preconditioning(fn: str, preconditioning: Any) -> None:
    if preconditioning not in _PRECONDITIONINGS:
        raise ValueError(
            f"{fn}: preconditioning must be one of {', '.join(map(repr, _PRECONDITIONINGS))}, "
            f"got {preconditioning!r}"
        )


def orthogonalize_via_newton_schulz(
    x: ArrayLike,
    ns_coeffs: ArrayLike,
    ns_steps: int = 5,
    preconditioning: Preconditioning = "frobenius",
    eps: float = 1e-8,
    dimension_numbers: MuonDimensionNumbers | None = None,
) -> Array:
    r"""$X \approx U V^H$ for $X = U \Sigma V^H$: the nearest semi-orthogonal matrix.

    After scaling $X$ to spectral norm $\le 1$ (by its Frobenius norm plus $\epsilon$,
    `frobenius`; its spectral norm, `spectral`; or, on the first step, the AOL or Schatten-4
    rescaling, `aol`/`schatten`), iterates the odd polynomial
    $$X \leftarrow c_0 X + c_1 (X X^H) X + c_2 (X X^H)^2 X,$$
    which pushes every singular value towards 1 (to roughly $[0.7, 1.2]$ with the default
    coefficients, which favour speed over exactness), and leaves the singular vectors alone.
    A tall matrix is iterated as its transpose. Computed in float32 or wider, returned in
    `x`'s dtype.

    Args:
        x: the array; a matrix, or any array with `dimension_numbers`.
        ns_coeffs: $(c_0, c_1, c_2)$, shape (3,) for every step, or (n, 3), one row per step
            (then `ns_steps` is ignored).
        ns_steps: the number of steps, an int $\geq 0$.
        preconditioning: `'frobenius'`, `'spectral'`, `'aol'` or `'schatten'`.
        eps: $\epsilon \geq 0$, in the denominators of the rescaling.
        dimension_numbers: which axes of `x` form the matrix (the rest are batch axes,
            orthogonalised one by one); None for a 2-D `x`.

    Returns:
        The orthogonalised array, shaped and typed like `x`.

    Raises:
        ValueError: for a non-matrix `x` without `dimension_numbers`, bad axes, bad
            coefficients or an unknown `preconditioning`.
    """
    fn = "orthogonalize_via_newton_schulz"
    x = jnp.asarray(x)
    _check_preconditioning(fn, preconditioning)
    checks.check_non_negative(fn, "eps", eps)
    if dimension_numbers is not None and not _is_dims(dimension_numbers):
        raise TypeError(
            f"{fn}: dimension_numbers must be a MuonDimensionNumbers or None, "
            f"got {dimension_numbers!r}"
        )
    if x.ndim != 2 and dimension_numbers is None:
        raise ValueError(
            f"{fn}: x must be a matrix (m, n) or come with dimension_numbers, got shape "
            f"{x.shape}; pass dimension_numbers=MuonDimensionNumbers(reduction_axis, "
            "output_axis)"
        )
    dims = MuonDimensionNumbers() if x.ndim == 2 else dimension_numbers
    axes = _checked_axes(fn, "x", x.shape, dims)
    if isinstance(ns_coeffs, (jax.Array, np.ndarray)) and not checks.is_concrete(ns_coeffs):
        coeffs: Any = ns_coeffs  # a traced state entry: its shape is all that is needed
        steps = checks.check_int(fn, "ns_steps", ns_steps, 0) if coeffs.ndim == 1 else 0
    else:
        try:
            rows = np.shape(ns_coeffs)
        except ValueError:  # ragged: _coefficients says what is wrong
            rows = ()
        # With one triple per step, ns_steps is ignored (as in optax).
        coeffs, steps = _coefficients(fn, ns_coeffs, rows[0] if len(rows) == 2 else ns_steps)
    dtype = numerics.compute_dtype(x)
    out = _orthogonalize(
        numerics.cast(x, dtype), axes, jnp.asarray(coeffs), steps, preconditioning, eps
    )
    return numerics.cast(out, x.dtype)


def _leaf_dimension_numbers(fn: str, weight_dimension_numbers: Any, updates: PyTree) -> list:
    """One `MuonDimensionNumbers` per leaf of `updates` (the default where none is given).

    `weight_dimension_numbers` is None, a tree like `updates` (or a prefix of it) of
    `MuonDimensionNumbers`, or a function of the updates returning one.
    """
    leaves, treedef = numerics.flatten(updates)
    if weight_dimension_numbers is None:
        return [MuonDimensionNumbers()] * len(leaves)
    tree = weight_dimension_numbers
    if callable(tree) and not _is_dims(tree):
        tree = tree(updates)
    try:
        full = jax.tree.map(
            lambda d, sub: jax.tree.map(lambda _: d, sub), tree, updates, is_leaf=_is_dims_or_none
        )
        per_leaf = treedef.flatten_up_to(full)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{fn}: weight_dimension_numbers must be a tree like the params (or a prefix of "
            f"it) of MuonDimensionNumbers or None: {err}"
        ) from err
    return [MuonDimensionNumbers() if d is None else d for d in per_leaf]


def _leaf_paths(updates: PyTree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in numerics.flatten_with_path(updates)[0]]


@factory
def scale_by_newton_schulz(
    ns_coeffs: tuple = _DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    preconditioning: Preconditioning = "frobenius",
    eps: float = 1e-8,
    weight_dimension_numbers: WeightDimNumOrFn | None = None,
) -> GradientTransformation:
    r"""Orthogonalises each update leaf: $u = \mathrm{NS}(g) \approx U V^H$ for
    $g = U \Sigma V^H$ (see `orthogonalize_via_newton_schulz`).

    Stateless, so it follows any momentum: `chain(trace(0.95), scale_by_newton_schulz())`
    is Muon's direction with heavy-ball momentum. Stores nothing.

    Args:
        ns_coeffs: $(c_0, c_1, c_2)$, or one triple per step.
        ns_steps: the number of steps, an int $\geq 0$ (ignored with one triple per step).
        preconditioning: `'frobenius'`, `'spectral'`, `'aol'` or `'schatten'`.
        eps: $\epsilon \geq 0$, in the denominators of the rescaling.
        weight_dimension_numbers: a tree like the params (or a prefix) of
            `MuonDimensionNumbers`, or a function of the updates returning one; None (or a
            None leaf) means a 2-D matrix.

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: for bad coefficients or `preconditioning`; in `update`, naming the key
            path of a leaf that cannot be orthogonalised.
    """
    fn = "scale_by_newton_schulz"
    coeffs, steps = _coefficients(fn, ns_coeffs, ns_steps)
    _check_preconditioning(fn, preconditioning)
    checks.check_non_negative(fn, "eps", eps)

    def orthogonalize(updates, params):
        del params
        updates = numerics.as_arrays(updates)
        leaves, treedef = numerics.flatten(updates)
        dims = _leaf_dimension_numbers(fn, weight_dimension_numbers, updates)
        out = []
        for path, g, d in zip(_leaf_paths(updates), leaves, dims):
            axes = _checked_axes(fn, f"updates{path}", g.shape, d)
            dtype = numerics.compute_dtype(g)
            o = _orthogonalize(
                numerics.cast(g, dtype), axes, jnp.asarray(coeffs), steps, preconditioning, eps
            )
            out.append(numerics.cast(o, g.dtype))
        return treedef.unflatten(out)

    return base.stateless_pair(orthogonalize)


@factory
def scale_by_muon(
    ns_coeffs: tuple = _DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Preconditioning = "frobenius",
    weight_dimension_numbers: WeightDimNumOrFn | None = None,
) -> GradientTransformation:
    r"""Muon's direction: bias-corrected (Nesterov) momentum, orthogonalised.

    $$m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad
      \hat m_t = \frac{\beta\, m_t}{1-\beta^{t+1}} + \frac{(1-\beta)\, g_t}{1-\beta^t}
      \;\; (\text{or } \frac{m_t}{1-\beta^t} \text{ without Nesterov}),$$
    $$u_t = \mathrm{NS}(\hat m_t) \;\; (\text{with } \texttt{adaptive}:
      u_t = \langle \hat m_t, \mathrm{NS}(\hat m_t)\rangle\, \mathrm{NS}(\hat m_t)),$$
    NS as in `orthogonalize_via_newton_schulz` (the dual-norm scaling $\langle\cdot\rangle$
    is the real inner product). Emits $u_t$; stores $t$, $m_t$ and the coefficients
    (optax's `MuonState`). Each leaf must be a matrix, or have dimension numbers.

    Args:
        ns_coeffs: $(c_0, c_1, c_2)$, or one triple per step.
        ns_steps: the number of Newton-Schulz steps, an int $\geq 0$ (with one triple per
            step, at least the number of triples; then the triples are used).
        beta: $\beta \in [0, 1)$, the momentum's decay.
        eps: $\epsilon \geq 0$, in the denominators of the rescaling.
        mu_dtype: storage dtype of $m$; None keeps each parameter's dtype.
        nesterov: use the Nesterov form of $\hat m_t$.
        adaptive: scale by the dual norm $\langle \hat m_t, \mathrm{NS}(\hat m_t)\rangle$.
        preconditioning: `'frobenius'`, `'spectral'`, `'aol'` or `'schatten'`.
        weight_dimension_numbers: a tree like the params (or a prefix) of
            `MuonDimensionNumbers`, or a function of the updates returning one; None (or a
            None leaf) means a 2-D matrix.

    Returns:
        A `GradientTransformation` with state `MuonState(count, mu, ns_coeffs)`.

    Raises:
        ValueError: for bad coefficients, `beta`, `eps` or `preconditioning`; in `update`,
            naming the key path of a leaf that cannot be orthogonalised.
    """
    fn = "scale_by_muon"
    coeffs, steps = _coefficients(fn, ns_coeffs, ns_steps)
    checks.check_decay(fn, "beta", beta)
    checks.check_non_negative(fn, "eps", eps)
    checks.check_bool(fn, "nesterov", nesterov)
    checks.check_bool(fn, "adaptive", adaptive)
    _check_preconditioning(fn, preconditioning)
    mu_dt = checks.canonicalize_dtype(fn, "mu_dtype", mu_dtype)

    def init(params):
        mu = zeros_like_tree(params, mu_dt, fn=fn, arg="mu_dtype")
        return MuonState(numerics.zero_count(), mu, jnp.asarray(coeffs))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        updates = numerics.as_arrays(updates)
        checks.check_state(fn, state, MuonState)
        checks.check_tree_match(fn, updates, state.mu)
        leaves, treedef = numerics.flatten(updates)
        dims = _leaf_dimension_numbers(fn, weight_dimension_numbers, updates)
        paths = _leaf_paths(updates)
        count = numerics.safe_increment(state.count)
        one_minus = 1 - jnp.asarray(beta, jnp.float32) ** count.astype(jnp.float32)
        next_one_minus = 1 - jnp.asarray(beta, jnp.float32) ** (
            numerics.safe_increment(count).astype(jnp.float32)
        )
        ns_coeffs_ = jnp.asarray(state.ns_coeffs)
        ns_count = steps if ns_coeffs_.ndim == 1 else ns_coeffs_.shape[0]
        out, mu = [], []
        for path, g, m, d in zip(paths, leaves, treedef.flatten_up_to(state.mu), dims):
            axes = _checked_axes(fn, f"updates{path}", g.shape, d)
            cast = numerics.cast
            dtype = numerics.compute_dtype(g, m)
            x = cast(g, dtype)
            m_new = beta * cast(m, dtype) + (1 - beta) * x
            if nesterov:
                m_hat = beta * (m_new / cast(next_one_minus, dtype)) + (1 - beta) * (
                    x / cast(one_minus, dtype)
                )
            else:
                m_hat = m_new / cast(one_minus, dtype)
            o = _orthogonalize(m_hat, axes, ns_coeffs_, ns_count, preconditioning, eps)
            if adaptive:
                o = jnp.real(jnp.sum(jnp.conj(m_hat) * o)).astype(dtype) * o
            out.append(cast(o, g.dtype))
            mu.append(cast(m_new, m.dtype))
        return treedef.unflatten(out), MuonState(count, treedef.unflatten(mu), state.ns_coeffs)

    return GradientTransformation(init, update)


@factory
def scale_by_shape(
    weight_dimension_numbers: WeightDimNumOrFn | None = None,
    consistent_rms: float | None = None,
) -> GradientTransformation:
    r"""Scales each matrix leaf by a factor of its shape, $d_{in} \times d_{out}$.

    $$u = \sqrt{\max(1, d_{out} / d_{in})}\; g \qquad\text{or, with consistent RMS } \rho,
      \qquad u = \rho \sqrt{\max(d_{in}, d_{out})}\; g,$$
    where $d_{in}$ is the product of the reduction axes and $d_{out}$ of the output axes.
    The second makes an orthogonalised update's RMS $\rho$ whatever the shape (Liu et al.,
    2025). Stores nothing.

    Args:
        weight_dimension_numbers: a tree like the params (or a prefix) of
            `MuonDimensionNumbers`, or a function of the updates returning one; None (or a
            None leaf) means a 2-D matrix.
        consistent_rms: $\rho \geq 0$, or None for the width scaling.

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: for a negative `consistent_rms`; in `update`, naming the key path of a
            leaf that is not a matrix.
    """
    fn = "scale_by_shape"
    if consistent_rms is not None:
        checks.check_non_negative(fn, "consistent_rms", consistent_rms)

    def scaled(updates, params):
        del params
        updates = numerics.as_arrays(updates)
        leaves, treedef = numerics.flatten(updates)
        dims = _leaf_dimension_numbers(fn, weight_dimension_numbers, updates)
        out = []
        for path, g, d in zip(_leaf_paths(updates), leaves, dims):
            fan_in, fan_out = _fans(g.shape, _checked_axes(fn, f"updates{path}", g.shape, d))
            if consistent_rms is None:
                factor: Any = math.sqrt(max(1.0, fan_out / fan_in))
            else:
                factor = math.sqrt(max(fan_in, fan_out)) * consistent_rms
            out.append(numerics.scale_leaf(g, factor))
        return treedef.unflatten(out)

    return base.stateless_pair(scaled)


def _dimension_numbers_tree(weight_dimension_numbers: Any, tree: PyTree) -> PyTree:
    """`tree` with a `MuonDimensionNumbers` (Muon) or None (Adam) at each leaf."""
    if weight_dimension_numbers is None:
        return jax.tree.map(lambda x: MuonDimensionNumbers() if jnp.ndim(x) == 2 else None, tree)
    dims = weight_dimension_numbers
    if callable(dims) and not _is_dims(dims):
        dims = dims(tree)
    return jax.tree.map(
        lambda d, sub: jax.tree.map(lambda _: d, sub), dims, tree, is_leaf=_is_dims_or_none
    )


@recorded
def muon_dimension_numbers(
    weight_dimension_numbers: WeightDimNumOrFn | None = None,
) -> Callable[[PyTree], PyTree]:
    """The function `params -> dimension numbers` that `muon` gives its Muon pieces.

    Args:
        weight_dimension_numbers: muon's `muon_weight_dimension_numbers`: None for "every
            2-D leaf is a matrix, the rest go to Adam", else a tree like the params (or a
            prefix) of `MuonDimensionNumbers` and None (Adam), or a function of the params
            returning one.

    Returns:
        A function of a tree returning it with a `MuonDimensionNumbers` (or None) per leaf.
    """
    return lambda tree: _dimension_numbers_tree(weight_dimension_numbers, tree)


@recorded
def muon_param_labels(
    weight_dimension_numbers: WeightDimNumOrFn | None = None,
) -> Callable[[PyTree], PyTree]:
    """The function `params -> labels` ('muon' or 'adam' per leaf) that `muon` partitions by.

    Args:
        weight_dimension_numbers: muon's `muon_weight_dimension_numbers` (see
            `muon_dimension_numbers`): a leaf with dimension numbers is 'muon', one with
            None 'adam'.

    Returns:
        A function of the params returning a tree of labels like them.
    """

    def labels(params):
        dims = _dimension_numbers_tree(weight_dimension_numbers, params)
        return jax.tree.map(
            lambda d: "adam" if d is None else "muon", dims, is_leaf=_is_dims_or_none
        )

    return labels


def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: tuple | str = _DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    mu_dtype: DTypeLike | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Preconditioning = "frobenius",
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: ScalarOrSchedule = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: WeightDimNumOrFn | None = None,
    consistent_rms: float | None = None,
) -> GradientTransformation:
    r"""Muon on the matrices, AdamW on the rest.

    Matrix leaves: $\theta \leftarrow \theta - \alpha_t (s \cdot u_t + \lambda \theta)$ with
    $u_t$ from `scale_by_muon` and $s$ from `scale_by_shape`; the other leaves (and those
    whose dimension numbers are None) take `adamw`. As in optax:

    ```python
    partition(
        {"muon": chain(scale_by_muon(...), scale_by_shape(...),
                       add_decayed_weights(weight_decay, weight_decay_mask),
                       scale_by_learning_rate(learning_rate)),
         "adam": adamw(adam_learning_rate, adam_b1, adam_b2, eps, adam_eps_root, mu_dtype,
                       adam_weight_decay, nesterov=nesterov)},
        muon_param_labels(muon_weight_dimension_numbers),
    )
    ```

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        ns_coeffs: $(c_0, c_1, c_2)$, one triple per step, or a preset name:
            `'standard'` (the default triple) or `'dion'` (five triples).
        ns_steps: the number of Newton-Schulz steps, an int $\geq 0$.
        beta: $\beta \in [0, 1)$, the momentum's decay.
        eps: $\epsilon \geq 0$, in Newton-Schulz's rescaling and Adam's denominator.
        weight_decay: $\lambda \geq 0$ for the matrices (multiplied by the rate).
        weight_decay_mask: which matrix leaves to decay (a tree of bools or a function of
            the params); None decays them all.
        mu_dtype: storage dtype of the momenta; None keeps each parameter's dtype.
        nesterov: Nesterov momentum, in Muon and in Adam.
        adaptive: scale Muon's updates by the dual norm (see `scale_by_muon`).
        preconditioning: `'frobenius'`, `'spectral'`, `'aol'` or `'schatten'`.
        adam_b1: Adam's $\beta_1 \in [0, 1)$.
        adam_b2: Adam's $\beta_2 \in [0, 1)$.
        adam_eps_root: Adam's $\epsilon_{root} \geq 0$.
        adam_weight_decay: Adam's weight decay $\geq 0$.
        adam_learning_rate: Adam's rate; None uses `learning_rate`.
        muon_weight_dimension_numbers: None (every 2-D leaf is Muon's), or a tree like the
            params (or a prefix) of `MuonDimensionNumbers` and None (Adam), or a function of
            the params returning one.
        consistent_rms: $\rho$ for `scale_by_shape`'s consistent RMS (0.2 matches AdamW),
            or None for the width scaling.

    Returns:
        A `GradientTransformation` with optax's state layout,
        `PartitionState({'adam': MaskedState(...), 'muon': MaskedState(...)})`.

    Raises:
        ValueError: for an unknown preset; the pieces check the rest.
    """
    checks.check_weight_decay("muon", "weight_decay", weight_decay)
    fn = "muon"
    checks.check_scalar_or_schedule(fn, "learning_rate", learning_rate)
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in _NS_COEFFS_PRESETS:
            raise ValueError(
                f"{fn}: ns_coeffs must be a preset name in "
                f"{', '.join(map(repr, _NS_COEFFS_PRESETS))} or coefficients, got {ns_coeffs!r}"
            )
        ns_coeffs = _NS_COEFFS_PRESETS[ns_coeffs]
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    dims = muon_dimension_numbers(muon_weight_dimension_numbers)
    return partition(
        {
            "muon": chain(
                scale_by_muon(
                    ns_coeffs,
                    ns_steps,
                    beta,
                    eps,
                    mu_dtype,
                    nesterov=nesterov,
                    adaptive=adaptive,
                    preconditioning=preconditioning,
                    weight_dimension_numbers=dims,
                ),
                scale_by_shape(dims, consistent_rms),
                add_decayed_weights(weight_decay, weight_decay_mask),
                scale_by_learning_rate(learning_rate),
            ),
            "adam": adamw(
                adam_learning_rate,
                adam_b1,
                adam_b2,
                eps,
                adam_eps_root,
                mu_dtype,
                adam_weight_decay,
                nesterov=nesterov,
            ),
        },
        muon_param_labels(muon_weight_dimension_numbers),
    )
