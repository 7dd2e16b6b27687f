"""Whole pretraining runs through launch/pretrain.py: kill -9 and resume, two processes, export."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from s2dc_jax.interop.workdir import load_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import run_processes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config=configs/ct1k.py:tiny", "--config.batch_size=2"]


def pretrain_cmd(workdir, *flags):
    return [sys.executable, str(REPO / "launch" / "pretrain.py"), *TINY, f"--workdir={workdir}", *flags]


def env(devices):
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return e


def run_ok(cmd, devices=2, timeout=600):
    p = subprocess.run(cmd, env=env(devices), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def assert_trees_close(a, b, atol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def _stop_after_checkpoint(cmd, ckpts: Path, after: int, sig, out: Path) -> subprocess.Popen:
    """Start ``cmd`` (output to ``out``), send ``sig`` as soon as a checkpoint newer than step ``after`` is complete."""
    with out.open("w") as f:
        proc = subprocess.Popen(cmd, env=env(2), cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if any(d > after for d in done):
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    proc.wait(timeout=300)
    return proc


@pytest.mark.slow
def test_preempt_kill9_and_resume_equal_uninterrupted(tmp_path):
    """SIGTERM saves, says so last and exits 143; kill -9 loses nothing saved; resuming twice ends where one run does.

    The loop does this for every task (fine-tuning's resume with a newer best checkpoint:
    test_finetune_classification.py)."""
    steps = ["--config.total_steps=6", "--config.checkpoint_every=2"]
    run_ok(pretrain_cmd(tmp_path / "straight", *steps))

    work = tmp_path / "interrupted"
    ckpts = work / "checkpoints"
    out = tmp_path / "out.txt"
    proc = _stop_after_checkpoint(pretrain_cmd(work, *steps), ckpts, 0, signal.SIGTERM, out)
    assert proc.returncode == 128 + signal.SIGTERM, "SIGTERM should save a checkpoint and exit 143"
    _, preempted_at = load_params(work)
    assert 2 <= preempted_at < 6
    said = f"preempted (SIGTERM): saved step {preempted_at}"
    assert said in (work / "log.txt").read_text()
    # the last words a scheduler's log shows (exit 143, not 0: the job is not finished)
    assert out.read_text().rstrip().splitlines()[-1].startswith(said), out.read_text()[-2000:]

    proc = _stop_after_checkpoint(pretrain_cmd(work, *steps), ckpts, preempted_at, signal.SIGKILL, out)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    _, killed_at = load_params(work)
    assert preempted_at < killed_at < 6

    out = run_ok(pretrain_cmd(work, *steps))
    assert "resumed from" in out.stdout + out.stderr
    resumed, step = load_params(work)
    straight, step0 = load_params(tmp_path / "straight")
    assert step == step0 == 6
    assert_trees_close(resumed, straight, atol=1e-6)

    # The workdir holds what the README promises, and its export loads into MONAI SwinUNETR.
    run_dir = tmp_path / "straight"
    log = (run_dir / "log.txt").read_text()
    assert (run_dir / "config.json").exists() and "step 6" in log
    # the tests' shared cache (conftest.py) is the one in use: JAX_COMPILATION_CACHE_DIR wins over the default
    assert f"compiling the step, or loading it (XLA compilation cache {os.environ['JAX_COMPILATION_CACHE_DIR']})" in log
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    out = run_ok([sys.executable, str(REPO / "launch" / "export_torch.py"), f"--checkpoint={run_dir}",
                  f"--out={tmp_path / 'encoder.safetensors'}"])
    assert "0 unexpected keys, 0 swinViT.* keys absent" in out.stdout
    torch = pytest.importorskip("torch")
    from monai.networks.nets import SwinUNETR
    from safetensors.numpy import load_file

    sd = {k: torch.from_numpy(v) for k, v in load_file(tmp_path / "encoder.safetensors").items()}
    c = 12  # the tiny preset's feature size
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=c, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                    use_v2=True)
    res = net.load_state_dict(sd, strict=False)
    assert not res.unexpected_keys
    assert not [k for k in res.missing_keys if k.startswith("swinViT.")]


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_agree(tmp_path):
    work = tmp_path / "mh"
    results = run_processes(lambda i, address: pretrain_cmd(
        work, "--config.total_steps=3", "--config.checkpoint_every=3", f"--coordinator_address={address}",
        "--num_processes=2", f"--process_id={i}"), 2, env=env(1), cwd=REPO)
    for rc, out in results:
        assert rc == 0, out[-4000:]
    assert "replicas agree across 2 processes at step 3" in results[0][1]
    params, step = load_params(work)
    assert step == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    # one grain data-state file per process sits beside the state
    assert len(list((work / "checkpoints" / "3" / "data").glob("*"))) >= 2


@pytest.mark.parametrize("flag,needle", [
    ("--config.ssl.match=hungarian", "config.ssl.match"),
    ("--config.data.datalist=/nonexistent/list.json", "/nonexistent/list.json"),
])
def test_bad_input_is_one_clear_line(tmp_path, flag, needle):
    p = subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), "--config=configs/mri6k.py",
                        f"--workdir={tmp_path}", flag], env=env(1), capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr
