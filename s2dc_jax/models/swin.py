"""Swin-3D encoder in flax linen, numerically equivalent to MONAI's `SwinTransformer`.

Channels-last throughout: an input `f32[B, X, Y, Z, C]` is MONAI's `f32[B, C, X, Y, Z]`
with the channel axis moved last; spatial axes keep MONAI's order. Module and
parameter names mirror MONAI's (`patch_embed`, `layers1`, `blocks_0`, `attn.qkv`,
`relative_position_bias_table`, `layers1c` for v2) so that weight conversion is a
table (`s2dc_jax.interop`). MONAI quirks reproduced on purpose, because the point is
exact parity with weights trained there:

- padded tokens (zeros after `norm1`) take part in attention as keys and values; only
  the shifted regions are masked, with -100 rather than -inf (MONAI then crops the padded
  tokens' own outputs off, so we compute the attention of the kept rows only: `query_classes`);
- a window larger than the feature map shrinks to the map (and stops shifting on
  that axis), and its relative-position index is the top-left `[:n, :n]` block of
  the full window's index, not a re-derived one.

`merging="legacy"` reproduces MONAI 0.9-1.4's 3D `PatchMerging`, which concatenated two
of the eight 2x2x2 neighbours twice and left two out; weights trained there (the
authors' S2DC code runs on MONAI 1.2) need it. The default "monai" is MONAI >= 1.5.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any

_LN_EPS = 1e-5  # torch.nn.LayerNorm / InstanceNorm default (flax's default is 1e-6)
_MASK_VALUE = -100.0  # MONAI's value for cross-region attention logits
MERGING_MODES = ("merging", "mergingv2")
# "monai": MONAI >= 1.5 (all 8 neighbours); "legacy": MONAI 0.9-1.4 (2 duplicated, 2 left out)
MERGING_RULES = ("monai", "legacy")


def _triple(v: int | Sequence[int], field: str) -> tuple[int, int, int]:
    """An int or 3 ints as a 3-tuple of positive ints; ValueError naming the field otherwise."""
    t = (int(v),) * 3 if np.isscalar(v) else tuple(int(i) for i in v)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{field} must be a positive int or 3 positive ints, got {v!r}")
    return t


def effective_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]):
    """MONAI's `get_window_size`: an axis no larger than the window uses its size and no shift."""
    win, sh = list(window), list(shift)
    for i, s in enumerate(size):
        if s <= window[i]:
            win[i], sh[i] = s, 0
    return tuple(win), tuple(sh)


