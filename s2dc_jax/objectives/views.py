"""The three views of a large ROI, made on the device (docs/method.md section 1, step 3).

Affine convention: ``view_params.py``. Coordinates here are voxel indices (voxel ``k``
has its centre at ``k``), so the centre of an axis of size ``N`` is ``(N - 1) / 2``;
correspondence.py uses voxel-edge coordinates (centre ``N / 2``), the same geometry.
Warps are trilinear with zero padding: out-of-range neighbours contribute 0, as
``torch.grid_sample(padding_mode="zeros")`` and ``scipy.ndimage`` mode ``grid-constant``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_roi(shape: tuple[int, ...], crop_size: int) -> tuple[int, int]:
    """``(nx, ny)`` crops of a ``[X, Y, Z, C]`` ROI, or a ValueError naming the field."""
    if len(shape) != 4:
        raise ValueError(f"batch['image'] must be f32[b, X, Y, Z, C], got a per-volume shape {shape}")
    x, y, z, _ = shape
    if crop_size <= 0 or x % crop_size or y % crop_size:
        raise ValueError(f"crop_size {crop_size} must divide the ROI's in-plane size {(x, y)} "
                         "(data.roi_large / data.crop_size)")
    if z != crop_size:
        raise ValueError(f"the ROI depth {z} must equal crop_size {crop_size}: one crop in depth, "
                         "as in the paper (data.roi_large[2] == data.crop_size)")
    nx, ny = x // crop_size, y // crop_size
    if nx * ny < 2:
        raise ValueError(f"the ROI {(x, y, z)} holds {nx * ny} crop of {crop_size}; the global loss needs >= 2")
    return nx, ny


def inverse_inplane_coords(affine: jax.Array, size_x: int, size_y: int) -> tuple[jax.Array, jax.Array]:
    """Source coordinates ``(px, py) f32[size_x, size_y]`` sampled by each output voxel of a warp.

    Output ``q`` shows the source at ``R(-angle) (q - c - t) / scale + c``: the exact inverse
    of the forward map of ``view_params.py`` with ``c = ((size_x - 1)/2, (size_y - 1)/2)``.
    """
    angle, scale, tx, ty = affine[0], affine[1], affine[2], affine[3]
    cx, cy = (size_x - 1) / 2.0, (size_y - 1) / 2.0
    qx = jnp.arange(size_x, dtype=jnp.float32)[:, None]
    qy = jnp.arange(size_y, dtype=jnp.float32)[None, :]
    dx, dy = qx - cx - tx, qy - cy - ty
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    px = (cos * dx + sin * dy) / scale + cx
    py = (-sin * dx + cos * dy) / scale + cy
    return px, py


def _bilinear_columns(img: jax.Array, px: jax.Array, py: jax.Array) -> jax.Array:
    """Bilinear sample of ``img f32[X, Y, K]`` at ``(px, py) [Xo, Yo]`` with zero padding -> ``[Xo, Yo, K]``.

    The in-plane warp moves whole (z, channel) columns together, so one gather of a
    K-vector per corner replaces K separate trilinear samples (map_coordinates would
    compute 8 corners and weights per voxel).
    """
    size_x, size_y, _ = img.shape
    x0, y0 = jnp.floor(px), jnp.floor(py)
    fx, fy = px - x0, py - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    out = jnp.zeros(px.shape + img.shape[-1:], img.dtype)
    for ox, wx in ((0, 1.0 - fx), (1, fx)):
        for oy, wy in ((0, 1.0 - fy), (1, fy)):
            xi, yi = x0 + ox, y0 + oy
            inside = (xi >= 0) & (xi < size_x) & (yi >= 0) & (yi < size_y)
            w = jnp.where(inside, wx * wy, 0.0)
            v = img[jnp.clip(xi, 0, size_x - 1), jnp.clip(yi, 0, size_y - 1)]
            out = out + w[..., None] * v
    return out


def _z_scale_matrix(scale: jax.Array, size_z: int) -> jax.Array:
    """Linear-interpolation matrix ``f32[Z_out, Z_in]`` of a zoom by ``scale`` about the z centre, zero padded."""
    cz = (size_z - 1) / 2.0
    pz = (jnp.arange(size_z, dtype=jnp.float32) - cz) / scale + cz
    z0 = jnp.floor(pz)
    f = (pz - z0)[:, None]
    z0 = z0.astype(jnp.int32)
    # one_hot of an out-of-range index is a zero row: the zero padding.
    return (1.0 - f) * jax.nn.one_hot(z0, size_z) + f * jax.nn.one_hot(z0 + 1, size_z)


def warp_volume(vol: jax.Array, affine: jax.Array, scale_z: bool = False) -> jax.Array:
    """Trilinear, zero-padded warp of one ``vol f32[X, Y, Z, C]`` by an in-plane ``affine f32[4]``.

    With ``scale_z`` the isotropic scale also zooms z about its centre (the reference's
    image warp does; the full-3D correspondence models it). Rotation and translation stay
    in-plane, so the warp separates into a z resample and an in-plane bilinear gather,
    which together are exactly trilinear interpolation.
    """
    size_x, size_y, size_z, ch = vol.shape
    if scale_z:
        vol = jnp.einsum("wz,xyzc->xywc", _z_scale_matrix(affine[1], size_z), vol,
                         precision=jax.lax.Precision.HIGHEST)
    px, py = inverse_inplane_coords(affine, size_x, size_y)
    out = _bilinear_columns(vol.reshape(size_x, size_y, size_z * ch), px, py)
    return out.reshape(size_x, size_y, size_z, ch)


def split_crops(roi: jax.Array, crop_size: int) -> jax.Array:
    """``f32[b, X, Y, Z, C]`` -> ``f32[b, n, c, c, Z, C]``, crop ``k = i * ny + j`` at x-index i, y-index j."""
    b, x, y, z, ch = roi.shape
    nx, ny = x // crop_size, y // crop_size
    crops = roi.reshape(b, nx, crop_size, ny, crop_size, z, ch)
    return crops.transpose(0, 1, 3, 2, 4, 5, 6).reshape(b, nx * ny, crop_size, crop_size, z, ch)


def make_views(image: jax.Array, full_affine: jax.Array, full_shift: jax.Array,
               crop_affine: jax.Array, crop_shift: jax.Array, crop_size: int,
               scale_z: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``src, aug_full, aug_crop``, each ``f32[b, n, c, c, c, C]``, from ROIs ``f32[b, X, Y, Z, C]``.

    ``aug_full``: the whole ROI warped by ``full_affine [b, 4]`` then shifted by
    ``full_shift [b]`` (padding shifted too, as the reference shifts after the warp), then
    cut into the crop grid. ``aug_crop``: each ``src`` crop shifted by ``crop_shift [b, n]``
    then warped about its own centre by ``crop_affine [b, n, 4]`` (zero padding, as the
    reference crops before its per-crop affine). ``scale_z`` as in :func:`warp_volume`.
    """
    _check_roi(image.shape[1:], crop_size)
    src = split_crops(image, crop_size)                                  # [b, n, c, c, c, C]
    warped = jax.vmap(lambda v, a: warp_volume(v, a, scale_z))(image, full_affine)
    warped = warped + full_shift[:, None, None, None, None]
    aug_full = split_crops(warped, crop_size)                            # [b, n, c, c, c, C]
    shifted = src + crop_shift[:, :, None, None, None, None]
    aug_crop = jax.vmap(jax.vmap(warp_volume))(shifted, crop_affine)     # [b, n, c, c, c, C]
    return src, aug_full, aug_crop
