"""Entry points as a new user meets them: --help, configs by name, and one clear line for every mistake."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(script, *args, cwd=None, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, str(REPO / "launch" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd or REPO)


def one_line_error(r, *needles):
    """Exit status 2 and exactly one line on stderr, naming what is wrong."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--config=mri6k", "--config.steps=6"], ["--config.steps", "did you mean --config.total_steps"]),
    (["--config=mri6k", "--config.ssl.temprature=0.1"], ["ssl.temprature", "--config.ssl.temperature"]),
    (["--config=mri6k", "--config.batch_size=abc"], ["--config.batch_size=abc"]),
    (["--config=configs/nope.py"], ["no config file", "mri6k"]),
    (["--config=mri6k:small"], ["unknown config variant 'small'"]),
    (["--config=mri6k", "--config.ssl.match=hungarian"], ["config.ssl.match"]),
    (["--config=mri6k", "--config.data.datalist=/nonexistent/list.json"], ["/nonexistent/list.json"]),
])
def test_pretrain_mistakes_are_one_line(tmp_path, args, needles):
    one_line_error(run("pretrain.py", *args, f"--workdir={tmp_path / 'w'}"), *needles)


def test_unwritable_workdir_and_missing_workdir_are_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(run("pretrain.py", "--config=demo", f"--workdir={tmp_path / 'file' / 'run'}"), "cannot write there")
    one_line_error(run("pretrain.py", "--config=demo"), "--workdir is required")


def test_configs_by_name_from_anywhere_and_print_config(tmp_path):
    r = run("finetune.py", "--config=btcv:tiny", "--config.optim.lr=0.01", "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "task: segmentation" in r.stdout and "lr: 0.01" in r.stdout
    r = run("pretrain.py", "--config=configs/ct1k.py:tiny", "--print_config", cwd=tmp_path)  # the repo's path form
    assert r.returncode == 0 and "feature_size: 12" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("script", ["pretrain.py", "finetune.py", "finetune_segmentation.py", "export_torch.py"])
def test_help_lists_the_flags_and_points_to_the_reference(script):
    r = run(script, "--help")
    text = r.stdout + r.stderr
    assert r.returncode == 0 and "--" in text
    flags = ["--checkpoint", "--what", "--merging"] if script == "export_torch.py" else \
        ["--config", "--workdir", "print_config", "--coordinator_address", "docs/config.md"]
    for f in flags:
        assert f in text, (f, text[-2000:])


@pytest.mark.parametrize("args,needles", [
    (["--config=btcv:tiny", "--config.init.checkpoint=/nonexistent/run"], ["init.checkpoint", "/nonexistent/run"]),
    (["--config=btcv:tiny", "--config.data.datalist=/nope.json"], ["/nope.json"]),
    (["--config=btcv:tiny", "--config.model.windows_size=4"], ["did you mean --config.model.window_size"]),
    (["--config=btcv:tiny", "--config.init.source=ema"], ["init.source"]),
])
def test_finetune_mistakes_are_one_line(tmp_path, args, needles):
    one_line_error(run("finetune.py", *args, f"--workdir={tmp_path / 'w'}"), *needles)


def test_export_mistakes_are_one_line(tmp_path):
    one_line_error(run("export_torch.py", "--checkpoint=/nonexistent", "--out=x.pt"), "does not exist")
    one_line_error(run("export_torch.py", "--out=x.pt"), "--checkpoint is required")
    one_line_error(run("export_torch.py", "--checkpoint=tests", "--out=x.pt", "--merging=old"), "--merging")