@functools.lru_cache(maxsize=64)
def relative_position_index(window: tuple[int, ...]) -> np.ndarray:
    """int[N, N] index into the relative-position bias table of a window (N = prod(window))."""
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(len(window), -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # [N, N, 3]
    rel = rel + (np.asarray(window) - 1)
    # mixed-radix with radices (2w - 1), the last axis fastest
    radix = np.cumprod([1] + [2 * w - 1 for w in window[:0:-1]])[::-1]
    return (rel * radix).sum(-1).astype(np.int32)


def _partition(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """f32[B, D, H, W, C] -> f32[B, nW, N, C], windows in MONAI's (d, h, w) raster order."""
    b, d, h, w, c = x.shape
    a0, a1, a2 = window
    x = x.reshape(b, d // a0, a0, h // a1, a1, w // a2, a2, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, -1, a0 * a1 * a2, c)


@functools.lru_cache(maxsize=64)
def shift_mask(dims: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]) -> np.ndarray:
    """f32[nW, N, N] additive mask of shifted windows over a padded map (MONAI `compute_mask`)."""

    def regions(size, win, sh):
        ids = np.zeros(size, np.int32)
        if sh > 0:  # a zero shift leaves the whole axis one region
            ids[size - win : size - sh] = 1
            ids[size - sh :] = 2
        return ids

    rd, rh, rw = (regions(*a) for a in zip(dims, window, shift))
    img = (rd[:, None, None] * 9 + rh[None, :, None] * 3 + rw[None, None, :]).astype(np.float32)
    win = np.asarray(_partition(img[None, ..., None], window))[0, ..., 0]  # [nW, N]
    return np.where(win[:, None, :] != win[:, :, None], _MASK_VALUE, 0.0).astype(np.float32)


def _kept_rows(size: int, window: int, shift: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One axis: ``(windows, rows)`` groups of the windows whose rows the crop keeps.

    The axis is padded to whole windows and rolled by ``-shift``; a row survives the crop when it
    holds one of the ``size`` real positions. Windows fall in at most two groups, those more than
    half real and the rest, each computing the union of its windows' real rows (a few pad rows
    computed for nothing, against a split into one group per window).
    """
    n_win = -(-size // window)
    real = (np.arange(n_win * window) + shift) % (n_win * window) < size  # rolled i holds (i + shift) % P
    rows = [np.nonzero(real[w * window:(w + 1) * window])[0] for w in range(n_win)]
    groups = []
    for keep in (lambda r: 2 * len(r) > window, lambda r: 2 * len(r) <= window):
        wins = [w for w in range(n_win) if keep(rows[w])]
        union = np.unique(np.concatenate([rows[w] for w in wins])) if wins else np.zeros(0, int)
        if len(union):
            groups.append((np.asarray(wins), union))
    return groups


@functools.lru_cache(maxsize=64)
def query_classes(size: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]):
    """The query rows of a block's window attention that its output keeps, and where they go.

    MONAI pads the map to whole windows, rolls it for shifted windows, and crops the padded rows
    off after the attention. Their keys and values take part (the quirk kept for parity), but
    their queries' outputs are thrown away, so the attention is computed for the kept rows only:
    at window 7 on a 16^3 map that is 4096-4913 of 9261 rows, on an 8^3 map 512 of 2744.

    Windows with as many kept rows share one attention call: 4 calls per padded block on a cubic
    map instead of 8 row patterns (each call adds to the compile); up to 8 on other maps.

    Returns ``(classes, out_index)``: ``classes``, a tuple of ``(windows int[w], rows int[w, r])``
    (flat window ids in `_partition`'s order, and each window's flat rows within it), every
    window in one class; ``out_index int[X*Y*Z]``: for each position of the unpadded map in raster
    order, its row in the classes' outputs concatenated, each class flattened as ``[w, r]``.
    """
    axes = [_kept_rows(s, w, sh) for s, w, sh in zip(size, window, shift)]
    n_win = [-(-s // w) for s, w in zip(size, window)]
    by_count: dict[int, list] = {}
    for (w0, r0), (w1, r1), (w2, r2) in itertools.product(*axes):
        wins = ((w0[:, None, None] * n_win[1] + w1[None, :, None]) * n_win[2] + w2[None, None, :]).ravel()
        rows = ((r0[:, None, None] * window[1] + r1[None, :, None]) * window[2] + r2[None, None, :]).ravel()
        by_count.setdefault(len(rows), []).append((wins, np.broadcast_to(rows, (len(wins), len(rows)))))
    classes, where = [], {}
    offset = 0
    for parts in by_count.values():
        wins = np.concatenate([w for w, _ in parts]).astype(np.int32)
        rows = np.concatenate([r for _, r in parts]).astype(np.int32)
        for i, w in enumerate(wins):
            for j, r in enumerate(rows[i]):
                where[(int(w), int(r))] = offset + i * rows.shape[1] + j
        classes.append((wins, rows))
        offset += rows.size
    out_index = np.empty(int(np.prod(size)), np.int32)
    grids = np.meshgrid(*[np.arange(s) for s in size], indexing="ij")
    rolled = [(g - sh) % (n * w) for g, sh, n, w in zip(grids, shift, n_win, window)]  # roll by -shift
    win = ((rolled[0] // window[0]) * n_win[1] + rolled[1] // window[1]) * n_win[2] + rolled[2] // window[2]
    row = ((rolled[0] % window[0]) * window[1] + rolled[1] % window[1]) * window[2] + rolled[2] % window[2]
    for t, (w, r) in enumerate(zip(win.ravel(), row.ravel())):
        out_index[t] = where[(int(w), int(r))]
    return tuple(classes), out_index


def _window_attention_core(q, k, v, bias, mask):
    """softmax(q k^T + bias + mask) v over windows: q [B, w, H, n, d]; k, v [B, w, H, N, d]; bias [H, n, N]
    or per window [w, H, n, N]; mask [w, n, N] (n query rows, N keys)."""
    logits = jnp.einsum("bwhnd,bwhmd->bwhnm", q, k) + bias.astype(q.dtype)
    if mask is not None:
        logits = logits + mask[None, :, None].astype(q.dtype)
    # softmax in fp32 even for bf16 compute: it is the numerically fragile part. Its division
    # waits until after the product with v, on d values per row instead of N.
    logits = logits.astype(jnp.float32)
    e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
    out = jnp.einsum("bwhnm,bwhmd->bwhnd", e.astype(v.dtype), v)
    return (out / e.sum(axis=-1, keepdims=True)).astype(v.dtype)


def _chunked_attention(q, k, v, bias, mask, chunk: int):
    """`_window_attention_core` over chunks of `chunk` windows (lax.map), each chunk rematerialised.

    The full attention tensor of a paper-size stage-1 step is several GB; chunking the window
    axis bounds the live part to one chunk in the forward pass and, through `jax.checkpoint`,
    in the backward pass too.
    """
    b, nw, h, nq, d = q.shape
    nc = -(-nw // chunk)
    pad = nc * chunk - nw
    per_window = bias.ndim == 4  # [w, H, n, N]: chunked with the windows

    def to_chunks(t, batched: bool):  # [B, w, ...] -> [nc, B, chunk, ...]; [w, ...] -> [nc, chunk, ...]
        axis = 1 if batched else 0
        if pad:
            t = jnp.pad(t, [(0, pad) if i == axis else (0, 0) for i in range(t.ndim)])
        t = t.reshape(*t.shape[:axis], nc, chunk, *t.shape[axis + 1:])
        return jnp.moveaxis(t, axis, 0)

    xs = {"q": to_chunks(q, True), "k": to_chunks(k, True), "v": to_chunks(v, True)}
    if mask is not None:
        xs["mask"] = to_chunks(mask, False)
    if per_window:
        xs["bias"] = to_chunks(bias, False)

    def body(a):
        return _window_attention_core(a["q"], a["k"], a["v"], a["bias"] if per_window else bias, a.get("mask"))

    out = jax.lax.map(jax.checkpoint(body), xs)  # [nc, B, chunk, H, nq, d]
    out = jnp.moveaxis(out, 0, 1).reshape(b, nc * chunk, h, nq, d)
    return out[:, :nw]


def _dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
    # MONAI initialises every Linear of the Swin with trunc_normal(std=0.02) and zero bias
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=nn.initializers.truncated_normal(0.02),
        name=name,
    )


def _layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=_LN_EPS, use_fast_variance=False, dtype=dtype, name=name)


def layer_norm_no_affine(x: jax.Array) -> jax.Array:
    """LayerNorm over the last axis without scale/bias (MONAI `proj_out(normalize=True)`)."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + _LN_EPS)).astype(x.dtype)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias."""

    dim: int
    num_heads: int
    window_size: tuple[int, int, int]
    qkv_bias: bool = True
    attn_chunk: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, window: tuple[int, ...], mask: np.ndarray | None, classes,
                 out_index: np.ndarray) -> jax.Array:
        # x: f32[B, nW, N, C] windows; window: the effective window (N = prod(window)); classes and
        # out_index: `query_classes`. Returns the kept rows f32[B, len(out_index), C] in map order.
        b, nw, n, c = x.shape
        hd = c // self.num_heads
        table_rows = int(np.prod([2 * w - 1 for w in self.window_size]))
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            (table_rows, self.num_heads),
            jnp.float32,
        )
        idx = relative_position_index(tuple(self.window_size))[:n, :n]

        qkv = _dense(3 * c, "qkv", self.dtype, self.qkv_bias)(x)
        qkv = qkv.reshape(b, nw, n, 3, self.num_heads, hd).transpose(3, 0, 1, 4, 2, 5)  # [3, B, nW, H, N, d]
        q, k, v = qkv[0] * (hd**-0.5), qkv[1], qkv[2]
        outs = []
        for wins, rows in classes:                                            # rows int[w, r]
            every_window = len(wins) == nw
            pick = (lambda t: t) if every_window else (lambda t: t[:, wins])  # noqa: E731
            qc, kc, vc = pick(q), pick(k), pick(v)
            r = rows.shape[1]
            mask_c = None if mask is None else np.take_along_axis(mask[wins], rows[..., None], 1)  # [w, r, N]
            if (rows == rows[0]).all():                                       # one row set: shared bias
                rows = rows[0]
                if r < n:
                    qc = qc[:, :, :, rows]
                bias = table[idx[rows].reshape(-1)].reshape(r, n, self.num_heads).transpose(2, 0, 1)
            else:                                                             # per window: [w, H, r, N]
                qc = jnp.take_along_axis(qc, rows[None, :, None, :, None], axis=3)
                bias = table[idx[rows].reshape(-1)].reshape(len(wins), r, n, self.num_heads).transpose(0, 3, 1, 2)
            mask_c = None if mask_c is None else jnp.asarray(mask_c)
            if self.attn_chunk and self.attn_chunk < len(wins):
                out = _chunked_attention(qc, kc, vc, bias, mask_c, int(self.attn_chunk))
            else:
                out = _window_attention_core(qc, kc, vc, bias, mask_c)          # [B, w, H, r, d]
            outs.append(out.transpose(0, 1, 3, 2, 4).reshape(b, -1, c))      # heads back into channels
        out = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
        if not (len(out_index) == out.shape[1] and np.array_equal(out_index, np.arange(len(out_index)))):
            out = out[:, out_index]                                           # [B, X*Y*Z, C]
        return _dense(c, "proj", self.dtype)(out)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear (MONAI `MLPBlock`)."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = _dense(self.hidden, "linear1", self.dtype)(x)
        x = jax.nn.gelu(x, approximate=False)
        return _dense(c, "linear2", self.dtype)(x)


