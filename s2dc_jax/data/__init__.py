"""s2dc_jax.data."""
