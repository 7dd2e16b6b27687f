"""The rules a file and a datalist entry must pass for a task, in one place.

``check_volume`` is the one per-file rule set: listing (``make_datalist``), ``--check``
and the pretraining reader (``PretrainTransform.load``) all call it, so a file the
reader would reject is named at listing time with the reader's own words. With
``full=True`` it also reads the whole file (the complete gzip stream, CRC checked) and
every voxel; the reader calls it header-only and meets the voxel rules while cropping.
``check_case`` adds the rules between the files of one entry (same grid, channel count,
label values) and ``check_cases`` runs it over many entries in worker processes.
"""
from __future__ import annotations

import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import dataclasses
import multiprocessing
import os

import numpy as np

from s2dc_jax.data import io, presets
from s2dc_jax.data.io import DataError

TASKS = ("pretrain", "segmentation", "classification", "translation", "reconstruction", "any")
ROLES = ("image", "label", "target")
# Image and label grids must agree to this (mm / affine units): NIfTI stores float32
# affines, and converters round differently, so exact equality rejects good pairs.
AFFINE_RTOL, AFFINE_ATOL = 1e-4, 1e-3


@dataclasses.dataclass(frozen=True)
class VolumeFacts:
    """What checking one file found: header facts, and with a full read the value range."""

    path: str
    role: str
    info: io.VolumeInfo
    nbytes: int                          # size on disk
    full: bool                           # True when every byte and voxel was read
    vmin: float | None = None            # physical value range (full reads)
    vmax: float | None = None
    values: tuple[int, ...] | None = None  # label values present (full reads of labels)


def _check_args(task, role):
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")


def _label_values(x: np.ndarray, slope: float, inter: float, path) -> tuple[int, ...]:
    if x.dtype.kind in "iu" and (slope, inter) == (1.0, 0.0):
        lo, hi = int(x.min()), int(x.max())
        if lo >= 0 and hi < 1 << 16:
            # bincount is several times faster than np.unique on a large uint8/int16 map.
            counts = np.bincount(np.asarray(x, np.int64).ravel() if x.dtype.itemsize > 4
                                 else x.ravel(), minlength=hi + 1)
            return tuple(int(v) for v in np.flatnonzero(counts))
        return tuple(int(v) for v in np.unique(x))
    phys = np.asarray(x, np.float64) * slope + inter
    if not np.isfinite(phys).all():
        n = int(phys.size - np.count_nonzero(np.isfinite(phys)))
        raise DataError(path, f"{n} NaN/inf voxels in a label map")
    rounded = np.rint(phys)
    off = phys != rounded
    if off.any():
        raise DataError(path, f"label map has non-integer values (e.g. {float(phys[off][0]):g}); "
                              "expected integer class indices")
    return tuple(int(v) for v in np.unique(rounded))