class SwinTransformerBlock(nn.Module):
    """One (shifted) window attention block with its MLP, pre-norm residual."""

    dim: int
    num_heads: int
    window_size: tuple[int, int, int]
    shift_size: tuple[int, int, int]
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    attn_chunk: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, D, H, W, C]
        b, d, h, w, c = x.shape
        window, shift = effective_window((d, h, w), self.window_size, self.shift_size)
        shortcut = x
        x = _layer_norm("norm1", self.dtype)(x)
        pads = [(-s) % win for s, win in zip((d, h, w), window)]
        if any(pads):
            x = jnp.pad(x, [(0, 0), (0, pads[0]), (0, pads[1]), (0, pads[2]), (0, 0)])
        dims = (d + pads[0], h + pads[1], w + pads[2])
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = jnp.roll(x, shift=tuple(-s for s in shift), axis=(1, 2, 3))
            mask = shift_mask(dims, window, shift)
        else:
            mask = None
        attn = WindowAttention(
            self.dim, self.num_heads, self.window_size, self.qkv_bias, self.attn_chunk, self.dtype, name="attn"
        )
        # the rows the crop keeps, already rolled back and in map order (query_classes)
        classes, out_index = query_classes((d, h, w), window, shift)
        x = attn(_partition(x, window), window, mask, classes, out_index).reshape(b, d, h, w, c)
        x = shortcut + x.astype(shortcut.dtype)
        y = _layer_norm("norm2", self.dtype)(x)
        y = Mlp(int(self.dim * self.mlp_ratio), self.dtype, name="mlp")(y)
        return x + y.astype(x.dtype)


