"""End to end: launch/finetune_classification.py on CT phantoms (3 classes, 3-fold split) beats its untrained start.

The classes differ only inside the liver (s2dc_jax.data.phantoms: bright focal lesions, or
a diffusely darker liver), so the test reads them through the abdominal window the way a
radiologist would; CC-CCII's lung window [-1000, 1000] shows mostly the body outline, which
the tiny model memorises instead (measured: train accuracy 1.0, validation at chance).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from processes import run_processes  # noqa: E402
from test_finetune_segmentation import REPO, run_entry  # noqa: E402

from s2dc_jax.data.phantoms import write_phantom_dataset  # noqa: E402


def test_classification_entry_point_beats_untrained(tmp_path):
    # Classes: 0 normal, 1 focal liver lesions, 2 diffuse liver change; 45 scans -> 30 training, 15 validation.
    dl = write_phantom_dataset(tmp_path / "data", num=45, modality="ct", shape=(32, 32, 32), seed=1,
                               labels=False, targets=False)
    work = tmp_path / "run"
    evals, r = run_entry("classification", "cc_ccii.py:tiny", work, f"--config.data.datalist={dl}",
                         "--config.data.target_key=class", "--config.data.a_min=-175", "--config.data.a_max=250",
                         "--config.data.flip_prob=0", "--config.total_steps=80", "--config.eval_every=40",
                         "--config.num_devices=2", "--config.batch_size=8", "--config.eval.at_start=True",
                         "--config.model.use_v2=False")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(evals) == [0, 40, 80]
    start, end = evals[0], evals[80]
    print(f"classification: untrained accuracy {start['accuracy']:.3f} AUC {start['auc']:.3f} -> "
          f"80 steps accuracy {end['accuracy']:.3f} AUC {end['auc']:.3f}")
    assert end["accuracy"] - start["accuracy"] >= 0.2 - 1e-9 and end["accuracy"] >= 0.6 - 1e-9, (start, end)
    assert end["auc"] - start["auc"] >= 0.2 and end["auc"] >= 0.8, (start, end)
    rows = (work / "predictions" / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,label,pred") and len(rows) == 1 + 15  # fold 0 of 3 over 45 scans
    probs = np.array([[float(v) for v in row.split(",")[3:]] for row in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert "30 training and 15 validation cases" in (work / "log.txt").read_text()


def test_two_processes_match_one_process_with_two_devices(tmp_path):
    """Multi-host fine-tuning: 2 processes x 1 device train the same model as 1 process x 2 devices."""
    common = (*_tiny_set(tmp_path), "--config.total_steps=3")
    _, r = run_entry("classification", "cc_ccii.py:tiny", tmp_path / "one", *common, devices=2)
    assert r.returncode == 0, r.stderr[-3000:]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    results = run_processes(lambda i, address: [
        sys.executable, str(REPO / "launch" / "finetune_classification.py"),
        f"--config={REPO}/configs/finetune/cc_ccii.py:tiny", f"--workdir={tmp_path / 'two'}", *common,
        f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"], 2, env=env)
    for rc, out in results:
        assert rc == 0, out[-4000:]
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "batch 2 over 2 devices" in log and "replicas agree across 2 processes at step 3" in log
    read = lambda d: np.array([[float(v) for v in row.split(",")[3:]]  # noqa: E731
                               for row in (d / "predictions" / "predictions.csv").read_text().splitlines()[1:]])
    np.testing.assert_allclose(read(tmp_path / "two"), read(tmp_path / "one"), atol=1e-4)
    # The same rows reached the same places: mean training loss and gradient norm of the 3 steps agree.
    def train(d):
        return json.loads(re.search(r"step 3 (\{\"train/.*\})", (d / "log.txt").read_text()).group(1))

    one, two = train(tmp_path / "one"), train(tmp_path / "two")
    for k in ("train/loss", "train/grad_norm"):
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5)


def _tiny_set(tmp_path):
    dl = write_phantom_dataset(tmp_path / "data", num=6, modality="ct", shape=(32, 32, 32), seed=2, labels=False,
                               targets=False)
    return (f"--config.data.datalist={dl}", "--config.data.target_key=class", "--config.batch_size=2",
            "--config.model.use_v2=False", "--config.num_devices=2")


def test_sigterm_saves_and_the_rerun_resumes(tmp_path):
    work, common = tmp_path / "run", _tiny_set(tmp_path)
    cmd = [sys.executable, str(REPO / "launch" / "finetune_classification.py"),
           f"--config={REPO}/configs/finetune/cc_ccii.py:tiny", f"--workdir={work}", *common,
           "--config.total_steps=1000", "--config.checkpoint_every=2", "--config.eval_every=1000"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (work / "checkpoints" / "2").is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    saved = re.search(r"preempted: saved step (\d+)", out)
    assert saved, out[-3000:]
    n = int(saved.group(1))
    assert 2 <= n < 1000 and (work / "checkpoints" / str(n)).is_dir()
    evals, r = run_entry("classification", "cc_ccii.py:tiny", work, *common, f"--config.total_steps={n + 2}",
                         f"--config.eval_every={n + 2}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from step {n}" in r.stdout and sorted(evals) == [n + 2]


def test_resume_when_the_best_checkpoint_is_newer_than_the_latest(tmp_path):
    """Killed between the best and the latest save of a step: the re-run evaluates that step again."""
    work, common = tmp_path / "run", _tiny_set(tmp_path)
    args = (*common, "--config.total_steps=4", "--config.eval_every=4", "--config.checkpoint_every=3")
    _, r = run_entry("classification", "cc_ccii.py:tiny", work, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "best" / "4").is_dir()
    shutil.rmtree(work / "checkpoints" / "4")
    evals, r = run_entry("classification", "cc_ccii.py:tiny", work, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 3" in r.stdout and sorted(evals) == [4] and "best (step 4)" in r.stdout
