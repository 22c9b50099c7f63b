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
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradtx import base, checks, native, numerics
from gradtx.adam import scale_by_adam
from gradtx.base import GradientTransformation, OptState, Params, Updates, identity
from gradtx.combine import chain
from gradtx.ewa import debias_factor
from gradtx.momentum import trace
from gradtx.rms import scale_by_rms
from gradtx.scale import scale_by_learning_rate
from gradtx.spec import spec_of
from gradtx.weight_decay import add_decayed_weights

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
        checks.check_bool("apply_step", "native", native)
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
# The kernels: one record each. Adding a kernel for a new chain is adding one record.


class Kernel(NamedTuple):
    """A native kernel: the chain it fuses, its C++ entry point, and its jax.numpy reference.

    It fuses `chain(head(...), [add_decayed_weights(λ)], scale_by_learning_rate(α))`, where
    `head` is the factory object `head` (compared by identity, never by name).

    Attributes:
        target: the FFI target name the kernel is registered under.
        symbol: its entry point in `fused.cc`.
        head: the factory of the chain's first piece, e.g. `gradtx.scale_by_adam`.
        moments: the fields of the head's state the kernel updates in place, in call order.
        attrs: the head's bound arguments -> the kernel's compile-time attributes, or None
            when those arguments are not the kernel's (e.g. Nesterov Adam). The numbers must
            be known at trace time (`_number`); `decay` is added when the chain decays.
        factors: `(head arguments, new count)` -> the per-step scalars after the step size
            (bias corrections), for heads whose state counts steps; None for those that don't.
        reference: `(attrs, scalars, p, g, *moments) -> (p, *moments)` for one leaf: the
            kernel's math operation for operation, its derivative rule and its test oracle.
        decays: whether the chain may hold `add_decayed_weights` (its λ is the last scalar).
    """

    target: str
    symbol: str
    head: Callable[..., GradientTransformation]
    moments: tuple[str, ...]
    attrs: Callable[[Mapping[str, Any]], dict | None]
    factors: Callable[[Mapping[str, Any], jax.Array], list] | None
    reference: Callable[..., tuple]
    decays: bool = False


