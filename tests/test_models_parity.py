"""Our Swin-3D and SwinUNETR against MONAI's on CPU in float32: outputs, both weight directions, gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
swin_unetr = pytest.importorskip("monai.networks.nets.swin_unetr")

from s2dc_jax.interop import from_monai, to_monai  # noqa: E402
from s2dc_jax.models import SwinTransformer3D, SwinUNETR  # noqa: E402

torch.set_default_dtype(torch.float32)
torch.set_num_threads(2)
TOL = 1e-4
SHAPES = [(64, 64, 64), (96, 64, 32)]  # one cubic, one with three different sides
SMALL = dict(feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=7)


def _torch_encoder(use_v2, feature_size=12):
    return swin_unetr.SwinTransformer(
        in_chans=1, embed_dim=feature_size, window_size=(7, 7, 7), patch_size=(2, 2, 2),
        depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), use_v2=use_v2,
    ).eval()


def _randomize(module, seed):
    # MONAI initialises biases to 0 and LayerNorms to 1/0: perturb everything so each weight matters
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module


def _to_torch(x):  # f32[B, X, Y, Z, C] -> f32[B, C, X, Y, Z]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 4, 1, 2, 3).contiguous()


def _to_jax_layout(t):
    return t.detach().permute(0, 2, 3, 4, 1).numpy()


def _random_params(model, seed):
    """Params in our tree layout with random values, from shapes alone (init's compile is slow on CPU)."""
    rng = np.random.RandomState(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 32, model.in_channels)))
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (1.0 if path[-1].key == "scale" else 0.0) + 0.1 * rng.randn(*s.shape).astype(np.float32),
        shapes["params"],
    )


@functools.lru_cache(maxsize=None)
def _jit_apply(model):
    return jax.jit(model.apply)


def _input(shape, channels=1, seed=0):
    return np.random.RandomState(seed).randn(1, *shape, channels).astype(np.float32)


@pytest.mark.parametrize("use_v2", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_encoder_parity_both_directions(use_v2, shape):
    x = _input(shape)
    model = SwinTransformer3D(**SMALL, use_v2=use_v2)
    apply = _jit_apply(model)

    # MONAI weights -> ours
    tm = _randomize(_torch_encoder(use_v2), seed=1)
    params, report = from_monai(tm.state_dict())
    assert not report.missing and not report.unexpected and not report.skipped
    with torch.no_grad():
        ref = [_to_jax_layout(t) for t in tm(_to_torch(x))]
    ours = apply({"params": params}, jnp.asarray(x))
    assert len(ours) == 5
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        err = float(np.abs(np.asarray(a) - b).max())
        assert err < TOL, f"stage {i}: max abs error {err}"

    # weights made on our side -> MONAI
    jparams = _random_params(model, seed=3)
    tm2 = _torch_encoder(use_v2)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in to_monai(jparams, encoder_prefix="").items()}, strict=True)
    with torch.no_grad():
        ref2 = [_to_jax_layout(t) for t in tm2(_to_torch(x))]
    ours2 = apply({"params": jparams}, jnp.asarray(x))
    for i, (a, b) in enumerate(zip(ours2, ref2)):
        err = float(np.abs(np.asarray(a) - b).max())
        assert err < TOL, f"reverse, stage {i}: max abs error {err}"


def _torch_unetr(feature_size=12, in_channels=1, out_channels=3, use_v2=True):
    return swin_unetr.SwinUNETR(
        in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, use_v2=use_v2
    ).eval()


