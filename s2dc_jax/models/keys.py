"""The key that parameter initialisation draws from.

flax gives every parameter its own key and draw. Under JAX's default threefry PRNG each draw
is a hash loop of its own in the compiled init, and XLA's CPU backend compiles each one
separately: the tiny SwinUNETR's init (152 draws) took 32 s to compile on a 2-core CPU, the
tiny Swin encoder's 13 s, as long as the training step's. Under the 'rbg' PRNG the bits of a
draw come from one XLA ``RngBitGenerator`` op: 9 s and 6 s for the whole state (measured with
``training.loop.create_state``, fresh compilation cache; the ``configs/ct1k.py`` state at
paper size: 11.1 s instead of 15.7 s). The seed still fixes the weights on
a backend; they are not threefry's values, and a GPU may draw other values than a CPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def init_key(key: jax.Array) -> jax.Array:
    """A typed 'rbg' key derived from ``key`` (a raw threefry ``PRNGKey`` or a typed key), for ``Module.init``."""
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