def _number(value: Any) -> np.float32 | None:
    """`value` as a float32 when it is a real number known at trace time, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return np.float32(value)
    dtype = getattr(value, "dtype", None)
    if (
        checks.is_concrete(value)
        and dtype is not None
        and np.issubdtype(dtype, np.number)
        and np.ndim(value) == 0
    ):
        return np.float32(value)
    return None


def _numbers(args: Mapping[str, Any], **names: str) -> dict | None:
    """`{attr: float32(args[name])}` for `attr=name` pairs, or None if one is not a number."""
    out = {attr: _number(args[name]) for attr, name in names.items()}
    return None if any(v is None for v in out.values()) else out


def _adam_attrs(args: Mapping[str, Any]) -> dict | None:
    if args["nesterov"]:
        return None
    a = _numbers(args, b1="b1", b2="b2", eps="eps", eps_root="eps_root")
    if a is None:
        return None
    return {**a, "nb1": np.float32(1 - args["b1"]), "nb2": np.float32(1 - args["b2"])}


def _adam_reference(a, s, p, g, m, v):
    m = a["b1"] * m + a["nb1"] * g
    v = a["b2"] * v + a["nb2"] * (g * g)
    u = (m * s[1]) / (jnp.sqrt(v * s[2] + a["eps_root"]) + a["eps"])
    if a["decay"]:
        u = u + p * s[3]
    return p + u * s[0], m, v


def _trace_attrs(args: Mapping[str, Any]) -> dict | None:
    a = _numbers(args, decay="decay")
    return None if a is None else {**a, "nesterov": bool(args["nesterov"])}


def _trace_reference(a, s, p, g, t):
    t = a["decay"] * t + g
    u = g + a["decay"] * t if a["nesterov"] else t
    return p + u * s[0], t


def _rms_attrs(args: Mapping[str, Any]) -> dict | None:
    a = _numbers(args, decay="decay", eps="eps")
    if a is None:
        return None
    return {
        **a,
        "ndecay": np.float32(1 - args["decay"]),
        "eps_in_sqrt": bool(args["eps_in_sqrt"]),
        "bias_correction": bool(args["bias_correction"]),
    }


def _rms_reference(a, s, p, g, nu):
    nu = a["decay"] * nu + a["ndecay"] * (g * g)
    nu_hat = nu * s[1] if a["bias_correction"] else nu
    root = jnp.sqrt(nu_hat + a["eps"]) if a["eps_in_sqrt"] else jnp.sqrt(nu_hat) + a["eps"]
    return p + (g * (1 / root)) * s[0], nu


KERNELS = (
    Kernel(
        target="gradtx_adam_step",
        symbol="GradtxAdamStep",
        head=scale_by_adam,
        moments=("mu", "nu"),
        attrs=_adam_attrs,
        factors=lambda args, count: [
            debias_factor(args["b1"], count),
            debias_factor(args["b2"], count),
        ],
        reference=_adam_reference,
        decays=True,
    ),
    Kernel(
        target="gradtx_trace_step",
        symbol="GradtxTraceStep",
        head=trace,
        moments=("trace",),
        attrs=_trace_attrs,
        factors=None,
        reference=_trace_reference,
    ),
    Kernel(
        target="gradtx_rms_step",
        symbol="GradtxRmsStep",
        head=scale_by_rms,
        moments=("nu",),
        attrs=_rms_attrs,
        factors=lambda args, count: [
            debias_factor(args["decay"], count) if args["bias_correction"] else 1.0
        ],
        reference=_rms_reference,
    ),
)


class _Plan(NamedTuple):
    """A kernel bound to one optimiser: the chain's pieces and the kernel's attributes."""

    kernel: Kernel
    pieces: tuple[GradientTransformation, ...]
    head_args: Mapping[str, Any]
    attrs: dict
    tail: int = 0  # trailing `identity()` pieces (rmsprop without momentum): states kept

    def step(self, grads, state, params):
        p_leaves, treedef = numerics.flatten(params)
        head = state[0]
        columns = [p_leaves, treedef.flatten_up_to(grads)]
        columns += [treedef.flatten_up_to(getattr(head, f)) for f in self.kernel.moments]
        count, scalars, rest = self._scalars(state)
        live = [i for i, p in enumerate(p_leaves) if jnp.size(p)]  # skip empty leaves
        call = _native_step(self.kernel, tuple(sorted(self.attrs.items())))
        new_columns = [list(columns[0])] + [list(c) for c in columns[2:]]
        for start in range(0, len(live), _LEAVES_PER_CALL):
            group = live[start : start + _LEAVES_PER_CALL]
            outs = call(scalars, *([column[i] for i in group] for column in columns))
            for new, out in zip(new_columns, outs):
                for i, leaf in zip(group, out):
                    new[i] = leaf
        new_params, *moments = [treedef.unflatten(c) for c in new_columns]
        fields = dict(zip(self.kernel.moments, moments))
        if count is not None:
            fields["count"] = count
        kept = tuple(state[len(self.pieces) :])
        return new_params, (head._replace(**fields), *rest, *kept)

    def _scalars(self, state: tuple):
        """The head's new count, the kernel's scalar buffer, the other pieces' new states.

        The step size and the decay come from running those pieces on a float32 scalar:
        `scale_by_learning_rate` on 1 gives $-\\alpha_t$, `add_decayed_weights` on 0 with
        $\\theta = 1$ gives $\\lambda_t$, exactly as they scale every leaf.
        """
        count: Any = None
        factors: list = []
        if self.kernel.factors is not None:
            if "count" in state[0]._fields:  # the head keeps a step count
                count = numerics.safe_increment(state[0].count)
            factors = self.kernel.factors(self.head_args, count)
        one, zero = jnp.ones([], jnp.float32), jnp.zeros([], jnp.float32)
        rest, step, decay = [], None, zero
        for piece, s in zip(self.pieces[1:], state[1 : len(self.pieces)]):
            if len(self.pieces) == 3 and piece is self.pieces[1]:
                decay, s = piece.update(zero, s, one)
            else:
                step, s = piece.update(one, s, None)
            rest.append(s)
        values = [step, *factors] + ([decay] if self.kernel.decays else [])
        scalars = jnp.stack([jnp.asarray(v, jnp.float32) for v in values])
        return count, scalars, rest


def _plan(tx: Any) -> _Plan | None:
    """The kernel that fuses `tx` with its attributes, or None when no kernel does.

    Read from the transformations' records only: `tx` must be a `chain` whose pieces were
    made by the kernel's head factory, optionally `add_decayed_weights` without a mask, and
    `scale_by_learning_rate`, with hyper-parameters the kernel takes.
    """
    spec = spec_of(tx)
    if spec is None or spec.factory is not chain:
        return None
    pieces = tuple(spec.arguments["transforms"])
    found = [spec_of(p) for p in pieces]
    specs = [s for s in found if s is not None]
    if len(specs) != len(pieces):
        return None
    tail = 0
    while len(specs) > 2 and specs[-1].factory is identity:  # state kept, nothing to do
        specs, pieces, tail = specs[:-1], pieces[:-1], tail + 1
    if len(pieces) not in (2, 3):
        return None
    head, *middle, last = specs
    if last.factory is not scale_by_learning_rate:
        return None
    for kernel in KERNELS:
        if head.factory is not kernel.head:
            continue
        if middle and not (
            kernel.decays
            and middle[0].factory is add_decayed_weights
            and middle[0].arguments["mask"] is None
        ):
            return None
        attrs = kernel.attrs(head.arguments)
        if attrs is None:
            return None
        if kernel.decays:
            attrs["decay"] = bool(middle)
        return _Plan(kernel, pieces, head.arguments, attrs, tail)
    return None


def _why_not_native(tx, grads, state, params) -> str | None:
    """None when the kernel applies to this call, else the reason it does not."""
    plan = _plan(tx)
    if plan is None:
        return f"{tx!r} is not one of adam, adamw, sgd with momentum, rmsprop"
    if not (isinstance(state, tuple) and len(state) == len(plan.pieces) + plan.tail):
        return "the state was not built by this optimiser's init"
    p_leaves, treedef = numerics.flatten(params)
    try:
        others = [treedef.flatten_up_to(grads)]
        others += [treedef.flatten_up_to(getattr(state[0], f)) for f in plan.kernel.moments]
    except (ValueError, TypeError, AttributeError):
        return "grads or state do not have the params' tree structure"
    for leaves in [p_leaves, *others]:
        for p, x in zip(p_leaves, leaves):
            if getattr(x, "dtype", None) != jnp.float32 or jnp.shape(x) != jnp.shape(p):
                return "the kernels take float32 leaves, all shaped like their params"
    return _load_native()


# ----------------------------------------------------------------------------
# The native call, with its kernel's reference as derivative rule.


def _as_reference_attrs(attrs: dict) -> dict:
    """The attributes as the reference reads them: numbers as float32 scalars, flags as bools."""
    return {k: (v if isinstance(v, bool) else jnp.float32(v)) for k, v in attrs.items()}


@functools.cache
def _native_step(kernel: Kernel, attr_items: tuple) -> Callable:
    """`(scalars, params, grads, *moments) -> (params, *moments)`, lists of leaves, in place.

    One native call updates all the leaves it is given. Its derivatives (`jax.jvp`, `jax.grad`
    through a step) are those of `kernel.reference`.
    """
    attrs = dict(attr_items)

    @jax.custom_jvp
    def step(scalars, params, grads, *moments):
        n = len(params)
        shapes = [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in params]
        # argument 1 + i is params[i], 1 + (2 + k) n + i is moments[k][i]
        aliases = {1 + i: i for i in range(n)}
        for k in range(len(moments)):
            aliases.update({1 + (2 + k) * n + i: (1 + k) * n + i for i in range(n)})
        call = jax.ffi.ffi_call(
            kernel.target,
            shapes * (1 + len(moments)),
            input_output_aliases=aliases,
            vmap_method="sequential",
        )
        flat = call(scalars, *params, *grads, *(x for m in moments for x in m), **attrs)
        return [list(flat[k * n : (k + 1) * n]) for k in range(1 + len(moments))]

    @step.defjvp
    def step_jvp(primals, tangents):
        def reference(scalars, params, grads, *moments):
            a = _as_reference_attrs(attrs)
            leaves = [kernel.reference(a, scalars, *xs) for xs in zip(params, grads, *moments)]
            return [list(column) for column in zip(*leaves)]

        _, tangents_out = jax.jvp(reference, primals, tangents)
        return step(*primals), tangents_out

    return step


# ----------------------------------------------------------------------------
# Loading the kernels (built at install time; see `gradtx.native`).


def _load_native() -> str | None:
    """Registers the kernels once per process; None on success, else why not. Never compiles."""
    return native.load()
