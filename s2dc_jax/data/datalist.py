"""Decathlon-style datalists: read, build from folders (headers only), check, cache uncompressed.

A datalist is MONAI/Decathlon JSON: ``{"training": [{"image": "a.nii.gz", ...}, ...],
"validation": [...]}``. Relative paths resolve against ``root``, or the JSON's folder.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil

import numpy as np

from s2dc_jax.data import io, presets
from s2dc_jax.data.io import DataError

PATH_KEYS = ("image", "label", "target")  # keys whose string values are files


def _resolve(value, base):
    if isinstance(value, str):
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [_resolve(v, base) for v in value]
    return value


def _as_paths(path_or_paths) -> list[str]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        return [os.fspath(path_or_paths)]
    if isinstance(path_or_paths, (list, tuple)) and path_or_paths:
        return [os.fspath(p) for p in path_or_paths]
    raise ValueError(f"data.datalist must be a JSON path or a non-empty tuple of them, "
                     f"got {path_or_paths!r}")


def read_datalist(path_or_paths, root=None, split: str = "training") -> list[dict]:
    """Records of ``split`` from one or more datalist JSONs, with absolute file paths."""
    out = []
    for path in _as_paths(path_or_paths):
        if not os.path.isfile(path):
            raise DataError(path, "datalist not found")
        try:
            with open(path) as f:
                doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(path, f"not valid JSON ({e})") from None
        if not isinstance(doc, dict) or split not in doc:
            keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise DataError(path, f"has no {split!r} list (found {keys})")
        entries = doc[split]
        if not isinstance(entries, list):
            raise DataError(path, f"{split!r} must be a list, got {type(entries).__name__}")
        if not entries:
            raise DataError(path, f"{split!r} list is empty")
        base = os.path.abspath(os.fspath(root) if root else os.path.dirname(os.path.abspath(path)))
        for i, e in enumerate(entries):
            if isinstance(e, str):
                e = {"image": e}
            if not isinstance(e, dict) or "image" not in e:
                raise DataError(path, f"{split}[{i}] has no 'image' key: {e!r}")
            rec = {k: (_resolve(v, base) if k in PATH_KEYS or (isinstance(v, str) and
                                                              io.is_nifti_name(v)) else v)
                   for k, v in e.items()}
            out.append(rec)
    return out


@dataclasses.dataclass
class Report:
    """Outcome of listing or checking: usable entries and (path, reason) problems."""

    ok: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)   # (path, reason)
    ignored: int = 0   # files without a NIfTI suffix (listing only)

    def summary(self) -> str:
        """One line: how many were fine and how many were not."""
        n = len(self.ok) + len(self.problems)
        s = f"{len(self.ok)} of {n} OK, {len(self.problems)} problem(s)"
        return s + (f", {self.ignored} non-NIfTI file(s) ignored" if self.ignored else "")


def verify_volume(path, *, min_side: int = 0) -> io.VolumeInfo:
    """Read a whole volume and reject unreadable, too small, non-finite or constant ones."""
    info = io.read_header(path)
    if min(info.shape) < min_side:
        raise DataError(path, f"shortest side {min(info.shape)} of {info.shape} is under "
                              f"--min-side {min_side}")
    raw = io.open_raw(path)
    try:
        data = np.asarray(raw.data)
    except (EOFError, OSError, ValueError) as e:
        raise DataError(path, f"cannot read voxel data, corrupt or truncated ({e})") from None
    if not presets.all_finite(data):
        n = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise DataError(path, f"{n} NaN/inf voxels")
    if data.size and data.min() == data.max():
        raise DataError(path, f"constant volume (every voxel = {float(data.flat[0]) * raw.slope + raw.inter:g})")
    return info


def _inspect(args):
    path, min_side, verify = args
    try:
        info = verify_volume(path, min_side=min_side) if verify else io.read_header(path)
        if min(info.shape) < min_side:
            raise DataError(path, f"shortest side {min(info.shape)} of {info.shape} is under "
                                  f"--min-side {min_side}")
        return path, info.shape, info.channels, None
    except DataError as e:
        return path, None, None, e.reason


def _map(fn, items, workers):
    if workers > 1 and len(items) > 1:
        # spawn, not fork: forking a process that has started JAX's threads can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            return list(ex.map(fn, items, chunksize=4))
    return [fn(i) for i in items]


def scan_folders(roots) -> tuple[list[str], int]:
    """Sorted NIfTI files under the folders, and how many other files were ignored."""
    files, ignored = [], 0
    for root in roots:
        if not os.path.isdir(root):
            raise DataError(root, "folder not found")
        for d, dirs, names in os.walk(root):
            dirs.sort()
            for n in sorted(names):
                if io.is_nifti_name(n):
                    files.append(os.path.abspath(os.path.join(d, n)))
                elif not n.startswith("."):
                    ignored += 1
    return sorted(files), ignored


def make_datalist(roots, out, *, min_side: int = 16, verify: bool = False, workers: int = 1,
                  val_fraction: float = 0.0, seed: int = 0, absolute: bool = False) -> Report:
    """Scan folders for NIfTI files (headers only unless ``verify``) and write a Decathlon JSON."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files, ignored = scan_folders([os.fspath(r) for r in roots])
    rep = Report(ignored=ignored)
    for path, shape, channels, reason in _map(_inspect, [(f, min_side, verify) for f in files],
                                              workers):
        if reason is None:
            rep.ok.append(path)
        else:
            rep.problems.append((path, reason))
    if not rep.ok:
        raise DataError(", ".join(map(os.fspath, roots)),
                        f"no usable NIfTI volume found ({rep.summary()})")
    base = os.path.dirname(os.path.abspath(out))
    rel = (lambda p: p) if absolute else (lambda p: os.path.relpath(p, base))
    entries = [{"image": rel(p)} for p in rep.ok]
    n_val = int(round(len(entries) * val_fraction))
    order = np.random.default_rng(seed).permutation(len(entries))
    val_idx = set(order[:n_val].tolist())
    doc = {"training": [e for i, e in enumerate(entries) if i not in val_idx],
           "validation": [e for i, e in enumerate(entries) if i in val_idx]}
    os.makedirs(base, exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    return rep


def check_datalist(path_or_paths, *, root=None, split: str = "training", verify: bool = True,
                   min_side: int = 0, workers: int = 1) -> Report:
    """Validate every file of a datalist: missing, unreadable, wrong-dimensional, NaN, constant."""
    records = read_datalist(path_or_paths, root=root, split=split)
    jobs, pairs = [], []
    for r in records:
        for k in PATH_KEYS:
            if k in r:
                for p in (r[k] if isinstance(r[k], list) else [r[k]]):
                    # Labels may be constant (all background) legitimately: headers only for them.
                    jobs.append((p, min_side if k == "image" else 0, verify and k != "label"))
        if isinstance(r.get("label"), str) and isinstance(r.get("image"), str):
            pairs.append((r["image"], r["label"]))
    rep = Report()
    seen = {}
    for path, shape, _, reason in _map(_inspect, list(dict.fromkeys(jobs)), workers):
        seen[path] = shape
        if reason is None:
            rep.ok.append(path)
        else:
            rep.problems.append((path, reason))
    for img, lab in pairs:
        if seen.get(img) and seen.get(lab) and seen[img] != seen[lab]:
            rep.problems.append((lab, f"label shape {seen[lab]} differs from image {img} "
                                      f"shape {seen[img]}"))
    return rep


def _cache_name(path: str) -> str:
    stem = os.path.basename(path)[: -len(".gz")]
    return hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10] + "_" + stem


