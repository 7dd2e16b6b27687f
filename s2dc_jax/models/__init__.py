"""s2dc_jax.models."""
