"""The grain pretraining pipeline: contract shapes, determinism over runs and worker counts,
iterator state save/restore (Orbax + grain), per-host sharding, bad-record handling."""
import logging
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from s2dc_jax import data
from s2dc_jax.data.view_params import sample_view_params

ROI, CROP = (32, 32, 16), 16


@pytest.fixture(scope="module")
def phantom_list(tmp_path_factory):
    d = tmp_path_factory.mktemp("ph")
    return data.write_phantom_dataset(d, num=6, modality="ct", shape=(40, 36, 24), seed=0,
                                      labels=False, targets=False, orientations=("RAS", "LPS"))


def _cfg(datalist, workers=0, **kw):
    c = data.default_data_config()
    c.datalist, c.roi_large, c.crop_size, c.workers = datalist, ROI, CROP, workers
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _take(ds, n):
    it = iter(ds)
    try:
        return [next(it) for _ in range(n)], dict(it.stats)
    finally:
        it.close()


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_contract(phantom_list):
    (b,), stats = _take(data.make_pretrain_dataset(_cfg(phantom_list), batch_size=3, seed=0), 1)
    n = data.num_crops(ROI, CROP)
    assert n == 4
    want = {"image": ((3, *ROI, 1), np.float32), "full_affine": ((3, 4), np.float32),
            "full_shift": ((3,), np.float32), "crop_affine": ((3, n, 4), np.float32),
            "crop_shift": ((3, n), np.float32), "global_index": ((3,), np.int32)}
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == want
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0 and b["image"].std() > 0.05
    assert stats == {"data/records_seen": 3, "data/records_bad": 0, "data/bad_fraction": 0.0}


def test_view_params_come_from_the_per_record_rng(phantom_list):
    # Element i's rng is default_rng([seed, process, i, attempt]); the ROI crop draws first,
    # then sample_view_params. Re-deriving it checks the documented seeding end to end.
    cfg = _cfg(phantom_list)
    (b,), _ = _take(data.make_pretrain_dataset(cfg, batch_size=2, seed=5), 1)
    recs = data.read_datalist(phantom_list)
    import grain as g
    order = g.MapDataset.range(len(recs)).shuffle(seed=5).repeat()
    for i in range(2):
        rng = np.random.default_rng([5, 0, i, 0])
        raw = data.open_raw(recs[order[i]]["image"])
        img = data.pretrain_volume(raw.data, rng, modality="ct", roi=ROI, slope=raw.slope,
                                   inter=raw.inter)
        vp = sample_view_params(rng, 4)
        np.testing.assert_array_equal(b["image"][i, ..., 0], img)
        for k, v in vp.items():
            np.testing.assert_array_equal(b[k][i], v, err_msg=k)


def test_same_seed_same_batches_across_runs_and_worker_counts(phantom_list):
    runs = {w: _take(data.make_pretrain_dataset(_cfg(phantom_list, workers=w), batch_size=2,
                                                seed=3), 4)[0] for w in (0, 1, 2)}
    again = _take(data.make_pretrain_dataset(_cfg(phantom_list), batch_size=2, seed=3), 4)[0]
    for w in (1, 2):
        for a, b in zip(runs[0], runs[w]):
            _equal(a, b)
    for a, b in zip(runs[0], again):
        _equal(a, b)
    other = _take(data.make_pretrain_dataset(_cfg(phantom_list), batch_size=2, seed=4), 1)[0][0]
    assert not np.array_equal(other["image"], runs[0][0]["image"])
    # 4 batches of 2 span more than one epoch of 6 records: the next epoch reshuffles.
    assert not np.array_equal(runs[0][3]["full_affine"], runs[0][0]["full_affine"])


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_state_restores_exactly_the_next_batch(phantom_list, tmp_path, workers):
    cfg = _cfg(phantom_list, workers=workers)
    ds = data.make_pretrain_dataset(cfg, batch_size=2, seed=1)
    it = iter(ds)
    for _ in range(2):
        next(it)
    mgr = ocp.CheckpointManager(tmp_path / "ckpt")
    mgr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    expected = next(it)
    seen = it.stats
    it.close()
    fresh = iter(data.make_pretrain_dataset(cfg, batch_size=2, seed=1))
    mgr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    try:
        _equal(next(fresh), expected)
        assert fresh.stats == seen
    finally:
        fresh.close()
        mgr.close()


def test_hosts_get_disjoint_shards(phantom_list):
    paths = [set(data.make_pretrain_dataset(_cfg(phantom_list), batch_size=1, seed=0,
                                            process_index=i, process_count=2).paths)
             for i in range(2)]
    assert not paths[0] & paths[1]
    assert paths[0] | paths[1] == {r["image"] for r in data.read_datalist(phantom_list)}
    with pytest.raises(ValueError, match="process 6 of 7 has no records"):
        data.make_pretrain_dataset(_cfg(phantom_list), batch_size=1, seed=0, process_index=6,
                                   process_count=7)


