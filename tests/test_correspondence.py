"""Ground-truth correspondence: exact against the device warp, and equal to a NumPy loop of its definition.

Measure of exactness: a ROI whose channels hold each voxel's own token index (x, y, z)
and a constant 1 is warped by the same device warp as aug_full; for every ground-truth
positive (src token i, aug token j) the warped channels at the centre of aug token j
(mean of its central 2x2x2 voxels, divided by the warped 1-channel, rounded) must name
token i. Measured here over 100 random affines of view_params.py at the paper's token
size (32 voxels): 100.0% exact, in-plane (384 x 384 ROI, 11,144 positives) and 3D
(192 x 192 x 96 ROI, 8,178 positives). The reference's ground truth manages ~84%.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2dc_jax import data, objectives


def _affines(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([data.sample_view_params(rng, 2)["full_affine"] for _ in range(n)])


def _exact_fraction(affines, roi, ts, mode, gt=None):
    """Fraction of gt positives whose aug token shows the src token's own content."""
    x, y, z = roi
    g = (x // ts, y // ts, z // ts)
    ax = [np.arange(s) // ts for s in roi]
    img = np.stack(np.broadcast_arrays(ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :],
                                       np.ones((1, 1, 1))), -1).astype(np.float32)
    warp = jax.jit(jax.vmap(lambda a: objectives.warp_volume(jnp.asarray(img), a, scale_z=(mode == "3d"))))
    if gt is None:
        gt = np.asarray(objectives.ground_truth(jnp.asarray(affines), roi, ts, mode))
    exact = total = 0
    c = ts // 2
    for start in range(0, len(affines), 5):
        warped = np.asarray(warp(jnp.asarray(affines[start:start + 5])))
        for w, gt_v in zip(warped, gt[start:start + 5]):
            centre = w.reshape(g[0], ts, g[1], ts, g[2], ts, 4)[:, c - 1:c + 1, :, c - 1:c + 1, :, c - 1:c + 1]
            centre = centre.mean(axis=(1, 3, 5))                                         # [gx, gy, gz, 4]
            shown = np.round(centre[..., :3] / np.maximum(centre[..., 3:], 1e-6)).astype(int)
            for i, j in zip(*np.nonzero(gt_v)):
                if mode == "inplane":
                    (jx, jy), (ix, iy) = divmod(j, g[1]), divmod(i, g[1])
                    ok = np.all(shown[jx, jy, :, :2] == (ix, iy))                       # every z-slice
                else:
                    (jxy, jz), (ixy, iz) = divmod(j, g[2]), divmod(i, g[2])
                    ok = np.all(shown[jxy // g[1], jxy % g[1], jz] == (ixy // g[1], ixy % g[1], iz))
                exact += bool(ok)
                total += 1
    return exact / total, total


@pytest.mark.parametrize("mode,roi", [("inplane", (384, 384, 32)), ("3d", (192, 192, 96))])
def test_ground_truth_is_exact_over_100_affines(mode, roi):
    frac, total = _exact_fraction(_affines(100), roi, 32, mode)
    assert total > 5000
    assert frac >= 0.99, f"{mode}: only {frac:.2%} of {total} positives exact"


def test_exactness_measure_catches_a_wrong_inverse():
    """The measure is not vacuous: ground truth from a mis-signed rotation fails it."""
    aff = _affines(20, seed=1)
    wrong = aff.copy()
    wrong[:, 0] *= -1
    gt_wrong = np.asarray(objectives.ground_truth(jnp.asarray(wrong), (384, 384, 32), 32, "inplane"))
    frac, _ = _exact_fraction(aff, (384, 384, 32), 32, "inplane", gt=gt_wrong)
    assert frac < 0.9


def np_ground_truth(affine, roi, ts, mode):
    """docs/method.md section 1 step 4, one token at a time, float64, exact inverse."""
    angle, s, tx, ty = (float(a) for a in affine)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    g = [r // ts for r in roi] if mode == "3d" else [r // ts for r in roi[:2]]
    c = np.array(roi, np.float64) / 2
    t = np.array([tx, ty])

    def fwd(p):
        out = s * rot @ (p[:2] - c[:2]) + c[:2] + t
        return np.append(out, s * (p[2] - c[2]) + c[2]) if len(p) == 3 else out

    def inv(q):
        out = rot.T @ (q[:2] - c[:2] - t) / s + c[:2]
        return np.append(out, (q[2] - c[2]) / s + c[2]) if len(q) == 3 else out

    cells = list(np.ndindex(*g))
    index = {cell: k for k, cell in enumerate(cells)}
    gt = np.zeros((len(cells), len(cells)))
    for i, cell in enumerate(cells):
        j_cell = tuple(np.floor(fwd((np.array(cell) + 0.5) * ts) / ts).astype(int))
        if j_cell not in index:
            continue
        back = tuple(np.floor(inv((np.array(j_cell) + 0.5) * ts) / ts).astype(int))
        if back == cell:
            gt[i, index[j_cell]] = 1
    return gt


@pytest.mark.parametrize("mode", ["inplane", "3d"])
def test_ground_truth_matches_numpy_definition(mode):
    aff = _affines(8, seed=2)
    roi = (192, 256, 96)
    got = np.asarray(objectives.ground_truth(jnp.asarray(aff), roi, 32, mode))
    for a, g in zip(aff, got):
        np.testing.assert_array_equal(g, np_ground_truth(a, roi, 32, mode))


def test_identity_affine_gives_identity():
    gt = np.asarray(objectives.ground_truth(jnp.asarray([[0.0, 1.0, 0.0, 0.0]]), (96, 128, 32), 32, "inplane"))
    np.testing.assert_array_equal(gt[0], np.eye(12))


def test_token_grid_and_mode_errors():
    assert objectives.token_grid((384, 384, 96), 96, 3) == ((12, 12, 3), 32)
    assert objectives.token_grid((64, 64, 32), 32, 4) == ((8, 8, 4), 8)
    with pytest.raises(ValueError, match="divide crop_size"):
        objectives.token_grid((64, 64, 32), 32, 5)
    with pytest.raises(ValueError, match="ssl.correspondence"):
        objectives.ground_truth(jnp.zeros((1, 4)), (64, 64, 32), 32, "2d")
