"""MONAI <= 1.4's 3D patch merging (`merging="legacy"`) and the authors' S2DC checkpoint layout (issue 19).

The legacy reference is MONAI 1.6's own `SwinTransformer` with each `PatchMerging`
instance given, in this file, the slicing MONAI 0.9-1.4 ran (written out below, not taken
from the library), so the test does not share the code it checks.
"""
import functools
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2dc_jax.interop import (
    MERGING_HINT,
    export_metadata,
    from_monai,
    infer_config,
    legacy_export_warning,
    load_params,
    merging_from_metadata,
    monai_constructor_line,
    read_metadata,
    resolve_merging,
    save_params,
    to_monai,
    unflatten_params,
    write_state_dict,
)
from s2dc_jax.interop.mapping import expected_params
from s2dc_jax.models import SwinTransformer3D, SwinUNETR
from s2dc_jax.models.swin import PatchMerging

TOL = 1e-5  # per stage, max abs, float32 on CPU
SHAPE = (64, 32, 48)  # three different sides; stage maps 32x16x24 ... 4x2x3 -> 2x1x2 (odd side padded)
SMALL = dict(in_channels=1, feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=7,
             use_v2=True)


# ---------------------------------------------------------------- the rule itself, against NumPy


def _numpy_merging(x, scale, bias, kernel, legacy):
    """Independent reference: pad odd sides, concat 8 slices as MONAI writes them, LayerNorm, matmul."""
    b, d, h, w, c = x.shape
    x = np.pad(x, [(0, 0), (0, d % 2), (0, h % 2), (0, w % 2), (0, 0)])
    s0, s1 = slice(0, None, 2), slice(1, None, 2)
    if legacy:  # MONAI 0.9-1.4: x4..x6 = [1::2, 0::2, 1::2], [0::2, 1::2, 0::2], [0::2, 0::2, 1::2]
        idx = [(s0, s0, s0), (s1, s0, s0), (s0, s1, s0), (s0, s0, s1),
               (s1, s0, s1), (s0, s1, s0), (s0, s0, s1), (s1, s1, s1)]
    else:  # MONAI >= 1.5: x4..x6 = [1::2, 1::2, 0::2], [1::2, 0::2, 1::2], [0::2, 1::2, 1::2]
        idx = [(s0, s0, s0), (s1, s0, s0), (s0, s1, s0), (s0, s0, s1),
               (s1, s1, s0), (s1, s0, s1), (s0, s1, s1), (s1, s1, s1)]
    cat = np.concatenate([x[:, i, j, k] for i, j, k in idx], axis=-1).astype(np.float64)
    mu = cat.mean(-1, keepdims=True)
    var = ((cat - mu) ** 2).mean(-1, keepdims=True)
    return ((cat - mu) / np.sqrt(var + 1e-5) * scale + bias) @ kernel


