r"""A whole optimiser step in one pass over memory: `apply_step(tx, grads, state, params)`.

`apply_step` returns what the two-line step returns,

```python
updates, state = tx.update(grads, state, params)
params = apply_updates(params, updates)
```

and on the CPU, for the common optimisers on float32 leaves, computes it with a native kernel
that reads each parameter, gradient and moment once and writes the parameter and moments in
place. XLA's CPU backend cannot do that: it gives each output of an element-wise computation its
own loop, so an Adam step is three passes (40 bytes per parameter instead of 28).

The kernels (`fused.cc`, beside this file) fuse these chains, as built by `gradtx.optimizers`:

| transformation | kernel |
|---|---|
| `adam` = `chain(scale_by_adam, scale_by_learning_rate)` | Adam |
| `adamw` = `chain(scale_by_adam, add_decayed_weights, scale_by_learning_rate)` | Adam |
| `sgd(momentum=β)` = `chain(trace, scale_by_learning_rate)` | trace |
| `rmsprop` = `chain(scale_by_rms, scale_by_learning_rate)` | RMS |

Anything else — other chains, masks, bfloat16 leaves, Nesterov Adam, another backend — takes the
two-line step, which is always available and is what the kernels are tested against. The
kernels are compiled when gradtx is installed, against jaxlib's XLA FFI headers, and loaded on
first use (`gradtx.native`); nothing is compiled at import or inside a trace. An install without
a C++ compiler has no kernels and takes the two-line step: `gradtx.native_status()` says why and
gives the command that builds them. `GRADTX_NATIVE=0` turns them off.

Donate params and state to the jitted step (`donate_argnums`) so the kernel updates them in
place, and return them in the order they come in (`step(params, state, ...)` returning
`(params, state, ...)`): JAX pairs donated inputs with outputs by shape, in order, and XLA
copies every buffer that ends up paired with another one's. The kernel call has no sharding
rule: with parameters sharded over several devices XLA would gather them for it, so pass
`native=False` there (under `shard_map` each device's shard is fine).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import base, native
from gradtx.adam import ScaleByAdamState
from gradtx.base import GradientTransformation, OptState, Params, Updates
from gradtx.ewa import debias_factor
from gradtx.momentum import TraceState
from gradtx.rms import ScaleByRmsState

# Leaves per native call: XLA's compile time grows faster than linearly with the operands of
# one instruction (500 leaves in one call: 7 s to compile; in calls of 64: 1 s).
_LEAVES_PER_CALL = 64


def apply_step(
    tx: GradientTransformation,
    grads: Updates,
    state: OptState,
    params: Params,
    *,
    native: bool | None = None,
) -> tuple[Params, OptState]:
    r"""One optimiser step: $(\theta + u, s')$ where $u, s'$ = `tx.update(grads, state, params)`.

    Equal to `update` followed by `apply_updates` (to float32 round-off where a native kernel
    runs; bit for bit otherwise). Use it inside the jitted train step, with params and state
    donated:

    ```python
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        return gradtx.apply_step(opt, grads, state, params)
    ```

    Args:
        tx: the optimiser, e.g. `gradtx.adam(1e-3)`.
        grads: the gradients, a tree like `params`.
        state: `tx`'s state.
        params: the parameters.
        native: None uses the native kernel where it applies; False never does; True
            requires it and raises when it does not apply (for tests and benchmarks).

    Returns:
        `(new_params, new_state)`.

    Raises:
        TypeError: when `tx` is not a gradient transformation.
        ValueError: with `native=True`, naming why the kernel does not apply.
    """
    if native is not None:
        base.check_bool("apply_step", "native", native)
    tx = base.as_transformation("apply_step", "tx", tx)
    why_not = "native=False" if native is False else _why_not_native(tx, grads, state, params)
    if why_not is not None:
        if native:
            raise ValueError(f"apply_step: the native kernel does not apply: {why_not}")
        return _two_line_step(tx, grads, state, params)
    plan = _plan(tx)
    assert plan is not None
    return jax.lax.platform_dependent(
        grads,
        state,
        params,
        cpu=plan.step,
        default=functools.partial(_two_line_step, tx),
    )


def native_available() -> bool:
    """True when the native kernels are built and loaded (they only run on the CPU)."""
    return _load_native() is None


def _two_line_step(tx, grads, state, params):
    updates, state = tx.update(grads, state, params)
    return base.apply_updates(params, updates), state


# ----------------------------------------------------------------------------
# Recognising the chains the kernels fuse.


class _Piece(NamedTuple):
    name: str
    tx: GradientTransformation
    args: tuple
    hparams: dict


def _piece(tx: Any) -> _Piece | None:
    update = getattr(tx, "update", None)
    name = getattr(update, "__gradtx_name__", None)
    if name is None:
        return None
    args = getattr(update, "__gradtx_args__", ())
    return _Piece(name, tx, args, getattr(update, "__gradtx_hparams__", {}))


def _probe(piece: _Piece, state: Any, value: float, param: float | None = None):
    """Runs a scalar-only piece on a float32 scalar: its per-step factor and its new state.

    `scale_by_learning_rate` on 1 gives $-\\alpha_t$; `add_decayed_weights` on 0 with
    $\\theta = 1$ gives $\\lambda_t$; both exactly, as float32, as they scale every leaf.
    """
    x = jnp.asarray(value, jnp.float32)
    p = None if param is None else jnp.asarray(param, jnp.float32)
    out, new_state = piece.tx.update(x, state, p)
    return jnp.asarray(out, jnp.float32), new_state


class _Plan(NamedTuple):
    kind: str  # "adam", "trace" or "rms"
    pieces: tuple[_Piece, ...]
    moments: Callable[[Any], tuple]  # first piece's state -> its moment trees

    def step(self, grads, state, params):
        p_leaves, treedef = jax.tree.flatten(params)
        columns = [p_leaves, treedef.flatten_up_to(grads)]
        columns += [treedef.flatten_up_to(t) for t in self.moments(state[0])]
        head, scalars, rest = _scalars(self, state)
        live = [i for i, p in enumerate(p_leaves) if jnp.size(p)]  # skip empty leaves
        call = _native_step(self.kind, tuple(sorted(_attrs(self).items())))
        new_columns = [list(columns[0])] + [list(c) for c in columns[2:]]
        for start in range(0, len(live), _LEAVES_PER_CALL):
            group = live[start : start + _LEAVES_PER_CALL]
            outs = call(scalars, *([column[i] for i in group] for column in columns))
            for new, out in zip(new_columns, outs):
                for i, leaf in zip(group, out):
                    new[i] = leaf
        new_params, *moments = [treedef.unflatten(c) for c in new_columns]
        return new_params, (_head_state(self.kind, head, moments), *rest)


# The hyper-parameters each fused piece may carry: a piece with any other (a newer option the
# kernels do not know) is not fused. Storage dtypes need no check here: the kernels run only
# when every leaf (params, gradients, moments) is float32.
_KNOWN = {
    "scale_by_adam": {"b1", "b2", "eps", "eps_root", "mu_dtype", "nu_dtype", "nesterov"},
    "trace": {"decay", "nesterov", "accumulator_dtype"},
    "scale_by_rms": {
        "decay",
        "eps",
        "initial_scale",
        "eps_in_sqrt",
        "bias_correction",
        "accumulator_dtype",
    },
    "add_decayed_weights": {"weight_decay"},
    "scale_by_learning_rate": {"flip_sign"},
}


# The hyper-parameters that become the kernels' compile-time attributes: they must be numbers
# known when tracing (a traced one, e.g. from `inject_hyperparams`, takes the two-line step).
_STATIC = ["b1", "b2", "eps", "eps_root", "decay"]


def _plan(tx: GradientTransformation) -> _Plan | None:
    chain = _piece(tx)
    if chain is None or chain.name != "chain":
        return None
    pieces = tuple(_piece(t) for t in chain.args)
    if any(p is None or not set(p.hparams) <= _KNOWN.get(p.name, set()) for p in pieces):
        return None
    names = tuple(p.name for p in pieces)
    first = pieces[0].hparams
    if not all(_is_number(first[k]) for k in _STATIC if k in first):
        return None
    if names in [
        ("scale_by_adam", "scale_by_learning_rate"),
        ("scale_by_adam", "add_decayed_weights", "scale_by_learning_rate"),
    ]:
        if first.get("nesterov"):
            return None
        return _Plan("adam", pieces, lambda s: (s.mu, s.nu))
    if names == ("trace", "scale_by_learning_rate"):
        return _Plan("trace", pieces, lambda s: (s.trace,))
    if names == ("scale_by_rms", "scale_by_learning_rate"):
        return _Plan("rms", pieces, lambda s: (s.nu,))
    return None


def _is_number(value: Any) -> bool:
    """A real number known at trace time (a Python or numpy scalar, a concrete 0-d array)."""
    if isinstance(value, numbers.Real):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        base.is_concrete(value)
        and dtype is not None
        and np.issubdtype(dtype, np.number)
        and np.ndim(value) == 0
    )


def _why_not_native(tx, grads, state, params) -> str | None:
    """None when the kernel applies to this call, else the reason it does not."""
    plan = _plan(tx)
    if plan is None:
        return f"{tx!r} is not one of adam, adamw, sgd with momentum, rmsprop"
    if not (isinstance(state, tuple) and len(state) == len(plan.pieces)):
        return "the state was not built by this optimiser's init"
    p_leaves, treedef = jax.tree.flatten(params)
    try:
        others = [treedef.flatten_up_to(grads)]
        others += [treedef.flatten_up_to(t) for t in plan.moments(state[0])]
    except (ValueError, TypeError, AttributeError):
        return "grads or state do not have the params' tree structure"
    for leaves in [p_leaves, *others]:
        for p, x in zip(p_leaves, leaves):
            if getattr(x, "dtype", None) != jnp.float32 or jnp.shape(x) != jnp.shape(p):
                return "the kernels take float32 leaves, all shaped like their params"
    return _load_native()


def _scalars(plan: _Plan, state: tuple):
    """The first piece's new scalar state, the kernel's scalar buffer, the other new states."""
    head = state[0]
    count = None
    if plan.kind == "adam":
        hp = plan.pieces[0].hparams
        count = base.safe_increment(head.count)
        factors = [debias_factor(hp["b1"], count), debias_factor(hp["b2"], count)]
    elif plan.kind == "rms":
        hp = plan.pieces[0].hparams
        count = base.safe_increment(head.count)
        factors = [debias_factor(hp["decay"], count) if hp["bias_correction"] else 1.0]
    else:
        factors = []
    rest, step, decay = [], None, jnp.zeros([], jnp.float32)
    for piece, s in zip(plan.pieces[1:], state[1:]):
        if piece.name == "add_decayed_weights":
            decay, s = _probe(piece, s, 0.0, 1.0)
        else:
            step, s = _probe(piece, s, 1.0)
        rest.append(s)
    values = [step, *factors] + ([decay] if plan.kind == "adam" else [])
    scalars = jnp.stack([jnp.asarray(v, jnp.float32) for v in values])
    return count, scalars, rest


def _head_state(kind: str, count, trees: list):
    if kind == "adam":
        return ScaleByAdamState(count, *trees)
    if kind == "rms":
        return ScaleByRmsState(count, *trees)
    return TraceState(*trees)


def _attrs(plan: _Plan) -> dict:
    """The kernel's compile-time attributes, rounded to float32 as XLA rounds them."""
    hp = plan.pieces[0].hparams
    f32 = np.float32
    if plan.kind == "adam":
        return {
            "b1": f32(hp["b1"]),
            "nb1": f32(1 - hp["b1"]),
            "b2": f32(hp["b2"]),
            "nb2": f32(1 - hp["b2"]),
            "eps": f32(hp["eps"]),
            "eps_root": f32(hp["eps_root"]),
            "decay": len(plan.pieces) == 3,
        }
    if plan.kind == "trace":
        return {"decay": f32(hp["decay"]), "nesterov": bool(hp["nesterov"])}
    return {
        "decay": f32(hp["decay"]),
        "ndecay": f32(1 - hp["decay"]),
        "eps": f32(hp["eps"]),
        "eps_in_sqrt": bool(hp["eps_in_sqrt"]),
        "bias_correction": bool(hp["bias_correction"]),
    }


# ----------------------------------------------------------------------------
# The native call, and the same math in jax.numpy for its derivatives.


def _reference_leaf(kind: str, attrs: dict, s, p, g, *moments):
    """The kernels' math for one leaf, operation for operation, in jax.numpy."""
    a = {k: (v if isinstance(v, bool) else jnp.float32(v)) for k, v in attrs.items()}
    if kind == "adam":
        m, v = moments
        m = a["b1"] * m + a["nb1"] * g
        v = a["b2"] * v + a["nb2"] * (g * g)
        u = (m * s[1]) / (jnp.sqrt(v * s[2] + a["eps_root"]) + a["eps"])
        if attrs["decay"]:
            u = u + p * s[3]
        return p + u * s[0], m, v
    if kind == "trace":
        (t,) = moments
        t = a["decay"] * t + g
        u = g + a["decay"] * t if attrs["nesterov"] else t
        return p + u * s[0], t
    (nu,) = moments
    nu = a["decay"] * nu + a["ndecay"] * (g * g)
    nu_hat = nu * s[1] if attrs["bias_correction"] else nu
    if attrs["eps_in_sqrt"]:
        inv = 1 / jnp.sqrt(nu_hat + a["eps"])
    else:
        inv = 1 / (jnp.sqrt(nu_hat) + a["eps"])
    return p + (g * inv) * s[0], nu


@functools.cache
def _native_step(kind: str, attr_items: tuple) -> Callable:
    """`(scalars, params, grads, *moments) -> (params, *moments)`, lists of leaves, in place.

    One native call updates all the leaves it is given. Its derivatives (`jax.jvp`, `jax.grad`
    through a step) are those of `_reference_leaf`.
    """
    attrs = dict(attr_items)
    name = f"gradtx_{kind}_step"

    @jax.custom_jvp
    def step(scalars, params, grads, *moments):
        n = len(params)
        shapes = [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params]
        # argument 1 + i is params[i], 1 + (2 + k) n + i is moments[k][i]
        aliases = {1 + i: i for i in range(n)}
        for k in range(len(moments)):
            aliases.update({1 + (2 + k) * n + i: (1 + k) * n + i for i in range(n)})
        call = jax.ffi.ffi_call(
            name,
            shapes * (1 + len(moments)),
            input_output_aliases=aliases,
            vmap_method="sequential",
        )
        flat = call(scalars, *params, *grads, *(x for m in moments for x in m), **attrs)
        return [list(flat[k * n : (k + 1) * n]) for k in range(1 + len(moments))]

    @step.defjvp
    def step_jvp(primals, tangents):
        def reference(scalars, params, grads, *moments):
            leaves = [
                _reference_leaf(kind, attrs, scalars, *xs) for xs in zip(params, grads, *moments)
            ]
            return [list(column) for column in zip(*leaves)]

        _, tangents_out = jax.jvp(reference, primals, tangents)
        return step(*primals), tangents_out

    return step


# ----------------------------------------------------------------------------
# Loading the kernels (built at install time; see `gradtx.native`).


def _load_native() -> str | None:
    """Registers the kernels once per process; None on success, else why not. Never compiles."""
    return native.load()
