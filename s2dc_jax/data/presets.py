"""Modality presets (docs/method.md section 1): intensity handling, foreground crop, large-ROI crop, resize.

Pure numpy functions of arrays, reusable for labelled data (fine-tuning pads and resizes
images and labels with them). The pretraining path :func:`pretrain_volume`
works on the *unscaled* on-disk voxels (often a memory map) so that only the chosen
ROI is read and converted to float: the host cost per volume stays small.

Per modality, following the reference's MONAI pipelines:
  ct:  clip HU to [-1000, 1000] -> [0, 1]; foreground = HU > -1000; random ROI crop;
       volumes smaller than the ROI are resized up (trilinear, align_corners=True).
  mri: foreground = raw > 0; z-score over the foreground box; random ROI crop; resize.
  pet: z-score over the volume; symmetric zero padding up to the ROI; random ROI crop.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage

from s2dc_jax.data.io import DataError

MODALITIES = ("ct", "mri", "pet")


@dataclasses.dataclass(frozen=True)
class Preset:
    """How one modality's intensities and extent are handled."""

    name: str
    clip: tuple[float, float] | None   # physical window mapped linearly to [0, 1]
    zscore: bool                       # subtract mean, divide by std (over `zscore_over`)
    foreground: float | None           # physical threshold: foreground = value > it
    small: str                         # 'resize' (up-sample) or 'pad' when smaller than the ROI


PRESETS = {
    "ct": Preset("ct", clip=(-1000.0, 1000.0), zscore=False, foreground=-1000.0, small="resize"),
    "mri": Preset("mri", clip=None, zscore=True, foreground=0.0, small="resize"),
    "pet": Preset("pet", clip=None, zscore=True, foreground=None, small="pad"),
}


def get_preset(modality: str) -> Preset:
    """The preset of a modality name; ValueError naming the field otherwise."""
    if modality not in PRESETS:
        raise ValueError(f"data.modality must be one of {MODALITIES}, got {modality!r}")
    return PRESETS[modality]


