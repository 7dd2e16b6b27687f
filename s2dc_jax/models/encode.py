"""Encoding many crops with bounded memory: groups of crops under ``lax.map``, each group rematerialised.

A pretraining step encodes 16 crops of 96^3 with gradients and 33 without (paper size). Encoded
at once, every Swin block's activations of every crop stay alive for the backward pass
(~100 GB). Here the crops go through the encoder ``group`` at a time in a ``lax.map`` loop; with
a remat policy each group's forward is recomputed in the backward pass, so only one group's
activations are alive at any moment and what is kept across the loop is each crop's input and
its last-stage tokens (a few MB). The result equals the one-call encoding (the same
arithmetic per crop; tested).

Why not ``model.remat`` (``nn.remat`` per Swin block) alone: inside one large computation XLA on
the CPU removes the remat barriers (its CSE pass merges the recomputation with the forward), so
the step's memory does not change. The loop boundary of ``lax.map`` is kept by every backend.

``model.crop_group`` = 0 (auto) picks the largest group whose estimated activations fit
:data:`GROUP_BUDGET_BYTES` (all crops at the toy sizes of the tests and the demo: one call, no
recomputation, no slower than before; one crop per group at paper size).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# 'auto': 'full' when the crops are encoded in more than one group, else 'none'.
# 'full' saves nothing inside a group; 'dots' saves the matmul outputs (less recomputation,
# more memory); 'none' keeps every activation (no recomputation).
REMAT_POLICIES = ("auto", "none", "full", "dots")
_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}

# Activations of one group (estimate of crop_activation_bytes) that auto grouping allows.
GROUP_BUDGET_BYTES = 2**30  # bf16 at paper size: 2 crops per group measured 12.2 GiB, 1 crop 6.6 GiB


def crop_activation_bytes(model, crop_size: int) -> int:
    """Estimated bytes that the backward pass of one crop keeps alive without remat.

    Per Swin block: about 12 tensors of the token width (LayerNorms, qkv, the MLP's 4x hidden
    and its activation, residuals) and the attention probabilities (heads x window tokens
    per token), in the compute dtype, for every stage. Calibrated on XLA's CPU memory
    analysis of one crop at paper size (feature 48, 96^3: estimate 3.0 GB, XLA 2.6 GB).
    """
    width = jnp.dtype(model.dtype).itemsize
    p = model.patch_size if isinstance(model.patch_size, int) else model.patch_size[0]
    w = model.window_size if isinstance(model.window_size, int) else model.window_size[0]
    side = crop_size // p
    total = 0
    for s, (depth, heads) in enumerate(zip(model.depths, model.num_heads)):
        grid = max(side // 2**s, 1)
        tokens = grid ** 3
        window = min(w, grid) ** 3
        dim = model.feature_size * 2**s
        total += depth * tokens * (12 * dim + heads * window) * width
    return int(total)


def crops_per_group(model, crop_size: int, n_crops: int) -> int:
    """``model.crop_group`` if set, else the largest divisor of ``n_crops`` that fits the budget (>= 1)."""
    want = int(model.get("crop_group", 0) or 0)
    if want <= 0:
        want = max(1, GROUP_BUDGET_BYTES // max(crop_activation_bytes(model, crop_size), 1))
    want = min(want, n_crops)
    return max(g for g in range(1, want + 1) if n_crops % g == 0)


def grouped(fn: Callable, *, model, crop_size: int) -> Callable:
    """``encode(params, f32[N, c, c, c, C]) -> f32[N, ...]``: ``fn`` over groups of crops (see module doc).

    ``fn(params, crops)`` must treat crops independently (the Swin encoder does). The group
    size and the remat policy come from ``model.crop_group`` and ``model.remat_policy``.
    """
    policy = model.get("remat_policy", "auto")

    def encode(params, crops):
        n = crops.shape[0]
        group = crops_per_group(model, crop_size, n)
        chosen = policy if policy != "auto" else ("none" if group == n else "full")
        body = fn if chosen == "none" else jax.checkpoint(fn, policy=_POLICIES[chosen])
        if group == n:
            return body(params, crops)
        xs = crops.reshape(n // group, group, *crops.shape[1:])
        out = jax.lax.map(lambda x: body(params, x), xs)
        return jax.tree.map(lambda o: o.reshape(n, *o.shape[2:]), out)

    return encode
