"""Weight conversion and files: exact round trips, loud reports, MONAI SwinUNETR loading of an exported encoder."""
import jax
import numpy as np
import pytest

from s2dc_jax.interop import (
    flatten_params,
    from_monai,
    infer_config,
    load_params,
    read_state_dict,
    save_params,
    to_monai,
    unflatten_params,
    write_state_dict,
)
from s2dc_jax.interop.mapping import expected_params, flax_to_monai_key, monai_to_flax_key
from s2dc_jax.models import SwinTransformer3D, SwinUNETR

ENC = dict(in_channels=1, feature_size=12, use_v2=True)


class NotATensor:  # unpickling an arbitrary class can run code: weights_only must refuse it
    pass


def _random_params(model, seed=0):
    """Random numpy params of the right shapes, without running the model."""
    rng = np.random.RandomState(seed)
    flat = {p: rng.randn(*s.shape).astype(np.float32) for p, s in expected_params(model).items()}
    return unflatten_params(flat)


def _assert_trees_equal(a, b):
    fa, fb = flatten_params(a), flatten_params(b)
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


@pytest.fixture(scope="module")
def enc_params():
    return _random_params(SwinTransformer3D(**ENC))


@pytest.fixture(scope="module")
def unetr_params():
    return _random_params(SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True), seed=1)


def test_key_table_examples_both_ways():
    cases = [
        ("swinViT/patch_embed/proj/kernel", "swinViT.patch_embed.proj.weight"),
        ("swinViT/layers1/blocks_0/attn/qkv/kernel", "swinViT.layers1.0.blocks.0.attn.qkv.weight"),
        ("swinViT/layers3/blocks_1/attn/relative_position_bias_table",
         "swinViT.layers3.0.blocks.1.attn.relative_position_bias_table"),
        ("swinViT/layers2/blocks_1/mlp/linear2/bias", "swinViT.layers2.0.blocks.1.mlp.linear2.bias"),
        ("swinViT/layers4/downsample/reduction/kernel", "swinViT.layers4.0.downsample.reduction.weight"),
        ("swinViT/layers1c/layer/conv2/kernel", "swinViT.layers1c.0.layer.conv2.conv.weight"),
        ("encoder10/layer/conv1/kernel", "encoder10.layer.conv1.conv.weight"),
        ("decoder5/transp_conv/kernel", "decoder5.transp_conv.conv.weight"),
        ("decoder1/conv_block/conv3/kernel", "decoder1.conv_block.conv3.conv.weight"),
        ("out/conv/bias", "out.conv.conv.bias"),
    ]
    for path, key in cases:
        assert flax_to_monai_key(path)[0] == key
        assert monai_to_flax_key(key)[0] == path
    assert monai_to_flax_key("swinViT.layers1.0.blocks.0.attn.qkv.weight_extra") is None


def test_encoder_round_trip_is_exact(enc_params):
    sd = to_monai(enc_params)
    assert all(k.startswith("swinViT.") for k in sd)
    assert sd["swinViT.layers1.0.blocks.0.attn.qkv.weight"].shape == (36, 12)
    assert sd["swinViT.layers1c.0.layer.conv1.conv.weight"].shape == (12, 12, 3, 3, 3)
    back, report = from_monai(sd)
    assert not report.missing and not report.unexpected and not report.skipped
    assert len(report.buffers) == 8 and len(report.matched) == len(flatten_params(enc_params))
    _assert_trees_equal(back, enc_params)


def test_swinunetr_round_trip_is_exact(unetr_params):
    sd = to_monai(unetr_params)
    assert sd["decoder5.transp_conv.conv.weight"].shape == (192, 96, 2, 2, 2)  # torch ConvTranspose: [in, out, k]
    back, report = from_monai(sd)
    assert not report.missing and not report.unexpected
    _assert_trees_equal(back, unetr_params)
    cfg = infer_config(sd)
    assert cfg["out_channels"] == 3 and cfg["use_v2"] and cfg["feature_size"] == 12 and cfg["window_size"] == 7


def test_real_checkpoint_spellings_and_unexpected_keys_are_reported(enc_params):
    sd = to_monai(enc_params)
    messy = {("module.student." + k.replace("swinViT.", "swin_vit.")): v for k, v in sd.items()}
    messy["module.teacher.swin_vit.patch_embed.proj.weight"] = sd["swinViT.patch_embed.proj.weight"]
    messy["module.proj_head_geo.0.weight"] = np.zeros((4, 4), np.float32)
    back, report = from_monai(messy)
    _assert_trees_equal(back, enc_params)
    assert sorted(report.unexpected) == [
        "module.proj_head_geo.0.weight", "module.teacher.swin_vit.patch_embed.proj.weight"]
    assert "unexpected 2" in report.summary()


def test_missing_keys_are_reported_and_filled_from_init(enc_params):
    sd = to_monai(enc_params)
    del sd["swinViT.layers2.0.blocks.1.norm2.weight"]
    _, report = from_monai(sd)
    assert report.missing == ["layers2/blocks_1/norm2/scale"]
    init = jax.tree.map(np.zeros_like, enc_params)
    params, report = from_monai(sd, init_params=init)
    assert report.missing == ["layers2/blocks_1/norm2/scale"]
    assert not params["layers2"]["blocks_1"]["norm2"]["scale"].any()
    np.testing.assert_array_equal(params["layers2"]["blocks_1"]["norm1"]["scale"],
                                  enc_params["layers2"]["blocks_1"]["norm1"]["scale"])


