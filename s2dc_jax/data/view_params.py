"""Random view parameters, sampled on the host per volume and consumed by the device warps.

Convention (shared by the device warp and the ground-truth correspondence): an affine
row is ``(angle, scale, tx, ty)`` and is the *forward* in-plane transform of content.
A feature at in-plane position ``p`` (voxels, x then y) of the source appears in the
view at ``scale * R(angle) @ (p - c) + c + (tx, ty)``, where ``c`` is the centre of the
warped region (the large ROI for ``full_*``, the crop for ``crop_*``) and ``R`` the
counter-clockwise rotation in the (x, y) plane. z is untouched, except that with
``ssl.correspondence = '3d'`` the full-ROI warp also zooms z by ``scale`` about its centre
(views.warp_volume(scale_z=True)), as the reference's image warp does. docs/method.md section 1.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ViewRanges:
    """Ranges of the random views (docs/method.md section 1, step 3)."""

    full_rotate_deg: float = 30.0                  # aug_full: rotation about z, up to this many degrees
    full_scale: tuple[float, float] = (0.9, 1.2)   # aug_full: isotropic scale range
    full_translate: float = 24.0                   # aug_full: x/y translation up to this many voxels
    crop_rotate_deg: float = 20.0                  # aug_crop: rotation of each crop, degrees
    crop_scale: tuple[float, float] = (0.95, 1.05)  # aug_crop scale (the reference's offset bug gives ~0.05-2.05)
    crop_translate: float = 24.0                   # aug_crop: translation, voxels
    shift: float = 0.1                             # intensity shift up to this much ...
    shift_prob: float = 0.1                        # ... applied with this probability (per view / crop)


def sample_view_params(rng: np.random.Generator, num_crops: int,
                       ranges: ViewRanges = ViewRanges()) -> dict[str, np.ndarray]:
    """One volume's view parameters.

    Returns ``full_affine f32[4]``, ``full_shift f32[]``, ``crop_affine f32[num_crops, 4]``,
    ``crop_shift f32[num_crops]`` (intensity offsets, 0 where not applied) and
    ``global_index i32[]`` (the crop that enters the global loss).
    """
    if num_crops < 2:
        raise ValueError(f"num_crops must be >= 2 for the global loss, got {num_crops}")
    r = ranges

    def affine(n, rot_deg, scale, trans):
        angle = np.deg2rad(rng.uniform(-rot_deg, rot_deg, n))
        s = rng.uniform(scale[0], scale[1], n)
        t = rng.uniform(-trans, trans, (n, 2))
        return np.stack([angle, s, t[:, 0], t[:, 1]], axis=-1).astype(np.float32)

    def shift(n):
        on = rng.uniform(size=n) < r.shift_prob
        return np.where(on, rng.uniform(-r.shift, r.shift, n), 0.0).astype(np.float32)

    return {
        "full_affine": affine(1, r.full_rotate_deg, r.full_scale, r.full_translate)[0],
        "full_shift": shift(1)[0],
        "crop_affine": affine(num_crops, r.crop_rotate_deg, r.crop_scale, r.crop_translate),
        "crop_shift": shift(num_crops),
        "global_index": np.int32(rng.integers(num_crops)),
    }
