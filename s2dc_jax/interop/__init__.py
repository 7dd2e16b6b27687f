"""s2dc_jax.interop."""
