"""Synthetic phantoms: real NIfTI files, modality ranges, labels, classes, targets, speed; host benchmark."""
import json
import os
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from s2dc_jax import data
from s2dc_jax.data import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("modality,lo,hi", [("ct", -1100, 1100), ("mri", 0, 2000), ("pet", 0, 40)])
def test_phantom_dataset_files_ranges_and_labels(tmp_path, modality, lo, hi):
    t = time.perf_counter()
    lst = data.write_phantom_dataset(tmp_path, num=8, modality=modality, shape=(96, 96, 48), seed=0,
                                     num_val=1, orientations=("RAS", "LPS"))
    took = time.perf_counter() - t
    assert took < 10.0, took  # the demo writes these at start-up (about 1 s on 2 free cores)
    doc = json.load(open(lst))
    assert len(doc["training"]) == 8 and len(doc["validation"]) == 1
    assert doc["labels"]["5"] == "bone" and doc["classes"]["1"] == "focal_lesions"
    recs = data.read_datalist(lst)
    assert [r["class"] for r in recs] == [0, 1, 2, 0, 1, 2, 0, 1]
    for r in recs[:3]:
        img, meta = data.load_volume(r["image"])
        lab, _ = data.load_volume(r["label"])
        tgt, _ = data.load_volume(r["target"])
        assert img.shape == lab.shape == tgt.shape == (96, 96, 48)
        np.testing.assert_allclose(meta["spacing"], (1.5, 1.5, 2.0))
        assert lo <= img.min() and img.max() <= hi
        assert set(np.unique(lab).astype(int)) == {0, 1, 2, 3, 4, 5}
        # Structures differ from their surroundings: per-label means are well separated.
        means = [img[lab == k].mean() for k in range(6)]
        assert np.ptp(means) > (100 if modality == "ct" else 1.0 if modality == "pet" else 100)
        # Texture: tissue is not flat inside one structure.
        assert img[lab == 1].std() > 0.0
        assert nib.load(r["image"]).get_data_dtype() == (np.int16 if modality == "ct" else np.float32)
    # Even records are stored RAS, odd ones LPS; the loader gives both back in RAS.
    assert nib.aff2axcodes(nib.load(recs[1]["image"]).affine) == ("L", "P", "S")
    ph = data.make_phantom(np.random.default_rng(0), (96, 96, 48), modality, cls=0)
    assert abs(ph["label"].mean() - data.load_volume(recs[0]["label"])[0].mean()) < 0.05


def test_phantom_classes_are_visible_in_the_liver():
    base = [data.make_phantom(np.random.default_rng(s), (64, 64, 32), "ct", cls=0) for s in range(3)]
    lesion = [data.make_phantom(np.random.default_rng(s), (64, 64, 32), "ct", cls=1) for s in range(3)]
    diffuse = [data.make_phantom(np.random.default_rng(s), (64, 64, 32), "ct", cls=2) for s in range(3)]
    q = lambda p: np.percentile(p["image"][p["label"] == 1], 99)  # noqa: E731
    m = lambda p: p["image"][p["label"] == 1].mean()  # noqa: E731
    assert min(q(p) for p in lesion) > max(q(p) for p in base) + 30  # bright focal lesions
    assert max(m(p) for p in diffuse) < min(m(p) for p in base) - 20  # darker, diffuse change


def test_pet_image_is_a_noisy_low_dose_target():
    ph = data.make_phantom(np.random.default_rng(1), (48, 48, 24), "pet", cls=0)
    err = ph["image"] - ph["target"]
    assert abs(err.mean()) < 0.05 and 0.05 < err[ph["target"] > 1].std() < 1.0


def test_phantom_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="data.modality must be one of"):
        data.write_phantom_dataset(tmp_path, num=1, modality="us")
    with pytest.raises(ValueError, match="num must be >= 1"):
        data.write_phantom_dataset(tmp_path, num=0, modality="ct")


def test_host_benchmark_runs_small(tmp_path):
    res = benchmark.run(tmp_path, shape=(80, 72, 40), roi=(64, 64, 32), repeats=1, log=lambda s: None)
    for ext in (".nii", ".nii.gz"):
        assert 0.0 < res[ext]["cpu_s"] < 5.0 and res[ext]["open_cpu_s"] <= res[ext]["cpu_s"]
    assert "CPU cores" in res["machine"] and not os.listdir(tmp_path)
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch", "benchmark.py"), "data", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--roi" in r.stdout
