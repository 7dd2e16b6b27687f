"""Entry points as a new user meets them: --help, configs by name, and one clear line for every mistake."""
import os
import subprocess
import sys
import sysconfig
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
    (["--config=demo:short"], ["unknown config variant 'short'", "'long'"]),
    (["--config=mri6k", "--config.ssl.match=hungarian"], ["config.ssl.match"]),
    (["--config=mri6k", "--config.data.datalist=/nonexistent/list.json"], ["/nonexistent/list.json"]),
    # the demo's held-out evaluation is checked after the list: the missing file is named, not val_datalist
    (["--config=demo", "--config.data.datalist=/nonexistent/list.json"], ["/nonexistent/list.json", "not found"]),
])
def test_pretrain_mistakes_are_one_line(tmp_path, args, needles):
    one_line_error(run("pretrain.py", *args, f"--workdir={tmp_path / 'w'}"), *needles)


def test_unwritable_workdir_and_missing_workdir_are_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(run("pretrain.py", "--config=demo", f"--workdir={tmp_path / 'file' / 'run'}"), "cannot write there")
    one_line_error(run("pretrain.py", "--config=demo"), "--workdir is required")
    one_line_error(run("pretrain.py", "--config=demo", f"--compilation_cache={tmp_path / 'file' / 'xla'}",
                       f"--workdir={tmp_path / 'run'}"), "--compilation_cache", "cannot write")


_CACHE_PROBE = """
import sys
import jax
from s2dc_jax._cli import use_compilation_cache
folder = use_compilation_cache(None if sys.argv[1] == "default" else sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.jit(lambda x: x * 3 + 1)(jax.numpy.ones(7)).block_until_ready()
print(folder)
"""


@pytest.mark.parametrize("flag,jax_env,expect", [
    ("default", None, "xdg/s2dc_jax/xla"),   # $XDG_CACHE_HOME/s2dc_jax/xla
    ("default", "env", "env"),               # JAX's own variable, where set, wins over the default
    ("mine", "env", "mine"),                 # --compilation_cache=FOLDER wins over both
    ("", "env", None),                       # --compilation_cache='' turns it off, even with the variable set
])
def test_compilation_cache_keeps_compiled_programs_where_it_says(tmp_path, flag, jax_env, expect):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    if jax_env:
        env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / jax_env)
    arg = flag if flag in ("default", "") else str(tmp_path / flag)
    r = subprocess.run([sys.executable, "-c", _CACHE_PROBE, arg], capture_output=True, text=True, env=env,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    expect = tmp_path / expect if expect else None
    assert r.stdout.strip() == str(expect)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    if expect is None:
        assert not written, written
    else:
        assert written and all(expect in p.parents for p in written), written


def test_configs_by_name_from_anywhere_and_print_config(tmp_path):
    r = run("finetune.py", "--config=btcv:tiny", "--config.optim.lr=0.01", "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "task: segmentation" in r.stdout and "lr: 0.01" in r.stdout
    r = run("pretrain.py", "--config=configs/ct1k.py:tiny", "--print_config", cwd=tmp_path)  # the repo's path form
    assert r.returncode == 0 and "feature_size: 12" in r.stdout, r.stderr[-2000:]
    r = run("pretrain.py", "--config=demo:long", "--print_config", cwd=tmp_path)  # the longer demo (issue 14)
    assert r.returncode == 0 and "total_steps: 1000" in r.stdout and "views_per_volume: 4" in r.stdout, r.stderr[-2000:]


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
    (["--config=btcv:tiny", "--config.optim.lr=fast"], ["--config.optim.lr=fast"]),
    (["--config=btcv:small"], ["config variant must be", "'small'"]),
    (["--config=finetune/nope"], ["no config file", "btcv"]),
])
def test_finetune_mistakes_are_one_line(tmp_path, args, needles):
    one_line_error(run("finetune.py", *args, f"--workdir={tmp_path / 'w'}"), *needles)


def test_finetune_unwritable_workdir_is_one_line(tmp_path):
    from s2dc_jax.data import write_phantom_dataset

    lst = write_phantom_dataset(tmp_path / "data", num=1, num_val=1, modality="ct", shape=(32, 32, 32), targets=False)
    (tmp_path / "file").write_text("")
    one_line_error(run("finetune.py", "--config=btcv:tiny", f"--config.data.datalist={lst}",
                       f"--workdir={tmp_path / 'file' / 'run'}"), "cannot write there")


def test_installed_commands_run_from_anywhere(tmp_path):
    """pip install puts s2dc-* on the PATH (pyproject [project.scripts]); configs resolve by name."""
    bin_dir = Path(sysconfig.get_path("scripts"))  # where pip put this environment's commands
    r = subprocess.run([str(bin_dir / "s2dc-finetune"), "--config=btcv:tiny", "--print_config"], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0 and "task: segmentation" in r.stdout, r.stderr[-2000:]
    for name in ("s2dc-pretrain", "s2dc-export", "s2dc-datalist"):
        r = subprocess.run([str(bin_dir / name), "--help"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 0 and "--" in r.stdout + r.stderr, (name, r.stderr[-2000:])


def test_config_names_resolve_from_the_installed_copy(tmp_path, monkeypatch):
    """Outside a checkout, names come from <prefix>/share/s2dc_jax/configs, where a wheel puts them."""
    from s2dc_jax import _cli

    shared = tmp_path / "share" / "s2dc_jax" / "configs"
    (shared / "finetune").mkdir(parents=True)
    for f in ("demo.py", "mri6k.py", "finetune/btcv.py"):
        (shared / f).write_text((REPO / "configs" / f).read_text())
    import site  # pip install --user puts the data files under the user's base: looked up too
    assert Path(site.getuserbase()) / "share" / "s2dc_jax" / "configs" in _cli.CONFIG_DIRS
    monkeypatch.setattr(_cli, "CONFIG_DIRS", (tmp_path / "no_checkout", shared))
    assert _cli.resolve_config("mri6k:tiny") == f"{shared / 'mri6k.py'}:tiny"
    assert _cli.resolve_config("btcv") == str(shared / "finetune" / "btcv.py")
    with pytest.raises(FileNotFoundError, match="demo, mri6k, finetune/btcv"):
        _cli.resolve_config("ct1k")
    assert "share/s2dc_jax/configs" in (REPO / "pyproject.toml").read_text()


def test_export_mistakes_are_one_line(tmp_path):
    one_line_error(run("export_torch.py", "--checkpoint=/nonexistent", "--out=x.pt"), "does not exist")
    one_line_error(run("export_torch.py", "--out=x.pt"), "--checkpoint is required")
    one_line_error(run("export_torch.py", "--checkpoint=tests", "--out=x.pt", "--merging=old"), "--merging")
    one_line_error(run("export_torch.py", "--checkpoint=/nonexistent", "--out=x.pt", "--step=abc"), "--step")
