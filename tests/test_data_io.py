"""NIfTI loading: RAS reorientation, spacing, channels, scaling, and the pretraining presets vs MONAI."""
import nibabel as nib
import numpy as np
import pytest
import torch

from s2dc_jax import data
from s2dc_jax.data import io, presets


def _pattern(shape=(12, 10, 8)):
    # Every voxel distinct: any flip or transpose would show.
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * 1.5 - 40.0


def _save(path, arr, affine):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return str(path)


def test_lps_and_ras_files_load_to_the_same_array(tmp_path):
    a = _pattern()
    x, y, z = a.shape
    sp = (0.7, 0.9, 2.5)
    ras = _save(tmp_path / "ras.nii.gz", a, np.diag([*sp, 1.0]))
    # The same volume stored LPS: x and y reversed, affine with negative x/y axes that keeps
    # every voxel at the same world position.
    lps_aff = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    lps_aff[:3, 3] = [(x - 1) * sp[0], (y - 1) * sp[1], 0.0]
    lps = _save(tmp_path / "lps.nii.gz", np.ascontiguousarray(a[::-1, ::-1, :]), lps_aff)
    # And stored slice-first (axes z, y, x) with z reversed too: a permuted orientation.
    perm_aff = np.zeros((4, 4))
    perm_aff[0, 2], perm_aff[1, 1], perm_aff[2, 0], perm_aff[3, 3] = sp[0], sp[1], -sp[2], 1.0
    perm_aff[2, 3] = (z - 1) * sp[2]
    perm = _save(tmp_path / "perm.nii", np.ascontiguousarray(a.transpose(2, 1, 0)[::-1]), perm_aff)
    assert nib.aff2axcodes(lps_aff) == ("L", "P", "S")
    for p in (ras, lps, perm):
        b, meta = data.load_volume(p)
        np.testing.assert_array_equal(b, a, err_msg=p)
        np.testing.assert_allclose(meta["spacing"], sp)
        # The returned affine maps RAS voxel indices to the same world points for every file.
        np.testing.assert_allclose(meta["affine"], np.diag([*sp, 1.0]), atol=1e-6)
        assert io.read_header(p).shape == a.shape


def test_channels_4d_and_5d(tmp_path):
    a = np.random.default_rng(0).normal(size=(6, 5, 4, 2)).astype(np.float32)
    p4 = _save(tmp_path / "mm.nii.gz", a, np.eye(4))
    with pytest.raises(data.DataError, match="mm.nii.gz.*2 channels"):
        data.load_volume(p4)
    b, _ = data.load_volume(p4, channels=True)
    np.testing.assert_array_equal(b, a)
    p5 = _save(tmp_path / "vec.nii.gz", a[:, :, :, None, :], np.eye(4))
    np.testing.assert_array_equal(data.load_volume(p5, channels=True)[0], a)
    p5bad = _save(tmp_path / "five.nii.gz", np.stack([a, a], axis=3), np.eye(4))
    with pytest.raises(data.DataError, match="five.nii.gz.*5D"):
        data.load_volume(p5bad, channels=True)
    p3 = _save(tmp_path / "one.nii.gz", a[..., 0], np.eye(4))
    assert data.load_volume(p3, channels=True)[0].shape == (6, 5, 4, 1)


