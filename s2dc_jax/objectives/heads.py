"""Projection heads of S2DC (docs/method.md section 2): Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear.

BatchNorm here has no affine parameters and no running statistics (the reference's
``BatchNorm1d(affine=False, track_running_stats=False)``), so the heads are pure
functions of their Dense kernels: no mutable state to thread through the trainer.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from s2dc_jax.models import init_key

BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default


def batch_norm(x: jax.Array, axes: Sequence[int], axis_name: str | None = None,
               stats_mask: jax.Array | None = None) -> jax.Array:
    """Normalise ``x`` per feature by the batch mean and biased variance over ``axes``.

    ``axis_name``: also over that mesh axis (every device must hold the same number of
    rows, so the pmean of local means is the global mean). ``stats_mask``: bool over
    ``axes`` choosing the rows whose statistics are used; the others are normalised with
    them. The centred two-pass variance avoids E[x^2] - E[x]^2 cancellation.
    """
    axes = tuple(a % x.ndim for a in axes)
    if stats_mask is None:
        w = jnp.ones([x.shape[a] if a in axes else 1 for a in range(x.ndim)], x.dtype)
    else:
        w = jnp.expand_dims(stats_mask.astype(x.dtype), [a for a in range(x.ndim) if a not in axes])

    def mean(v):
        m = jnp.sum(v * w, axis=axes, keepdims=True) / jnp.sum(w, axis=axes, keepdims=True)
        return jax.lax.pmean(m, axis_name) if axis_name else m

    mu = mean(x)
    var = mean((x - mu) ** 2)
    return (x - mu) * jax.lax.rsqrt(var + BN_EPS)


class ProjectionHead(nn.Module):
    """MLP head with affine-free batch-statistics BatchNorm over ``bn_axes``."""

    hidden: int = 2048
    out: int = 512

    @nn.compact
    def __call__(self, x: jax.Array, bn_axes: Sequence[int] = (0,), axis_name: str | None = None,
                 stats_mask: jax.Array | None = None) -> jax.Array:
        # f32[..., F] -> f32[..., out]
        for i in range(2):
            # No bias: the mean-subtracting BatchNorm after it cancels any bias exactly, and
            # a parameter with a zero gradient only lets Adam amplify rounding noise.
            x = nn.Dense(self.hidden, use_bias=False, name=f"layer{i + 1}")(x)
            x = nn.relu(batch_norm(x, bn_axes, axis_name, stats_mask))
        return nn.Dense(self.out, name="layer3")(x)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(|x|, eps)`` along the last axis (torch.nn.functional.normalize)."""
    # Clamp the squared norm, not the norm: sqrt'(0) is inf and a blank ROI gives x == 0.
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _head(ssl_cfg) -> ProjectionHead:
    return ProjectionHead(hidden=int(getattr(ssl_cfg, "head_hidden", 2048)),
                          out=int(getattr(ssl_cfg, "head_dim", 512)))


def init_heads(rng: jax.Array, feat_dim: int, ssl_cfg) -> dict:
    """Params ``{"patch": ..., "global": ...}`` of the patch and global heads for ``feat_dim`` encoder features."""
    head = _head(ssl_cfg)
    k_patch, k_global = jax.random.split(rng)
    k_patch, k_global = init_key(k_patch), init_key(k_global)
    x = jnp.zeros((2, feat_dim), jnp.float32)
    return {"patch": head.init(k_patch, x)["params"], "global": head.init(k_global, x)["params"]}


def patch_head(params: dict, tokens: jax.Array, ssl_cfg) -> jax.Array:
    """``f32[b, T, F]`` tokens of b volumes -> L2-normalised ``f32[b, T, D]``; BN per volume over its T tokens.

    The reference's BN sees a (144, 3, F) tensor and so normalises over the 3 depth
    slices; normalising per feature over all tokens of the volume is what it means to do
    (docs/method.md section 6).
    """
    return l2_normalize(_head(ssl_cfg).apply({"params": params["patch"]}, tokens, bn_axes=(1,)))


def global_head(params: dict, pooled: jax.Array, ssl_cfg, axis_name: str | None = None,
                stats_mask: jax.Array | None = None) -> jax.Array:
    """``f32[N, F]`` pooled crop features -> ``f32[N, D]``; BN over all crops of the global batch.

    L2-normalised when ``ssl_cfg.global_normalize`` (the reference does not, docs/method.md
    section 3.3).
    """
    out = _head(ssl_cfg).apply({"params": params["global"]}, pooled, bn_axes=(0,),
                               axis_name=axis_name, stats_mask=stats_mask)
    return l2_normalize(out) if ssl_cfg.global_normalize else out
