"""End to end: launch/finetune_segmentation.py on labelled CT phantoms ends clearly better than untrained."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from s2dc_jax.data.phantoms import write_phantom_dataset

REPO = Path(__file__).resolve().parents[1]


def run_entry(task, config, workdir, *overrides, devices=2, timeout=900):
    """Runs launch/finetune_<task>.py in a fresh process; returns {step: metrics} and the process."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, str(REPO / "launch" / f"finetune_{task}.py"), f"--config={REPO}/configs/finetune/{config}",
           f"--workdir={workdir}", *overrides]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    evals = {}
    for line in r.stdout.splitlines():
        m = re.match(r"eval step (\d+): (.*)", line)
        if m:
            evals[int(m.group(1))] = {k: float(v) for k, v in (kv.split("=") for kv in m.group(2).split(", "))}
    return evals, r


def test_segmentation_entry_point(tmp_path):
    # LPS files exercise reorientation on the way in and on the way out.
    dl = write_phantom_dataset(tmp_path / "data", num=4, num_val=1, modality="ct", shape=(48, 48, 32), seed=0,
                               targets=False, orientations=("LPS", "RAS"))
    work = tmp_path / "run"
    evals, r = run_entry("segmentation", "btcv.py:tiny", work, f"--config.data.datalist={dl}",
                         "--config.model.out_channels=6", "--config.total_steps=80", "--config.eval_every=80",
                         "--config.num_devices=2", "--config.optim.lr=0.002", "--config.eval.at_start=True")
    assert r.returncode == 0, r.stderr[-3000:]
    start, end = evals[0]["dice"], evals[80]["dice"]
    print(f"segmentation mean Dice: untrained {start:.4f} -> 80 steps {end:.4f}")
    assert end > start + 0.15, (start, end)
    # Workdir contract: config, log, TensorBoard, latest and best checkpoints, NIfTI predictions.
    assert json.loads((work / "config.json").read_text())["task"] == "segmentation"
    assert (work / "log.txt").is_file() and any((work / "tensorboard").iterdir())
    assert (work / "checkpoints" / "80").is_dir() and any((work / "best").iterdir())
    src = json.loads(Path(dl).read_text())["validation"][0]["image"]
    src_img = nib.load(Path(dl).parent / src)
    pred = nib.load(work / "predictions" / (Path(src).name.replace(".nii.gz", "") + "_seg.nii.gz"))
    np.testing.assert_allclose(pred.affine, src_img.affine)
    assert pred.shape == src_img.shape and nib.aff2axcodes(pred.affine) == nib.aff2axcodes(src_img.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= set(range(6))


def test_bad_config_is_one_clear_line(tmp_path):
    _, r = run_entry("segmentation", "btcv.py:tiny", tmp_path / "run", "--config.data.datalist=/nonexistent.json")
    assert r.returncode != 0
    assert "/nonexistent.json" in r.stderr and "Traceback" not in r.stderr
    _, r = run_entry("classification", "btcv.py:tiny", tmp_path / "run2", "--config.data.datalist=/x.json")
    assert r.returncode != 0 and "task" in r.stderr and "Traceback" not in r.stderr
