"""SwinUNETR in flax linen, numerically equivalent to MONAI's `SwinUNETR` (3D), channels-last."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from s2dc_jax.models.swin import Dtype, SwinTransformer3D, UnetrBasicBlock, UnetResBlock, _triple

NORM_NAMES = ("instance",)


class UpConv(nn.Module):
    """Transposed convolution with kernel == stride and no bias (no overlap, so an einsum)."""

    features: int
    factor: tuple[int, int, int] = (2, 2, 2)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, X, Y, Z, Cin] -> f32[B, X*f0, Y*f1, Z*f2, features]
        b, dx, dy, dz, cin = x.shape
        f0, f1, f2 = self.factor
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (f0, f1, f2, cin, self.features), jnp.float32
        )
        y = jnp.einsum("bxyzc,ijkco->bxiyjzko", x.astype(self.dtype), kernel.astype(self.dtype))
        return y.reshape(b, dx * f0, dy * f1, dz * f2, self.features)


class UnetrUpBlock(nn.Module):
    """MONAI `UnetrUpBlock(res_block=True)`: upsample x2, concat the skip after it, `UnetResBlock`."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        # x: f32[B, X, Y, Z, Cin], skip: f32[B, 2X, 2Y, 2Z, Cs] -> f32[B, 2X, 2Y, 2Z, out_channels]
        x = UpConv(self.out_channels, dtype=self.dtype, name="transp_conv")(x)
        x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
        return UnetResBlock(self.out_channels, self.dtype, name="conv_block")(x)


class OutBlock(nn.Module):
    """1x1x1 convolution with bias (MONAI `UnetOutBlock`)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(self.out_channels, (1, 1, 1), dtype=self.dtype, name="conv")(x)


class SwinUNETR(nn.Module):
    """MONAI `SwinUNETR` (3D, res blocks, instance norm) channels-last: logits f32[B, X, Y, Z, out_channels]."""

    in_channels: int
    out_channels: int
    patch_size: int = 2
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int | Sequence[int] = 7
    qkv_bias: bool = True
    mlp_ratio: float = 4.0
    feature_size: int = 24
    norm_name: str = "instance"
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    dropout_path_rate: float = 0.0
    normalize: bool = True
    patch_norm: bool = False
    spatial_dims: int = 3
    downsample: str = "merging"
    merging: str = "monai"  # "legacy" for weights trained with MONAI 0.9-1.4 (see swin.MERGING_RULES)
    use_v2: bool = False
    remat: bool = False
    attn_chunk: int | None = None
    dtype: Dtype = jnp.float32

    def _check(self, x_shape):
        if self.feature_size % 12 != 0:
            raise ValueError(f"feature_size must be divisible by 12 (as in MONAI), got {self.feature_size}")
        if self.norm_name not in NORM_NAMES:
            raise ValueError(f"norm_name must be one of {NORM_NAMES}, got {self.norm_name!r}")
        if len(x_shape) != 5 or x_shape[-1] != self.in_channels:
            raise ValueError(f"input must be f32[B, X, Y, Z, {self.in_channels}] (channels last), got {x_shape}")
        p = _triple(self.patch_size, "patch_size")
        div = np.asarray(p) ** 5
        if any(s % d for s, d in zip(x_shape[1:4], div)):
            raise ValueError(
                f"input spatial shape {tuple(x_shape[1:4])} must be divisible by patch_size**5 = {tuple(div)}"
            )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, X, Y, Z, in_channels] -> f32[B, X, Y, Z, out_channels]
        self._check(x.shape)
        f = self.feature_size
        x = x.astype(self.dtype)
        hs = SwinTransformer3D(
            in_channels=self.in_channels,
            feature_size=f,
            depths=tuple(self.depths),
            num_heads=tuple(self.num_heads),
            window_size=self.window_size,
            patch_size=self.patch_size,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
            drop_rate=self.drop_rate,
            attn_drop_rate=self.attn_drop_rate,
            dropout_path_rate=self.dropout_path_rate,
            patch_norm=self.patch_norm,
            downsample=self.downsample,
            merging=self.merging,
            use_v2=self.use_v2,
            spatial_dims=self.spatial_dims,
            remat=self.remat,
            attn_chunk=self.attn_chunk,
            dtype=self.dtype,
            name="swinViT",
        )(x, normalize=self.normalize)
        hs = [h.astype(self.dtype) for h in hs]
        blk = lambda c, name: UnetrBasicBlock(c, self.dtype, name=name)  # noqa: E731
        up = lambda c, name: UnetrUpBlock(c, self.dtype, name=name)  # noqa: E731
        enc0 = blk(f, "encoder1")(x)
        enc1 = blk(f, "encoder2")(hs[0])
        enc2 = blk(2 * f, "encoder3")(hs[1])
        enc3 = blk(4 * f, "encoder4")(hs[2])
        dec4 = blk(16 * f, "encoder10")(hs[4])
        dec3 = up(8 * f, "decoder5")(dec4, hs[3])
        dec2 = up(4 * f, "decoder4")(dec3, enc3)
        dec1 = up(2 * f, "decoder3")(dec2, enc2)
        dec0 = up(f, "decoder2")(dec1, enc1)
        out = up(f, "decoder1")(dec0, enc0)
        return OutBlock(self.out_channels, self.dtype, name="out")(out).astype(jnp.float32)