@pytest.mark.parametrize("shape", [(6, 4, 8), (5, 6, 7)])
def test_patch_merging_rules_match_a_numpy_reference(shape):
    rng = np.random.RandomState(0)
    c = 4
    x = rng.randn(2, *shape, c).astype(np.float32)
    params = {"norm": {"scale": 1 + 0.1 * rng.randn(8 * c), "bias": 0.1 * rng.randn(8 * c)},
              "reduction": {"kernel": rng.randn(8 * c, 2 * c)}}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    outs = {}
    for rule in ("monai", "legacy"):
        ours = np.asarray(PatchMerging("merging", rule=rule).apply({"params": params}, jnp.asarray(x)))
        ref = _numpy_merging(x, np.asarray(params["norm"]["scale"]), np.asarray(params["norm"]["bias"]),
                             np.asarray(params["reduction"]["kernel"]), legacy=rule == "legacy")
        assert ours.shape == ref.shape == (2, *[-(-s // 2) for s in shape], 2 * c)
        assert np.abs(ours - ref).max() < 1e-4, rule
        outs[rule] = ours
    assert np.abs(outs["monai"] - outs["legacy"]).max() > 1e-1  # the two rules really differ


def test_merging_argument_is_checked():
    x = jnp.zeros((1, 32, 32, 32, 1))
    for bad in ("new", "MONAI", None):
        with pytest.raises(ValueError, match="merging must be one of"):
            jax.eval_shape(SwinTransformer3D(**SMALL, merging=bad).init, jax.random.key(0), x)
        with pytest.raises(ValueError, match="merging must be one of"):
            jax.eval_shape(SwinUNETR(in_channels=1, out_channels=2, feature_size=12, merging=bad).init,
                           jax.random.key(0), x)
    with pytest.raises(ValueError, match="merging='legacy' is a rule of downsample='merging'"):
        jax.eval_shape(SwinTransformer3D(**SMALL, downsample="mergingv2", merging="legacy").init,
                       jax.random.key(0), x)
    for rule in ("monai", "legacy"):  # same parameters under either rule: weights move freely
        assert set(expected_params(SwinTransformer3D(**SMALL, merging=rule))) == set(
            expected_params(SwinTransformer3D(**SMALL)))


# ---------------------------------------------------------------- parity with MONAI, both rules

try:
    import torch
    from monai.networks.nets import swin_unetr

    torch.set_num_threads(2)
except ImportError:  # the NumPy-only tests above still run
    torch = swin_unetr = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch and MONAI")


def _monai_1_4_merging_forward(self, x):
    """MONAI 0.9-1.4's 3D PatchMerging.forward, slices as the issue quotes them."""
    _, d, h, w, _ = x.shape
    if d % 2 or h % 2 or w % 2:
        x = torch.nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
    x = torch.cat([
        x[:, 0::2, 0::2, 0::2, :], x[:, 1::2, 0::2, 0::2, :], x[:, 0::2, 1::2, 0::2, :], x[:, 0::2, 0::2, 1::2, :],
        x[:, 1::2, 0::2, 1::2, :], x[:, 0::2, 1::2, 0::2, :], x[:, 0::2, 0::2, 1::2, :], x[:, 1::2, 1::2, 1::2, :],
    ], -1)
    return self.reduction(self.norm(x))


def _as_monai_1_4(module):
    n = 0
    for m in module.modules():
        if type(m) is swin_unetr.PatchMerging:
            m.forward = types.MethodType(_monai_1_4_merging_forward, m)
            n += 1
    assert n == 4
    return module


def _torch_encoder(rule, seed=None, feature_size=12):
    tm = swin_unetr.SwinTransformer(in_chans=1, embed_dim=feature_size, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                                    depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), use_v2=True).eval()
    if seed is not None:  # perturb every weight (MONAI starts LayerNorms at 1/0, biases at 0)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in tm.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return _as_monai_1_4(tm) if rule == "legacy" else tm


def _to_torch(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 4, 1, 2, 3).contiguous()


def _run_torch(tm, x):
    with torch.no_grad():
        return [t.permute(0, 2, 3, 4, 1).numpy() for t in tm(_to_torch(x))]


@functools.lru_cache(maxsize=None)
def _apply(model):
    return jax.jit(model.apply)


def _stage_errors(ours, ref):
    assert [tuple(a.shape) for a in ours] == [b.shape for b in ref]
    return [float(np.abs(np.asarray(a) - b).max()) for a, b in zip(ours, ref)]


def _random_params(model, seed):
    rng = np.random.RandomState(seed)
    return unflatten_params({p: (1.0 if p.endswith("scale") else 0.0) + 0.1 * rng.randn(*s.shape).astype(np.float32)
                             for p, s in expected_params(model).items()})


@needs_torch
def test_legacy_encoder_parity_both_directions():
    """The legacy rule against MONAI 1.2's merging, both ways (the default rule: test_models_parity.py)."""
    rule = "legacy"
    x = np.random.RandomState(1).randn(1, *SHAPE, 1).astype(np.float32)
    model = SwinTransformer3D(**SMALL, merging=rule)

    tm = _torch_encoder(rule, seed=2)  # MONAI weights -> ours
    params, report = from_monai(tm.state_dict())
    assert len(report.matched) == 126 and not report.missing and not report.unexpected
    errs = _stage_errors(_apply(model)({"params": params}, jnp.asarray(x)), _run_torch(tm, x))
    assert max(errs) <= TOL, f"MONAI -> ours, {rule}: per-stage max abs errors {errs}"

    jparams = _random_params(model, seed=3)  # ours -> MONAI
    tm2 = _torch_encoder(rule)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in to_monai(jparams, encoder_prefix="").items()}, strict=True)
    errs2 = _stage_errors(_apply(model)({"params": jparams}, jnp.asarray(x)), _run_torch(tm2, x))
    assert max(errs2) <= TOL, f"ours -> MONAI, {rule}: per-stage max abs errors {errs2}"

    # the other rule on the same weights is far off from stage 1 on: the test can fail
    wrong = SwinTransformer3D(**SMALL, merging="legacy" if rule == "monai" else "monai")
    errs_wrong = _stage_errors(_apply(wrong)({"params": params}, jnp.asarray(x)), _run_torch(tm, x))
    assert errs_wrong[0] <= TOL and min(errs_wrong[1:]) > 1e-2, errs_wrong


