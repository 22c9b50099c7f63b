"""Roofline: the memory bandwidth this machine gives a jitted JAX kernel.

Two STREAM-style kernels on large float32 arrays, jitted with donated buffers:

* copy: `out[:] = a` into a donated buffer (8 bytes per element: read a, write out);
* triad, in place: `a = a + s * b` (12 bytes per element: read a and b, write a).

Adam in float32 moves 28 bytes per parameter and step (read p, g, m, v; write p, m, v), so at
the triad's bandwidth a step of n parameters cannot take less than 28 n / bandwidth; the
step benchmark reports each Adam's fraction of the triad measured beside it.
"""

from __future__ import annotations

import functools

import harness
import jax
import jax.numpy as jnp

COPY_BYTES = 8
TRIAD_BYTES = 12


@functools.partial(jax.jit, donate_argnums=0)
def copy(out: jax.Array, a: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_slice(out, a, (0,))


@functools.partial(jax.jit, donate_argnums=0)
def triad(a: jax.Array, b: jax.Array) -> jax.Array:
    return a + jnp.float32(0.5) * b


def triad_step(n: int):
    """A zero-argument in-place triad over n floats, for interleaving with other steps."""
    state = [jnp.ones((n,), jnp.float32), jnp.full((n,), 1e-6, jnp.float32)]

    def step():
        state[0] = triad(state[0], state[1])
        state[0].block_until_ready()

    return step


def run(quick: bool) -> tuple[list[str], dict[str, float]]:
    n = (1 << 22) if quick else (1 << 26)
    rounds = 5 if quick else 21
    out_buf, a = jnp.zeros((n,), jnp.float32), jnp.ones((n,), jnp.float32)
    state = {"copy": [out_buf, a]}

    def copy_step():
        state["copy"][0] = copy(state["copy"][0], state["copy"][1])
        state["copy"][0].block_until_ready()

    times = harness.interleaved({"copy": copy_step, "triad": triad_step(n)}, rounds, warmup=2)
    t_copy, t_triad = harness.median(times["copy"]), harness.median(times["triad"])
    copy_gbs = COPY_BYTES * n / t_copy / 1e9
    triad_gbs = TRIAD_BYTES * n / t_triad / 1e9
    best_triad = TRIAD_BYTES * n / min(times["triad"]) / 1e9
    lines = [
        f"float32 arrays of {n:,} elements ({4 * n / 2**20:.0f} MiB each), jitted, donated; "
        f"medians of {rounds} interleaved repetitions.",
        "",
        *harness.table(
            ["kernel", "bytes/element", "time (ms)", "bandwidth (GB/s)", "best rep (GB/s)"],
            [
                [
                    "copy `out[:] = a`",
                    str(COPY_BYTES),
                    harness.ms(t_copy),
                    f"{copy_gbs:.1f}",
                    f"{COPY_BYTES * n / min(times['copy']) / 1e9:.1f}",
                ],
                [
                    "triad in place `a = a + s*b`",
                    str(TRIAD_BYTES),
                    harness.ms(t_triad),
                    f"{triad_gbs:.1f}",
                    f"{best_triad:.1f}",
                ],
            ],
        ),
        "",
        f"At the triad's {triad_gbs:.1f} GB/s a float32 Adam step (28 bytes/parameter) needs at "
        f"least {28 / triad_gbs:.3f} ns per parameter, e.g. {28 * (1 << 24) / triad_gbs / 1e6:.1f}"
        " ms for the 16M leaf.",
    ]
    return lines, {"copy_gbs": copy_gbs, "triad_gbs": triad_gbs}
