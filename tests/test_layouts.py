"""Datasets as users download them (MSD, nnU-Net v2, BraTS 2021/2023, MONAI BTCV) -> datalists in one
command; whole-file integrity checks; one rule function for listing, --check and the pretraining reader."""
import gzip
import importlib.util
import json
import logging
import os
import subprocess
import sys
import zlib

import nibabel as nib
import numpy as np
import pytest

from s2dc_jax import data
from s2dc_jax.data import checks, datalist, layouts
from s2dc_jax.data.pipeline import PretrainTransform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from s2dc_jax.data import cli as make_datalist  # noqa: E402  (launch/make_datalist.py)

SHAPE = (24, 20, 16)


def _save(path, arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    nib.save(nib.Nifti1Image(arr, aff), str(path))
    return str(path)


def _img(seed, shape=SHAPE, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(offset, 10.0, size=shape)).astype(np.float32)


def _lab(values, shape=SHAPE, seed=0):
    x = np.zeros(shape, np.uint8)
    for k, v in enumerate(v for v in values if v):
        x[2 + 3 * k: 5 + 3 * k, 4:10, 3:9] = v
    return x


def _run(capsys, *argv):
    rc = make_datalist.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _bad_line(text, path):
    """The reason printed for ``path`` (BAD/SKIP lines)."""
    for line in text.splitlines():
        for tag in ("BAD ", "SKIP "):
            if line.startswith(f"{tag}{path}: "):
                return line[len(f"{tag}{path}: "):]
    raise AssertionError(f"{path} not named in:\n{text}")


def _config(name, arg="tiny"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", "finetune",
                                                                     f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


# ---------------------------------------------------------------- the four layouts
def _msd(root, n=6):
    """Task09_Spleen-like folder: 6 cases, one label on another grid, one with an undeclared value."""
    root.mkdir()
    train = []
    for i in range(n):
        img = _save(root / "imagesTr" / f"spleen_{i}.nii.gz", _img(i), spacing=(0.8, 0.8, 2.5 + i))
        shape = (24, 20, 12) if i == 1 else SHAPE
        lab = _save(root / "labelsTr" / f"spleen_{i}.nii.gz", _lab([0, 3] if i == 2 else [0, 1], shape),
                    spacing=(0.8, 0.8, 2.5 + i))
        train.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
        # tar on macOS leaves these AppleDouble files beside the real ones in the MSD archives.
        (root / "imagesTr" / f"._spleen_{i}.nii.gz").write_bytes(b"\x00\x05\x16\x07 junk")
        assert img and lab
    _save(root / "imagesTs" / "spleen_99.nii.gz", _img(99), spacing=(0.8, 0.8, 2.5))
    (root / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
        "numTraining": n, "numTest": 1, "training": train, "test": ["./imagesTs/spleen_99.nii.gz"]}))
    return root


def test_msd_folder_becomes_a_datalist(tmp_path, capsys):
    root = _msd(tmp_path / "Task09_Spleen")
    out = tmp_path / "lists" / "spleen.json"
    rc, text, err = _run(capsys, "--from", "msd", root, "--out", out, "--val-fraction", "0.25")
    assert rc == 0, err
    assert f"msd Spleen ({root}): 6 cases, 4 usable, 2 dropped; 1 test case(s)" in text
    assert "split (seeded: 0.25 of the usable cases, seed 0): 3 training, 1 validation" in text
    assert "channels (1, in one file): CT" in text
    assert "labels declared: 0 background, 1 spleen" in text and "labels found: 0, 1" in text
    assert "spacing (mm): x 0.8, y 0.8, z 2.5-7.5" in text and "shape (RAS voxels): x 24, y 20, z 16" in text
    lab1, lab2 = root / "labelsTr" / "spleen_1.nii.gz", root / "labelsTr" / "spleen_2.nii.gz"
    assert _bad_line(text, lab1).startswith("label shape (24, 20, 12) differs from image ")
    assert _bad_line(text, lab2) == "label values [3] are not among the declared [0, 1]"
    assert "._spleen" not in text
    doc = json.load(open(out))
    assert len(doc["training"]) == 3 and len(doc["validation"]) == 1 and len(doc["test"]) == 1
    assert doc["labels"] == {"0": "background", "1": "spleen"} and doc["layout"] == "msd"
    recs = data.read_datalist(out) + data.read_datalist(out, split="validation")
    assert {r["image"] for r in recs} == {str(root / "imagesTr" / f"spleen_{i}.nii.gz") for i in (0, 3, 4, 5)}
    assert all(r["label"] == r["image"].replace("imagesTr", "labelsTr") for r in recs)
    # The same seed gives the same split; the list checks clean for segmentation.
    rc2, _, _ = _run(capsys, "--from", "msd", root, "--out", tmp_path / "again.json", "--val-fraction", "0.25")
    assert rc2 == 0
    assert data.read_datalist(tmp_path / "again.json", split="validation") == \
        data.read_datalist(out, split="validation")
    rc, text, _ = _run(capsys, "--check", out)
    assert rc == 0 and "entries usable for segmentation" in text


