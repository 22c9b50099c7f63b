"""Test configuration: 8 CPU devices, strict dtype promotion, rank promotion raises."""

import os

# Must be set before JAX initialises its backends: 8 host devices let the
# sharding tests run on this CPU-only machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
