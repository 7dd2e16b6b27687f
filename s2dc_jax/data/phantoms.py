"""Synthetic anatomy-like phantoms written as real NIfTI files with a datalist.

Each volume: a torso ellipsoid with a subcutaneous layer, five structures inside it
(label 1 liver-like, 2 spleen-like, 3 left kidney, 4 right kidney, 5 spine-like bone),
smooth texture and noise, intensities in the modality's physical range:
  ct:  HU (air -1000, fat ~-100, soft tissue 20-60, bone ~700), stored int16
  mri: arbitrary positive T1-like units (background ~0), float32
  pet: SUV-like (background 0, tissue ~0.8, kidneys ~3.5), float32
Each record also has a ``"target"`` image of the same anatomy (MRI: T2-like contrast,
for translation; PET: full-dose/noise-free, with the image a low-dose noisy version,
for reconstruction; CT: noise-free, for denoising) and a ``"class"`` per volume:
0 normal, 1 focal lesions (bright spheres in the liver), 2 diffuse change (liver
intensity shifted and textured). Labels do not mark lesions.
"""
from __future__ import annotations

import os

import numpy as np

from s2dc_jax.data import datalist as datalist_lib
from s2dc_jax.data import io, presets

LABEL_NAMES = ("background", "liver", "spleen", "kidney_left", "kidney_right", "bone")
CLASS_NAMES = ("normal", "focal_lesions", "diffuse")

_LESIONS, _LESION_RADIUS = 5, 0.1  # focal class: lesion count and radius (fraction of the shortest side)

# Physical intensity of (background, body, fat layer, liver, spleen, kidney, kidney, bone).
_LEVELS = {
    "ct": dict(image=(-1000, 30, -100, 60, 50, 35, 35, 700), noise=12.0, texture=15.0,
               lesion=150.0, diffuse=-100.0),
    "mri": dict(image=(0, 300, 600, 450, 380, 520, 520, 120), noise=8.0, texture=25.0,
                lesion=250.0, diffuse=-120.0,
                target=(0, 250, 350, 300, 600, 750, 750, 80)),
    "pet": dict(image=(0, 0.8, 0.5, 2.0, 1.8, 3.5, 3.5, 1.0), noise=0.05, texture=0.15,
                lesion=8.0, diffuse=1.0),
}