def _nnunet(root, splits=False):
    """Dataset042_Prostate-like: 2 channels (T2, ADC), case 3 lacks ADC, case 4's label is shifted."""
    root.mkdir()
    for i in range(6):
        case = f"prostate_{i:03d}"
        _save(root / "imagesTr" / f"{case}_0000.nii.gz", _img(i, offset=100.0))
        if i != 3:
            _save(root / "imagesTr" / f"{case}_0001.nii.gz", _img(i + 50, offset=-100.0))
        _save(root / "labelsTr" / f"{case}.nii.gz", _lab([0, 1, 2]), origin=(5.0, 0, 0) if i == 4 else (0, 0, 0))
    for i in (10, 11):
        _save(root / "imagesTs" / f"prostate_{i:03d}_0000.nii.gz", _img(i))
        _save(root / "imagesTs" / f"prostate_{i:03d}_0001.nii.gz", _img(i + 1))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "PZ": 1, "TZ": 2},
        "numTraining": 6, "file_ending": ".nii.gz"}))
    if splits:
        (root / "splits_final.json").write_text(json.dumps([
            {"train": ["prostate_000", "prostate_002", "prostate_005"], "val": ["prostate_001"]},
            {"train": ["prostate_001"], "val": ["prostate_000", "prostate_002", "prostate_005"]}]))
    return root


@pytest.mark.parametrize("splits", [False, True])
def test_nnunet_dataset_becomes_a_datalist(tmp_path, capsys, splits):
    root = _nnunet(tmp_path / "Dataset042_Prostate", splits)
    out = tmp_path / "prostate.json"
    rc, text, err = _run(capsys, "--from", "nnunet", root, "--out", out)
    assert rc == 0, err
    assert "channels (2, one file each): T2, ADC" in text
    assert "labels declared: 0 background, 1 PZ, 2 TZ" in text and "labels found: 0, 1, 2" in text
    assert _bad_line(text, root / "imagesTr" / "prostate_003_0001.nii.gz") == \
        "missing channel 0001 (ADC) of case prostate_003"
    assert _bad_line(text, root / "labelsTr" / "prostate_004.nii.gz").startswith(
        "label affine differs from image ")
    doc = json.load(open(out))
    cases = lambda split: [os.path.basename(e["label"])[:-7] for e in doc[split]]  # noqa: E731
    if splits:
        assert "split (splits_final.json fold 0): 3 training, 1 validation" in text
        assert cases("training") == ["prostate_000", "prostate_002", "prostate_005"]
        assert cases("validation") == ["prostate_001"]
    else:
        assert sorted(cases("training") + cases("validation")) == \
            ["prostate_000", "prostate_001", "prostate_002", "prostate_005"]
    # Channels in channel_names order, one file each; the test cases have no label.
    for e in data.read_datalist(out):
        assert [os.path.basename(p)[-11:] for p in e["image"]] == ["_0000.nii.gz"[1:], "_0001.nii.gz"[1:]]
    assert [len(e["image"]) for e in doc["test"]] == [2, 2] and "label" not in doc["test"][0]
    # One channel of a multi-channel set (AutoPET's PET): named or by index, one file per entry.
    for pick in ("ADC", "1"):
        rc, text, _ = _run(capsys, "--from", "nnunet", root, "--out", tmp_path / "adc.json", "--channels", pick)
        assert rc == 0 and "channels (1, one file each): ADC" in text
        assert all(e["image"].endswith("_0001.nii.gz") for e in data.read_datalist(tmp_path / "adc.json"))
    rc, _, err = _run(capsys, "--from", "nnunet", root, "--out", tmp_path / "x.json", "--channels", "DWI")
    assert rc == 2 and "--channels 'DWI': " in err and "declares channels 0 (T2), 1 (ADC)" in err


