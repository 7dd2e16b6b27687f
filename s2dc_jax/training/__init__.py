"""s2dc_jax.training."""
