"""Fine-tuning data on the host: datalists, splits, preprocessing, training samples, NIfTI predictions.

Volumes are loaded once through `s2dc_jax.data.io.load_volume` (RAS order), brought
to the config's spacing and intensity window, and kept in memory: downstream sets
are small (tens to hundreds of volumes). Training samples come from a grain dataset
(`sample_dataset`): sample ``i`` is cut from case ``order[i]`` of an epoch-wise shuffle
with ``np.random.default_rng([seed, i])``, so batches are the same for any process count
and a restored iterator continues exactly where it stopped.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import grain
import nibabel as nib
import numpy as np

from s2dc_jax.data.datalist import read_datalist
from s2dc_jax.data.io import DataError, load_volume
from s2dc_jax.data.presets import resize


def kfold_split(entries: list[dict], num_folds: int, fold: int, seed: int, subject_key=None):
    """(train, val) of fold `fold` of `num_folds`; with `subject_key` all scans of a subject stay together."""
    if num_folds < 2:
        raise ValueError(f"data.num_folds must be >= 2 for a k-fold split, got {num_folds}")
    if subject_key:
        missing = [i for i, e in enumerate(entries) if subject_key not in e]
        if missing:
            raise ValueError(f"data.subject_key {subject_key!r} is missing from entries {missing[:5]}")
        groups = [str(e[subject_key]) for e in entries]
    else:
        groups = [str(i) for i in range(len(entries))]
    uniq = sorted(set(groups))
    if len(uniq) < num_folds:
        raise ValueError(f"data.num_folds ({num_folds}) exceeds the {len(uniq)} subjects/scans available")
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[j]: k % num_folds for k, j in enumerate(order)}
    train = [e for e, g in zip(entries, groups) if fold_of[g] != fold]
    val = [e for e, g in zip(entries, groups) if fold_of[g] == fold]
    return train, val


def splits(config) -> tuple[list[dict], list[dict]]:
    """Training and validation entries of a config: the JSON's lists, a k-fold split, or a held-out share."""
    d = config.data
    train = read_datalist(d.datalist, d.root, d.train_key)
    if d.num_folds:
        return kfold_split(train, d.num_folds, d.fold, config.seed, d.subject_key)
    try:
        val = read_datalist(d.datalist, d.root, d.val_key)
    except DataError:  # no validation list: fall back to a held-out share
        val = []
    if not val and d.val_fraction > 0:
        n_val = max(1, int(round(len(train) * d.val_fraction)))
        return kfold_split(train, max(2, round(len(train) / n_val)), 0, config.seed, d.subject_key)
    return train, val