def _brats(root, edition, n=4):
    """BraTS case folders: channel c holds values around 100 * (c + 1); case 2 lacks its FLAIR file."""
    names = (["t1n", "t1c", "t2w", "t2f"] if edition == "2023" else ["t1", "t1ce", "t2", "flair"])
    sep = "-" if edition == "2023" else "_"
    et = 3 if edition == "2023" else 4
    for i in range(n):
        case = f"BraTS-GLI-{i:05d}-000" if edition == "2023" else f"BraTS2021_{i:05d}"
        d = root / case
        for c, name in enumerate(names):
            if i == 2 and c == 3:
                continue
            _save(d / f"{case}{sep}{name}.nii.gz", np.abs(_img(10 * i + c, offset=100.0 * (c + 1))))
        _save(d / f"{case}{sep}seg.nii.gz", _lab([0, 1, 2, et]))
    return root, et


@pytest.mark.parametrize("edition", ["2021", "2023"])
def test_brats_folders_become_a_datalist_in_the_configs_channel_order(tmp_path, capsys, edition):
    root, et = _brats(tmp_path / f"brats{edition}", edition)
    out = tmp_path / "brats.json"
    rc, text, err = _run(capsys, "--from", "brats", root, "--out", out, "--val-fraction", "0")
    assert rc == 0, err
    assert f"brats BraTS {edition} ({root}): 4 cases, 3 usable, 1 dropped" in text
    assert "channels (4, one file each): t1, t1ce, t2, flair" in text
    assert "labels found: 0, 1, 2, " + str(et) in text
    assert ("maps 4 -> 3" if edition == "2021" else "already the classes") in text
    missing = [line for line in text.splitlines() if line.startswith("BAD ")]
    assert len(missing) == 1 and "has no " + ("t2f" if edition == "2023" else "flair") + " file" in missing[0]
    # Read back as fine-tuning reads it: channel k is the config's k-th modality, ET becomes class 3.
    cfg = _config("brats21")
    cfg.data.datalist = str(out)
    from s2dc_jax.tasks.finetune import FinetuneTask  # noqa: PLC0415  (pulls in the fine-tuning code)
    entries = data.read_datalist(out)
    assert len(entries) == 3
    case = FinetuneTask(cfg).load_case(entries[0])
    raw = [data.load_volume(p)[0].mean() for p in entries[0]["image"]]
    assert raw == sorted(raw) and 90 < raw[0] < 110 and 390 < raw[3] < 410  # t1, t1ce, t2, flair
    assert case.image.shape[-1] == 4
    assert set(np.unique(case.target)) == {0, 1, 2, 3}
    lab = data.load_volume(entries[0]["label"])[0]
    assert (case.target[lab == et] == 3).all()


def test_brats_translation_entries_and_label_checks(tmp_path, capsys):
    root, _ = _brats(tmp_path / "b23", "2023")
    # An undeclared label value in a 2021 case is named; with --target the entries are for translation.
    out = tmp_path / "t1_t2.json"
    rc, text, err = _run(capsys, "--from", "brats", root, "--out", out, "--channels", "t1n", "--target", "t2")
    assert rc == 0, err
    doc = json.load(open(out))
    e = (doc["training"] + doc["validation"])[0]
    assert e["image"].endswith("-t1n.nii.gz") and e["target"].endswith("-t2w.nii.gz") and "label" not in e
    assert doc["task"] == "translation"
    # Case 2 lacks only FLAIR, which translation t1 -> t2 does not need.
    assert len(doc["training"]) + len(doc["validation"]) == 4
    cfg = _config("brats23_t1_t2")
    from s2dc_jax.tasks.finetune import FinetuneTask  # noqa: PLC0415
    c = FinetuneTask(cfg).load_case(data.read_datalist(out)[0])
    assert c.image.shape[-1] == 1 and c.target.shape[-1] == 1
    root21, _ = _brats(tmp_path / "b21", "2021", n=2)
    bad = root21 / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    _save(bad, _lab([0, 1, 3]))
    rc, text, _ = _run(capsys, "--from", "brats", root21, "--out", tmp_path / "x.json", "--val-fraction", "0")
    assert _bad_line(text, bad) == "label values [3] are not among the declared [0, 1, 2, 4]"


