"""Datasets as they are downloaded -> datalists: MSD task folders, nnU-Net v2 raw datasets,
BraTS case folders (2021 ``_t1`` and 2023 ``-t1n`` names) and MONAI's BTCV ``dataset_0.json``.

``read_layout`` pairs the files of each case (channels in the order the configs expect,
label, test images) and takes the dataset's own split where it has one;
``make_datalist_from`` then checks every case (``checks.check_case``), drops the bad
ones, makes a seeded validation split where the dataset has none, writes the datalist
and returns what ``describe`` prints.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re

from s2dc_jax.data import datalist as datalist_lib
from s2dc_jax.data.io import DataError

LAYOUTS = ("msd", "nnunet", "brats", "btcv")

# BraTS: the configs' channel names, and each edition's file suffixes for them.
BRATS_CHANNELS = ("t1", "t1ce", "t2", "flair")
BRATS_2023 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}
BRATS_2021 = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}
_BRATS_RE = {
    "2023": re.compile(r"^(?P<case>.+)-(?P<mod>t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$", re.I),
    "2021": re.compile(r"^(?P<case>.+)_(?P<mod>t1|t1ce|t2|flair|seg)\.nii(\.gz)?$", re.I),
}
BRATS_LABELS = {
    "2021": {0: "background", 1: "necrotic tumour core (NCR)", 2: "peritumoral edema (ED)",
             4: "enhancing tumour (ET)"},
    "2023": {0: "background", 1: "non-enhancing tumour core (NETC)",
             2: "surrounding FLAIR hyperintensity (SNFH)", 3: "enhancing tumour (ET)"},
}


@dataclasses.dataclass
class Dataset:
    """A downloaded dataset as datalist entries (absolute paths), before its files are checked."""

    layout: str
    root: str
    name: str
    training: list                     # entries {"image": path or [paths], "label"/"target": ...}
    validation: list | None = None     # the dataset's own split; None: a seeded one is made
    test: list = dataclasses.field(default_factory=list)
    channels: list = dataclasses.field(default_factory=list)   # names, in entry order
    labels: dict | None = None         # declared label value -> name
    in_channels: int | None = None     # channels an entry must add up to
    task: str = "segmentation"
    split_source: str | None = None    # where the own split came from
    notes: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)   # (path, reason) of cases not paired
    unpaired: int = 0                  # cases dropped while pairing files


def _isdir(root) -> str:
    root = os.path.abspath(os.fspath(root))
    if not os.path.exists(root):
        raise DataError(root, "folder not found")
    return root


def detect_layout(root) -> str | None:
    """The layout a folder looks like (for hints), or None."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        return "btcv" if root.endswith(".json") and os.path.isfile(root) else None
    ds = os.path.join(root, "dataset.json")
    if os.path.isfile(ds):
        try:
            with open(ds) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            doc = {}
        if isinstance(doc, dict) and "channel_names" in doc:
            return "nnunet"
        if isinstance(doc, dict) and "training" in doc:
            return "msd"
    if os.path.isfile(os.path.join(root, "dataset_0.json")):
        return "btcv"
    for depth, (d, dirs, names) in enumerate(os.walk(root)):
        if any(r.match(n) for n in names for r in _BRATS_RE.values()):
            return "brats"
        if depth > 50:
            break
    return None


def _hint(root, wanted) -> str:
    guess = detect_layout(root)
    return f" (it looks like {guess}: try --from {guess})" if guess and guess != wanted else ""


def _load_json(path, layout) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise DataError(path, f"expected a JSON object, got {type(doc).__name__} ({layout})")
    return doc


def _named(d, what, path) -> list:
    """Values of a {"0": name, "1": name} dict in key order."""
    if not isinstance(d, dict):
        return []
    try:
        return [d[k] for k in sorted(d, key=int)]
    except ValueError:
        raise DataError(path, f"{what} keys must be channel indices 0, 1, ...: {sorted(d)}") from None


def _int_labels(d, path) -> dict | None:
    if not isinstance(d, dict) or not d:
        return None
    try:
        return {int(k): str(v) for k, v in sorted(d.items(), key=lambda kv: int(kv[0]))}
    except (TypeError, ValueError):
        raise DataError(path, f"'labels' keys must be integers: {sorted(d)}") from None


