"""Decathlon-style datalists: read, build from folders, check for a task, write clean, cache uncompressed.

A datalist is MONAI/Decathlon JSON: ``{"training": [{"image": "a.nii.gz", ...}, ...],
"validation": [...]}``. Relative paths resolve against ``root``, or the JSON's folder.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

from s2dc_jax.data import checks, io
from s2dc_jax.data.checks import check_case, check_volume  # noqa: F401  (the pipeline's reader calls datalist.check_volume)
from s2dc_jax.data.io import DataError

PATH_KEYS = ("image", "label", "target")  # keys whose string values are files


def _resolve(value, base):
    if isinstance(value, str):
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [_resolve(v, base) for v in value]
    return value


def datalist_paths(path_or_paths) -> list[str]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        return [os.fspath(path_or_paths)]
    if isinstance(path_or_paths, (list, tuple)) and path_or_paths:
        return [os.fspath(p) for p in path_or_paths]
    raise ValueError(f"data.datalist must be a JSON path or a non-empty tuple of them, "
                     f"got {path_or_paths!r}")


def read_datalist(path_or_paths, root=None, split: str = "training") -> list[dict]:
    """Records of ``split`` from one or more datalist JSONs, with absolute file paths."""
    out = []
    for path in datalist_paths(path_or_paths):
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


SPLITS = ("training", "validation", "test")


@dataclasses.dataclass
class Report:
    """Outcome of listing or checking: usable files and entries, and (path, reason) problems."""

    ok: list = dataclasses.field(default_factory=list)         # files that passed
    problems: list = dataclasses.field(default_factory=list)   # (path, reason)
    ignored: int = 0   # files without a NIfTI suffix (listing only)
    task: str | None = None
    full: bool = True  # every byte and voxel read (False: headers only)
    cases: int = 0     # entries checked
    splits: dict = dataclasses.field(default_factory=dict)     # split -> entries that passed
    dropped: dict = dataclasses.field(default_factory=dict)    # split -> entries that did not
    facts: dict = dataclasses.field(default_factory=dict)      # path -> checks.VolumeFacts
    extra: dict = dataclasses.field(default_factory=dict)      # other top-level keys of the list
    nbytes: int = 0    # bytes on disk of the files read
    seconds: float = 0.0

    @property
    def cases_ok(self) -> int:
        """Entries whose every file and rule passed."""
        return sum(len(v) for v in self.splits.values())

    def summary(self) -> str:
        """One line: how many files and entries were fine and how many were not."""
        bad = len({p for p, _ in self.problems})
        s = f"{len(self.ok)} of {len(self.ok) + bad} OK, {len(self.problems)} problem(s)"
        s += f", {self.ignored} non-NIfTI file(s) ignored" if self.ignored else ""
        if self.cases:
            s += f"; {self.cases_ok} of {self.cases} entries usable for {self.task}"
        return s

    def rate(self) -> str:
        """One line: bytes and volumes read per second."""
        mb, n, t = self.nbytes / 1e6, len(self.facts), max(self.seconds, 1e-9)
        if not self.full:
            return f"read {n} headers in {self.seconds:.1f} s: {n / t:.0f} volumes/s (--headers-only)"
        return (f"read {n} whole files ({mb:.1f} MB on disk) in {self.seconds:.1f} s: "
                f"{mb / t:.1f} MB/s, {n / t:.2f} volumes/s")


def _collect(rep: Report, results, split: str):
    bad = {p for p, _ in rep.problems}
    for r in results:
        rep.cases += 1
        rep.facts.update(r.facts)
        for pr in r.problems:
            if pr not in rep.problems:
                rep.problems.append(pr)
            bad.add(pr[0])
        (rep.splits if r.ok else rep.dropped).setdefault(split, []).append(r.entry)
    seen = set(rep.ok)
    rep.ok = [p for p in rep.ok if p not in bad]
    for r in results:
        for p in r.paths:
            if p not in bad and p not in seen:
                seen.add(p)
                rep.ok.append(p)
    rep.nbytes = sum(f.nbytes for f in rep.facts.values())


def infer_task(entries: list[dict]) -> str:
    """The task a datalist's entries suit: label files -> segmentation, targets -> translation, ..."""
    if any(isinstance(e.get("label"), str) for e in entries):
        return "segmentation"
    if any("target" in e for e in entries):
        return "translation"
    if any("label" in e for e in entries):
        return "classification"
    if any(isinstance(e.get("image"), list) for e in entries):
        return "any"
    return "pretrain"