def _btcv(root):
    """MONAI's BTCV layout: dataset_0.json naming imagesTr/imgXXXX and labelsTr/labelXXXX, own split."""
    root.mkdir()
    entries = []
    for i in range(1, 7):
        _save(root / "imagesTr" / f"img{i:04d}.nii.gz", _img(i), spacing=(0.7, 0.7, 3.0))
        _save(root / "labelsTr" / f"label{i:04d}.nii.gz", _lab([0, 1, 6, 13]), spacing=(0.7, 0.7, 3.0))
        entries.append({"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"})
    organs = ["background", "spleen", "rkid", "lkid", "gall", "eso", "liver", "sto", "aorta", "IVC",
              "veins", "pancreas", "rad", "lad"]
    (root / "dataset_0.json").write_text(json.dumps({
        "description": "btcv yucheng", "labels": {str(i): o for i, o in enumerate(organs)},
        "modality": {"0": "CT"}, "name": "btcv", "numTraining": 4, "numTest": 0,
        "tensorImageSize": "3D", "test": [], "training": entries[:4], "validation": entries[4:]}))
    return root


def test_btcv_keeps_its_own_split(tmp_path, capsys):
    root = _btcv(tmp_path / "btcv")
    out = tmp_path / "btcv.json"
    rc, text, err = _run(capsys, "--from", "btcv", root, "--out", out)
    assert rc == 0, err
    assert "split (dataset_0.json): 4 training, 2 validation" in text
    assert "labels found: 0, 1, 6, 13 (declared but in no file: [2, 3, 4, 5, 7, 8, 9, 10, 11, 12])" in text
    val = data.read_datalist(out, split="validation")
    assert [os.path.basename(e["image"]) for e in val] == ["img0005.nii.gz", "img0006.nii.gz"]
    assert len(json.load(open(out))["labels"]) == 14 == _config("btcv").model.out_channels


# ---------------------------------------------------------------- integrity
def _truncate(path, keep):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:keep(len(raw))])
    return str(path)