class PatchMerging(nn.Module):
    """2x2x2 neighbourhood concat -> LayerNorm(8C) -> Linear(8C, 2C); odd sizes padded first."""

    mode: str = "merging"  # "merging" (MONAI's PatchMerging) or "mergingv2" (itertools order)
    dtype: Dtype = jnp.float32
    rule: str = "monai"  # of "merging" only: "monai" (MONAI >= 1.5) or "legacy" (MONAI 0.9-1.4)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, D, H, W, C] -> f32[B, ceil(D/2), ceil(H/2), ceil(W/2), 2C]
        b, d, h, w, c = x.shape
        if d % 2 or h % 2 or w % 2:
            x = jnp.pad(x, [(0, 0), (0, d % 2), (0, h % 2), (0, w % 2), (0, 0)])
        x = jnp.concatenate([x[:, i::2, j::2, k::2, :] for i, j, k in merging_offsets(self.mode, self.rule)], axis=-1)
        x = _layer_norm("norm", self.dtype)(x)
        return _dense(2 * c, "reduction", self.dtype, use_bias=False)(x)


def merging_offsets(mode: str, rule: str = "monai") -> list[tuple[int, int, int]]:
    """The 8 (d, h, w) offsets of the 2x2x2 neighbours in the order a merging concatenates them."""
    if mode not in MERGING_MODES:
        raise ValueError(f"downsample must be one of {MERGING_MODES}, got {mode!r}")
    if rule not in MERGING_RULES:
        raise ValueError(f"merging must be one of {MERGING_RULES}, got {rule!r}")
    if mode == "mergingv2":
        if rule != "monai":
            raise ValueError("merging='legacy' is a rule of downsample='merging'; 'mergingv2' has only one")
        return list(itertools.product(range(2), range(2), range(2)))
    if rule == "legacy":
        # MONAI 0.9-1.4 took (0,1,0) and (0,0,1) twice and never (1,1,0), (0,1,1): weights trained
        # there expect exactly this 8C layout, so it is reproduced, duplicates included
        return [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)]
    return [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]