def declared_labels(doc: dict):
    """Label values a datalist or dataset.json declares (``{"0": "background"}`` or nnU-Net's ``{"background": 0}``)."""
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels):
            return sorted(int(k) for k in labels)
        vals = set()
        for v in labels.values():  # nnU-Net region labels map a name to a list of values
            vals.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
        return sorted(vals)
    except (TypeError, ValueError):
        return None


def run_checks(entries_by_split: dict, *, task: str, verify: bool = True, min_side: int = 0,
               workers: int | None = None, modality=None, labels=None, in_channels=None,
               num_classes=None, label_map=(), progress=None, report: Report | None = None) -> Report:
    """``checks.check_case`` over the entries of each split (test entries need no label) into a Report."""
    rep = report or Report()
    rep.task, rep.full = task, bool(verify)
    if workers is None and not verify:
        workers = 1  # a header is ~2 ms: starting worker processes (~2 s each) costs more
    t0 = time.perf_counter()
    for split, entries in entries_by_split.items():
        rules = dict(task=task, min_side=min_side, full=verify, modality=modality, labels=labels,
                     in_channels=in_channels, num_classes=num_classes, label_map=tuple(label_map))
        if split == "test":
            rules.update(require_target=False)
        _collect(rep, checks.check_cases(list(entries), workers=workers, progress=progress,
                                         **rules), split)
    rep.seconds = time.perf_counter() - t0
    return rep


def scan_folders(roots) -> tuple[list[str], int]:
    """Sorted NIfTI files under the folders, and how many other files were ignored."""
    files, ignored = [], 0
    for root in roots:
        if not os.path.isdir(root):
            raise DataError(root, "folder not found")
        for d, dirs, names in os.walk(root):
            dirs.sort()
            for n in sorted(names):
                if n.startswith("._"):
                    ignored += 1  # macOS resource forks that tar copies beside each file
                elif io.is_nifti_name(n):
                    files.append(os.path.abspath(os.path.join(d, n)))
                elif not n.startswith("."):
                    ignored += 1
    return sorted(files), ignored


def seeded_split(entries: list, fraction: float, seed: int) -> tuple[list, list]:
    """(training, validation): ``round(fraction * n)`` entries drawn with ``seed``, order kept."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    n_val = int(round(len(entries) * fraction))
    val_idx = set(np.random.default_rng(seed).permutation(len(entries))[:n_val].tolist())
    return ([e for i, e in enumerate(entries) if i not in val_idx],
            [e for i, e in enumerate(entries) if i in val_idx])


def ensure_writable(out) -> str:
    """Fail early, naming ``out``, when the datalist cannot be written there."""
    out = os.fspath(out)
    base = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise DataError(out, "is a directory; --out needs a file name such as list.json")
    try:
        os.makedirs(base, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base, prefix=".write_test_"):
            pass
    except OSError as e:
        raise DataError(out, f"cannot write the datalist there ({e.strerror or e})") from None
    return out


def make_datalist(roots, out, *, min_side: int = 16, verify: bool = True, workers: int | None = None,
                  val_fraction: float = 0.0, seed: int = 0, absolute: bool = False,
                  task: str = "pretrain", modality: str | None = None, progress=None) -> Report:
    """Scan folders for NIfTI files, check each for ``task`` (whole files unless not ``verify``), write a Decathlon JSON."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files, ignored = scan_folders([os.fspath(r) for r in roots])
    ensure_writable(out)
    rep = run_checks({"training": [{"image": f} for f in files]}, task=task, verify=verify,
                     min_side=min_side, workers=workers, modality=modality, progress=progress,
                     report=Report(ignored=ignored))
    good = rep.splits.get("training", [])
    if not good:
        raise DataError(", ".join(map(os.fspath, roots)),
                        f"no usable NIfTI volume found ({rep.summary()})")
    train, val = seeded_split(good, val_fraction, seed)
    rep.splits = {"training": train, "validation": val}
    write_splits(out, rep.splits, absolute=absolute)
    return rep