def cache_uncompressed(records: list[dict], cache_dir) -> list[dict]:
    """Decompress every ``.nii.gz`` once into ``cache_dir`` (bit-identical ``.nii``); records pointing there.

    Uncompressed files are memory-mapped, so a pretraining step reads only its ROI
    instead of decoding the whole gzip stream every time a volume is drawn.
    """
    os.makedirs(cache_dir, exist_ok=True)
    out = []
    for r in records:
        r = dict(r)
        for k in PATH_KEYS:
            v = r.get(k)
            if isinstance(v, str) and v.lower().endswith(".nii.gz"):
                dst = os.path.join(os.path.abspath(cache_dir), _cache_name(v))
                if not os.path.exists(dst):
                    tmp = dst + ".part"
                    try:
                        with gzip.open(v, "rb") as fi, open(tmp, "wb") as fo:
                            shutil.copyfileobj(fi, fo, 1 << 22)
                    except (OSError, EOFError) as e:
                        raise DataError(v, f"cannot decompress ({e})") from None
                    os.replace(tmp, dst)
                r[k] = dst
        out.append(r)
    return out


def write_datalist(records: list[dict], out, *, split: str = "training",
                   validation: list[dict] | None = None, extra: dict | None = None,
                   absolute: bool = False) -> str:
    """Write records as a Decathlon JSON (paths relative to its folder unless ``absolute``)."""
    base = os.path.dirname(os.path.abspath(out))

    def rel(v):
        if isinstance(v, list):
            return [rel(x) for x in v]
        return v if absolute or not isinstance(v, str) else os.path.relpath(v, base)

    def entries(rs):
        return [{k: (rel(v) if k in PATH_KEYS else v) for k, v in r.items()} for r in rs]

    doc = {split: entries(records)}
    if validation is not None:
        doc["validation"] = entries(validation)
    doc.update(extra or {})
    os.makedirs(base, exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    return os.fspath(out)