@needs_torch
def test_swinunetr_legacy_parity():
    x = np.random.RandomState(4).randn(1, 64, 32, 32, 1).astype(np.float32)
    tm = _as_monai_1_4(swin_unetr.SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True).eval())
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        ref = tm(_to_torch(x)).permute(0, 2, 3, 4, 1).numpy()
    params, report = from_monai(tm.state_dict())
    assert not report.missing and not report.unexpected
    errs = {}
    for rule in ("legacy", "monai"):
        model = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True, merging=rule)
        errs[rule] = float(np.abs(np.asarray(_apply(model)({"params": params}, jnp.asarray(x))) - ref).max())
    assert errs["legacy"] <= 1e-4 and errs["monai"] > 1e-2, errs


@needs_torch
def test_library_torch_patch_matches_the_independent_one():
    from s2dc_jax.interop import patch_monai_merging

    x = np.random.RandomState(6).randn(1, *SHAPE, 1).astype(np.float32)
    plain = _torch_encoder("monai", seed=7)
    legacy = _torch_encoder("legacy")
    legacy.load_state_dict(plain.state_dict())
    tm = _torch_encoder("monai")
    tm.load_state_dict(plain.state_dict())
    assert patch_monai_merging(tm, "legacy") == 4
    assert max(_stage_errors(_run_torch(tm, x), _run_torch(legacy, x))) == 0.0
    assert patch_monai_merging(tm, "monai") == 4
    assert max(_stage_errors(_run_torch(tm, x), _run_torch(plain, x))) == 0.0


# ---------------------------------------------------------------- the authors' checkpoint layout


def _authors_model():
    """A torch model named like the authors' S2DCTokenHead (commit b65c9aa), trained on MONAI 1.2's merging."""
    from monai.networks.blocks import UnetrBasicBlock

    class _ProjectionHead(torch.nn.Module):
        """Same attribute names as the authors' `projection_head` (Linear, BN without state, ReLU)."""

        def __init__(self, din, hidden, dout):
            super().__init__()
            bn = functools.partial(torch.nn.BatchNorm1d, affine=False, track_running_stats=False)
            self.layer1 = torch.nn.Sequential(torch.nn.Linear(din, hidden), bn(hidden), torch.nn.ReLU())
            self.layer2 = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), bn(hidden), torch.nn.ReLU())
            self.layer3 = torch.nn.Sequential(torch.nn.Linear(hidden, dout))

    class _AuthorsSwin(torch.nn.Module):
        """Named like the authors' `Swin` (S2DCTokenHead's student / teacher), trained on MONAI 1.2's merging."""

        def __init__(self, seed, fs=12):
            super().__init__()
            self.swinViT = _torch_encoder("legacy", seed=seed, feature_size=fs)
            self.proj_head_geo = _ProjectionHead(4 * fs, 32, 16)
            self.encoder_cof = UnetrBasicBlock(3, 16 * fs, 16 * fs, kernel_size=3, stride=1, norm_name="instance",
                                               res_block=True)
            self.proj_head_cl = _ProjectionHead(16 * fs, 32, 16)
            self.avg_pooling = torch.nn.AdaptiveAvgPool3d((1, 1, 1))

    class _AuthorsS2DC(torch.nn.Module):
        """Named like the authors' `S2DCTokenHead`: student, EMA teacher, InfoNCE queue buffers."""

        def __init__(self):
            super().__init__()
            self.student = _AuthorsSwin(seed=10)
            self.teacher = _AuthorsSwin(seed=11)  # an EMA copy that has drifted: distinguishable weights
            self.register_buffer("queue_cl", torch.nn.functional.normalize(torch.randn(40, 16), dim=1))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    return _AuthorsS2DC()