def _load_doc(path):
    if not os.path.isfile(path):
        raise DataError(path, "datalist not found")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None


def check_datalist(path_or_paths, *, root=None, split: str | None = None, verify: bool = True,
                   min_side: int = 0, workers: int | None = None, task: str = "auto",
                   modality: str | None = None, in_channels: int | None = None,
                   num_classes: int | None = None, label_map=(), labels=None,
                   progress=None) -> Report:
    """Check every entry of a datalist for ``task`` ("auto": from its keys); ``Report.splits`` is the clean list.

    ``split`` None checks every split present (training, validation, test). ``verify``
    False reads headers only: the fast path for a pre-run check of a large list.
    """
    paths = datalist_paths(path_or_paths)
    docs = [_load_doc(p) for p in paths]
    wanted = [split] if split else [s for s in SPLITS
                                    if any(isinstance(d, dict) and d.get(s) for d in docs)]
    if not split and "training" not in wanted:
        wanted.insert(0, "training")  # every list needs one: read_datalist names what is missing
    by_split = {}
    for s in wanted:
        recs = []
        for p, d in zip(paths, docs):
            if split or s == "training" or d.get(s):
                recs += read_datalist(p, root=root, split=s)
        by_split[s] = recs
    first = docs[0] if isinstance(docs[0], dict) else {}
    if task == "auto":  # the task make_datalist --from wrote, else one read from the keys
        task = (first.get("task") if first.get("task") in checks.TASKS
                else infer_task(by_split.get("training") or next(iter(by_split.values()))))
    if labels is None:
        labels = declared_labels(first)
    rep = Report(extra={k: v for k, v in first.items() if k not in SPLITS})
    return run_checks(by_split, task=task, verify=verify, min_side=min_side, workers=workers,
                      modality=modality, labels=labels, in_channels=in_channels,
                      num_classes=num_classes, label_map=label_map, progress=progress, report=rep)


def check_headers(path_or_paths, *, root=None, split: str | None = "training", task: str = "auto",
                  min_side: int = 0, workers: int | None = None, **rules) -> Report:
    """Header-only check of every entry for ``task`` (the fast pre-run check: about 1 ms a file).

    Finds missing and unreadable files, wrong dimensions or channel counts for the task,
    volumes under ``min_side`` and image/label grids that differ; ``rules`` are
    ``check_datalist``'s (modality, in_channels, num_classes, label_map, labels).
    """
    return check_datalist(path_or_paths, root=root, split=split, verify=False, task=task,
                          min_side=min_side, workers=workers, **rules)


def write_clean(report: Report, out, *, absolute: bool = False) -> str:
    """Write the entries that passed a check as a datalist, with the original's other keys."""
    splits = {s: report.splits.get(s, []) for s in list(report.splits) + list(report.dropped)}
    return write_splits(out, splits, extra=report.extra, absolute=absolute)


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


def write_splits(out, splits: dict, *, extra: dict | None = None, absolute: bool = False) -> str:
    """Write ``{split: entries}`` as a Decathlon JSON (paths relative to its folder unless ``absolute``)."""
    base = os.path.dirname(os.path.abspath(out))

    def rel(v):
        if isinstance(v, list):
            return [rel(x) for x in v]
        return v if absolute or not isinstance(v, str) else os.path.relpath(v, base)

    doc = {s: [{k: (rel(v) if k in PATH_KEYS else v) for k, v in r.items()} for r in rs]
           for s, rs in splits.items()}
    doc.update({k: v for k, v in (extra or {}).items() if k not in doc})
    os.makedirs(base, exist_ok=True)
    tmp = os.fspath(out) + ".part"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, out)  # a list is never left half-written
    return os.fspath(out)


def write_datalist(records: list[dict], out, *, split: str = "training",
                   validation: list[dict] | None = None, extra: dict | None = None,
                   absolute: bool = False) -> str:
    """Write records as a Decathlon JSON (paths relative to its folder unless ``absolute``)."""
    splits = {split: records}
    if validation is not None:
        splits["validation"] = validation
    return write_splits(out, splits, extra=extra, absolute=absolute)