def _listed_entry(e, base, src, ds: Dataset, i):
    """A dataset.json training entry with files resolved against ``base``; None if a file is missing."""
    if not isinstance(e, dict) or "image" not in e:
        raise DataError(src, f"training[{i}] has no 'image': {e!r}")
    out = {}
    for k in ("image", "label"):
        if k not in e:
            continue
        p = os.path.normpath(os.path.join(base, e[k]))
        if not os.path.exists(p):
            ds.problems.append((p, f"listed in {os.path.basename(src)} but not found"))
            ds.unpaired += 1
            return None
        out[k] = p
    return out


def read_msd(root) -> Dataset:
    """A Medical Segmentation Decathlon task folder (dataset.json, imagesTr/, labelsTr/, imagesTs/)."""
    root = _isdir(root)
    src = os.path.join(root, "dataset.json")
    if not os.path.isfile(src):
        raise DataError(root, "no dataset.json: not a Medical Segmentation Decathlon task folder"
                        + _hint(root, "msd"))
    doc = _load_json(src, "msd")
    if not isinstance(doc.get("training"), list):
        why = ("it has channel_names and file_ending: an nnU-Net v2 dataset, try --from nnunet"
               if "channel_names" in doc else f"found keys {sorted(doc)}")
        raise DataError(src, f"has no 'training' list, so it is not an MSD dataset.json ({why})")
    channels = _named(doc.get("modality"), "modality", src)
    ds = Dataset("msd", root, str(doc.get("name") or os.path.basename(root)), [],
                 channels=channels, labels=_int_labels(doc.get("labels"), src),
                 in_channels=len(channels) or None)
    for i, e in enumerate(doc["training"]):
        ent = _listed_entry(e, root, src, ds, i)
        if ent is not None:
            if "label" not in ent:
                ds.problems.append((ent["image"], "training entry has no 'label'"))
                ds.unpaired += 1
            else:
                ds.training.append(ent)
    for e in doc.get("test", []) or []:
        p = os.path.normpath(os.path.join(root, e if isinstance(e, str) else e.get("image", "")))
        if os.path.exists(p):
            ds.test.append({"image": p})
        else:
            ds.notes.append(f"test image {p} listed but not found")
    n = doc.get("numTraining")
    if isinstance(n, int) and n != len(doc["training"]):
        ds.notes.append(f"dataset.json says numTraining {n} but lists {len(doc['training'])}")
    if len(channels) > 1:
        ds.notes.append(f"{len(channels)} channels in one 4D file per case: fine-tuning reads them "
                        f"with model.in_channels={len(channels)}; pretraining needs one file per channel")
    return ds


def _case_of(name, ending):
    m = re.match(r"^(.+)_(\d{4})" + re.escape(ending) + "$", name)
    return (m.group(1), int(m.group(2))) if m else None


def _nnunet_cases(folder, ending, n_ch, channels, ds: Dataset, labels_dir=None) -> list:
    files, odd = collections.defaultdict(dict), 0
    for n in sorted(os.listdir(folder)):
        if n.startswith(".") or not n.endswith(ending):
            continue
        c = _case_of(n, ending)
        if c is None:
            odd += 1
            continue
        files[c[0]][c[1]] = os.path.join(folder, n)
    if odd:
        ds.notes.append(f"{odd} file(s) in {folder} not named <case>_XXXX{ending}: ignored")
    out = []
    for case, chans in sorted(files.items()):
        extra = sorted(set(chans) - set(range(n_ch)))
        missing = [i for i in range(n_ch) if i not in chans]
        if extra:
            ds.problems.append((chans[extra[0]], f"channel index {extra[0]:04d}, but dataset.json "
                                                 f"declares {n_ch} channel(s)"))
        if missing:
            ds.problems.append((os.path.join(folder, f"{case}_{missing[0]:04d}{ending}"),
                                f"missing channel {missing[0]:04d} ({channels[missing[0]]}) of "
                                f"case {case}"))
        ent = {"image": [chans[i] for i in range(n_ch) if i in chans]}
        if labels_dir is not None:
            lab = os.path.join(labels_dir, case + ending)
            if not os.path.exists(lab):
                ds.problems.append((lab, f"label of case {case} not found"))
                missing = missing or [None]
            ent["label"] = lab
        if extra or missing:
            ds.unpaired += 1
            continue
        if n_ch == 1:
            ent["image"] = ent["image"][0]
        ent["case"] = case
        out.append(ent)
    return out