@pytest.fixture(scope="module")
def authors_checkpoint(tmp_path_factory):
    """A .pt saved as the authors' main.py saves: {"epoch", "state_dict" (DDP `module.` keys), "optimizer"}."""
    model = _authors_model().eval()
    opt = torch.optim.AdamW(model.student.parameters(), lr=1e-4)
    model.student.swinViT(torch.zeros(1, 1, 32, 32, 32))[-1].sum().backward()
    opt.step()  # so the optimizer state holds tensors, as a real one does
    path = str(tmp_path_factory.mktemp("authors") / "model_final_epoch.pt")
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 100, "state_dict": sd, "optimizer": opt.state_dict()}, path)
    return path, model, sd


@needs_torch
def test_authors_checkpoint_loads_student_or_teacher(authors_checkpoint):
    path, torch_model, sd = authors_checkpoint
    n_teacher = sum(k.startswith("module.teacher.") for k in sd)
    n_student_heads = sum(k.startswith(("module.student.proj_head", "module.student.encoder_cof")) for k in sd)
    assert (n_teacher, n_student_heads) == (126 + 8 + 14, 14)
    x = np.random.RandomState(12).randn(1, *SHAPE, 1).astype(np.float32)
    legacy, monai = SwinTransformer3D(**SMALL, merging="legacy"), SwinTransformer3D(**SMALL)

    # as a new user would: no rule given -> everything accounted for, and the one-line hint
    params, report = load_params(path)
    assert (len(report.matched), len(report.missing), len(report.unexpected), len(report.buffers)) == (126, 0, 0, 8)
    assert len(report.ignored) == n_teacher + n_student_heads + 2 + 2  # + queue_cl, queue_ptr; epoch, optimizer
    assert {"module.queue_cl", "module.queue_ptr", "epoch", "optimizer"} <= set(report.ignored)
    assert "ignored 166" in report.summary() and "unexpected 0" in report.summary()
    assert report.merging == "monai" and report.notes == [MERGING_HINT]
    assert "\n" not in MERGING_HINT and "model.merging=legacy" in MERGING_HINT
    ref = _run_torch(torch_model.student.swinViT, x)
    errs = _stage_errors(_apply(legacy)({"params": params}, jnp.asarray(x)), ref)
    assert max(errs) <= 1e-4, f"student, legacy: {errs}"
    errs_monai = _stage_errors(_apply(monai)({"params": params}, jnp.asarray(x)), ref)
    assert errs_monai[0] <= 1e-4 and min(errs_monai[1:]) > 1e-2, f"student, monai rule: {errs_monai}"

    # the teacher, with the rule given: no hint, the student's copy is the one ignored now
    tparams, treport = load_params(path, source="teacher", merging="legacy")
    assert (len(treport.matched), len(treport.unexpected), len(treport.ignored)) == (126, 0, 166)
    assert treport.notes == [] and treport.merging == "legacy"
    assert any(k.startswith("module.student.swinViT.") for k in treport.ignored)
    terrs = _stage_errors(_apply(legacy)({"params": tparams}, jnp.asarray(x)),
                          _run_torch(torch_model.teacher.swinViT, x))
    assert max(terrs) <= 1e-4, f"teacher, legacy: {terrs}"
    assert not np.array_equal(tparams["layers1"]["blocks_0"]["attn"]["qkv"]["kernel"],
                              params["layers1"]["blocks_0"]["attn"]["qkv"]["kernel"])

    # the same file into a whole SwinUNETR for fine-tuning: the decoder is missing, nothing unexpected
    unetr = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True, merging="legacy")
    init = _random_params(unetr, seed=13)
    _, ureport = load_params(path, init_params=init, what="swinunetr", merging="legacy")
    assert len(ureport.matched) == 126 and not ureport.unexpected and ureport.missing
    assert all(not p.startswith("swinViT/") for p in ureport.missing)


