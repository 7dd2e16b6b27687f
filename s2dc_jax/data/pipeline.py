"""The grain pretraining pipeline: datalist -> per-host shard -> shuffle -> repeat -> load + ROI + view params -> batch.

Every random choice of element ``i`` comes from ``np.random.default_rng([seed,
process_index, i, attempt])``, and batching happens on the index-addressable
``MapDataset`` before the workers split it, so batches are identical for any worker
count and an iterator restored from its state continues exactly where it stopped.

A record that cannot be used (unreadable, NaN, constant, ...) is replaced by the next
record of the shuffled order, logged with its path and counted; the iterator stops with
a clear error when more than ``max_bad_fraction`` of the records it has seen failed.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import grain
from absl import flags
import numpy as np
from ml_collections import config_dict

from s2dc_jax.data import datalist as datalist_lib
from s2dc_jax.data import io, presets
from s2dc_jax.data.io import DataError
from s2dc_jax.data.view_params import ViewRanges, sample_view_params

log = logging.getLogger("s2dc_jax.data")

_BAD = "_bad"          # i32[b] failed attempts behind each element
_BAD_POS = "_bad_pos"  # i32[b, max_retries] their positions in the host's record list, -1 padded


def default_data_config() -> config_dict.ConfigDict:
    """Data fields of the config (docs/config.md) with their defaults."""
    c = config_dict.ConfigDict()
    c.modality = "ct"                 # 'ct' | 'mri' | 'pet' (presets.PRESETS)
    # A JSON path or a tuple of them; object-typed so either form can be assigned.
    c.datalist = config_dict.FieldReference("", field_type=object)
    c.root = config_dict.placeholder(str)   # base of relative paths; default: each JSON's folder
    c.split = "training"              # the datalist's list to train on
    c.roi_large = (384, 384, 96)      # (x, y, z) of the large ROI fed to the device
    c.crop_size = 96                  # side of the cubic crops the ROI is cut into
    c.workers = 2                     # grain worker processes; 0 = load in the main process
    c.prefetch = 2                    # batches buffered per worker (or per thread with workers=0)
    c.read_threads = 1                # threads per process applying the transform
    c.min_side = 16                   # volumes with a shorter side are bad records
    c.max_bad_fraction = 0.05         # stop when more than this fraction of seen records fail
    c.bad_min_seen = 20               # ... judged once at least this many were seen
    c.max_retries = 8                 # consecutive bad records replaced for one slot
    c.cache_dir = config_dict.placeholder(str)  # decompress .nii.gz here once (see README)
    # Ranges of the random views (docs/method.md section 1, step 3); see data/view_params.py.
    c.views = config_dict.ConfigDict(dataclasses.asdict(ViewRanges()))
    return c


def view_ranges(cfg) -> ViewRanges:
    """``data.views`` as a ViewRanges, or a ValueError naming the field that cannot work."""
    v = cfg.views
    for name in ("full_scale", "crop_scale"):
        lo, hi = v[name]
        if not 0 < lo <= hi:
            raise ValueError(f"data.views.{name} must be (lo, hi) with 0 < lo <= hi, got {tuple(v[name])}")
    for name in ("full_rotate_deg", "full_translate", "crop_rotate_deg", "crop_translate", "shift"):
        if v[name] < 0:
            raise ValueError(f"data.views.{name} must be >= 0, got {v[name]}")
    if not 0.0 <= v.shift_prob <= 1.0:
        raise ValueError(f"data.views.shift_prob must be in [0, 1], got {v.shift_prob}")
    return ViewRanges(**{k: tuple(x) if isinstance(x, (list, tuple)) else x for k, x in v.items()})


def num_crops(roi, crop_size: int) -> int:
    """Crops per large ROI: (X // crop) * (Y // crop), crop k = i * (Y // crop) + j."""
    return (int(roi[0]) // int(crop_size)) * (int(roi[1]) // int(crop_size))


def _check_config(cfg, batch_size):
    presets.get_preset(cfg.modality)
    roi = tuple(cfg.roi_large)
    if len(roi) != 3 or any(int(r) <= 0 for r in roi):
        raise ValueError(f"data.roi_large must be 3 positive ints (x, y, z), got {roi}")
    c = int(cfg.crop_size)
    if c <= 0 or roi[0] % c or roi[1] % c or roi[2] < c:
        raise ValueError(f"data.crop_size={c} must divide data.roi_large x and y {roi[:2]} "
                         f"and be <= its z ({roi[2]})")
    if num_crops(roi, c) < 2:
        raise ValueError(f"data.roi_large {roi} with data.crop_size {c} gives fewer than 2 crops")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(cfg.workers) < 0:
        raise ValueError(f"data.workers must be >= 0, got {cfg.workers}")
    if not 0.0 <= float(cfg.max_bad_fraction) <= 1.0:
        raise ValueError(f"data.max_bad_fraction must be in [0, 1], got {cfg.max_bad_fraction}")
    if not cfg.datalist:
        raise ValueError("data.datalist is not set: give a datalist JSON "
                         "(python launch/make_datalist.py --root DIR --out list.json)")


class PretrainTransform:
    """Element ``index`` -> one volume's large ROI and view parameters (picklable for workers)."""

    def __init__(self, records, order, *, modality, roi, crop_size, seed, process_index,
                 min_side, max_retries, ranges: ViewRanges = ViewRanges()):
        self.records = [r["image"] for r in records]
        self.order = order
        self.modality, self.roi = modality, tuple(int(r) for r in roi)
        self.n = num_crops(roi, crop_size)
        self.seed, self.process_index = int(seed), int(process_index)
        self.min_side, self.max_retries = int(min_side), int(max_retries)
        self.ranges = ranges

    def load(self, path, rng) -> np.ndarray:
        """f32[X, Y, Z] large ROI of one file, which must pass ``check_volume`` for pretraining."""
        # The rules of listing and --check (header part, so a step still reads only its ROI of
        # a memory-mapped file): what they reject is rejected here in the same words. The voxel
        # rules (NaN, constant, no foreground) are met by pretrain_volume while it crops.
        datalist_lib.check_volume(path, task="pretrain", min_side=self.min_side, full=False)
        raw = io.open_raw(path)
        return presets.pretrain_volume(raw.data, rng, modality=self.modality, roi=self.roi,
                                       slope=raw.slope, inter=raw.inter, path=path,
                                       min_side=self.min_side)

    def __call__(self, index: int, pos: int) -> dict:
        failed, last = [], None
        for attempt in range(self.max_retries + 1):
            p = int(pos) if attempt == 0 else int(self.order[index + attempt])
            path = self.records[p]
            rng = np.random.default_rng([self.seed, self.process_index, int(index), attempt])
            try:
                image = self.load(path, rng)
            except Exception as e:  # noqa: BLE001  one bad file must not end a long run
                last = e if isinstance(e, DataError) else DataError(path, f"{type(e).__name__}: {e}")
                log.warning("bad record %s (%s); using the next record instead", path, last.reason)
                failed.append(p)
                continue
            out = {"image": image[..., None]}
            out.update(sample_view_params(rng, self.n, self.ranges))
            out[_BAD] = np.int32(len(failed))
            out[_BAD_POS] = np.array(failed + [-1] * (self.max_retries - len(failed)), np.int32)
            return out
        raise DataError(last.path, f"{self.max_retries + 1} records in a row failed; "
                                   f"the last: {last.reason}")


class BadRecordError(RuntimeError):
    """Too many records of the datalist failed to load."""


class _GuardIterator(grain.DatasetIterator):
    """Strips the bookkeeping keys, counts each bad file once, stops in one line past the allowed fraction.

    ``records_bad`` counts distinct files (a bad file drawn again in a later epoch is not a
    new failure); the fraction is over the distinct records seen, at most the host's list.
    Each bad file's reason comes from ``check_volume``, the rules of ``--check``.
    """

    def __init__(self, parent, paths, max_bad_fraction, min_seen, batch_size, *, min_side=0,
                 modality=None, datalist=None):
        super().__init__(parent)
        self._paths, self._max, self._min_seen = paths, float(max_bad_fraction), int(min_seen)
        self._min_side, self._modality, self._datalist = int(min_side), modality, datalist
        self.seen = 0       # records drawn, retries included
        self.failed = {}    # path -> reason, in the order found

    @property
    def bad(self) -> int:
        """Distinct files that failed to load."""
        return len(self.failed)

    @property
    def stats(self) -> dict:
        """Counts for logging: records tried, distinct files that failed, their fraction."""
        return {"data/records_seen": self.seen, "data/records_bad": self.bad,
                "data/bad_fraction": self.bad / max(min(self.seen, len(self._paths)), 1)}

    def _reason(self, path) -> str:
        try:
            datalist_lib.check_volume(path, task="pretrain", min_side=self._min_side, full=True,
                                      modality=self._modality)
        except DataError as e:
            return " ".join(e.reason.split())  # one line, whatever the exception said
        except Exception as e:  # noqa: BLE001  naming the reason must not hide the stop
            return f"{type(e).__name__}: {' '.join(str(e).split())}"
        return (f"the reader failed on it, but it passes check_volume(min_side={self._min_side}) "
                "now: a passing I/O error, or a rule of the crop (see the warning with its path)")

    def _stop_line(self) -> str:
        n = max(min(self.seen, len(self._paths)), 1)
        named = [f"{p} ({r})" for p, r in list(self.failed.items())[:3]]
        more = f" and {self.bad - 3} more" if self.bad > 3 else ""
        lists = self._datalist
        lists = " ".join(lists) if isinstance(lists, (list, tuple)) else (lists or "LIST.json")
        opts = f" --min-side {self._min_side}" if self._min_side else ""
        opts += f" --modality {self._modality}" if self._modality else ""
        return (f"pretraining stopped: {self.bad} of {n} records failed to load, more than "
                f"data.max_bad_fraction={self._max}: {'; '.join(named)}{more}. Run `python "
                f"launch/make_datalist.py --check {lists}{opts} --out clean.json` to name every "
                "bad file and write the list without them.")

    def __next__(self):
        batch = dict(next(self._parent))
        bad = int(np.sum(batch.pop(_BAD)))
        pos = batch.pop(_BAD_POS)
        self.seen += int(pos.shape[0]) + bad
        if bad:
            for p in pos[pos >= 0].tolist():
                path = self._paths[p]
                if path in self.failed:
                    continue  # counted and logged when it first failed
                self.failed[path] = self._reason(path)
                log.warning("skipped bad record %s: %s (%d distinct bad file(s), %d records seen)",
                            path, self.failed[path], self.bad, self.seen)
            n = min(self.seen, len(self._paths))
            if self.seen >= self._min_seen and self.bad > self._max * n:
                line = self._stop_line()
                log.error("%s", line)
                raise BadRecordError(line)
        return batch

    def get_state(self):
        return {"parent": self._parent.get_state(), "seen": self.seen,
                "bad_files": [[p, r] for p, r in self.failed.items()]}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self.seen = int(state["seen"])
        # States written before distinct counting carry only a count: start the list afresh.
        self.failed = {p: r for p, r in state.get("bad_files", [])}


class PretrainDataset(grain.IterDataset):
    """IterDataset whose iterators expose ``stats`` (records seen / bad) for the trainer's logs."""

    def __init__(self, parent, paths, cfg, batch_size):
        super().__init__(parent)
        self._paths, self._cfg, self._batch_size = paths, cfg, batch_size

    @property
    def paths(self) -> list[str]:
        """Image paths of this host's shard, in datalist order."""
        return list(self._paths)

    def __iter__(self):
        return _GuardIterator(self._parent.__iter__(), self._paths,
                              self._cfg.max_bad_fraction, self._cfg.bad_min_seen, self._batch_size,
                              min_side=self._cfg.min_side, modality=self._cfg.modality,
                              datalist=self._cfg.datalist)

    def __str__(self):
        return "PretrainDataset"


def make_pretrain_dataset(cfg, *, batch_size: int, seed: int, process_index: int = 0,
                          process_count: int = 1) -> PretrainDataset:
    """Per-host batches ``{"image": f32[b, X, Y, Z, 1], view params...}`` as a grain IterDataset."""
    _check_config(cfg, batch_size)
    records = datalist_lib.read_datalist(cfg.datalist, root=cfg.root, split=cfg.split)
    if cfg.cache_dir:
        records = datalist_lib.cache_uncompressed(records, cfg.cache_dir)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    host = records[process_index::process_count]
    if not host:
        raise ValueError(f"process {process_index} of {process_count} has no records: the "
                         f"datalist {cfg.datalist} has only {len(records)}")
    order = grain.MapDataset.range(len(host)).shuffle(seed=int(seed) % 2**32).repeat()
    tf = PretrainTransform(host, order, modality=cfg.modality, roi=cfg.roi_large,
                           crop_size=cfg.crop_size, seed=seed, process_index=process_index,
                           min_side=cfg.min_side, max_retries=cfg.max_retries, ranges=view_ranges(cfg))
    ds = order.map_with_index(tf).batch(int(batch_size), drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(cfg.read_threads),
                                              prefetch_buffer_size=int(cfg.prefetch)))
    if int(cfg.workers) > 0:
        if not flags.FLAGS.is_parsed():
            # grain's workers read absl flags; callers outside absl.app (tests, notebooks)
            # have not parsed them, and grain then fails inside the first batch.
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=int(cfg.workers), per_worker_buffer_size=int(cfg.prefetch)))
    return PretrainDataset(it, [os.fspath(p) for p in tf.records], cfg, batch_size)


def iterator_stats(iterator) -> dict:
    """``{"data/records_seen", "data/records_bad", "data/bad_fraction"}`` of a pretraining iterator."""
    return dict(iterator.stats)