def check_volume(path, *, task: str = "any", role: str = "image", min_side: int = 0,
                 full: bool = True, modality: str | None = None, labels=None) -> VolumeFacts:
    """Apply ``task``'s rules to one file (header; with ``full`` every byte and voxel); DataError names why."""
    _check_args(task, role)
    path = os.fspath(path)
    info = io.read_header(path)
    c = info.channels
    if role == "label" and c != 1:
        raise DataError(path, f"label map has {c} channels, expected one 3D label map")
    if task == "pretrain" and role == "image" and c != 1:
        raise DataError(path, f"has {c} channels; pretraining reads single-channel volumes "
                              "(split modalities into files)")
    if role == "image" and min(info.shape) < min_side:
        raise DataError(path, f"shortest side {min(info.shape)} of shape {info.shape} is under "
                              f"min_side={min_side}")
    nbytes = os.path.getsize(path)
    if not full:
        return VolumeFacts(path, role, info, nbytes, False)
    raw = io.open_raw(path, verify_stream=True)
    x = raw.data
    if x.dtype.kind not in "iuf":
        raise DataError(path, f"unsupported voxel type {x.dtype}, expected integers or floats")
    if role == "label":
        values = _label_values(x, raw.slope, raw.inter, path)
        if labels is not None:
            extra = sorted(set(values) - {int(v) for v in labels})
            if extra:
                raise DataError(path, f"label values {extra} are not among the declared "
                                      f"{sorted(int(v) for v in labels)}")
        return VolumeFacts(path, role, info, nbytes, True, float(min(values)), float(max(values)),
                           values)
    if not presets.all_finite(x):
        n = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise DataError(path, f"{n} NaN/inf voxels")
    if task == "pretrain" and modality is not None and presets.get_preset(modality).foreground is not None:
        fg = presets.get_preset(modality).foreground
        thr, flip = presets.raw_threshold(fg, raw.slope, raw.inter)
        if not bool((x < thr).any() if flip else (x > thr).any()):
            # The reader's words (presets.pretrain_volume) for the same volume.
            raise DataError(path, f"no foreground (no voxel above {fg:g}); blank or constant volume")
    xs = x[..., None] if x.ndim == 3 else x
    lo = np.asarray(xs.min(axis=(0, 1, 2)), np.float64) * raw.slope + raw.inter
    hi = np.asarray(xs.max(axis=(0, 1, 2)), np.float64) * raw.slope + raw.inter
    flat = np.flatnonzero(lo == hi)
    if flat.size:
        if xs.shape[-1] == 1:
            raise DataError(path, f"constant volume (every voxel = {lo[0]:g})")
        raise DataError(path, f"channel {int(flat[0])} of {xs.shape[-1]} is constant "
                              f"(every voxel = {lo[flat[0]]:g})")
    return VolumeFacts(path, role, info, nbytes, True, float(min(lo.min(), hi.min())),
                       float(max(lo.max(), hi.max())))


@dataclasses.dataclass
class CaseResult:
    """Outcome of one datalist entry: the facts of its files and its problems (path, reason)."""

    entry: dict
    facts: dict = dataclasses.field(default_factory=dict)      # path -> VolumeFacts
    problems: list = dataclasses.field(default_factory=list)   # (path, reason)

    @property
    def ok(self) -> bool:
        """True when every file and every rule between them passed."""
        return not self.problems

    @property
    def paths(self) -> list[str]:
        """Every file the entry names."""
        return [p for p, _ in entry_files(self.entry)]


def entry_files(entry: dict) -> list[tuple[str, str]]:
    """(path, role) of every file an entry names: image channel files, a label map, target files."""
    out = []
    for key in ROLES:
        v = entry.get(key)
        if isinstance(v, str):
            out.append((v, key))
        elif isinstance(v, (list, tuple)):
            out.extend((p, key) for p in v if isinstance(p, str))
    return out


