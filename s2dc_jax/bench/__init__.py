"""Benchmarks: the JAX step against a PyTorch + MONAI step of the same shapes and losses."""
