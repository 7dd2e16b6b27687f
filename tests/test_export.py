"""launch/export_torch.py and s2dc_jax.interop.export: files in, MONAI-loadable files out, loud failures."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2dc_jax.interop import flatten_params, read_state_dict, save_params, to_monai, unflatten_params, write_state_dict
from s2dc_jax.interop.export import export
from s2dc_jax.models import SwinTransformer3D, SwinUNETR

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "launch" / "export_torch.py")
SMALL = dict(in_channels=1, feature_size=12, depths=(2, 1, 1, 1), num_heads=(3, 3, 6, 6), window_size=7, use_v2=True)


def _random_params(model, seed=0):
    rng = np.random.RandomState(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 32, model.in_channels)))["params"]
    flat = {p: (1.0 if p.endswith("scale") else 0.0) + 0.1 * rng.randn(*s.shape).astype(np.float32)
            for p, s in flatten_params(shapes).items()}
    return unflatten_params(flat)


def _run(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(ROOT))


def test_help_lists_the_flags():
    r = _run("--help")
    assert "--checkpoint" in r.stdout + r.stderr and "--what" in r.stdout + r.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--checkpoint=/nonexistent/params.safetensors", "--out=x.pt"], "does not exist"),
        (["--checkpoint=README.md", "--out=x.pt"], "unknown weight file type"),
        (["--checkpoint=tests", "--out=x.pt"], "no checkpoints"),
        (["--checkpoint=x.safetensors", "--out=x.onnx"], "--out must end with"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle):
    r = _run(*args)
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_cli_exports_flat_params_with_parity(tmp_path):
    pytest.importorskip("monai")
    params = _random_params(SwinTransformer3D(**SMALL))
    src = str(tmp_path / "encoder_params.safetensors")
    save_params(src, params)
    out = str(tmp_path / "encoder.safetensors")
    r = _run(f"--checkpoint={src}", f"--out={out}", "--parity_size=32")
    assert r.returncode == 0, r.stderr
    sd = read_state_dict(out)
    assert f"wrote {len(sd)} keys" in r.stdout
    err = float(r.stdout.split("max abs parity error")[1].split(":")[1].split()[0])
    assert err < 1e-4, r.stdout
    want = to_monai(params)
    assert set(sd) == set(want)
    for k in want:
        np.testing.assert_array_equal(sd[k], want[k])


def test_encoder_from_a_swinunetr_file_loads_into_monai(tmp_path):
    torch = pytest.importorskip("torch")
    swin_unetr = pytest.importorskip("monai.networks.nets.swin_unetr")
    model = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True)
    params = _random_params(model, seed=1)
    src = str(tmp_path / "unetr_monai.pt")  # a MONAI-layout input file this time
    write_state_dict(src, to_monai(params))
    logs = []
    res = export(src, str(tmp_path / "enc.pt"), what="encoder", log=logs.append, parity_size=32)
    assert res["max_abs_error"] < 1e-4 and res["swinunetr_unexpected"] == [] and res["swinunetr_absent_swinvit"] == []
    sd = torch.load(str(tmp_path / "enc.pt"), weights_only=True)["state_dict"]
    assert sd and all(k.startswith("swinViT.") for k in sd)
    net = swin_unetr.SwinUNETR(in_channels=1, out_channels=5, feature_size=12, use_v2=True)
    result = net.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == []
    assert not [k for k in result.missing_keys if k.startswith("swinViT.")]

    res = export(src, str(tmp_path / "whole.safetensors"), what="swinunetr", log=logs.append, parity=False)
    assert res["keys"] == len(net.state_dict())
    assert any("wrote" in line for line in logs)


def test_encoder_cannot_become_a_swinunetr(tmp_path):
    src = str(tmp_path / "enc.npz")
    save_params(src, _random_params(SwinTransformer3D(**SMALL)))
    with pytest.raises(ValueError, match="needs a whole SwinUNETR"):
        export(src, str(tmp_path / "o.safetensors"), what="swinunetr", parity=False, log=lambda s: None)
    with pytest.raises(ValueError, match="--step"):
        export(src, str(tmp_path / "o.safetensors"), step=3, parity=False, log=lambda s: None)


def test_a_damaged_checkpoint_is_named_not_a_traceback(tmp_path):
    """Garbage metadata or truncated array data: a ValueError naming the step folder (the commands print it as one line)."""
    from s2dc_jax.interop.workdir import load_params
    from s2dc_jax.training.checkpoint import Checkpoints

    for damage in ("metadata", "data"):
        work = tmp_path / damage
        ck = Checkpoints(work, 1, "dice")
        ck.save_best(1, {"w": np.arange(4096, dtype=np.float32).reshape(64, 64)}, {"dice": 0.5})
        ck.close()
        params, step = load_params(work / "best")
        assert step == 1 and params["w"][1, 2] == 66
        if damage == "metadata":
            (work / "best" / "1" / "state" / "_METADATA").write_text("garbage")
            want = "cannot read the saved state"
        else:
            files = [p for p in (work / "best" / "1" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
            assert files
            for p in files:
                p.write_bytes(p.read_bytes()[:10])
            want = "cannot read the saved"  # the arrays' metadata sits in the same files as their data
        with pytest.raises(ValueError, match=f"best/1: {want}"):
            load_params(work / "best")