def _grid_problem(f: VolumeFacts, ref: VolumeFacts) -> str | None:
    if f.info.shape != ref.info.shape:
        if f.role == "image":
            return f"shape {f.info.shape} differs from {ref.path}'s {ref.info.shape}"
        return f"{f.role} shape {f.info.shape} differs from image {ref.path} shape {ref.info.shape}"
    if not np.allclose(f.info.affine, ref.info.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
        d = float(np.abs(f.info.affine - ref.info.affine).max())
        return (f"{f.role} affine differs from image {ref.path}'s by up to {d:.3g} (same shape, "
                f"another grid: spacing, origin or orientation)")
    return None


def check_case(entry: dict, *, task: str = "any", min_side: int = 0, full: bool = True,
               modality: str | None = None, labels=None, in_channels: int | None = None,
               num_classes: int | None = None, label_map=(), require_target: bool = True) -> CaseResult:
    """Apply ``task``'s rules to one entry: each file (``check_volume``), then the rules between them.

    ``require_target`` False accepts entries without the label or target the task trains on
    (a test split); whatever files they do name are still checked.
    """
    _check_args(task, "image")
    res = CaseResult(entry)
    image, label = entry.get("image"), entry.get("label")
    hint = image if isinstance(image, str) else str(image)
    if isinstance(image, (list, tuple)) and image and all(isinstance(p, str) for p in image):
        images = list(image)
    elif isinstance(image, str):
        images = [image]
    else:
        res.problems.append((hint, "entry 'image' must be a file name or a list of them"))
        return res
    if task == "pretrain" and len(images) > 1:
        res.problems.append((images[0], f"pretraining reads one single-channel file per entry, "
                                        f"got a list of {len(images)}"))
        return res
    needs = {"segmentation": "label", "translation": "target", "reconstruction": "target"}.get(task)
    if needs and require_target and not (isinstance(entry.get(needs), str) or isinstance(entry.get(needs), list)):
        res.problems.append((images[0], f"entry has no {needs!r} file (needed for {task})"))
    if (task == "classification" and require_target) or (label is not None and not isinstance(label, str)):
        try:
            cls = int(label)
            if cls != label or isinstance(label, bool):
                raise TypeError
        except (TypeError, ValueError):
            res.problems.append((images[0], f"class index 'label' must be an integer, got {label!r}"))
        else:
            if num_classes is not None and not 0 <= cls < num_classes:
                res.problems.append((images[0], f"class {cls} outside [0, model.out_channels="
                                                f"{num_classes})"))
    for path, role in entry_files(entry):
        if path in res.facts:
            continue
        try:
            res.facts[path] = check_volume(path, task=task, role=role, min_side=min_side,
                                           full=full, modality=modality, labels=labels)
        except DataError as e:
            res.problems.append((e.path, e.reason))
    ref = res.facts.get(images[0])
    if ref is not None:
        for path, f in res.facts.items():
            why = None if path == images[0] else _grid_problem(f, ref)
            if why:
                res.problems.append((path, why))
    if in_channels is not None and all(p in res.facts for p in images):
        n = sum(res.facts[p].info.channels for p in images)
        if n != in_channels:
            res.problems.append((images[0], f"has {n} channels, model.in_channels is {in_channels}"))
    lf = res.facts.get(label) if isinstance(label, str) else None
    if num_classes is not None and lf is not None and lf.values is not None:
        mapping = {int(a): int(b) for a, b in label_map}
        mapped = sorted({mapping.get(v, v) for v in lf.values})
        if mapped[0] < 0 or mapped[-1] >= num_classes:
            res.problems.append((label, f"labels {mapped[:10]} outside [0, model.out_channels="
                                        f"{num_classes})" + (" after data.label_map" if mapping else "")))
    return res


def _job(args):
    entry, rules = args
    return check_case(entry, **rules)


def default_workers(n_items: int) -> int:
    """Worker processes for ``n_items`` checks: one per core (at most 8), none for a handful."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    # Starting a process costs about 2 s (imports); below ~8 files per worker it does not pay.
    return max(1, min(8, cores, n_items // 8))


def check_cases(entries: list[dict], *, workers: int | None = None, progress=None,
                **rules) -> list[CaseResult]:
    """``check_case`` over many entries, in ``workers`` processes (None: ``default_workers``), in order."""
    workers = default_workers(len(entries)) if workers is None else int(workers)
    jobs = [(e, rules) for e in entries]
    out = []
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: forking a process that has started JAX's threads can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            try:
                for r in ex.map(_job, jobs, chunksize=max(1, min(16, len(jobs) // (workers * 8)))):
                    out.append(r)
                    if progress:
                        progress(r, len(out), len(jobs))
            except BrokenProcessPool:
                raise DataError(jobs[len(out)][0].get("image"),
                                "a checking worker process died while reading this entry or one "
                                "near it (out of memory?); rerun with fewer --workers") from None
        return out
    for j in jobs:
        out.append(_job(j))
        if progress:
            progress(out[-1], len(out), len(jobs))
    return out
