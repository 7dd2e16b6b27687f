"""s2dc_jax.tasks."""
