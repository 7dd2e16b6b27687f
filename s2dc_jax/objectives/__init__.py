"""s2dc_jax.objectives."""
