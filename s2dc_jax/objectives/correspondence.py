"""Ground-truth token correspondence between ``src`` and ``aug_full`` (docs/method.md section 1, step 4).

A token of side ``token_size`` voxels at grid index ``g`` covers ``[g * s, (g + 1) * s)`` in
voxel-edge coordinates (voxel ``k`` spans ``[k, k + 1)``), so the ROI centre is ``N / 2``:
the same geometry as the warp in views.py, which uses voxel-centre indices. A pair
``(i, j)`` is positive when the forward affine takes the centre of ``src`` token ``i`` into
``aug`` token ``j`` and the *exact* inverse takes the centre of ``j`` back into ``i``
(mutual nearest neighbours), both inside the grid. The reference uses a matrix that is not
the exact inverse (~84% of its positives exact); this one is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ("inplane", "3d")


def token_grid(roi_shape: tuple[int, int, int], crop_size: int, tokens_per_crop: int) -> tuple[tuple[int, int, int], int]:
    """``((gx, gy, gz), token_size)`` of a ROI cut into crops that the encoder turns into ``t^3`` tokens."""
    if tokens_per_crop <= 0 or crop_size % tokens_per_crop:
        raise ValueError(f"the encoder's {tokens_per_crop} tokens per crop side must divide crop_size {crop_size}")
    token_size = crop_size // tokens_per_crop
    for axis, size in zip("XYZ", roi_shape):
        if size % token_size:
            raise ValueError(f"ROI size {size} along {axis} is not a multiple of the token size {token_size}")
    return tuple(size // token_size for size in roi_shape), token_size


def _flat(idx: jax.Array, grid: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Row-major flat index of integer coords ``idx [..., k]`` and whether all are inside ``grid``."""
    inside = jnp.all((idx >= 0) & (idx < jnp.asarray(grid)), axis=-1)
    flat = jnp.zeros(idx.shape[:-1], jnp.int32)
    for a, g in enumerate(grid):
        flat = flat * g + jnp.clip(idx[..., a], 0, g - 1)
    return flat, inside


def _one(affine: jax.Array, roi_shape: tuple[int, int, int], token_size: int, mode: str) -> jax.Array:
    """Ground truth ``bool[M, M]`` of one volume; ``M = gx * gy`` (inplane) or ``gx * gy * gz`` (3d)."""
    size = jnp.asarray(roi_shape[:2], jnp.float32)
    grid = tuple(s // token_size for s in roi_shape)
    if mode == "inplane":
        grid = grid[:2]
    angle, scale, shift = affine[0], affine[1], affine[2:4]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rot = jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])])        # CCW in (x, y)
    centre = size / 2.0

    axes = [jnp.arange(g, dtype=jnp.float32) for g in grid]
    cells = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(grid))  # [M, 2|3]
    pts = (cells + 0.5) * token_size                                       # token centres

    def forward(p):
        xy = scale * (p[:, :2] - centre) @ rot.T + centre + shift
        if mode == "3d":
            cz = roi_shape[2] / 2.0
            return jnp.concatenate([xy, scale * (p[:, 2:] - cz) + cz], -1)
        return xy

    def inverse(q):
        xy = ((q[:, :2] - centre - shift) @ rot) / scale + centre         # R^T = R(-angle)
        if mode == "3d":
            cz = roi_shape[2] / 2.0
            return jnp.concatenate([xy, (q[:, 2:] - cz) / scale + cz], -1)
        return xy

    to_aug, ok_f = _flat(jnp.floor(forward(pts) / token_size).astype(jnp.int32), grid)   # [M]
    to_src, ok_b = _flat(jnp.floor(inverse(pts) / token_size).astype(jnp.int32), grid)   # [M]
    m = pts.shape[0]
    ids = jnp.arange(m)
    fwd = (to_aug[:, None] == ids[None, :]) & ok_f[:, None]               # src i -> aug j
    back = (to_src[None, :] == ids[:, None]) & ok_b[None, :]              # aug j -> src i
    return fwd & back


def ground_truth(full_affine: jax.Array, roi_shape: tuple[int, int, int], token_size: int,
                 mode: str = "inplane") -> jax.Array:
    """0/1 ``f32[b, M, M]`` ``gt[src_token, aug_token]`` for affines ``f32[b, 4]``.

    ``inplane``: tokens ``ix * gy + iy`` of one z-slice, shared by every slice (the
    reference; exact for the in-plane warp). ``3d``: tokens ``(ix * gy + iy) * gz + iz`` of
    the whole ROI, exact for the warp that also zooms z (``make_views(scale_z=True)``).
    """
    if mode not in MODES:
        raise ValueError(f"ssl.correspondence must be one of {MODES}, got {mode!r}")
    gt = jax.vmap(lambda a: _one(a, tuple(roi_shape), token_size, mode))(full_affine)
    return gt.astype(jnp.float32)