def _pick_channels(wanted, names, src) -> list[int]:
    """Channel indices for names or indices given by the user, in the order given."""
    out = []
    for w in wanted:
        w = str(w).strip()
        if w.isdigit() and int(w) < len(names):
            out.append(int(w))
        elif w in names:
            out.append(names.index(w))
        else:
            raise ValueError(f"--channels {w!r}: {src} declares channels "
                             f"{', '.join(f'{i} ({n})' for i, n in enumerate(names))}")
    if len(set(out)) != len(out):
        raise ValueError(f"--channels names a channel twice: {list(wanted)}")
    return out


def read_nnunet(root, *, fold: int = 0, channels=None) -> Dataset:
    """An nnU-Net v2 raw dataset (dataset.json with channel_names, labels, file_ending; imagesTr/<case>_0000).

    ``channels`` (names or indices) keeps those channels in that order, e.g. the PET of a PET/CT set.
    """
    root = _isdir(root)
    src = os.path.join(root, "dataset.json")
    if not os.path.isfile(src):
        raise DataError(root, "no dataset.json: not an nnU-Net v2 raw dataset folder"
                        + _hint(root, "nnunet"))
    doc = _load_json(src, "nnunet")
    missing = [k for k in ("channel_names", "labels", "file_ending") if k not in doc]
    if missing:
        why = ("it has 'modality' and 'training': an MSD task, try --from msd"
               if "training" in doc else f"found keys {sorted(doc)}")
        raise DataError(src, f"has no {', '.join(map(repr, missing))}, so it is not an nnU-Net v2 "
                             f"dataset.json ({why})")
    ending = str(doc["file_ending"])
    if ending.lower() not in (".nii.gz", ".nii"):
        raise DataError(src, f"file_ending {ending!r}: only NIfTI (.nii.gz, .nii) is read here; "
                             "convert the images to NIfTI first")
    channels_arg = channels
    channels = [str(c) for c in _named(doc["channel_names"], "channel_names", src)]
    if not channels:
        raise DataError(src, "channel_names is empty")
    raw = doc["labels"]
    if not isinstance(raw, dict) or not raw:
        raise DataError(src, f"'labels' must map names to values, got {raw!r}")
    labels, regions = {}, False
    for name, v in raw.items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        regions |= isinstance(v, (list, tuple))
        for x in vals:
            try:
                labels.setdefault(int(x), str(name))
            except (TypeError, ValueError):
                raise DataError(src, f"label {name!r} has a non-integer value {x!r}") from None
    pick = _pick_channels(channels_arg, channels, src) if channels_arg else list(range(len(channels)))
    ds = Dataset("nnunet", root, os.path.basename(root), [], channels=[channels[i] for i in pick],
                 labels=dict(sorted(labels.items())), in_channels=len(pick))
    if regions:
        ds.notes.append("region-based labels (nnU-Net regions): the label maps hold the values "
                        f"{sorted(labels)}")
    if isinstance(doc.get("dataset"), dict):
        # nnU-Net v2's explicit file lists: {"case": {"images": [...], "label": "..."}}
        for case, e in sorted(doc["dataset"].items()):
            imgs = [os.path.normpath(os.path.join(root, p)) for p in e.get("images", [])]
            lab = os.path.normpath(os.path.join(root, e.get("label", "")))
            gone = [p for p in imgs + [lab] if not os.path.exists(p)]
            if gone or len(imgs) != len(channels):
                ds.problems.append((gone[0] if gone else root, "listed in dataset.json but not found"
                                    if gone else f"case {case} has {len(imgs)} images, "
                                    f"{len(channels)} channels declared"))
                ds.unpaired += 1
                continue
            ds.training.append({"image": imgs[0] if len(imgs) == 1 else imgs, "label": lab,
                                "case": case})
    else:
        tr = os.path.join(root, "imagesTr")
        if not os.path.isdir(tr):
            raise DataError(tr, "folder not found (an nnU-Net v2 raw dataset keeps its training "
                                "images there)")
        ds.training = _nnunet_cases(tr, ending, len(channels), channels, ds,
                                    labels_dir=os.path.join(root, "labelsTr"))
        ts = os.path.join(root, "imagesTs")
        if os.path.isdir(ts):
            ds.test = _nnunet_cases(ts, ending, len(channels), channels, ds)
    n = doc.get("numTraining")
    if isinstance(n, int) and n != len(ds.training) + ds.unpaired:
        ds.notes.append(f"dataset.json says numTraining {n}, found {len(ds.training) + ds.unpaired} cases")
    splits = os.path.join(root, "splits_final.json")
    if os.path.isfile(splits):
        folds = json.load(open(splits))
        if not isinstance(folds, list) or not 0 <= fold < len(folds):
            raise DataError(splits, f"has no fold {fold} (it holds {len(folds) if isinstance(folds, list) else 0})")
        val = set(folds[fold].get("val", []))
        ds.validation = [e for e in ds.training if e["case"] in val]
        ds.training = [e for e in ds.training if e["case"] not in val]
        ds.split_source = f"splits_final.json fold {fold}"
    for e in ds.training + (ds.validation or []) + ds.test:
        e.pop("case", None)
        if len(pick) != len(channels):  # keep the chosen channels, in the order asked
            imgs = e["image"] if isinstance(e["image"], list) else [e["image"]]
            e["image"] = imgs[pick[0]] if len(pick) == 1 else [imgs[i] for i in pick]
    return ds


