"""s2dc_jax: S2DC self-supervised pretraining of 3D Swin transformers in JAX/Flax."""

__version__ = "0.1.0"