def _flip_stored_byte(path):
    """A bit flip inside an uncompressed (stored) gzip block: inflates without error, only the CRC sees it."""
    comp = bytearray(gzip.compress(gzip.decompress(open(path, "rb").read()), compresslevel=0))
    comp[len(comp) // 2] ^= 0x01  # a low bit: the voxel stays finite
    open(path, "wb").write(bytes(comp))
    return str(path)


def test_damaged_files_are_named_only_by_the_whole_file_read(tmp_path, capsys):
    root = _msd(tmp_path / "Task09_Spleen", n=8)
    tail = _truncate(root / "imagesTr" / "spleen_0.nii.gz", lambda n: n - 4)   # gzip trailer cut
    mid = _truncate(root / "imagesTr" / "spleen_3.nii.gz", lambda n: n // 2)
    flip = _flip_stored_byte(str(root / "imagesTr" / "spleen_4.nii.gz"))
    nan = root / "imagesTr" / "spleen_5.nii.gz"
    x = _img(5)
    x[3, 3, 3] = np.nan
    _save(nan, x, spacing=(0.8, 0.8, 7.5))
    # nibabel reads the trailer-cut and the bit-flipped files without complaint.
    for p in (tail, flip):
        assert np.isfinite(data.load_volume(p)[0]).all()
    rc, text, _ = _run(capsys, "--from", "msd", root, "--out", tmp_path / "fast.json", "--headers-only",
                       "--val-fraction", "0")
    assert rc == 0 and "labels found: not read (--headers-only)" in text
    fast = {e["image"] for e in data.read_datalist(tmp_path / "fast.json")}
    assert {tail, mid, flip, str(nan)} <= fast  # the fast path cannot see them
    rc, text, _ = _run(capsys, "--from", "msd", root, "--out", tmp_path / "full.json", "--val-fraction", "0")
    assert rc == 0  # listing drops what it names; 2 cases of 8 stay
    assert _bad_line(text, tail).startswith("corrupt or truncated: the gzip stream ends before its end")
    assert _bad_line(text, mid).startswith("corrupt or truncated: ")
    assert _bad_line(text, flip).startswith("corrupt or truncated: gzip CRC check failed")
    assert _bad_line(text, nan) == "1 NaN/inf voxels"
    assert not {tail, mid, flip, str(nan)} & {e["image"] for e in data.read_datalist(tmp_path / "full.json")}
    assert "MB/s" in text and "volumes/s" in text


def test_check_out_writes_the_list_without_the_bad_files(tmp_path, capsys):
    root = _btcv(tmp_path / "btcv")
    out = tmp_path / "btcv.json"
    assert _run(capsys, "--from", "btcv", root, "--out", out)[0] == 0
    # Damage after listing: a truncated image, a constant image, a label with a foreign value.
    trunc = _truncate(root / "imagesTr" / "img0002.nii.gz", lambda n: n - 100)
    const = _save(root / "imagesTr" / "img0003.nii.gz", np.full(SHAPE, 7.0, np.float32), spacing=(0.7, 0.7, 3.0))
    foreign = _save(root / "labelsTr" / "label0005.nii.gz", _lab([0, 20]), spacing=(0.7, 0.7, 3.0))
    clean = tmp_path / "clean" / "btcv_clean.json"
    rc, text, _ = _run(capsys, "--check", out, "--out", clean)
    assert rc == 1
    assert _bad_line(text, trunc).startswith("corrupt or truncated")
    assert _bad_line(text, const) == "constant volume (every voxel = 7)"
    assert _bad_line(text, foreign).startswith("label values [20] are not among the declared [0, 1, 2,")
    assert f"wrote {clean}: 3 entries, 3 left out" in text
    doc = json.load(open(clean))
    assert len(doc["training"]) == 2 and len(doc["validation"]) == 1 and len(doc["labels"]) == 14
    assert not any(os.path.isabs(e["image"]) for e in doc["training"])
    rc, text, _ = _run(capsys, "--check", clean)
    assert rc == 0 and "3 of 3 entries usable for segmentation" in text
    # Header-only --check is the fast path: it passes the damaged voxels (but not the missing file).
    os.remove(root / "labelsTr" / "label0006.nii.gz")
    rc, text, _ = _run(capsys, "--check", out, "--headers-only")
    assert rc == 1 and "label0006.nii.gz: file not found" in text and "img0003" not in text


def test_parallel_workers_find_the_same(tmp_path, capsys):
    root = _msd(tmp_path / "Task09_Spleen", n=8)
    _truncate(root / "imagesTr" / "spleen_5.nii.gz", lambda n: n - 3)
    texts = []
    for w in ("1", "2"):
        rc, text, _ = _run(capsys, "--from", "msd", root, "--out", tmp_path / f"w{w}.json", "--workers", w)
        texts.append(sorted(line for line in text.splitlines() if line.startswith("BAD ")))
        assert rc == 0
    assert texts[0] == texts[1] and len(texts[0]) == 3
    assert json.load(open(tmp_path / "w1.json")) == json.load(open(tmp_path / "w2.json"))


# ---------------------------------------------------------------- one rule function for the task
def test_two_channel_volume_is_rejected_for_pretraining_everywhere_in_the_same_words(tmp_path, capsys):
    d = tmp_path / "scans"
    goods = [_save(d / f"g{i}.nii.gz", _img(i)) for i in range(3)]
    two = _save(d / "two_channels.nii.gz", np.stack([_img(7), _img(8)], -1))
    with pytest.raises(data.DataError) as reader:
        PretrainTransform.load(PretrainTransform([{"image": two}], None, modality="mri", roi=(16, 16, 16),
                                                 crop_size=8, seed=0, process_index=0, min_side=0,
                                                 max_retries=0), two, np.random.default_rng(0))
    why = reader.value.reason
    assert why.startswith("has 2 channels; pretraining reads single-channel volumes")
    rc, text, _ = _run(capsys, "--root", d, "--out", tmp_path / "pre.json")
    assert rc == 0 and _bad_line(text, two) == why
    assert sorted(e["image"] for e in data.read_datalist(tmp_path / "pre.json")) == goods
    lst = data.write_datalist([{"image": p} for p in goods + [two]], tmp_path / "all.json")
    rc, text, _ = _run(capsys, "--check", lst)  # image-only list: checked for pretraining
    assert rc == 1 and _bad_line(text, two) == why and "entries usable for pretrain" in text
    rc, text, _ = _run(capsys, "--check", lst, "--task", "any")  # fine for a 2-channel fine-tuning
    assert rc == 0
    with pytest.raises(data.DataError, match="has 2 channels; pretraining"):
        checks.check_volume(two, task="pretrain", full=False)
    # The pre-run check (headers only) finds it too, and a file gone since listing.
    lst = data.write_datalist([{"image": p} for p in goods + [two, str(d / "gone.nii.gz")]], tmp_path / "l2.json")
    rep = datalist.check_headers(lst, task="pretrain", min_side=16)
    assert rep.problems == [(two, why), (str(d / "gone.nii.gz"), "file not found")]
    assert not rep.full and rep.cases_ok == 3 and "headers in" in rep.rate()


def test_a_bad_file_is_counted_once_and_the_stop_is_one_line(tmp_path, caplog):
    goods = [_save(tmp_path / f"g{i}.nii.gz", _img(i)) for i in range(3)]
    two = _save(tmp_path / "two_channels.nii.gz", np.stack([_img(7), _img(8)], -1))
    lst = data.write_datalist([{"image": p} for p in goods + [two]], tmp_path / "l.json")
    cfg = data.default_data_config()
    cfg.datalist, cfg.modality, cfg.roi_large, cfg.crop_size, cfg.workers = lst, "mri", (16, 16, 16), 8, 0
    cfg.max_bad_fraction, cfg.bad_min_seen = 0.3, 4
    ds = data.make_pretrain_dataset(cfg, batch_size=2, seed=0)
    it = iter(ds)
    with caplog.at_level(logging.WARNING, logger="s2dc_jax.data"):
        for _ in range(6):  # 12 elements: the bad file is drawn in each of 3 epochs
            next(it)
        it.close()
    assert it.stats["data/records_bad"] == 1 and it.stats["data/records_seen"] >= 15
    assert it.stats["data/bad_fraction"] == 0.25
    assert caplog.text.count(f"skipped bad record {two}: has 2 channels") == 1
    # Past the allowed fraction: one line naming the file, its reason and the --check command.
    from s2dc_jax.data.pipeline import _GuardIterator
    cfg.max_bad_fraction = 0.2
    outer = iter(data.make_pretrain_dataset(cfg, batch_size=2, seed=0))
    g = _GuardIterator(outer._parent, ds.paths, 0.2, 4, 2, modality="mri", datalist=lst)
    with caplog.at_level(logging.ERROR, logger="s2dc_jax.data"), \
            pytest.raises(data.BadRecordError) as stop:
        for _ in range(6):
            next(g)
    outer.close()
    line = str(stop.value)
    assert "\n" not in line
    assert line.startswith("pretraining stopped: 1 of 4 records failed to load, more than "
                           "data.max_bad_fraction=0.2: ")
    assert f"{two} (has 2 channels; pretraining reads single-channel volumes" in line
    assert f"make_datalist.py --check {lst} --modality mri --out clean.json`" in line
    assert line in caplog.text  # also in the log (log.txt)


# ---------------------------------------------------------------- bad input: one line, exit 2
def test_every_bad_input_ends_with_one_line_and_exit_2(tmp_path, capsys):
    brats, _ = _brats(tmp_path / "brats", "2023", n=2)
    msd = _msd(tmp_path / "Task09_Spleen", n=2)
    nn = tmp_path / "Dataset001"
    nn.mkdir()
    (nn / "imagesTr").mkdir()
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    cases = [
        (["--from", "msd", tmp_path / "nowhere"], "nowhere: folder not found"),
        (["--from", "msd", brats], "no dataset.json: not a Medical Segmentation Decathlon task folder "
                                   "(it looks like brats: try --from brats)"),
        (["--from", "nnunet", nn], "Dataset001: no dataset.json: not an nnU-Net v2 raw dataset folder"),
        (["--from", "nnunet", msd], "so it is not an nnU-Net v2 dataset.json (it has 'modality' and "
                                    "'training': an MSD task, try --from msd)"),
        (["--from", "btcv", msd], "no dataset_0.json (MONAI's BTCV datalist"),
        (["--from", "brats", msd], "no BraTS files"),
        (["--from", "brats", brats, "--channels", "t1,dwi"], "--channels 'dwi': BraTS channels are"),
        (["--from", "mnist", msd], "--from must be one of msd, nnunet, brats, btcv"),
        (["--from", "msd", msd, "--out", afile / "list.json"], "list.json: cannot write the datalist there"),
        (["--root", msd, "--out", tmp_path], "is a directory; --out needs a file name"),
        (["--check", tmp_path / "none.json", "--out", afile / "c.json"], "cannot write the datalist there"),
    ]
    for argv, why in cases:
        if "--out" not in argv:
            argv = argv + ["--out", tmp_path / "o.json"]
        rc, out, err = _run(capsys, *argv)
        assert rc == 2, (argv, out, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and why in err, (argv, err)
    (nn / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                 "file_ending": ".mha"}))
    rc, _, err = _run(capsys, "--from", "nnunet", nn, "--out", tmp_path / "o.json")
    assert rc == 2 and "file_ending '.mha': only NIfTI" in err and err.count("\n") == 1
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch", "make_datalist.py"), "--from", "msd",
                        str(brats), "--out", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_check_volume_rules(tmp_path):
    lab = _save(tmp_path / "lab.nii.gz", _lab([0, 1]).astype(np.float32) + 0.5)
    with pytest.raises(data.DataError, match="non-integer values"):
        checks.check_volume(lab, role="label")
    four = _save(tmp_path / "four.nii.gz", np.zeros((*SHAPE, 2), np.uint8))
    with pytest.raises(data.DataError, match="label map has 2 channels"):
        checks.check_volume(four, role="label", full=False)
    blank = _save(tmp_path / "blank.nii.gz", np.full(SHAPE, -1000, np.int16) - 24 * (np.arange(SHAPE[2]) % 2).astype(np.int16))
    with pytest.raises(data.DataError, match=r"no foreground \(no voxel above -1000\)"):
        checks.check_volume(blank, task="pretrain", modality="ct")
    checks.check_volume(blank, task="pretrain")  # without the modality, only the general rules
    ch = _save(tmp_path / "ch.nii.gz", np.stack([_img(0), np.ones(SHAPE, np.float32)], -1))
    with pytest.raises(data.DataError, match="channel 1 of 2 is constant"):
        checks.check_volume(ch)
    img = _save(tmp_path / "img.nii.gz", _img(1))
    r = checks.check_case({"image": [img, img], "label": _save(tmp_path / "l.nii.gz", _lab([0, 5]))},
                          task="segmentation", in_channels=3, num_classes=4, label_map=((5, 3),))
    assert r.problems == [(img, "has 2 channels, model.in_channels is 3")]
    r = checks.check_case({"image": img, "label": 7}, task="classification", num_classes=3)
    assert r.problems == [(img, "class 7 outside [0, model.out_channels=3)")]
    with pytest.raises(ValueError, match="task must be one of"):
        checks.check_volume(img, task="pretraining")
    # Several gzip members (as pigz/bgzip write) are one stream; bytes after the last one are named.
    plain = gzip.decompress(open(img, "rb").read())
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]) + b"\x00" * 8)
    assert checks.check_volume(multi).full
    multi.write_bytes(gzip.compress(plain) + b"trailing junk")
    with pytest.raises(data.DataError, match="13 bytes after the end of the gzip stream are not gzip"):
        checks.check_volume(multi)
    raw = zlib.compress(plain)  # a zlib (not gzip) stream inside a .nii.gz name
    multi.write_bytes(raw)
    with pytest.raises(data.DataError, match="not a readable NIfTI|not a gzip file"):
        checks.check_volume(multi)
    assert datalist.check_volume is checks.check_volume and layouts.LAYOUTS