def _brats_name(name, what):
    n = str(name).strip().lower()
    n = BRATS_2023.get(n, n)
    if n not in BRATS_CHANNELS:
        raise ValueError(f"--{what} {name!r}: BraTS channels are {', '.join(BRATS_CHANNELS)} "
                         f"(2023 files: {', '.join(k for k in BRATS_2023 if k != 'seg')})")
    return n


def read_brats(root, *, channels=BRATS_CHANNELS, target: str | None = None) -> Dataset:
    """BraTS case folders: ``<case>-t1n/-t1c/-t2w/-t2f/-seg`` (2023) or ``<case>_t1/_t1ce/_t2/_flair/_seg`` (2021).

    Channels come in the order given (the configs' t1, t1ce, t2, flair by default); with
    ``target`` the entries are for translation (``image`` -> ``target``), without labels.
    """
    root = _isdir(root)
    if not os.path.isdir(root):
        raise DataError(root, "is a file; --from brats needs the folder that holds the case folders")
    want = [_brats_name(c, "channels") for c in channels]
    if len(set(want)) != len(want) or not want:
        raise ValueError(f"--channels must name distinct BraTS channels, got {list(channels)}")
    tgt = _brats_name(target, "target") if target else None
    if tgt in want:
        raise ValueError(f"--target {target} is also an input channel")
    cases, editions = collections.defaultdict(dict), collections.Counter()
    for d, dirs, names in os.walk(root):
        dirs.sort()
        for n in sorted(names):
            if n.startswith("."):
                continue
            for ed, rx in _BRATS_RE.items():
                m = rx.match(n)
                if m:
                    canon = (BRATS_2023 if ed == "2023" else BRATS_2021)[m.group("mod").lower()]
                    cases[(d, m.group("case"), ed)][canon] = os.path.join(d, n)
                    editions[ed] += 1
                    break
    if not cases:
        raise DataError(root, "no BraTS files (<case>-t1n.nii.gz ... -seg.nii.gz, or 2021's "
                              "<case>_t1.nii.gz ... _seg.nii.gz) under this folder" + _hint(root, "brats"))
    if len(editions) > 1:
        raise DataError(root, f"mixes BraTS 2023 (-t1n ...: {editions['2023']} files) and 2021 "
                              f"(_t1 ...: {editions['2021']} files) names; list each edition "
                              "separately")
    ed = next(iter(editions))
    names = BRATS_2023 if ed == "2023" else BRATS_2021
    file_of = {v: k for k, v in names.items()}
    ds = Dataset("brats", root, f"BraTS {ed}", [], channels=want,
                 in_channels=len(want), task="translation" if tgt else "segmentation")
    labelled = sum("seg" in c for c in cases.values())
    if not tgt:
        if not labelled:
            raise DataError(root, f"no {'-seg' if ed == '2023' else '_seg'} label files among "
                                  f"{len(cases)} cases (a validation or test set?); segmentation "
                                  "needs labels; for translation give --target")
        ds.labels = dict(BRATS_LABELS[ed])
    sep = "-" if ed == "2023" else "_"
    for (d, case, _), files in sorted(cases.items()):
        need = want + ([tgt] if tgt else ["seg"])
        gone = [c for c in need if c not in files]
        if gone:
            path = os.path.join(d, f"{case}{sep}{file_of[gone[0]]}.nii.gz")
            ds.problems.append((path, f"case {case} has no {file_of[gone[0]]} file"))
            ds.unpaired += 1
            continue
        img = [files[c] for c in want]
        ent = {"image": img[0] if len(img) == 1 else img}
        ent.update({"target": files[tgt]} if tgt else {"label": files["seg"]})
        ds.training.append(ent)
    shown = ", ".join(f"{c} ({file_of[c]})" if file_of[c] != c else c for c in want)
    ds.notes.append(f"channels in this order: {shown}" + (
        "; the order configs/finetune/brats21.py expects" if want == list(BRATS_CHANNELS) else ""))
    if not tgt and ed == "2021":
        ds.notes.append("labels 0/1/2/4: configs/finetune/brats21.py maps 4 -> 3 (data.label_map), "
                        "so the classes are 0 background, 1 NCR, 2 ED, 3 ET")
    elif not tgt:
        ds.notes.append("labels 0/1/2/3 are already the classes of configs/finetune/brats21.py "
                        "(its data.label_map 4 -> 3 leaves them as they are)")
    return ds


