"""Downstream models: SwinUNETR for dense tasks, the Swin encoder with an MLP head for classification."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from s2dc_jax.models import SwinTransformer3D, SwinUNETR


class SwinClassifier(nn.Module):
    """Swin-3D encoder (`swinViT`, MONAI names) + average pool of the last stage + MLP head: logits f32[B, K]."""

    in_channels: int
    num_classes: int
    feature_size: int = 48
    depths: tuple = (2, 2, 2, 2)
    num_heads: tuple = (3, 6, 12, 24)
    window_size: Any = 7
    patch_size: Any = 2
    use_v2: bool = True
    remat: bool = False
    hidden: int = 512
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, X, Y, Z, C] -> f32[B, num_classes]
        hs = SwinTransformer3D(in_channels=self.in_channels, feature_size=self.feature_size, depths=tuple(self.depths),
                               num_heads=tuple(self.num_heads), window_size=self.window_size,
                               patch_size=self.patch_size, use_v2=self.use_v2, remat=self.remat, dtype=self.dtype,
                               name="swinViT")(x)
        h = jnp.mean(hs[-1], axis=(1, 2, 3))  # f32[B, 16 * feature_size]
        h = nn.relu(nn.Dense(self.hidden, name="head_fc1")(h))
        return nn.Dense(self.num_classes, name="head_fc2")(h)


def build_model(config) -> nn.Module:
    """The model a task config names: SwinUNETR (segmentation, translation, reconstruction) or SwinClassifier."""
    m = config.model
    common = dict(in_channels=m.in_channels, feature_size=m.feature_size, depths=tuple(m.depths),
                  num_heads=tuple(m.num_heads), window_size=m.window_size, patch_size=m.patch_size,
                  use_v2=m.use_v2, remat=m.remat, dtype=jnp.dtype(m.dtype))
    if config.task == "classification":
        return SwinClassifier(num_classes=m.out_channels, hidden=m.head_hidden, **common)
    return SwinUNETR(out_channels=m.out_channels, **common)