@pytest.mark.parametrize("shape", SHAPES)
def test_swinunetr_v2_parity_both_directions(shape):
    x = _input(shape, seed=5)
    model = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, use_v2=True)
    apply = _jit_apply(model)

    tm = _randomize(_torch_unetr(), seed=2)
    params, report = from_monai(tm.state_dict())
    assert not report.missing and not report.unexpected
    assert "swinViT" in params and "decoder1" in params
    with torch.no_grad():
        ref = _to_jax_layout(tm(_to_torch(x)))
    ours = np.asarray(apply({"params": params}, jnp.asarray(x)))
    assert ours.shape == (1, *shape, 3)
    err = float(np.abs(ours - ref).max())
    assert err < TOL, f"MONAI -> ours: max abs error {err}"

    jparams = _random_params(model, seed=7)
    tm2 = _torch_unetr()
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in to_monai(jparams).items()}, strict=True)
    with torch.no_grad():
        ref2 = _to_jax_layout(tm2(_to_torch(x)))
    ours2 = np.asarray(apply({"params": jparams}, jnp.asarray(x)))
    err = float(np.abs(ours2 - ref2).max())
    assert err < TOL, f"ours -> MONAI: max abs error {err}"


def test_parameter_gradients_match_torch_autograd():
    use_v2 = True  # a superset of the v1 encoder's parameters
    shape = (64, 32, 32)
    x = _input(shape, seed=9)
    tm = _randomize(_torch_encoder(use_v2), seed=11)
    params, _ = from_monai(tm.state_dict())
    # a fixed random projection of every stage, so each stage and channel contributes
    rng = np.random.RandomState(13)
    model = SwinTransformer3D(**SMALL, use_v2=use_v2)
    outs_shape = jax.eval_shape(model.apply, {"params": params}, jnp.asarray(x))
    weights = [rng.randn(*o.shape).astype(np.float32) for o in outs_shape]

    def scalar(p):
        outs = model.apply({"params": p}, jnp.asarray(x))
        return sum(jnp.sum(o * w) for o, w in zip(outs, weights))

    grads = jax.jit(jax.grad(scalar))(params)
    # The reference in float64: MONAI's float32 conv backward sums the patch embedding's
    # gradient in an order that depends on its threads (3.4e-3 off once on a loaded CI run).
    tm = tm.double()
    outs = tm(_to_torch(x).double())
    loss = sum((o * torch.from_numpy(w).double().permute(0, 4, 1, 2, 3)).sum() for o, w in zip(outs, weights))
    loss.backward()
    torch_grads = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    ours = to_monai(grads, encoder_prefix="")
    assert set(torch_grads) <= set(ours)
    for k, g in torch_grads.items():
        rel = np.linalg.norm(ours[k] - g) / max(np.linalg.norm(g), 1e-12)
        assert rel <= 1e-4, f"{k}: relative gradient error {rel:.2e}"  # 2e-6 measured
    assert len(torch_grads) > 50


def test_paper_size_parameter_count_matches_monai():
    for use_v2, want in [(True, 18_637_362), (False, 8_062_002)]:
        model = SwinTransformer3D(in_channels=1, feature_size=48, use_v2=use_v2)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 96, 96, 96, 1)))
        ours = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
        tm = swin_unetr.SwinTransformer(1, 48, (7, 7, 7), (2, 2, 2), (2, 2, 2, 2), (3, 6, 12, 24), use_v2=use_v2)
        theirs = sum(p.numel() for p in tm.parameters() if p.requires_grad)
        assert ours == theirs == want, (use_v2, ours, theirs)


@pytest.mark.slow
def test_paper_size_encoder_parity():
    x = _input((96, 96, 96), seed=17)
    tm = _randomize(_torch_encoder(True, feature_size=48), seed=19)
    params, report = from_monai(tm.state_dict())
    assert not report.missing and not report.unexpected
    with torch.no_grad():
        ref = [_to_jax_layout(t) for t in tm(_to_torch(x))]
    model = SwinTransformer3D(in_channels=1, feature_size=48, use_v2=True)
    ours = jax.jit(model.apply)({"params": params}, jnp.asarray(x))
    assert [o.shape for o in ours] == [(1, 48, 48, 48, 48), (1, 24, 24, 24, 96), (1, 12, 12, 12, 192),
                                       (1, 6, 6, 6, 384), (1, 3, 3, 3, 768)]
    for i, (a, b) in enumerate(zip(ours, ref)):
        err = float(np.abs(np.asarray(a) - b).max())
        assert err < TOL, f"stage {i}: max abs error {err}"