def _chunks(n: int, target: int = 1 << 22, row: int = 1):
    step = max(1, target // max(row, 1))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and std of all voxels in float64, in slabs (no full-size temporaries)."""
    n, mean, m2 = 0, 0.0, 0.0
    row = int(np.prod(x.shape[1:]))
    for sl in _chunks(x.shape[0], row=row):
        c = np.asarray(x[sl], dtype=np.float64)
        k = c.size
        cm = float(c.mean())
        cm2 = float(((c - cm) ** 2).sum())
        delta = cm - mean
        tot = n + k
        mean += delta * k / tot
        m2 += cm2 + delta * delta * n * k / tot
        n = tot
    return mean, float(np.sqrt(m2 / max(n, 1)))


def all_finite(x: np.ndarray) -> bool:
    """True when no voxel is NaN or inf (integers always are)."""
    if x.dtype.kind != "f":
        return True
    row = int(np.prod(x.shape[1:]))
    return all(bool(np.isfinite(x[sl]).all()) for sl in _chunks(x.shape[0], row=row))


def foreground_box(x: np.ndarray, threshold: float) -> tuple[slice, ...] | None:
    """Bounding box (spatial slices) of voxels with ``x > threshold``; None if there are none.

    Reads the volume once, as two max-projections, which is cheaper than a full mask.
    """
    # f[X, Y] max over z (and channels), g[Z] max over x, y
    if x.ndim == 4:
        proj_xy = np.max(x, axis=(2, 3))
        proj_z = np.max(x, axis=(0, 1, 3))
    else:
        proj_xy = np.max(x, axis=2)
        proj_z = None
    fg_xy = proj_xy > threshold
    if not fg_xy.any():
        return None
    if proj_z is None:
        # z extent from the columns that have foreground only.
        xs = np.flatnonzero(fg_xy.any(axis=1))
        ys = np.flatnonzero(fg_xy.any(axis=0))
        sub = x[xs[0]:xs[-1] + 1, ys[0]:ys[-1] + 1]
        proj_z = np.max(sub, axis=(0, 1))
    zs = np.flatnonzero(proj_z > threshold)
    xs = np.flatnonzero(fg_xy.any(axis=1))
    ys = np.flatnonzero(fg_xy.any(axis=0))
    return (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(zs[0], zs[-1] + 1))


def raw_threshold(threshold: float, slope: float, inter: float) -> tuple[float, bool]:
    """A physical threshold in raw units; the bool says the comparison flips (negative slope)."""
    return (threshold - inter) / slope, slope < 0


def normalize_intensity(x: np.ndarray, modality: str, *, stats: tuple[float, float] | None = None,
                        path: str = "<array>") -> np.ndarray:
    """Modality intensity handling on physical values -> f32 (CT window to [0, 1]; MRI/PET z-score).

    ``stats`` (mean, std) lets a crop be normalised with its whole volume's statistics.
    """
    p = get_preset(modality)
    x = np.asarray(x, np.float32)
    if p.clip is not None:
        lo, hi = p.clip
        return np.clip((x - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0,
                       dtype=np.float32)
    mean, std = mean_std(x) if stats is None else stats
    if not np.isfinite(mean) or not np.isfinite(std):
        raise DataError(path, "NaN/inf voxels")
    if std == 0.0:
        raise DataError(path, f"constant volume (every voxel = {mean:g}), nothing to normalise")
    return ((x - np.float32(mean)) * np.float32(1.0 / std)).astype(np.float32, copy=False)


def random_box(rng: np.random.Generator, shape, size) -> tuple[slice, ...]:
    """Uniformly placed box of ``min(size, shape)`` per axis (MONAI RandSpatialCrop, random_size=False)."""
    out = []
    for n, s in zip(shape, size):
        s = min(int(s), int(n))
        start = int(rng.integers(0, n - s + 1))
        out.append(slice(start, start + s))
    return tuple(out)


def resize(x: np.ndarray, size, *, order: int = 1) -> np.ndarray:
    """Resize the 3 spatial axes to ``size``: trilinear (order 1) with align_corners=True, as MONAI's Resized in the reference; order 0 for labels."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[:3]) == size:
        return x
    zoom = [s / n for s, n in zip(size, x.shape[:3])] + [1.0] * (x.ndim - 3)
    out = scipy.ndimage.zoom(x, zoom, order=order, mode="nearest", grid_mode=False, prefilter=False)
    if out.shape[:3] != size:  # zoom rounds the output shape; guard the contract
        raise AssertionError(f"resize produced {out.shape}, wanted {size}")
    return out


def pad_symmetric(x: np.ndarray, size, value: float = 0.0) -> np.ndarray:
    """Pad spatial axes symmetrically (extra voxel at the end) up to at least ``size``."""
    pads = []
    for n, s in zip(x.shape[:3], size):
        extra = max(0, int(s) - n)
        pads.append((extra // 2, extra - extra // 2))
    pads += [(0, 0)] * (x.ndim - 3)
    if not any(a or b for a, b in pads):
        return x
    return np.pad(x, pads, constant_values=value)


def pretrain_volume(raw: np.ndarray, rng: np.random.Generator, *, modality: str, roi,
                    slope: float = 1.0, inter: float = 0.0, path: str = "<array>",
                    min_side: int = 0) -> np.ndarray:
    """One random large-ROI view input of a volume: f32[*roi] (docs/method.md section 1, steps 1-2).

    ``raw`` holds unscaled voxels in RAS order ``[X, Y, Z]`` (a memory map is fine: only the
    foreground scan and the chosen ROI are read); physical value = raw * slope + inter.
    Unusable volumes raise DataError naming ``path``.
    """
    p = get_preset(modality)
    roi = tuple(int(r) for r in roi)
    if raw.ndim != 3:
        raise DataError(path, f"expected a single-channel 3D volume, got shape {raw.shape}")
    if min(raw.shape) < max(min_side, 1):
        raise DataError(path, f"shortest side {min(raw.shape)} of shape {raw.shape} is under "
                              f"min_side={min_side}")
    if not all_finite(raw):
        bad = sum(int(np.count_nonzero(~np.isfinite(raw[i]))) for i in range(raw.shape[0]))
        raise DataError(path, f"{bad} NaN/inf voxels")
    box = tuple(slice(0, n) for n in raw.shape)
    if p.foreground is not None:
        thr, flip = raw_threshold(p.foreground, slope, inter)
        # A negative slope (rare) reverses the order; negate in float so unsigned ints cannot wrap.
        found = (foreground_box(-np.asarray(raw, np.float32), -thr) if flip
                 else foreground_box(raw, thr))
        if found is None:
            raise DataError(path, f"no foreground (no voxel above {p.foreground:g}); blank or "
                                  "constant volume")
        box = found
    sub = raw[box]
    stats = None
    if p.zscore:
        m, s = mean_std(sub)
        if not np.isfinite(m) or not np.isfinite(s):
            raise DataError(path, "NaN/inf voxels")
        if s == 0.0:
            raise DataError(path, f"constant volume (every voxel = {m * slope + inter:g})")
        stats = (m * slope + inter, s * abs(slope))
    if p.small == "pad":
        # Pick the ROI in the (virtually) padded volume, then copy only the overlap.
        pads = [max(0, r - n) // 2 for n, r in zip(sub.shape, roi)]
        padded = [max(n, r) for n, r in zip(sub.shape, roi)]
        vbox = random_box(rng, padded, roi)
        out = np.zeros(roi, np.float32)  # zero after z-scoring, as MONAI SpatialPad(mode=constant)
        src, dst = [], []
        for b, pad, n in zip(vbox, pads, sub.shape):
            lo, hi = max(b.start - pad, 0), min(b.stop - pad, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo + pad - b.start, hi + pad - b.start))
        part = np.asarray(sub[tuple(src)], np.float32)
        part = part * np.float32(slope) + np.float32(inter) if (slope, inter) != (1.0, 0.0) else part
        out[tuple(dst)] = normalize_intensity(part, modality, stats=stats, path=path)
        return out
    crop = np.asarray(sub[random_box(rng, sub.shape, roi)], np.float32)
    if (slope, inter) != (1.0, 0.0):
        crop = crop * np.float32(slope) + np.float32(inter)
    if crop.size and crop.min() == crop.max():
        full = np.asarray(sub)
        if full.min() == full.max():
            raise DataError(path, f"constant volume (every voxel = {float(crop.flat[0]):g})")
    crop = normalize_intensity(crop, modality, stats=stats, path=path)
    return resize(crop, roi)
