"""Datalists and hostile input: listing, --check, read errors and training-time skipping, each naming the file."""
import gzip
import json
import logging
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from s2dc_jax import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from s2dc_jax.data import cli as make_datalist  # noqa: E402  (launch/make_datalist.py)


def _vol(shape=(40, 36, 24), seed=0):
    rng = np.random.default_rng(seed)
    x = np.full(shape, -1000, np.int16)
    x[4:-4, 4:-4, 2:-2] = rng.integers(-200, 300, size=(shape[0] - 8, shape[1] - 8, shape[2] - 4))
    return x


def _save(path, arr):
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return str(path)


# Each maker writes one hostile file and returns (path, what the report must say).
def _corrupt_gz(d):
    p = d / "corrupt.nii.gz"
    p.write_bytes(gzip.compress(b"\x00" * 20) [:10] + os.urandom(300))
    return str(p), "not a readable NIfTI"


def _truncated_gz(d):
    p = _save(d / "truncated.nii.gz", _vol(seed=1).astype(np.float32) + np.random.default_rng(1)
              .normal(size=(40, 36, 24)).astype(np.float32))
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[: len(raw) // 2])
    return p, "corrupt or truncated"


def _truncated_nii(d):
    p = _save(d / "truncated_plain.nii", _vol(seed=2))
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[: len(raw) // 2])
    return p, "truncated"


def _not_nifti(d):
    p = d / "notes.nii"
    p.write_text("patient notes, not an image\n" * 40)
    return str(p), "not a readable NIfTI"


def _two_d(d):
    return _save(d / "slice2d.nii.gz", np.ones((64, 64), np.int16)), "2D array"


def _five_d(d):
    return _save(d / "five_d.nii.gz", np.ones((20, 20, 20, 2, 2), np.int16)), "5D array"


def _nan(d):
    x = _vol(seed=3).astype(np.float32)
    x[10, 10, 10] = np.nan
    x[11, 10, 10] = np.inf
    return _save(d / "nan_voxels.nii.gz", x), "2 NaN/inf voxels"


def _constant(d):
    return _save(d / "constant.nii.gz", np.full((40, 36, 24), 40, np.int16)), "constant volume"


def _small(d):
    return _save(d / "tiny.nii.gz", _vol((40, 36, 8), seed=4)), "shortest side 8"


HOSTILE_FILES = [_corrupt_gz, _truncated_gz, _truncated_nii, _not_nifti, _two_d, _five_d, _nan,
                 _constant, _small]
HEADER_VISIBLE = {_corrupt_gz, _truncated_nii, _not_nifti, _two_d, _five_d, _small}


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "scans"
    (d / "site_b").mkdir(parents=True)
    good = [_save(d / "good_0.nii.gz", _vol(seed=10)), _save(d / "site_b" / "good_1.nii", _vol(seed=11))]
    (d / "readme.txt").write_text("ignored")
    bad = {}
    for make in HOSTILE_FILES:
        p, why = make(d)
        bad[make] = (p, why)
    return d, good, bad


def test_listing_headers_only_reports_each_bad_file_it_can_see(folder, tmp_path, capsys):
    d, good, bad = folder
    out = tmp_path / "lists" / "list.json"
    assert make_datalist.main(["--root", str(d), "--out", str(out), "--min-side", "16",
                               "--headers-only"]) == 0
    text = capsys.readouterr().out
    for make in HEADER_VISIBLE:
        p, why = bad[make]
        assert f"SKIP {p}: " in text and why in text.split(f"SKIP {p}: ")[1].splitlines()[0], make
    assert "1 non-NIfTI file(s) ignored" in text
    recs = data.read_datalist(out)
    listed = {r["image"] for r in recs}
    assert set(good) <= listed
    assert not listed & {bad[m][0] for m in HEADER_VISIBLE}
    # Paths are written relative to the JSON's folder and resolve back to the files.
    doc = json.load(open(out))
    assert all(not os.path.isabs(e["image"]) for e in doc["training"])


def test_listing_and_check_read_whole_files_and_report_every_hostile_file(folder, tmp_path, capsys):
    d, good, bad = folder
    out = tmp_path / "verified.json"
    assert make_datalist.main(["--root", str(d), "--out", str(out), "--workers", "2"]) == 0
    text = capsys.readouterr().out
    for make, (p, why) in bad.items():
        assert f"SKIP {p}: " in text, make
        assert why in text.split(f"SKIP {p}: ")[1].splitlines()[0], make
    assert sorted(r["image"] for r in data.read_datalist(out)) == sorted(good)
    # --check on a list that names every hostile file and a missing one.
    everything = [{"image": p} for p, _ in bad.values()] + [{"image": g} for g in good]
    everything.append({"image": str(d / "gone.nii.gz")})
    lst = data.write_datalist(everything, tmp_path / "all.json")
    assert make_datalist.main(["--check", lst, "--min-side", "16"]) == 1
    text = capsys.readouterr().out
    for make, (p, why) in bad.items():
        assert f"BAD {p}: " in text and why in text.split(f"BAD {p}: ")[1].splitlines()[0], make
    assert f"BAD {d / 'gone.nii.gz'}: file not found" in text
    assert f"2 of {len(everything)} OK, {len(everything) - 2} problem(s)" in text


def test_check_a_clean_list_and_label_shapes(tmp_path, capsys):
    img = _save(tmp_path / "a.nii.gz", _vol())
    lab = _save(tmp_path / "a_seg.nii.gz", np.zeros((40, 36, 24), np.uint8))
    badlab = _save(tmp_path / "b_seg.nii.gz", np.zeros((40, 36, 20), np.uint8))
    lst = data.write_datalist([{"image": img, "label": lab}], tmp_path / "ok.json")
    assert make_datalist.main(["--check", lst]) == 0
    assert "2 of 2 OK, 0 problem(s)" in capsys.readouterr().out
    lst = data.write_datalist([{"image": img, "label": badlab}], tmp_path / "mismatch.json")
    assert make_datalist.main(["--check", lst]) == 1
    assert f"BAD {badlab}: label shape (40, 36, 20) differs" in capsys.readouterr().out


@pytest.mark.parametrize("doc,why", [
    ({"training": []}, "'training' list is empty"),
    ({"validation": [{"image": "x.nii.gz"}]}, "has no 'training' list"),
    ([1, 2], "has no 'training' list"),
    ({"training": [{"label": "x.nii.gz"}]}, "has no 'image' key"),
])
def test_bad_datalist_json_names_the_file(tmp_path, capsys, doc, why):
    p = tmp_path / "broken_list.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(data.DataError, match=f"broken_list.json: .*{why}"):
        data.read_datalist(p)
    assert make_datalist.main(["--check", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and why in err
    with pytest.raises(data.DataError, match="broken_list.json"):
        cfg = data.default_data_config()
        cfg.datalist, cfg.roi_large, cfg.crop_size, cfg.workers = str(p), (32, 32, 16), 16, 0
        data.make_pretrain_dataset(cfg, batch_size=1, seed=0)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(data.DataError, match="nope.json: datalist not found"):
        data.read_datalist(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(data.DataError, match="bad.json: not valid JSON"):
        data.read_datalist(tmp_path / "bad.json")


def test_relative_paths_root_and_several_lists(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "l.json").write_text(json.dumps({"training": [{"image": "x.nii.gz",
                                                                      "label": "y.nii.gz",
                                                                      "class": 2}]}))
    (tmp_path / "b.json").write_text(json.dumps({"training": ["z.nii", "/abs/w.nii"]}))
    recs = data.read_datalist((tmp_path / "a" / "l.json", tmp_path / "b.json"))
    assert recs == [{"image": str(tmp_path / "a" / "x.nii.gz"), "label": str(tmp_path / "a" / "y.nii.gz"),
                     "class": 2},
                    {"image": str(tmp_path / "z.nii")}, {"image": "/abs/w.nii"}]
    recs = data.read_datalist(tmp_path / "b.json", root="/data")
    assert recs[0]["image"] == "/data/z.nii"


def test_cache_uncompressed_is_bit_identical(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    src = _save(d / "v.nii.gz", _vol())
    out = tmp_path / "l.json"
    assert make_datalist.main(["--root", str(d), "--out", str(out), "--cache-dir",
                               str(tmp_path / "cache")]) == 0
    (rec,) = data.read_datalist(out)
    assert rec["image"].endswith(".nii") and rec["image"].startswith(str(tmp_path / "cache"))
    np.testing.assert_array_equal(data.load_volume(rec["image"])[0], data.load_volume(src)[0])
    # The copy is memory-mapped: a pretraining step reads only its ROI from it.
    a, chain = data.open_raw(rec["image"]).data, []
    while a is not None:
        chain.append(type(a))
        a = getattr(a, "base", None)
    assert np.memmap in chain


@pytest.mark.parametrize("make", HOSTILE_FILES + ["missing", "channels"])
def test_training_skips_each_hostile_record_and_logs_its_path(tmp_path, caplog, make):
    goods = [_save(tmp_path / f"g{i}.nii.gz", _vol(seed=20 + i)) for i in range(3)]
    if make == "missing":
        p, why = str(tmp_path / "missing.nii.gz"), "file not found"
    elif make == "channels":
        p = _save(tmp_path / "two_channels.nii.gz", np.stack([_vol(), _vol(seed=1)], -1))
        why = "has 2 channels"
    else:
        p, why = make(tmp_path)
    lst = data.write_datalist([{"image": g} for g in goods] + [{"image": p}], tmp_path / "l.json")
    cfg = data.default_data_config()
    cfg.datalist, cfg.roi_large, cfg.crop_size, cfg.workers = lst, (32, 32, 16), 16, 0
    cfg.max_bad_fraction, cfg.bad_min_seen = 0.5, 1
    it = iter(data.make_pretrain_dataset(cfg, batch_size=4, seed=0))
    with caplog.at_level(logging.WARNING, logger="s2dc_jax.data"):
        b = next(it)
        it.close()  # stop its prefetch thread before reading the log
    assert b["image"].shape == (4, 32, 32, 16, 1) and np.isfinite(b["image"]).all()
    assert it.stats["data/records_bad"] == 1 and it.stats["data/records_seen"] == 5
    assert f"bad record {p} (" in caplog.text and why in caplog.text
    assert f"skipped bad record {p}" in caplog.text


def test_cli_help_and_missing_args(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch", "make_datalist.py"), "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--min-side" in r.stdout
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch", "make_datalist.py"),
                        "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nowhere: folder not found" in r.stderr
    assert "Traceback" not in r.stderr
    for args, needle in ((["--root", str(tmp_path)], "give --out LIST.json"), (["--rooot", "x"], "--rooot")):
        r = subprocess.run([sys.executable, os.path.join(REPO, "launch", "make_datalist.py"), *args],
                           capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
