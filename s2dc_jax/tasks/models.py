"""Downstream models: SwinUNETR for dense tasks, the Swin encoder with an MLP head for classification."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from s2dc_jax.models import SwinTransformer3D, SwinUNETR
from s2dc_jax.tasks.base import swin_kwargs


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
    merging: str = "monai"
    remat: bool = False
    attn_chunk: int | None = None
    hidden: int = 512
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, X, Y, Z, C] -> f32[B, num_classes]
        hs = SwinTransformer3D(in_channels=self.in_channels, feature_size=self.feature_size, depths=tuple(self.depths),
                               num_heads=tuple(self.num_heads), window_size=self.window_size,
                               patch_size=self.patch_size, use_v2=self.use_v2, merging=self.merging, remat=self.remat,
                               attn_chunk=self.attn_chunk, dtype=self.dtype, name="swinViT")(x)
        h = jnp.mean(hs[-1], axis=(1, 2, 3))  # f32[B, 16 * feature_size]
        h = nn.relu(nn.Dense(self.hidden, name="head_fc1")(h))
        return nn.Dense(self.num_classes, name="head_fc2")(h)


def build_unetr(config) -> SwinUNETR:
    """SwinUNETR named by a fine-tuning config (segmentation, translation, reconstruction)."""
    return SwinUNETR(out_channels=config.model.out_channels, **swin_kwargs(config.model))


def build_classifier(config) -> SwinClassifier:
    """SwinClassifier named by a classification config."""
    m = config.model
    return SwinClassifier(num_classes=m.out_channels, hidden=m.head_hidden, **swin_kwargs(m))