def _with_bad(tmp_path, good_list, n_bad):
    recs = data.read_datalist(good_list)
    bad = []
    for i in range(n_bad):
        p = tmp_path / f"broken_{i}.nii.gz"
        p.write_bytes(b"this is not a nifti file" * 10)
        bad.append({"image": str(p)})
    out = tmp_path / f"mixed_{n_bad}.json"
    return data.write_datalist(recs + bad, out), [b["image"] for b in bad]


def test_bad_records_are_skipped_counted_and_logged(phantom_list, tmp_path, caplog):
    lst, bad = _with_bad(tmp_path, phantom_list, 1)
    cfg = _cfg(lst, max_bad_fraction=0.5, bad_min_seen=1)
    with caplog.at_level(logging.WARNING, logger="s2dc_jax.data"):
        batches, stats = _take(data.make_pretrain_dataset(cfg, batch_size=2, seed=0), 7)
    # 14 elements over 7 records: the bad file is drawn in both epochs, and counted once.
    assert stats["data/records_bad"] == 1
    assert stats["data/records_seen"] >= 14 + 2
    assert caplog.text.count(f"bad record {bad[0]} (") >= 2  # each failed read is logged ...
    assert caplog.text.count(f"skipped bad record {bad[0]}: not a readable NIfTI") == 1  # ... counted once
    for b in batches:  # substitutes keep the batch whole
        assert b["image"].shape == (2, *ROI, 1) and np.isfinite(b["image"]).all()


def test_too_many_bad_records_stop_with_a_clear_error(phantom_list, tmp_path):
    lst, _ = _with_bad(tmp_path, phantom_list, 6)
    cfg = _cfg(lst, max_bad_fraction=0.1, bad_min_seen=4)
    with pytest.raises(data.BadRecordError, match=r"records failed to load, more than "
                                                  r"data.max_bad_fraction=0.1.*broken_"):
        _take(data.make_pretrain_dataset(cfg, batch_size=2, seed=0), 10)


def test_all_bad_names_a_file(tmp_path):
    p = tmp_path / "only.nii.gz"
    p.write_bytes(b"\x1f\x8b garbage")
    lst = data.write_datalist([{"image": str(p)}], tmp_path / "l.json")
    with pytest.raises(data.DataError, match="only.nii.gz"):
        _take(data.make_pretrain_dataset(_cfg(lst, max_retries=2), batch_size=1, seed=0), 1)


def test_config_errors_name_the_field(phantom_list):
    bad = [({"modality": "xray"}, "data.modality must be one of"),
           ({"roi_large": (30, 32, 16)}, "data.crop_size=16 must divide data.roi_large"),
           ({"roi_large": (16, 16, 16)}, "fewer than 2 crops"),
           ({"max_bad_fraction": 2.0}, "data.max_bad_fraction"),
           ({"workers": -1}, "data.workers")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            data.make_pretrain_dataset(_cfg(phantom_list, **kw), batch_size=1, seed=0)
    with pytest.raises(ValueError, match="data.datalist is not set"):
        data.make_pretrain_dataset(_cfg(""), batch_size=1, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        data.make_pretrain_dataset(_cfg(phantom_list), batch_size=0, seed=0)


def test_cache_dir_reads_uncompressed_copies(phantom_list, tmp_path):
    a = _take(data.make_pretrain_dataset(_cfg(phantom_list), batch_size=2, seed=2), 1)[0][0]
    ds = data.make_pretrain_dataset(_cfg(phantom_list, cache_dir=str(tmp_path / "c")),
                                    batch_size=2, seed=2)
    assert all(p.endswith(".nii") and os.path.dirname(p) == str(tmp_path / "c") for p in ds.paths)
    _equal(_take(ds, 1)[0][0], a)


def test_mri_and_pet_pipelines(tmp_path):
    for m in ("mri", "pet"):
        lst = data.write_phantom_dataset(tmp_path / m, num=2, modality=m, shape=(24, 24, 16),
                                         seed=1, labels=False, targets=False)
        (b,), _ = _take(data.make_pretrain_dataset(_cfg(lst, modality=m), batch_size=2, seed=0), 1)
        img = b["image"]
        assert img.shape == (2, *ROI, 1) and np.isfinite(img).all()
        # z-scored: roughly centred, unit-scale values (PET: zero padding pulls the mean).
        assert abs(float(img.mean())) < 1.0 and 0.3 < float(img.std()) < 3.0
