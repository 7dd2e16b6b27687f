"""Sliding-window inference in JAX, window for window the same as MONAI's `sliding_window_inference`.

Window positions, padding of small inputs and the blending weights follow MONAI 1.6
(`monai.inferers.utils`), so a model fine-tuned here scores the same as it would
there. Windows are cut with `lax.dynamic_slice` inside one `lax.scan`, so the whole
inference is one compiled loop; call it under `jax.jit`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

BLEND_MODES = ("constant", "gaussian")


def window_starts(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> np.ndarray:
    """Start corners int[W, 3] of the windows that tile `image_size` (MONAI's dense_patch_slices order)."""
    per_dim = []
    for n, r in zip(image_size, roi_size):
        r = min(r, n)
        # MONAI steps by the whole window when it equals the image, else by roi * (1 - overlap).
        step = r if r == n else max(int(r * (1 - overlap)), 1)
        count = next((d for d in range(math.ceil(n / step)) if d * step + r >= n), 0) + 1
        # The last window is pulled back inside the image rather than padded.
        per_dim.append([i * step - max(i * step + r - n, 0) for i in range(count)])
    grid = np.meshgrid(*per_dim, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=-1).astype(np.int32)


def importance_map(roi_size: Sequence[int], mode: str = "constant", sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weight f32[rx, ry, rz] of one window: ones, or a Gaussian of sigma roi * sigma_scale."""
    if mode == "constant":
        return np.ones(tuple(roi_size), np.float32)
    if mode != "gaussian":
        raise ValueError(f"sliding window mode must be one of {BLEND_MODES}, got {mode!r}")
    w = np.ones((), np.float64)
    for n in roi_size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        w = w[..., None] * np.exp(-(x**2) / (2.0 * (n * sigma_scale) ** 2))
    # As MONAI: no weight below the map's minimum (or 1e-3), so window edges still count.
    return np.maximum(w, max(w.min(), 1e-3)).astype(np.float32)


def sliding_window_inference(inputs, roi_size: Sequence[int], predictor: Callable, sw_batch_size: int = 4,
                             overlap: float = 0.75, mode: str = "constant", sigma_scale: float = 0.125,
                             cval: float = 0.0):
    """Runs `predictor` on overlapping windows of `inputs` and blends the outputs.

    inputs: f32[B, X, Y, Z, C]; predictor: f32[N, rx, ry, rz, C] -> f32[N, rx, ry, rz, K]
    with N = sw_batch_size; returns f32[B, X, Y, Z, K]. A side smaller than the window
    is padded with `cval` on both sides and cropped back afterwards. roi entries <= 0
    mean the whole side.
    """
    if inputs.ndim != 5:
        raise ValueError(f"sliding_window_inference: inputs must be [B, X, Y, Z, C], got shape {inputs.shape}")
    if not 0 <= overlap < 1:
        raise ValueError(f"sliding_window_inference: overlap must be in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"sliding_window_inference: sw_batch_size must be >= 1, got {sw_batch_size}")
    b, *spatial, c = inputs.shape
    roi = tuple(int(r) if r and r > 0 else n for r, n in zip(roi_size, spatial))
    if len(roi) != 3:
        raise ValueError(f"sliding_window_inference: roi_size must have 3 entries, got {roi_size}")
    lo = [max(r - n, 0) // 2 for r, n in zip(roi, spatial)]
    hi = [max(r - n, 0) - l for r, n, l in zip(roi, spatial, lo)]
    x = jnp.pad(inputs, [(0, 0)] + list(zip(lo, hi)) + [(0, 0)], constant_values=cval)
    size = x.shape[1:4]
    starts = window_starts(size, roi, overlap)  # int[W, 3]
    weight = importance_map(roi, mode, sigma_scale)  # f32[rx, ry, rz]

    # Windows of every volume in one list, MONAI's order; padded to whole window batches.
    n_win = starts.shape[0]
    total = b * n_win
    n_steps = -(-total // sw_batch_size)
    flat = np.arange(n_steps * sw_batch_size)
    valid = (flat < total).astype(np.float32)
    flat = np.minimum(flat, total - 1)
    vol_idx = (flat // n_win).astype(np.int32).reshape(n_steps, sw_batch_size)
    win_starts = starts[flat % n_win].reshape(n_steps, sw_batch_size, 3)
    valid = valid.reshape(n_steps, sw_batch_size)

    def cut(v, s):
        return jax.lax.dynamic_slice(x, (v, s[0], s[1], s[2], 0), (1,) + roi + (c,))[0]

    out_spec = jax.eval_shape(predictor, jax.ShapeDtypeStruct((sw_batch_size,) + roi + (c,), x.dtype))
    if out_spec.shape[:4] != (sw_batch_size,) + roi or len(out_spec.shape) != 5:
        raise ValueError(f"sliding_window_inference: predictor must map [N, {roi}, C] to [N, {roi}, K], "
                         f"got output {out_spec.shape}")
    k = out_spec.shape[-1]
    w = jnp.asarray(weight)[None, ..., None]

    def step(acc, chunk):
        v, s, ok = chunk
        pred = predictor(jax.vmap(cut)(v, s)).astype(jnp.float32) * w * ok[:, None, None, None, None]
        for j in range(sw_batch_size):
            corner = (v[j], s[j, 0], s[j, 1], s[j, 2], 0)
            cur = jax.lax.dynamic_slice(acc, corner, (1,) + roi + (k,))
            acc = jax.lax.dynamic_update_slice(acc, cur + pred[j][None], corner)
        return acc, None

    acc0 = jnp.zeros((b,) + tuple(size) + (k,), jnp.float32)
    acc, _ = jax.lax.scan(step, acc0, (jnp.asarray(vol_idx), jnp.asarray(win_starts), jnp.asarray(valid)))
    # The weight sum per voxel is the same for every volume: computed once on the host.
    count = np.zeros(tuple(size), np.float32)
    for s in starts:
        count[s[0]:s[0] + roi[0], s[1]:s[1] + roi[1], s[2]:s[2] + roi[2]] += weight
    out = acc / jnp.asarray(count)[None, ..., None]
    return out[:, lo[0]:lo[0] + spatial[0], lo[1]:lo[1] + spatial[1], lo[2]:lo[2] + spatial[2], :]