def test_scl_slope_and_inter_are_applied(tmp_path):
    raw = np.random.default_rng(1).integers(0, 3000, size=(8, 8, 6)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    p = tmp_path / "scaled.nii"
    nib.save(img, str(p))
    b, _ = data.load_volume(p)
    np.testing.assert_allclose(b, raw.astype(np.float64) * 2.0 - 1024.0)
    r = io.open_raw(p)
    assert (r.slope, r.inter) == (2.0, -1024.0) and r.data.dtype == np.int16


def test_nonfinite_voxels_name_the_file(tmp_path):
    a = _pattern()
    a[3, 4, 5] = np.nan
    p = _save(tmp_path / "nan.nii.gz", a, np.eye(4))
    with pytest.raises(data.DataError, match="nan.nii.gz: 1 NaN/inf"):
        data.load_volume(p)


# ---- presets against MONAI transforms (independent implementation) --------------------------

monai_t = pytest.importorskip("monai.transforms")


def _monai(x, *ts):
    out = torch.as_tensor(x)[None]
    for t in ts:
        out = t(out)
    return np.asarray(out[0], np.float32)


def test_resize_matches_torch_trilinear_align_corners():
    x = np.random.default_rng(2).normal(size=(9, 7, 5)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.as_tensor(x)[None, None], size=(16, 11, 8),
                                          mode="trilinear", align_corners=True)[0, 0].numpy()
    np.testing.assert_allclose(presets.resize(x, (16, 11, 8)), ref, atol=1e-5)
    # Label resizing with order 0 keeps the label values.
    lab = (x > 0).astype(np.uint8)
    assert set(np.unique(presets.resize(lab, (16, 11, 8), order=0))) <= {0, 1}


def test_foreground_box_matches_argwhere():
    rng = np.random.default_rng(3)
    x = np.zeros((20, 18, 16), np.int16)
    x[3:9, 5:15, 2:4] = rng.integers(1, 100, size=(6, 10, 2))
    idx = np.argwhere(x > 0)
    box = presets.foreground_box(x, 0)
    assert box == tuple(slice(lo, hi + 1) for lo, hi in zip(idx.min(0), idx.max(0)))
    assert presets.foreground_box(np.zeros((4, 4, 4)), 0) is None


def _ct_like(shape, rng):
    x = np.full(shape, -1024, np.int16)
    s = tuple(slice(n // 5, n - n // 6) for n in shape)
    x[s] = rng.integers(-900, 1500, size=x[s].shape)
    return x


def test_ct_preset_matches_monai_when_the_volume_fits_in_the_roi():
    # Smaller than the ROI in every axis, the random crop is the whole foreground box, so the
    # result is deterministic and must equal MONAI's chain in the reference.
    x = _ct_like((30, 26, 20), np.random.default_rng(4))
    ours = presets.pretrain_volume(x, np.random.default_rng(0), modality="ct", roi=(40, 40, 24))
    ref = _monai(x.astype(np.float32),
                 monai_t.ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0, b_max=1, clip=True),
                 monai_t.CropForeground(select_fn=lambda v: v > 0, allow_smaller=True),
                 monai_t.Resize((40, 40, 24), mode="trilinear", align_corners=True))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_ct_crop_is_inside_the_foreground_and_uses_slope_inter():
    rng = np.random.default_rng(5)
    hu = _ct_like((64, 60, 40), rng)
    raw = ((hu.astype(np.int32) + 1024) // 1).astype(np.uint16)  # stored as uint16, inter -1024
    a = presets.pretrain_volume(hu, np.random.default_rng(7), modality="ct", roi=(32, 32, 16))
    b = presets.pretrain_volume(raw, np.random.default_rng(7), modality="ct", roi=(32, 32, 16),
                                slope=1.0, inter=-1024.0)
    np.testing.assert_array_equal(a, b)
    # Every voxel of the crop comes from the foreground box: no air border value 0 there.
    assert a.shape == (32, 32, 16) and a.min() >= 0.0 and a.max() <= 1.0
    box = presets.foreground_box(hu, -1000)
    fg = np.clip((hu[box].astype(np.float64) + 1000) / 2000, 0, 1)
    # The crop equals some window of the foreground box (found by its first voxel).
    found = any(np.allclose(fg[i:i + 32, j:j + 32, k:k + 16], a, atol=1e-6)
                for i in range(fg.shape[0] - 31) for j in range(fg.shape[1] - 31)
                for k in range(fg.shape[2] - 15))
    assert found


def test_mri_preset_matches_monai():
    rng = np.random.default_rng(6)
    x = np.zeros((28, 24, 18), np.float32)
    x[4:22, 3:20, 2:15] = rng.uniform(50, 900, size=(18, 17, 13))
    ours = presets.pretrain_volume(x, np.random.default_rng(0), modality="mri", roi=(32, 32, 20))
    ref = _monai(x, monai_t.CropForeground(select_fn=lambda v: v > 0, allow_smaller=True),
                 monai_t.NormalizeIntensity(),
                 monai_t.Resize((32, 32, 20), mode="trilinear", align_corners=True))
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_pet_preset_matches_monai_padding():
    rng = np.random.default_rng(7)
    x = rng.gamma(2.0, 0.5, size=(21, 18, 11)).astype(np.float32)
    ours = presets.pretrain_volume(x, np.random.default_rng(0), modality="pet", roi=(24, 24, 16))
    ref = _monai(x, monai_t.NormalizeIntensity(),
                 monai_t.SpatialPad((24, 24, 16), method="symmetric", mode="constant"))
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_pet_crop_of_a_larger_volume_is_a_window_of_the_zscored_volume():
    x = np.random.default_rng(8).gamma(2.0, 0.5, size=(40, 20, 12)).astype(np.float32)
    out = presets.pretrain_volume(x, np.random.default_rng(1), modality="pet", roi=(16, 24, 12))
    z = (x.astype(np.float64) - x.mean()) / x.std()
    zp = np.pad(z, ((0, 0), (2, 2), (0, 0)))
    assert any(np.allclose(zp[i:i + 16], out, atol=1e-5) for i in range(25))


def test_preset_errors_name_field_and_file():
    with pytest.raises(ValueError, match="data.modality must be one of"):
        presets.get_preset("xray")
    with pytest.raises(data.DataError, match="const.nii: constant volume"):
        presets.pretrain_volume(np.full((20, 20, 20), 7.0, np.float32), np.random.default_rng(0),
                                modality="mri", roi=(16, 16, 16), path="const.nii")
    with pytest.raises(data.DataError, match="air.nii: no foreground"):
        presets.pretrain_volume(np.full((20, 20, 20), -1024, np.int16), np.random.default_rng(0),
                                modality="ct", roi=(16, 16, 16), path="air.nii")
    with pytest.raises(data.DataError, match="flat.nii: constant volume"):
        presets.pretrain_volume(np.full((20, 20, 20), 40, np.int16), np.random.default_rng(0),
                                modality="ct", roi=(16, 16, 16), path="flat.nii")
    with pytest.raises(data.DataError, match="tiny.nii: shortest side 4"):
        presets.pretrain_volume(np.ones((20, 20, 4), np.float32), np.random.default_rng(0),
                                modality="pet", roi=(16, 16, 16), path="tiny.nii", min_side=16)