def intensity(x: np.ndarray, mode: str, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0) -> np.ndarray:
    """Per-channel intensity preprocessing of f32[X, Y, Z, C] (window, z-score, min-max)."""
    x = np.asarray(x, np.float32)
    if mode not in ("window", "zscore_nonzero", "zscore", "minmax", "none"):
        raise ValueError(f"data.intensity must be one of window, zscore_nonzero, zscore, minmax, none; got {mode!r}")
    if mode == "none":
        return x
    if mode == "window":  # MONAI ScaleIntensityRanged(clip=True)
        y = (x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min
        return np.clip(y, min(b_min, b_max), max(b_min, b_max)).astype(np.float32)
    out = np.empty_like(x)
    for ch in range(x.shape[-1]):
        v = x[..., ch]
        if mode == "minmax":
            lo, hi = float(v.min()), float(v.max())
            out[..., ch] = (v - lo) / (hi - lo) if hi > lo else 0.0
            continue
        sel = v != 0 if mode == "zscore_nonzero" else np.ones(v.shape, bool)
        if not sel.any():
            out[..., ch] = 0.0
            continue
        mean, std = float(v[sel].mean()), float(v[sel].std())
        # MONAI NormalizeIntensity(nonzero=True) leaves the zero background at zero.
        out[..., ch] = np.where(sel, (v - mean) / (std if std > 0 else 1.0), 0.0)
    return out


@dataclasses.dataclass
class Case:
    """One preprocessed sample: image f32[X, Y, Z, C], target (label map, class or image) and file facts."""

    image: np.ndarray
    target: object
    meta: dict


def _load_image(paths, field: str, entry_path_hint: str) -> tuple[np.ndarray, dict]:
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths:
        raise DataError(entry_path_hint, f"entry field {field!r} must be a file name or a list of them")
    arrays, meta = [], None
    for p in paths:
        a, m = load_volume(p, channels=True)
        if meta is not None and a.shape[:3] != arrays[0].shape[:3]:
            raise DataError(p, f"shape {a.shape[:3]} differs from {paths[0]}'s {arrays[0].shape[:3]}")
        meta = meta or m
        arrays.append(a)
    return np.concatenate(arrays, axis=-1), meta


def _resampled_shape(shape, spacing, target):
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def load_image(entry: dict, config) -> tuple[np.ndarray, dict, tuple[int, int, int]]:
    """An entry's image f32[X, Y, Z, C] on the config's spacing and intensity, its file facts, and that grid."""
    d = config.data
    hint = str(entry.get("image"))
    image, meta = _load_image(entry["image"], "image", hint)
    if image.shape[-1] != config.model.in_channels:
        raise DataError(hint, f"has {image.shape[-1]} channels, model.in_channels is {config.model.in_channels}")
    meta = dict(meta, raw_shape=image.shape[:3])
    shape = image.shape[:3]
    if d.spacing is not None:
        shape = _resampled_shape(shape, meta["spacing"], d.spacing)
    image = intensity(resize(image, shape, order=1), d.intensity, d.a_min, d.a_max, d.b_min, d.b_max)
    if d.target_key not in entry:
        raise DataError(hint, f"datalist entry has no {d.target_key!r} (data.target_key, needed for {config.task})")
    return image, meta, shape


def load_label_map(path, meta: dict, shape, config) -> np.ndarray:
    """int32[X, Y, Z] label map on the image's grid, with data.label_map applied and checked against the classes."""
    lab, _ = load_volume(path)
    if lab.shape != meta["raw_shape"]:
        raise DataError(path, f"label shape {lab.shape} != image shape {meta['raw_shape']}")
    target = resize(np.rint(lab).astype(np.int32), shape, order=0)
    if config.data.label_map:
        src = target.copy()
        for a, b in config.data.label_map:
            target[src == int(a)] = int(b)
    if target.max() >= config.model.out_channels or target.min() < 0:
        raise DataError(path, f"labels {sorted(np.unique(target))[:10]} outside [0, model.out_channels="
                              f"{config.model.out_channels})")
    return target


def load_target_image(paths, meta: dict, shape, config, hint: str) -> np.ndarray:
    """f32[X, Y, Z, C] target image on the input's grid, with data.target_intensity."""
    tgt, _ = _load_image(paths, config.data.target_key, hint)
    if tgt.shape[:3] != meta["raw_shape"]:
        raise DataError(str(paths), f"target shape {tgt.shape[:3]} != input shape {meta['raw_shape']}")
    return intensity(resize(tgt, shape, order=1), config.data.target_intensity)


def crop_box(rng, shape, roi, centre=None) -> tuple[slice, slice, slice]:
    """A ``roi``-sized box inside ``shape``: random, or centred on ``centre`` (clipped to fit)."""
    starts = []
    for n, r, i in zip(shape, roi, range(3)):
        if centre is None:
            s = int(rng.integers(0, n - r + 1))
        else:
            s = int(np.clip(centre[i] - r // 2, 0, n - r))
        starts.append(s)
    return tuple(slice(s, s + r) for s, r in zip(starts, roi))


def random_flips(rng, arrays, prob: float) -> list[np.ndarray]:
    """Flip all ``arrays`` together along each spatial axis with probability ``prob`` (one draw per axis)."""
    arrays = list(arrays)
    for ax in range(3):
        if rng.random() < prob:
            arrays = [np.flip(a, ax) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def to_raw_grid(x: np.ndarray, meta: dict, order: int) -> np.ndarray:
    """A prediction on the preprocessed grid back onto the file's RAS voxel grid (undoes resampling)."""
    return resize(x, tuple(meta["raw_shape"]), order=order)


def save_prediction(path, pred_ras: np.ndarray, source_path, dtype=None) -> str:
    """Writes a prediction given in RAS array order with the source file's own affine, orientation and header."""
    src = nib.load(os.fspath(source_path))
    pred_ras = np.asarray(pred_ras if dtype is None else np.asarray(pred_ras).astype(dtype))
    # load_volume applied `ornt` to reach RAS; the inverse brings voxels back to the file's storage order.
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                           nib.orientations.axcodes2ornt(nib.aff2axcodes(src.affine)))
    stored = nib.orientations.apply_orientation(pred_ras, back)
    if stored.shape[:3] != src.shape[:3]:
        raise ValueError(f"save_prediction: prediction shape {stored.shape[:3]} does not match {source_path} "
                         f"{src.shape[:3]}")
    hdr = src.header.copy()
    hdr.set_data_dtype(stored.dtype)
    img = nib.Nifti1Image(np.ascontiguousarray(stored), src.affine, hdr)
    img.set_qform(src.get_qform(), code=int(src.header["qform_code"]) or 1)
    img.set_sform(src.get_sform(), code=int(src.header["sform_code"]) or 1)
    img.header.set_slope_inter(1.0, 0.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, os.fspath(path))
    return os.fspath(path)


class _Sample:
    """Element ``i`` of the sample stream: case ``case_index`` cut by ``sample_fn`` with the rng of ``(seed, i)``."""

    def __init__(self, cases, sample_fn, seed: int):
        self.cases, self.sample_fn, self.seed = cases, sample_fn, int(seed)

    def __call__(self, index: int, case_index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        image, target = self.sample_fn(self.cases[int(case_index)], rng)
        return {"image": np.asarray(image, np.float32), "target": np.asarray(target)}


def sample_dataset(cases: list[Case], sample_fn: Callable, *, batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1, threads: int = 1, prefetch: int = 2) -> grain.IterDataset:
    """This process's rows of each global batch of ``batch_size`` training samples, as a grain IterDataset.

    ``sample_fn(case, rng) -> (image, target)`` cuts one training sample. Global batch ``s``
    holds samples ``[s*B, (s+1)*B)``; process ``p`` of ``P`` gets the ``p``-th block of
    ``B/P`` of them, so its rows are those a single process would put on its devices.
    """
    if not cases:
        raise ValueError("no training cases")
    if batch_size % process_count:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of the {process_count} processes")
    local = batch_size // process_count
    # Reshuffled every epoch; 2**40 samples in all (an unbounded repeat overflows len() after batch(1)).
    order = grain.MapDataset.range(len(cases)).shuffle(seed=int(seed) % 2**32).repeat(num_epochs=2**40 // len(cases))
    ds = order.map_with_index(_Sample(cases, sample_fn, seed)).batch(local)[process_index::process_count]
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=int(threads), prefetch_buffer_size=int(prefetch)))
