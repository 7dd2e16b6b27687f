"""Device-side views against scipy.ndimage in float64 and the crop layout of docs/method.md section 1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from s2dc_jax import data, objectives


def np_warp(vol, affine, scale_z=False):
    """Independent float64 trilinear warp: full 3D coordinates into scipy's map_coordinates."""
    angle, s, tx, ty = (float(a) for a in affine)
    x, y, z, ch = vol.shape
    c = (np.array([x, y, z]) - 1) / 2.0
    q = np.stack(np.meshgrid(np.arange(x), np.arange(y), np.arange(z), indexing="ij"), 0).astype(np.float64)
    d = q - c[:, None, None, None] - np.array([tx, ty, 0.0])[:, None, None, None]
    inv = np.array([[np.cos(angle), np.sin(angle), 0], [-np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    inv = inv / s
    if not scale_z:
        inv[2, 2] = 1.0
    p = np.einsum("ij,jxyz->ixyz", inv, d) + c[:, None, None, None]
    return np.stack([ndimage.map_coordinates(vol[..., k].astype(np.float64), p, order=1, mode="grid-constant",
                                             cval=0.0) for k in range(ch)], -1)


@pytest.mark.parametrize("scale_z", [False, True])
def test_warp_matches_scipy(scale_z):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(20, 24, 12, 2)).astype(np.float32)
    for affine in ([0.4, 1.15, 3.3, -5.7], [-0.5, 0.9, -7.0, 2.2], [0.0, 1.0, 0.0, 0.0]):
        got = objectives.warp_volume(jnp.asarray(vol), jnp.asarray(affine, jnp.float32), scale_z)
        np.testing.assert_allclose(np.asarray(got), np_warp(vol, affine, scale_z), atol=1e-5)


def test_forward_convention_moves_content():
    """view_params.py: content at p appears at s R (p - c) + c + t (counter-clockwise in x, y)."""
    vol = np.zeros((33, 33, 1, 1), np.float32)
    vol[26, 16, 0, 0] = 1.0                      # 10 voxels along +x from the centre (16, 16)
    out = np.asarray(objectives.warp_volume(jnp.asarray(vol), jnp.asarray([np.pi / 2, 1.0, 2.0, 0.0])))
    # +90 degrees takes +x to +y: (16, 26), then +2 in x -> (18, 26)
    assert np.unravel_index(out.argmax(), out.shape)[:2] == (18, 26)
    assert out.max() == pytest.approx(1.0, abs=1e-5)


def _views_inputs(rng, b=2, x=64, y=96, c=32):
    n = (x // c) * (y // c)
    vp = [data.sample_view_params(rng, n) for _ in range(b)]
    params = {k: np.stack([v[k] for v in vp]) for k in vp[0]}
    image = rng.uniform(size=(b, x, y, c, 1)).astype(np.float32)
    return image, params


def test_views_layout_and_augmentations():
    rng = np.random.default_rng(1)
    c = 32
    image, vp = _views_inputs(rng)
    vp["full_shift"][:] = [0.05, -0.08]
    vp["crop_shift"][0, 1] = 0.07
    src, aug_full, aug_crop = jax.jit(objectives.make_views, static_argnums=(5,))(
        image, vp["full_affine"], vp["full_shift"], vp["crop_affine"], vp["crop_shift"], c)
    src, aug_full, aug_crop = (np.asarray(v) for v in (src, aug_full, aug_crop))
    assert src.shape == aug_full.shape == aug_crop.shape == (2, 6, c, c, c, 1)
    # crop k = i * ny + j sits at x-index i and y-index j (ny = 3)
    for k in range(6):
        i, j = divmod(k, 3)
        np.testing.assert_array_equal(src[:, k], image[:, i * c:(i + 1) * c, j * c:(j + 1) * c])
    for v in range(2):
        whole = np_warp(image[v], vp["full_affine"][v]) + vp["full_shift"][v]
        for k in range(6):
            i, j = divmod(k, 3)
            np.testing.assert_allclose(aug_full[v, k], whole[i * c:(i + 1) * c, j * c:(j + 1) * c], atol=1e-5)
            want = np_warp(src[v, k] + vp["crop_shift"][v, k], vp["crop_affine"][v, k])
            np.testing.assert_allclose(aug_crop[v, k], want, atol=1e-5)


def test_views_reject_bad_shapes():
    rng = np.random.default_rng(2)
    image, vp = _views_inputs(rng)
    args = (vp["full_affine"], vp["full_shift"], vp["crop_affine"], vp["crop_shift"])
    with pytest.raises(ValueError, match="must equal crop_size"):
        objectives.make_views(image, *args, 16)
    with pytest.raises(ValueError, match="must divide"):
        objectives.make_views(image[:, :, :, :30], *args, 30)
    with pytest.raises(ValueError, match=">= 2"):
        objectives.make_views(image[:, :32, :32], *args, 32)


def test_sample_view_params_ranges():
    rng = np.random.default_rng(3)
    p = [data.sample_view_params(rng, 16) for _ in range(200)]
    full = np.stack([x["full_affine"] for x in p])
    crop = np.concatenate([x["crop_affine"] for x in p])
    assert np.abs(full[:, 0]).max() <= np.deg2rad(30) and np.abs(crop[:, 0]).max() <= np.deg2rad(20)
    assert 0.9 <= full[:, 1].min() and full[:, 1].max() <= 1.2
    assert 0.95 <= crop[:, 1].min() and crop[:, 1].max() <= 1.05
    assert np.abs(full[:, 2:]).max() <= 24 and np.abs(crop[:, 2:]).max() <= 24
    assert all(0 <= x["global_index"] < 16 for x in p)