@needs_torch
def test_source_is_checked_and_a_partial_twin_stays_unexpected(authors_checkpoint):
    _, _, sd = authors_checkpoint
    with pytest.raises(ValueError, match="source must be one of"):
        from_monai(sd, source="ema")
    student_only = {k: v for k, v in sd.items() if not k.startswith("module.teacher.")}
    with pytest.raises(ValueError, match="source='teacher' but the weights have no teacher.* keys"):
        from_monai(student_only, source="teacher")
    teacher_only = {k: v for k, v in sd.items() if not k.startswith("module.student.")}
    with pytest.raises(ValueError, match=r"no student\.\* keys, only 148 teacher.* ones; pass source='teacher'"):
        from_monai(teacher_only)
    partial = dict(student_only, **{"module.teacher.swinViT.patch_embed.proj.weight":
                                    sd["module.teacher.swinViT.patch_embed.proj.weight"]})
    _, report = from_monai(partial, merging="legacy")
    assert report.unexpected == ["module.teacher.swinViT.patch_embed.proj.weight"]


# ---------------------------------------------------------------- the rule recorded in files


@needs_torch
def test_exported_metadata_records_the_rule_and_is_taken_on_load(tmp_path):
    model = SwinTransformer3D(**SMALL, merging="legacy")
    params = _random_params(model, seed=14)
    sd = to_monai(params)
    cfg = infer_config(sd)
    meta = export_metadata(cfg, merging="legacy", what="encoder")
    assert meta["merging"] == "legacy" and meta["monai_versions"] == "1.2-1.4"
    assert json.loads(meta["monai_args"]) == {"in_channels": 1, "feature_size": 12, "depths": [2, 2, 2, 2],
                                              "num_heads": [3, 6, 12, 24], "use_v2": True}
    for name in ("enc.safetensors", "enc.pt"):
        path = str(tmp_path / name)
        write_state_dict(path, sd, metadata=meta)
        assert read_metadata(path)["merging"] == "legacy"
        _, report = load_params(path)  # no rule given: the file's is taken, no hint
        assert report.merging == "legacy" and report.notes == [] and not report.unexpected
        _, report = load_params(path, merging="monai")  # a conflicting config: the file wins, and says so
        assert report.merging == "legacy" and len(report.notes) == 1 and "merging=legacy" in report.notes[0]
        rule, note = resolve_merging("monai", read_metadata(path))
        assert rule == "legacy" and note == report.notes[0]
    raw = torch.load(str(tmp_path / "enc.pt"), weights_only=True)
    assert set(raw) == {"state_dict", "metadata"}  # MONAI users still take ["state_dict"]
    # a model built with the other rule is told so
    _, report = from_monai(sd, model=SwinTransformer3D(**SMALL), metadata=meta)
    assert "model has merging=monai" in report.notes[0]
    # another writer's MONAI version, left beside the state dict
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}, "monai_version": "1.2.0"},
               str(tmp_path / "v.pt"))
    assert merging_from_metadata(read_metadata(str(tmp_path / "v.pt"))) == "legacy"
    assert merging_from_metadata({"monai_version": "1.5.0"}) == "monai"
    assert merging_from_metadata({}) is None
    with pytest.raises(ValueError, match="metadata field 'merging'"):
        merging_from_metadata({"merging": "v1.2"})
    with pytest.raises(ValueError, match="carry no metadata"):
        write_state_dict(str(tmp_path / "w.npz"), sd, metadata=meta)
    save_params(str(tmp_path / "p.safetensors"), params, metadata={"merging": "legacy"})  # our flat layout too
    assert read_metadata(str(tmp_path / "p.safetensors"))["merging"] == "legacy"


@needs_torch
def test_legacy_export_warning_and_the_monai_line_builds_the_model():
    import monai

    params = _random_params(SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True), seed=15)
    sd = to_monai(params)
    cfg = infer_config(sd)
    assert legacy_export_warning(cfg, "monai", "swinunetr") is None
    warning = legacy_export_warning(cfg, "legacy", "swinunetr")
    assert "\n" not in warning and "MONAI >= 1.5" in warning and "newer merging" in warning
    assert "img_size=(96, 96, 96)" in warning and "# MONAI 1.2-1.4" in warning
    line = monai_constructor_line(cfg, "monai", "swinunetr")
    assert line.endswith("# MONAI >=1.5")
    net = eval(line.split("  #")[0], {"monai": monai})  # the line is real Python for this MONAI
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
