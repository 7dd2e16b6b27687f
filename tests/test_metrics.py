"""Downstream metrics against independent implementations (MONAI, scikit-learn, scikit-image)."""
import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_auc_score

from s2dc_jax.tasks import metrics


def _onehot_cf(lab, k):
    # int[B, X, Y, Z] -> torch f32[B, K, X, Y, Z] (MONAI is channel-first)
    return torch.from_numpy(np.moveaxis(np.eye(k, dtype=np.float32)[lab], -1, 1))


@pytest.mark.parametrize("include_background", [False, True])
def test_dice_matches_monai(include_background):
    rng = np.random.default_rng(0)
    k = 4
    label = rng.integers(0, k, size=(3, 10, 9, 8))
    label[1][label[1] == 2] = 0  # an absent class: NaN in both
    pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, k, size=label.shape))
    ours = np.asarray(metrics.dice_per_class(pred, label, k, include_background=include_background))
    ref = DiceMetric(include_background=include_background, reduction="none", ignore_empty=True)
    ref(_onehot_cf(pred, k), _onehot_cf(label, k))
    theirs = ref.aggregate().numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours[~np.isnan(ours)], theirs[~np.isnan(theirs)], atol=1e-4)
    # The aggregated mean is MONAI's "mean" reduction; per-class is "mean_batch".
    per_class, mean = metrics.aggregate_dice(ours)
    ref_mean = DiceMetric(include_background=include_background, reduction="mean", ignore_empty=True)
    ref_mean(_onehot_cf(pred, k), _onehot_cf(label, k))
    assert abs(mean - float(ref_mean.aggregate())) < 1e-4
    ref_b = DiceMetric(include_background=include_background, reduction="mean_batch", ignore_empty=True)
    ref_b(_onehot_cf(pred, k), _onehot_cf(label, k))
    np.testing.assert_allclose(per_class, ref_b.aggregate().numpy(), atol=1e-4)


def test_dice_rejects_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        metrics.dice_per_class(np.zeros((1, 2, 2, 2), int), np.zeros((1, 2, 2, 2), int), 1)
    with pytest.raises(ValueError, match="shape"):
        metrics.dice_per_class(np.zeros((1, 2, 2, 2), int), np.zeros((1, 2, 2, 3), int), 3)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_auc_and_accuracy_match_sklearn(k):
    rng = np.random.default_rng(k)
    n = 60
    labels = rng.integers(0, k, size=n)
    labels[:k] = np.arange(k)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    logits = np.round(logits, 1)  # ties exercise the tie-averaged ranks
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ours = metrics.auc_ovr_macro(labels, probs)
    if k == 2:
        theirs = roc_auc_score(labels, probs[:, 1])
    else:
        theirs = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert abs(ours - theirs) < 1e-4, (ours, theirs)
    assert abs(metrics.accuracy(labels, probs) - np.mean(probs.argmax(-1) == labels)) < 1e-12


@pytest.mark.parametrize("shape", [(16, 17, 15), (24, 20, 12)])
def test_psnr_nrmse_ssim_match_skimage(shape):
    rng = np.random.default_rng(1)
    target = rng.random(shape).astype(np.float32)
    pred = np.clip(target + 0.1 * rng.normal(size=shape), 0, 1).astype(np.float32)
    dr = 1.0
    assert abs(float(metrics.psnr(pred, target, dr)) -
               peak_signal_noise_ratio(target, pred, data_range=dr)) < 1e-4
    for norm in ("euclidean", "min-max", "mean"):
        assert abs(float(metrics.nrmse(pred, target, norm)) -
                   normalized_root_mse(target, pred, normalization=norm)) < 1e-4
    # skimage defaults: 7^3 uniform window, sample covariance, K1=0.01, K2=0.03.
    ref = structural_similarity(target.astype(np.float64), pred.astype(np.float64), data_range=dr,
                                win_size=7, gaussian_weights=False)
    assert abs(float(metrics.ssim3d(pred, target, dr)) - ref) < 1e-4
    ref5 = structural_similarity(target.astype(np.float64), pred.astype(np.float64), data_range=dr, win_size=5)
    assert abs(float(metrics.ssim3d(pred, target, dr, win_size=5)) - ref5) < 1e-4
    # Wang et al.'s setting: Gaussian sigma 1.5 (11 taps), population covariance.
    refg = structural_similarity(target.astype(np.float64), pred.astype(np.float64), data_range=dr,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    ours_g = metrics.ssim3d(pred, target, dr, gaussian_weights=True, use_sample_covariance=False)
    assert abs(float(ours_g) - refg) < 1e-4


def test_ssim_of_identical_is_one_and_bad_args_fail():
    x = np.random.default_rng(2).random((12, 12, 12)).astype(np.float32)
    assert abs(float(metrics.ssim3d(x, x, 1.0)) - 1.0) < 1e-5
    with pytest.raises(ValueError, match="win_size"):
        metrics.ssim3d(x, x, 1.0, win_size=4)
    with pytest.raises(ValueError, match="normalization"):
        metrics.nrmse(x, x, "max")
