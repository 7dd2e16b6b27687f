"""Fine-tuning initialisation: MONAI .pt weights, init.skip, pretraining workdirs; NIfTI predictions."""
from pathlib import Path

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

from s2dc_jax.data import io
from s2dc_jax.interop import flatten_params
from s2dc_jax.interop.workdir import load_params
from s2dc_jax.models import init_key
from s2dc_jax.tasks import data as task_data
from s2dc_jax.tasks import finetune_config as task_config
from s2dc_jax.tasks.finetune import FinetuneTask
from s2dc_jax.tasks.init import merge, pretrained_params, read_pretrained
from s2dc_jax.tasks.models import build_unetr

REPO = Path(__file__).resolve().parents[1]


def _seg_config(in_channels=1, out_channels=3):
    c = task_config.shrink(task_config.base_config("segmentation"))
    c.model.in_channels, c.model.out_channels = in_channels, out_channels
    c.model.use_v2 = True
    return c


def _fresh(c, seed=0):
    model = build_unetr(c)
    x = jnp.zeros((1, 32, 32, 32, c.model.in_channels))
    return model, jax.jit(model.init)(init_key(jax.random.PRNGKey(seed)), x)["params"]  # as the task does


def _monai(c):
    torch.manual_seed(0)
    m = MonaiSwinUNETR(in_channels=c.model.in_channels, out_channels=c.model.out_channels,
                       feature_size=c.model.feature_size, depths=tuple(c.model.depths),
                       num_heads=tuple(c.model.num_heads), use_v2=True).eval()
    # Non-trivial norms and biases so every mapped tensor matters in the comparison.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.slow
def test_init_torch_pt_matches_monai_forward(tmp_path):
    c = _seg_config()
    ref = _monai(c)
    path = tmp_path / "swinunetr.pt"
    torch.save({"state_dict": ref.state_dict()}, path)
    c.init.torch = str(path)
    model, fresh = _fresh(c)
    lines = []
    params = _loaded(fresh, pretrained_params(fresh, read_pretrained(c), c, log=lines.append))
    n = len(flatten_params(fresh))
    assert f"loaded {n}, skipped 0 (init.skip), missing 0 (kept fresh), unexpected 0" in lines[-1]
    # MONAI's norms need more than one voxel at the bottleneck: 64x32x32 gives two.
    x = np.random.default_rng(0).normal(size=(1, 64, 32, 32, 1)).astype(np.float32)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x)))  # compiled: eager is minutes
    with torch.no_grad():
        theirs = ref(torch.from_numpy(np.moveaxis(x, -1, 1))).numpy()
    np.testing.assert_allclose(ours, np.moveaxis(theirs, 1, -1), atol=1e-4, rtol=0)


def test_init_skip_first_layer_for_more_channels(tmp_path):
    # 1-channel encoder weights into a 4-channel model (BraTS): only the input layers start fresh.
    c1 = _seg_config(in_channels=1)
    ref = _monai(c1)
    enc = {k: v for k, v in ref.state_dict().items() if k.startswith("swinViT.")}
    from safetensors.torch import save_file
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in enc.items()}, str(path))
    c4 = _seg_config(in_channels=4)
    c4.init.torch = str(path)
    _, fresh = _fresh(c4)
    with pytest.raises(ValueError, match="shape mismatch for swinViT/patch_embed/proj/kernel"):
        pretrained_params(fresh, read_pretrained(c4), c4, log=lambda s: None)  # not silent without init.skip
    loaded = read_pretrained(c4).tree
    with pytest.raises(ValueError, match="match no parameter"):  # a typo is not silently ignored
        merge(fresh, loaded, (r"patch_embd",))
    merged, report = merge(fresh, loaded, (r"swinViT/patch_embed/proj/",))
    assert sorted(report.skipped) == ["swinViT/patch_embed/proj/bias", "swinViT/patch_embed/proj/kernel"]
    params = _loaded(fresh, merged)
    flat, flat0 = flatten_params(params), flatten_params(fresh)
    np.testing.assert_array_equal(flat["swinViT/patch_embed/proj/kernel"], flat0["swinViT/patch_embed/proj/kernel"])
    qkv = enc["swinViT.layers1.0.blocks.0.attn.qkv.weight"].numpy()
    np.testing.assert_array_equal(flat["swinViT/layers1/blocks_0/attn/qkv/kernel"], qkv.T)
    # The decoder is not in an encoder file: reported missing, kept fresh.
    assert any(p.startswith("decoder1/") for p in report.missing)
    np.testing.assert_array_equal(flat["out/conv/kernel"], flat0["out/conv/kernel"])


def _loaded(fresh, merged):
    """Fresh params with the merged arrays put in (what FinetuneTask.initialize does on the devices)."""
    return jax.tree.map(lambda f, n: f if n is None else n, fresh, merged, is_leaf=lambda x: x is None)