def _smooth_noise(rng, shape, scale):
    """Smooth texture: coarse noise up-sampled trilinearly (cheap compared to a Gaussian filter)."""
    coarse = [max(2, s // scale) for s in shape]
    n = rng.standard_normal(coarse).astype(np.float32)
    return presets.resize(n, shape)


def _ellipsoid(grid, centre, radii):
    x, y, z = grid
    return (((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
            + ((z - centre[2]) / radii[2]) ** 2) <= 1.0


def make_phantom(rng: np.random.Generator, shape=(96, 96, 48), modality: str = "ct",
                 cls: int | None = None) -> dict:
    """One phantom in RAS order: ``image`` f32[X,Y,Z], ``label`` u8[X,Y,Z], ``target`` f32, ``class`` int."""
    presets.get_preset(modality)
    lv = _LEVELS[modality]
    shape = tuple(int(s) for s in shape)
    # Normalised coordinates in [-1, 1]; open grids keep masks cheap.
    grid = np.ogrid[tuple(slice(-1.0, 1.0, complex(0, s)) for s in shape)]
    j = lambda s=0.05: rng.uniform(-s, s)  # noqa: E731  small anatomical jitter
    body = _ellipsoid(grid, (j(), j(), 0.0), (0.85 + j(), 0.65 + j(), 1.3))
    inner = _ellipsoid(grid, (j(0.01), j(0.01), 0.0), (0.78, 0.58, 1.3)) & body
    structures = [
        _ellipsoid(grid, (-0.35 + j(), 0.05 + j(), 0.2 + j()), (0.32 + j(), 0.3 + j(), 0.45)),  # liver
        _ellipsoid(grid, (0.45 + j(), 0.1 + j(), 0.25 + j()), (0.14, 0.16, 0.25)),              # spleen
        _ellipsoid(grid, (0.3 + j(), -0.25 + j(), -0.2 + j()), (0.1, 0.12, 0.28)),              # kidney L
        _ellipsoid(grid, (-0.3 + j(), -0.25 + j(), -0.25 + j()), (0.1, 0.12, 0.28)),            # kidney R
        _ellipsoid(grid, (j(0.02), -0.45 + j(0.02), 0.0), (0.08, 0.08, 2.0)),                   # spine
    ]
    label = np.zeros(shape, np.uint8)
    for k, m in enumerate(structures, start=1):
        label[m & inner] = k
    levels = lv["image"]
    clean = np.full(shape, levels[0], np.float32)
    clean[body] = levels[2]
    clean[inner] = levels[1]
    for k in range(1, 6):
        clean[label == k] = levels[k + 2]
    tex = _smooth_noise(rng, shape, 8) * np.float32(lv["texture"])
    clean = np.where(body, clean + tex, clean)
    cls = int(rng.integers(3)) if cls is None else int(cls)
    liver = label == 1
    if cls == 1 and liver.any():
        pts = np.argwhere(liver)
        for p in pts[rng.choice(len(pts), size=_LESIONS)]:
            r = max(2.0, min(shape) * _LESION_RADIUS)
            g = np.ogrid[tuple(slice(0, s) for s in shape)]
            ball = sum((gi - pi) ** 2 for gi, pi in zip(g, p)) <= r * r
            clean[ball & body] += np.float32(lv["lesion"])
    elif cls == 2:
        clean[liver] += np.float32(lv["diffuse"]) + 2 * _smooth_noise(rng, shape, 4)[liver] * np.float32(lv["texture"])
    if "target" in lv:  # MRI: same anatomy, another contrast (T2-like)
        t = lv["target"]
        target = np.full(shape, t[0], np.float32)
        target[body] = t[2]
        target[inner] = t[1]
        for k in range(1, 6):
            target[label == k] = t[k + 2]
        target = np.where(body, target + tex * 0.8, target)
    else:
        target = clean.copy()
    noise = rng.standard_normal(shape).astype(np.float32) * np.float32(lv["noise"])
    if modality == "pet":
        clean = np.maximum(clean, 0.0)
        target = np.maximum(target, 0.0)
        # Low-dose image: Poisson counts at a tenth of the dose, rescaled to SUV.
        dose = 20.0
        image = rng.poisson(clean * dose).astype(np.float32) / np.float32(dose)
    elif modality == "mri":
        image = np.abs(clean + noise)  # magnitude images are non-negative (Rician-like)
        target = np.abs(target + noise)
    else:
        image = clean + noise
    return {"image": image.astype(np.float32), "label": label, "target": target.astype(np.float32),
            "class": cls}


def write_phantom_dataset(out_dir, *, num: int, modality: str, shape=(96, 96, 48), seed: int = 0,
                          labels: bool = True, targets: bool = True, num_val: int = 0,
                          spacing=(1.5, 1.5, 2.0), orientations=("RAS",),
                          compress: bool = True) -> str:
    """Write ``num`` phantoms (+ ``num_val`` validation ones) as NIfTI and return the datalist JSON path.

    Records: ``image``, ``label`` (u8, if labels), ``target`` (if targets), ``class`` (int).
    Files cycle through ``orientations`` (stored axis codes, e.g. ("RAS", "LPS")) to
    exercise reorientation; the loader gives every one back in RAS.
    """
    presets.get_preset(modality)
    if num < 1 or num_val < 0:
        raise ValueError(f"num must be >= 1 and num_val >= 0, got num={num}, num_val={num_val}")
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3 sides >= 4, got {shape}")
    os.makedirs(out_dir, exist_ok=True)
    ext = ".nii.gz" if compress else ".nii"
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(num + num_val):
        ph = make_phantom(rng, shape, modality, cls=i % 3)
        orient = orientations[i % len(orientations)]
        name = f"{modality}_{i:04d}"
        dtype = np.int16 if modality == "ct" else np.float32
        img = np.rint(ph["image"]) if modality == "ct" else ph["image"]
        rec = {"image": io.save_volume(os.path.join(out_dir, name + ext), img, spacing=spacing,
                                       orientation=orient, dtype=dtype)}
        if labels:
            rec["label"] = io.save_volume(os.path.join(out_dir, name + "_label" + ext), ph["label"],
                                          spacing=spacing, orientation=orient, dtype=np.uint8)
        if targets:
            tgt = np.rint(ph["target"]) if modality == "ct" else ph["target"]
            rec["target"] = io.save_volume(os.path.join(out_dir, name + "_target" + ext), tgt,
                                           spacing=spacing, orientation=orient, dtype=dtype)
        rec["class"] = ph["class"]
        recs.append(rec)
    extra = {"modality": modality, "labels": dict(enumerate(LABEL_NAMES)),
             "classes": dict(enumerate(CLASS_NAMES))}
    return datalist_lib.write_datalist(recs[:num], os.path.join(out_dir, "datalist.json"),
                                       validation=recs[num:], extra=extra)
