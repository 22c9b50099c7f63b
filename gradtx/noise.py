r"""Gradient noise (Neelakantan et al., 2015): annealed Gaussian noise added to the updates.

Mini-batch gradients are already noisy (IDEAS §1); adding more, with a variance that decays
like a learning rate (IDEAS §7), helps very deep networks move off plateaus (IDEAS §8).
The noise is drawn from the key in the state, so a run is reproducible from its key.
"""

from __future__ import annotations

import numbers
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from gradtx import checks, numerics
from gradtx.base import GradientTransformation, ScalarOrSchedule, factory
from gradtx.combine import chain
from gradtx.scale import scale_by_learning_rate
from gradtx.tree_build import tree_random_like


class AddNoiseState(NamedTuple):
    count: Array  # type: ignore[assignment]  # steps taken
    rng_key: Array  # the typed PRNG key the next step splits


def _canonical_key(fn: str, key: Array | int) -> Array:
    """A typed key from a seed, a typed key, or a legacy `uint32[2]` key (optax's canonical
    form: `jax.random.key(seed)` for a seed, a typed key as it is)."""
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"{fn}: key must be a PRNG key or an integer seed, got {key!r}")
    if isinstance(key, numbers.Integral):
        return jax.random.key(int(key))
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.ndim(key) == 0 and jnp.issubdtype(dtype, jnp.integer):
        return jax.random.key(key)  # a seed as an integer array (optax takes it)
    checks.check_key(fn, key)
    array = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
        return array
    return jax.random.wrap_key_data(array)  # a legacy PRNGKey: the same bits, the same stream


@factory
def add_noise(
    eta: ArrayLike,
    gamma: ArrayLike,
    key: Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Adds annealed Gaussian noise to the updates.

    $$\sigma_t = \sqrt{\eta / t^{\gamma}}, \qquad u_t = g_t + \sigma_t z_t, \qquad
      z_t \sim \mathcal{N}(0, I), \quad t = 1, 2, \dots$$

    At each step the stored key $k$ is split into $(k', k_s)$, and $k_s$ into one key per
    leaf (`tree_random_like`), which draws $z_t$ in the leaf's dtype: optax's stream, so the
    same key gives optax's noise. Complex leaves get complex normal noise ($\mathbb{E}|z|^2 =
    1$). Emits $u_t$ in each leaf's dtype; stores $t$ and $k'$.

    Args:
        eta: $\eta \geq 0$, the variance of the noise at the first step.
        gamma: $\gamma$, the exponent of its decay ($0.55$ in the paper).
        key: the PRNG key, `jax.random.key(seed)` (a legacy `PRNGKey` or an integer seed
            also work). None uses seed 0 with a warning, as optax 0.2.8 does.
        seed: optax's deprecated spelling of an integer `key` (with a DeprecationWarning);
            give one of `key` and `seed`.

    Returns:
        A `GradientTransformation` with state `AddNoiseState(count, rng_key)`.

    Raises:
        ValueError: for a negative or non-finite `eta`, a non-finite `gamma`, or both `key`
            and `seed`.
        TypeError: for a `key` that is neither a PRNG key nor an integer seed.
    """
    fn = "add_noise"
    checks.check_finite(fn, "eta", eta, 0.0, low_open=False)
    checks.check_finite(fn, "gamma", gamma)
    if seed is not None:
        warnings.warn(
            f"{fn}: seed is deprecated (as in optax); pass key=jax.random.key({seed!r})",
            DeprecationWarning,
            stacklevel=3,
        )
        if key is not None:
            raise ValueError(f"{fn}: give one of key and seed, got both; pass only key")
        key = seed
    if key is None:
        warnings.warn(
            f"{fn}: no key given, so the noise is drawn from seed 0 (as optax 0.2.8 does); "
            "pass key=jax.random.key(seed)",
            UserWarning,
            stacklevel=3,
        )
        key = 0
    rng_key = _canonical_key(fn, key)

    def init(params):
        del params
        return AddNoiseState(count=numerics.zero_count(), rng_key=rng_key)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        checks.check_state(fn, state, AddNoiseState)
        updates = numerics.as_arrays(updates)
        count = numerics.safe_increment(state.count)
        f32 = jnp.float32
        t = numerics.cast(count, f32)
        std = jnp.sqrt(numerics.cast(eta, f32) / t ** numerics.cast(gamma, f32))
        next_key, sample_key = jax.random.split(state.rng_key)
        noise = tree_random_like(sample_key, updates, jax.random.normal)

        def leaf(g, z):
            dtype = numerics.compute_dtype(g, z)
            out = numerics.cast(g, dtype) + numerics.cast(std, dtype) * numerics.cast(z, dtype)
            return numerics.cast(out, g.dtype)

        return jax.tree.map(leaf, updates, noise), AddNoiseState(count, next_key)

    return GradientTransformation(init, update)


def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: ArrayLike = 0.01,
    gamma: ArrayLike = 0.55,
    key: ArrayLike | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""SGD with annealed gradient noise: $W \leftarrow W - \alpha_t (g_t + \sigma_t z_t)$.

    `chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(learning_rate))`,
    with $\sigma_t^2 = \eta / t^\gamma$ (see `add_noise`).

    Args:
        learning_rate: $\alpha$, a constant $\geq 0$ or a `count -> value` schedule.
        eta: $\eta \geq 0$, the noise's variance at the first step.
        gamma: $\gamma$, the exponent of its decay.
        key: the PRNG key (or an integer seed); None uses seed 0 with a warning, as optax.
        seed: optax's deprecated spelling of an integer `key`.

    Returns:
        A `GradientTransformation` with state `(AddNoiseState, EmptyState)`.

    Raises:
        ValueError, TypeError: as `add_noise` and `scale_by_learning_rate` do.
    """
    checks.check_scalar_or_schedule("noisy_sgd", "learning_rate", learning_rate)
    return chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(learning_rate))