def test_encoder_into_swinunetr_reports_decoder_missing(enc_params):
    model = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True)
    params, report = from_monai(to_monai(enc_params), model=model)
    assert report.missing and all(not p.startswith("swinViT/") for p in report.missing)
    assert "encoder1/layer/conv1/kernel" in report.missing and "out/conv/kernel" in report.missing
    _assert_trees_equal(params["swinViT"], enc_params)


def test_shape_mismatch_names_key_and_both_shapes(enc_params):
    sd = to_monai(enc_params)
    sd["swinViT.layers1.0.blocks.0.attn.qkv.weight"] = np.zeros((36, 13), np.float32)
    model = SwinTransformer3D(**ENC)
    with pytest.raises(ValueError, match=r"swinViT\.layers1\.0\.blocks\.0\.attn\.qkv\.weight.*\(36, 13\).*\(12, 36\)"):
        from_monai(sd, model=model)


def test_skip_first_layer_when_in_channels_differ(enc_params):
    sd = to_monai(enc_params)  # 1-channel weights into a 4-channel model (BraTS)
    model = SwinTransformer3D(in_channels=4, feature_size=12, use_v2=True)
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        from_monai(sd, model=model)
    init = _random_params(model, seed=5)
    params, report = from_monai(sd, model=model, init_params=init, skip=[r"patch_embed\.proj"])
    assert sorted(report.skipped) == ["swinViT.patch_embed.proj.bias", "swinViT.patch_embed.proj.weight"]
    assert report.missing == ["patch_embed/proj/bias", "patch_embed/proj/kernel"]
    assert params["patch_embed"]["proj"]["kernel"].shape == (2, 2, 2, 4, 12)
    np.testing.assert_array_equal(params["layers3"]["blocks_0"]["attn"]["qkv"]["kernel"],
                                  enc_params["layers3"]["blocks_0"]["attn"]["qkv"]["kernel"])
    with pytest.raises(ValueError, match="skip pattern"):
        from_monai(sd, skip=["("])


def test_wrong_relative_position_index_is_an_error(enc_params):
    sd = to_monai(enc_params)
    key = "swinViT.layers1.0.blocks.0.attn.relative_position_index"
    sd[key] = sd[key][::-1].copy()
    with pytest.raises(ValueError, match="relative_position_index"):
        from_monai(sd)


def test_safetensors_and_npz_files_without_torch(tmp_path, enc_params):
    sd = to_monai(enc_params)
    for name in ("w.safetensors", "w.npz"):
        assert write_state_dict(str(tmp_path / name), sd) == len(sd)
        back = read_state_dict(str(tmp_path / name))
        assert set(back) == set(sd)
        params, report = load_params(str(tmp_path / name))
        assert not report.missing and not report.unexpected
        _assert_trees_equal(params, enc_params)
    # our own flat flax layout
    n = save_params(str(tmp_path / "p.safetensors"), enc_params)
    assert n == len(flatten_params(enc_params))
    params, report = load_params(str(tmp_path / "p.safetensors"))
    assert report is None
    _assert_trees_equal(params, enc_params)
    with pytest.raises(ValueError, match="unknown weight file type"):
        read_state_dict(str(tmp_path / "p.safetensors") + ".bin")
    with pytest.raises(ValueError, match="no such weight file"):
        read_state_dict(str(tmp_path / "absent.safetensors"))


def test_pt_files_use_weights_only(tmp_path, enc_params):
    torch = pytest.importorskip("torch")
    sd = to_monai(enc_params)
    path = str(tmp_path / "w.pt")
    write_state_dict(path, sd)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict"} and set(raw["state_dict"]) == set(sd)
    params, report = load_params(path)
    assert not report.unexpected
    _assert_trees_equal(params, enc_params)

    torch.save({"state_dict": {"x": NotATensor()}}, str(tmp_path / "evil.pt"))
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(str(tmp_path / "evil.pt"))


def test_exported_paper_size_encoder_loads_into_monai_swinunetr():
    torch = pytest.importorskip("torch")
    swin_unetr = pytest.importorskip("monai.networks.nets.swin_unetr")
    enc = _random_params(SwinTransformer3D(in_channels=1, feature_size=48, use_v2=True), seed=3)
    sd = to_monai(enc)
    net = swin_unetr.SwinUNETR(in_channels=1, out_channels=14, feature_size=48, use_v2=True)
    result = net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert result.unexpected_keys == []
    swin_keys = {k for k in net.state_dict() if k.startswith("swinViT.")}
    assert swin_keys == set(sd)
    assert set(result.missing_keys) == set(net.state_dict()) - swin_keys
    got = net.state_dict()["swinViT.layers2.0.blocks.1.attn.qkv.weight"].numpy()
    np.testing.assert_array_equal(got, enc["layers2"]["blocks_1"]["attn"]["qkv"]["kernel"].T)
