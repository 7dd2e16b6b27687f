"""Pictures: launch/visualize.py on a tiny pretraining checkpoint, its accuracy vs the evaluation's, errors, TB."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402  (matplotlib depends on Pillow)

from s2dc_jax.data.datalist import read_datalist  # noqa: E402
from s2dc_jax.tasks import pretrain_config as config_lib  # noqa: E402
from s2dc_jax.tasks import pretrain_eval as ev  # noqa: E402
from s2dc_jax.tasks import visualize  # noqa: E402
from s2dc_jax.tasks.base import build_encoder  # noqa: E402
from s2dc_jax.tasks.pretrain import PretrainTask  # noqa: E402
from s2dc_jax.training import loop  # noqa: E402
from s2dc_jax.training.mesh import make_mesh  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "visualize.py"


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step tiny pretraining run with 2 held-out labelled phantoms and a picture every step."""
    c = config_lib.shrink(config_lib.pretrain_config())
    c.batch_size, c.total_steps, c.num_devices, c.image_every = 2, 2, 2, 1
    c.data.phantoms, c.eval.phantoms = 2, 2
    w = tmp_path_factory.mktemp("run")
    loop.run(PretrainTask(c), w)
    return w


def test_command_writes_pngs_whose_accuracy_is_the_evaluations(run_dir, tmp_path):
    out = tmp_path / "viz"
    lst = run_dir / "phantoms" / "datalist.json"
    p = subprocess.run([sys.executable, str(SCRIPT), f"--checkpoint={run_dir}", f"--datalist={lst}", "--index=0",
                        f"--out={out}"], env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("correspondence", "similarity", "pca"):
        f = out / f"{name}.png"
        assert 10_000 < f.stat().st_size < 2_000_000, (name, f.stat().st_size)
        w, h = Image.open(f).size
        assert 300 <= w <= 2000 and 200 <= h <= 2000, (name, w, h)
    summary = json.loads((out / "summary.json").read_text())
    assert "last: " in p.stdout and "wrote " in p.stdout

    # The same fixed view through the held-out evaluation (validation entry 0 = volume 0, view 0)
    config = visualize.run_config_of(run_dir)
    config.eval.views_per_volume = 1
    val = [r["image"] for r in read_datalist(lst, split="validation")][:1]
    e = ev.HeldOutEval(config, build_encoder(config.model), make_mesh(1), None)
    e.load(val, [], lambda _: None)
    params, _ = visualize.load_params(run_dir)
    acc = e.correspondence(params)
    assert set(summary) == set(acc) == {"head", "last", "finer", "raw_last", "raw_finer"}
    for k, v in acc.items():
        assert summary[k]["pairs"] > 0 and summary[k]["right"] / summary[k]["pairs"] == v, (k, summary[k], v)


@pytest.mark.parametrize("case", ["missing checkpoint", "bad volume", "no matplotlib", "no checkpoint flag"])
def test_errors_are_one_clear_line(run_dir, tmp_path, case):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a volume")
    args = {"missing checkpoint": [f"--checkpoint={tmp_path / 'nope'}", f"--image={bad}"],
            "bad volume": [f"--checkpoint={run_dir}", f"--image={bad}"],
            "no matplotlib": [f"--checkpoint={run_dir}", f"--image={bad}"],
            "no checkpoint flag": [f"--image={bad}"]}[case]
    cmd = [sys.executable, str(SCRIPT), *args, f"--out={tmp_path / 'o'}"]
    if case == "no matplotlib":  # the import fails as it does where the extra is not installed
        cmd = [sys.executable, "-c", "import runpy, sys; sys.modules['matplotlib'] = None; "
               f"sys.argv = {cmd[1:]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("visualize.py: error: "), p.stderr
    needle = {"missing checkpoint": "does not exist", "bad volume": "bad.nii.gz: not a readable NIfTI",
              "no matplotlib": 'pip install -e ".[viz]"', "no checkpoint flag": "--checkpoint is required"}[case]
    assert needle in lines[0]
    assert not (tmp_path / "o").exists()


def test_pictures_reach_tensorboard_during_pretraining(run_dir):
    events = b"".join(f.read_bytes() for f in (run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events.count(b"correspondence") >= 2 and events.count(b"\x89PNG") >= 2   # steps 1 and 2


def test_figure_counts_match_the_drawn_lines():
    """A hand-made result: 3 src tokens with partners, 2 matched: the title says 2/3."""
    gt = np.zeros((1, 4, 4), np.float32)
    gt[0, [0, 1, 2], [1, 2, 3]] = 1
    best = np.array([[1, 2, 0, 0]])
    level = {"src": np.zeros((2, 2, 1, 3)), "aug": np.zeros((2, 2, 1, 3)), "gt": gt, "best": best,
             "right": np.take_along_axis(gt, best[..., None], -1)[..., 0] > 0.5, "has_gt": gt.any(-1),
             "cos": np.zeros((1, 4, 4)), "token_size": 16}
    result = {"views": (np.zeros((32, 32, 16, 1)), np.zeros((32, 32, 16, 1))), "mode": "inplane", "last": level}
    fig, counts = visualize.correspondence_figure(result, levels=("last",))
    assert counts == {"last": (2, 3)} and "2/3 ground-truth pairs matched, accuracy 0.667" in fig.axes[0].get_title()
    img = visualize.to_array(fig)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