def read_btcv(root) -> Dataset:
    """MONAI's BTCV list ``dataset_0.json`` (training and validation lists, paths relative to it)."""
    root = _isdir(root)
    src = root if os.path.isfile(root) else os.path.join(root, "dataset_0.json")
    if not os.path.isfile(src):
        raise DataError(root, "no dataset_0.json (MONAI's BTCV datalist from the SwinUNETR BTCV "
                              "tutorial) in this folder" + _hint(root, "btcv"))
    doc = _load_json(src, "btcv")
    for k in ("training", "validation"):
        if not isinstance(doc.get(k), list):
            raise DataError(src, f"has no {k!r} list, so it is not MONAI's BTCV dataset_0.json "
                                 f"(found keys {sorted(doc)})")
    base = os.path.dirname(src)
    channels = _named(doc.get("modality"), "modality", src)
    ds = Dataset("btcv", base, str(doc.get("name") or "btcv"), [], validation=[],
                 channels=channels, labels=_int_labels(doc.get("labels"), src),
                 in_channels=len(channels) or None, split_source=os.path.basename(src))
    for split in ("training", "validation"):
        for i, e in enumerate(doc[split]):
            ent = _listed_entry(e, base, src, ds, i)
            if ent is not None:
                (ds.training if split == "training" else ds.validation).append(ent)
    for e in doc.get("test", []) or []:
        p = os.path.normpath(os.path.join(base, e if isinstance(e, str) else e.get("image", "")))
        if os.path.exists(p):
            ds.test.append({"image": p})
    return ds