class BasicLayer(nn.Module):
    """One Swin stage: `depth` blocks alternating plain and shifted windows, then patch merging."""

    dim: int
    depth: int
    num_heads: int
    window_size: tuple[int, int, int]
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    merging: str = "monai"  # the rule of downsample="merging" (see MERGING_RULES)
    downsample: str = "merging"
    remat: bool = False
    attn_chunk: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, D, H, W, C] -> f32[B, D/2, H/2, W/2, 2C]
        block_cls = nn.remat(SwinTransformerBlock) if self.remat else SwinTransformerBlock
        shift = tuple(w // 2 for w in self.window_size)
        for i in range(self.depth):
            x = block_cls(
                dim=self.dim,
                num_heads=self.num_heads,
                window_size=self.window_size,
                shift_size=(0, 0, 0) if i % 2 == 0 else shift,
                mlp_ratio=self.mlp_ratio,
                qkv_bias=self.qkv_bias,
                attn_chunk=self.attn_chunk,
                dtype=self.dtype,
                name=f"blocks_{i}",
            )(x)
        return PatchMerging(self.downsample, self.dtype, self.merging, name="downsample")(x)


class _PatchProj(nn.Module):
    """`nn.Conv(features, patch, strides=patch, padding="VALID")`, same parameters, as one matmul.

    A strided convolution whose windows do not overlap is a matmul of the patches: the map is
    reshaped into its patches and contracted with the kernel. XLA's CPU convolution ran this at
    about 1 GFLOP/s (few input channels); the matmul runs several times faster, on GPUs as well.
    """

    features: int
    patch_size: tuple[int, int, int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, sx, sy, sz, c = x.shape
        px, py, pz = self.patch_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (px, py, pz, c, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x = x.astype(self.dtype).reshape(b, sx // px, px, sy // py, py, sz // pz, pz, c)
        y = jnp.einsum("bxiyjzkc,ijkcf->bxyzf", x, kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patch convolution; sizes not a multiple of the patch are zero-padded."""

    patch_size: tuple[int, int, int]
    embed_dim: int
    patch_norm: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, X, Y, Z, Cin] -> f32[B, X/p, Y/p, Z/p, embed_dim]
        pads = [(-s) % p for s, p in zip(x.shape[1:4], self.patch_size)]
        if any(pads):
            x = jnp.pad(x, [(0, 0)] + [(0, p) for p in pads] + [(0, 0)])
        x = _PatchProj(self.embed_dim, tuple(self.patch_size), self.dtype, name="proj")(x)
        if self.patch_norm:
            x = _layer_norm("norm", self.dtype)(x)
        return x


def instance_norm(x: jax.Array) -> jax.Array:
    """InstanceNorm without affine over the spatial axes of f32[B, X, Y, Z, C] (torch defaults)."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=(1, 2, 3), keepdims=True)
    var = jnp.square(x32 - mean).mean(axis=(1, 2, 3), keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + _LN_EPS)).astype(x.dtype)


def _leaky_relu(x):
    return jax.nn.leaky_relu(x, negative_slope=0.01)


class UnetResBlock(nn.Module):
    """conv3-IN-lrelu-conv3-IN + (1x1x1 conv-IN when channels change) -> lrelu (MONAI `UnetResBlock`)."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # x: f32[B, X, Y, Z, Cin] -> f32[B, X, Y, Z, out_channels]
        conv = functools.partial(nn.Conv, self.out_channels, use_bias=False, dtype=self.dtype)
        y = _leaky_relu(instance_norm(conv((3, 3, 3), padding=1, name="conv1")(x)))
        y = instance_norm(conv((3, 3, 3), padding=1, name="conv2")(y))
        if x.shape[-1] != self.out_channels:
            x = instance_norm(conv((1, 1, 1), name="conv3")(x))
        return _leaky_relu(y + x.astype(y.dtype))


class UnetrBasicBlock(nn.Module):
    """MONAI `UnetrBasicBlock(res_block=True, stride=1, kernel 3)`: a `UnetResBlock` named `layer`."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return UnetResBlock(self.out_channels, self.dtype, name="layer")(x)


class SwinTransformer3D(nn.Module):
    """MONAI `SwinTransformer` (3D) channels-last; returns the 5 stage outputs, LayerNorm'd when `normalize`."""

    in_channels: int = 1
    feature_size: int = 48
    depths: Sequence[int] = (2, 2, 2, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int | Sequence[int] = 7
    patch_size: int | Sequence[int] = 2
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    dropout_path_rate: float = 0.0
    patch_norm: bool = False
    downsample: str = "merging"
    merging: str = "monai"  # "legacy" for weights trained with MONAI 0.9-1.4 (the authors' S2DC code)
    use_v2: bool = False
    spatial_dims: int = 3
    remat: bool = False
    attn_chunk: int | None = None
    dtype: Dtype = jnp.float32

    def _check(self):
        if self.spatial_dims != 3:
            raise ValueError(f"spatial_dims must be 3 (only 3D is implemented), got {self.spatial_dims!r}")
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(
                f"depths and num_heads must have 4 entries (MONAI's 4 stages), got {self.depths!r}, {self.num_heads!r}"
            )
        for i, (dep, nh) in enumerate(zip(self.depths, self.num_heads)):
            dim = self.feature_size * 2**i
            if dep < 1 or nh < 1 or dim % nh:
                raise ValueError(
                    f"stage {i + 1}: depths[{i}]={dep} must be >= 1 and num_heads[{i}]={nh} must divide "
                    f"feature_size * 2**{i} = {dim}"
                )
        if self.downsample not in MERGING_MODES:
            raise ValueError(f"downsample must be one of {MERGING_MODES}, got {self.downsample!r}")
        merging_offsets(self.downsample, self.merging)  # ValueError naming `merging` when it does not apply
        for f in ("drop_rate", "attn_drop_rate", "dropout_path_rate"):
            if getattr(self, f) != 0.0:
                raise ValueError(f"{f} must be 0.0: dropout and stochastic depth are not implemented")
        if self.attn_chunk is not None and int(self.attn_chunk) < 1:
            raise ValueError(f"attn_chunk must be None or a positive int, got {self.attn_chunk!r}")

    @nn.compact
    def __call__(self, x: jax.Array, normalize: bool = True) -> list[jax.Array]:
        # x: f32[B, X, Y, Z, in_channels] -> 5 x f32[B, X/2^(s+1), ..., feature_size * 2^s], s = 0..4
        self._check()
        if x.ndim != 5 or x.shape[-1] != self.in_channels:
            raise ValueError(f"input must be f32[B, X, Y, Z, {self.in_channels}] (channels last), got {x.shape}")
        window = _triple(self.window_size, "window_size")
        patch = _triple(self.patch_size, "patch_size")
        x = x.astype(self.dtype)
        proj = (lambda t: layer_norm_no_affine(t)) if normalize else (lambda t: t)  # noqa: E731
        h = PatchEmbed(patch, self.feature_size, self.patch_norm, self.dtype, name="patch_embed")(x)
        outs = [proj(h)]
        for i in range(4):
            dim = self.feature_size * 2**i
            if self.use_v2:
                h = UnetrBasicBlock(dim, self.dtype, name=f"layers{i + 1}c")(h)
            h = BasicLayer(
                dim=dim,
                depth=int(self.depths[i]),
                num_heads=int(self.num_heads[i]),
                window_size=window,
                mlp_ratio=self.mlp_ratio,
                qkv_bias=self.qkv_bias,
                merging=self.merging,
                downsample=self.downsample,
                remat=self.remat,
                attn_chunk=self.attn_chunk,
                dtype=self.dtype,
                name=f"layers{i + 1}",
            )(h)
            outs.append(proj(h))
        return [o.astype(jnp.float32) for o in outs]