def test_init_errors_name_the_field(tmp_path):
    c = _seg_config()
    _, fresh = _fresh(c)
    c.init.torch = str(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="init.torch"):
        read_pretrained(c)
    c.init.torch = None
    c.init.checkpoint = str(tmp_path / "no_run")
    with pytest.raises(ValueError, match="init.checkpoint"):
        read_pretrained(c)
    c.init.torch = "w.pt"
    c.data.datalist = "x.json"
    with pytest.raises(ValueError, match="init.checkpoint and init.torch"):
        task_config.validate(c, 2)


def test_a_resume_does_not_read_the_init_weights_again(tmp_path):
    """The pretraining run may have moved since the fine-tuning started: a resume takes the architecture from its own config.json."""
    started = _seg_config()
    started.model.window_size, started.model.num_heads = 4, (1, 1, 2, 2)  # what the weights gave at the start
    work = tmp_path / "ft"
    (work / "checkpoints" / "3" / "state").mkdir(parents=True)
    (work / "config.json").write_text(started.to_json_best_effort(indent=2))

    c = _seg_config()
    c.init.checkpoint = str(tmp_path / "pretraining_run_moved_away")
    task = FinetuneTask(c, workdir=work)
    assert task.pretrained is None  # nothing to load: the loop restores the checkpoint
    assert (task.config.model.window_size, tuple(task.config.model.num_heads)) == (4, (1, 1, 2, 2))
    assert "resuming" in task.init_lines[0] and "init.checkpoint is not read again" in task.init_lines[0]
    with pytest.raises(ValueError, match="model.window_size=7 but the weights have 4"):
        FinetuneTask(c, explicit={"model.window_size"}, workdir=work)
    # A new run (no checkpoints in its workdir) and a run without a workdir read the weights: here missing.
    for workdir in (tmp_path / "new_run", None):
        with pytest.raises(ValueError, match="init.checkpoint"):
            FinetuneTask(c, workdir=workdir)


@pytest.mark.slow  # one real pretraining step: a minute on a loaded 2-core CPU
def test_init_checkpoint_from_pretrain_workdir(tmp_path):
    # A real workdir of the training loop (the demo's architecture, one step on 4 crops, no evaluation).
    from s2dc_jax.tasks.pretrain import PretrainTask
    from s2dc_jax.training import loop
    from s2dc_jax.training.cli import load_config

    work = tmp_path / "pre"
    d = load_config(str(REPO / "configs" / "demo.py"), ["total_steps=1", "checkpoint_every=1", "data.phantoms=2",
                                                      "batch_size=2", "num_devices=2", "data.roi_large=(64,64,32)",
                                                      "eval_every=0", "image_every=0", "eval.at_start=False"])
    loop.run(PretrainTask(d), work)
    student, step = load_params(work)
    c = _seg_config()  # feature 12 like the demo, but heads (1, 2, 2, 4), window 7 and v2 blocks
    c.init.checkpoint = str(work)
    task = FinetuneTask(c)  # the architecture travels with the weights
    m, dm = task.config.model, d.model
    assert (tuple(m.num_heads), m.window_size, m.use_v2) == (tuple(dm.num_heads), dm.window_size, dm.use_v2)
    assert any(line.startswith("init: architecture from the weights") for line in task.init_lines)
    with pytest.raises(ValueError, match="model.window_size=7 but the weights have 4"):
        FinetuneTask(c, explicit={"model.window_size"})
    _, fresh = _fresh(task.config, seed=3)
    merged, report = merge(fresh, task.pretrained.tree, ())
    params = _loaded(fresh, merged)
    ours, theirs = flatten_params(params["swinViT"]), flatten_params(student["encoder"])
    assert set(ours) == set(theirs) and not report.skipped and not report.unexpected
    assert len(report.matched) == len(theirs) and all(p.startswith(("encoder", "decoder", "out")) for p in report.missing)
    for k in theirs:
        np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(theirs[k]), err_msg=k)
    # And they are not what a fresh init gives, so the comparison above means something.
    assert not np.allclose(flatten_params(fresh["swinViT"])["patch_embed/proj/kernel"],
                           theirs["patch_embed/proj/kernel"])


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIL"])
def test_prediction_nifti_keeps_affine_and_orientation(tmp_path, orientation):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(10, 12, 7)).astype(np.float32)
    src = io.save_volume(tmp_path / f"img_{orientation}.nii.gz", vol, spacing=(1.5, 0.8, 2.5),
                         orientation=orientation)
    ras, meta = io.load_volume(src)
    pred = (ras > 0).astype(np.uint8)  # a voxel-wise "prediction" in RAS order
    out = task_data.save_prediction(tmp_path / "pred.nii.gz", pred, meta["path"], dtype=np.uint8)
    a, b = nib.load(src), nib.load(out)
    np.testing.assert_allclose(b.affine, a.affine)
    assert nib.aff2axcodes(b.affine) == tuple(orientation)
    # Stored voxel for voxel in the source's own order.
    np.testing.assert_array_equal(np.asarray(b.dataobj), (np.asarray(a.dataobj) > 0).astype(np.uint8))
    # And back through the loader: the same RAS prediction.
    back, _ = io.load_volume(out)
    np.testing.assert_array_equal(back, pred)
    with pytest.raises(ValueError, match="does not match"):
        task_data.save_prediction(tmp_path / "bad.nii.gz", pred[:-1], meta["path"])