def read_layout(layout: str, root, *, channels=None, target=None, fold: int = 0) -> Dataset:
    """Read a downloaded dataset of ``layout`` (msd | nnunet | brats | btcv) into entries."""
    if layout not in LAYOUTS:
        raise ValueError(f"--from must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout not in ("brats", "nnunet") and channels:
        raise ValueError("--channels applies to --from brats and --from nnunet only")
    if layout != "brats" and target:
        raise ValueError("--target applies to --from brats only")
    if layout != "nnunet" and fold:
        raise ValueError("--fold applies to --from nnunet only (its splits_final.json)")
    if layout == "msd":
        return read_msd(root)
    if layout == "nnunet":
        return read_nnunet(root, fold=fold, channels=channels)
    if layout == "brats":
        return read_brats(root, channels=channels or BRATS_CHANNELS, target=target)
    return read_btcv(root)


def make_datalist_from(layout: str, root, out, *, val_fraction: float = 0.2, seed: int = 0,
                       verify: bool = True, workers: int | None = None, channels=None,
                       target=None, fold: int = 0, absolute: bool = False,
                       progress=None) -> tuple[Dataset, datalist_lib.Report]:
    """Read a downloaded dataset, check every case, drop the bad ones, split, write the datalist."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    ds = read_layout(layout, root, channels=channels, target=target, fold=fold)
    datalist_lib.ensure_writable(out)
    splits = {"training": ds.training}
    if ds.validation is not None:
        splits["validation"] = ds.validation
    if ds.test:
        splits["test"] = ds.test
    declared = sorted(ds.labels) if ds.labels else None
    rep = datalist_lib.Report(problems=list(ds.problems), cases=ds.unpaired)
    rep = datalist_lib.run_checks(splits, task=ds.task, verify=verify, workers=workers,
                                  labels=declared, in_channels=ds.in_channels,
                                  progress=progress, report=rep)
    train = rep.splits.get("training", [])
    if not train:
        raise DataError(root, f"no usable {layout} case ({rep.summary()})")
    if ds.validation is None:
        train, val = datalist_lib.seeded_split(train, val_fraction, seed)
    else:
        val = rep.splits.get("validation", [])
    rep.splits = {"training": train, "validation": val, "test": rep.splits.get("test", [])}
    extra = {"name": ds.name, "layout": layout, "task": ds.task, "channels": ds.channels}
    if ds.labels:
        extra["labels"] = {str(k): v for k, v in ds.labels.items()}
    extra["split"] = (ds.split_source if ds.validation is not None
                      else f"seeded: {val_fraction:g} of the usable cases, seed {seed}")
    rep.extra = extra
    datalist_lib.write_splits(out, rep.splits, extra=extra, absolute=absolute)
    return ds, rep


def _span(vals, fmt) -> str:
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


def ranges(rep: datalist_lib.Report) -> list[str]:
    """Spacing and shape ranges of the images that passed, per RAS axis."""
    ok = set(rep.ok)
    infos = [f.info for p, f in rep.facts.items() if f.role == "image" and p in ok]
    if not infos:
        return []
    sp = ", ".join(f"{a} {_span([i.spacing[k] for i in infos], '{:.3g}')}" for k, a in enumerate("xyz"))
    sh = ", ".join(f"{a} {_span([i.shape[k] for i in infos], '{}')}" for k, a in enumerate("xyz"))
    return [f"spacing (mm): {sp}", f"shape (RAS voxels): {sh}"]


def describe(ds: Dataset, rep: datalist_lib.Report, out) -> list[str]:
    """The summary ``make_datalist.py --from`` prints: cases, split, channels, labels, ranges, problems."""
    tr, va, te = (len(rep.splits.get(k, [])) for k in ("training", "validation", "test"))
    dropped = sum(len(v) for k, v in rep.dropped.items() if k != "test") + ds.unpaired
    lines = [f"{ds.layout} {ds.name} ({ds.root}): {tr + va + dropped} cases, "
             f"{tr + va} usable, {dropped} dropped; {te} test case(s)"]
    split = (f"{ds.split_source}" if ds.validation is not None else rep.extra.get("split", "seeded"))
    lines.append(f"  split ({split}): {tr} training, {va} validation")
    files = "one file each" if ds.layout in ("nnunet", "brats") else "in one file"
    if ds.channels:
        lines.append(f"  channels ({len(ds.channels)}, {files}): {', '.join(map(str, ds.channels))}")
    if ds.labels:
        dec = ", ".join(f"{k} {v}" for k, v in ds.labels.items())
        found = sorted({v for f in rep.facts.values() if f.role == "label" and f.values
                        for v in f.values})
        if rep.full:
            absent = sorted(set(ds.labels) - set(found))
            fs = ", ".join(map(str, found)) + (f" (declared but in no file: {absent})" if absent else "")
        else:
            fs = "not read (--headers-only)"
        lines.append(f"  labels declared: {dec}")
        lines.append(f"  labels found: {fs}")
    lines += [f"  {r}" for r in ranges(rep)]
    lines += [f"  note: {n}" for n in ds.notes]
    lines += [f"BAD {p}: {r}" for p, r in rep.problems]
    lines.append(rep.rate())
    lines.append(f"wrote {out}: {rep.summary()}")
    return lines


__all__ = ["BRATS_CHANNELS", "Dataset", "LAYOUTS", "describe", "detect_layout", "make_datalist_from",
           "ranges", "read_brats", "read_btcv", "read_layout", "read_msd", "read_nnunet"]
