"""Downstream metrics: Dice, accuracy, one-vs-rest AUC, PSNR, SSIM (3D), NRMSE.

Each follows a named reference so numbers compare across papers:
Dice as MONAI `DiceMetric(ignore_empty=True)`, AUC as scikit-learn
`roc_auc_score(multi_class="ovr", average="macro")`, PSNR / SSIM / NRMSE as
scikit-image `peak_signal_noise_ratio` / `structural_similarity` /
`normalized_root_mse`. Tests check each against its reference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import rankdata

# ----------------------------------------------------------------------------- Dice


def dice_per_class(pred, label, num_classes: int, include_background: bool = False):
    """Dice per sample and class of integer label maps; NaN where the class is absent from `label`."""
    # pred, label: int[B, X, Y, Z] -> f32[B, C] (C = num_classes, minus 1 without background)
    if pred.shape != label.shape:
        raise ValueError(f"dice_per_class: pred shape {pred.shape} != label shape {label.shape}")
    if num_classes < 2:
        raise ValueError(f"dice_per_class: num_classes must be >= 2, got {num_classes}")
    first = 0 if include_background else 1
    classes = jnp.arange(first, num_classes)
    b = pred.shape[0]
    p = jnp.reshape(pred, (b, -1))[:, None, :] == classes[None, :, None]  # bool[B, C, N]
    g = jnp.reshape(label, (b, -1))[:, None, :] == classes[None, :, None]
    inter = jnp.sum(p & g, axis=-1).astype(jnp.float32)
    denom = (jnp.sum(p, axis=-1) + jnp.sum(g, axis=-1)).astype(jnp.float32)
    # MONAI's ignore_empty: an empty ground truth makes Dice undefined, not 0 or 1.
    has_gt = jnp.sum(g, axis=-1) > 0
    return jnp.where(has_gt, 2.0 * inter / jnp.maximum(denom, 1.0), jnp.nan)


def aggregate_dice(per_sample) -> tuple[np.ndarray, float]:
    """(per-class mean over samples, mean Dice) of a stacked f32[N, C] table, as MONAI's reductions.

    Per class is MONAI's "mean_batch"; the mean is MONAI's "mean": average over the
    defined classes of each sample, then over samples. NaN entries are left out.
    """
    d = np.asarray(per_sample, np.float64)
    with _quiet_nan():
        per_class = np.nanmean(d, axis=0)
        per_sample_mean = np.nanmean(d, axis=1)
        mean = float(np.nanmean(per_sample_mean)) if np.isfinite(d).any() else float("nan")
    return per_class, mean


class _quiet_nan:
    """Silences numpy's 'mean of empty slice' warning where NaN is the intended answer."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


# ----------------------------------------------------------------------------- classification


def accuracy(labels, probs) -> float:
    """Fraction of samples whose arg-max class equals the label."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    return float(np.mean(np.argmax(probs, axis=-1) == labels))


def binary_auc(is_pos, score) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie-averaged ranks); NaN if one class is absent."""
    is_pos = np.asarray(is_pos, bool)
    score = np.asarray(score, np.float64)
    n_pos = int(is_pos.sum())
    n_neg = is_pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)  # ties get their average rank, as the trapezoidal ROC integrates them
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_ovr_macro(labels, probs) -> float:
    """Macro one-vs-rest ROC AUC of class scores f[N, K] (binary AUC on column 1 when K == 2)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"auc_ovr_macro: probs must be [N, K] with N = {labels.shape[0]}, got {probs.shape}")
    k = probs.shape[1]
    if k == 2:
        return binary_auc(labels == 1, probs[:, 1])
    aucs = [binary_auc(labels == c, probs[:, c]) for c in range(k)]
    with _quiet_nan():
        return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


# ----------------------------------------------------------------------------- image regression


def psnr(pred, target, data_range):
    """Peak signal-to-noise ratio in dB over the whole array: 10 log10(range^2 / MSE)."""
    mse = jnp.mean((jnp.asarray(target, jnp.float32) - jnp.asarray(pred, jnp.float32)) ** 2)
    return 10.0 * jnp.log10(jnp.asarray(data_range, jnp.float32) ** 2 / mse)


def nrmse(pred, target, normalization: str = "euclidean"):
    """RMSE normalised by the target's 'euclidean' norm (RMS), 'min-max' range or 'mean'."""
    target = jnp.asarray(target, jnp.float32)
    rmse = jnp.sqrt(jnp.mean((target - jnp.asarray(pred, jnp.float32)) ** 2))
    if normalization == "euclidean":
        denom = jnp.sqrt(jnp.mean(target * target))
    elif normalization == "min-max":
        denom = jnp.max(target) - jnp.min(target)
    elif normalization == "mean":
        denom = jnp.mean(target)
    else:
        raise ValueError(f"nrmse: normalization must be 'euclidean', 'min-max' or 'mean', got {normalization!r}")
    return rmse / denom


def _filter_separable(x, taps):
    """Correlates every axis of x with the 1-D kernel `taps`, mirror-padded like scipy.ndimage 'reflect'."""
    r = (len(taps) - 1) // 2
    for axis in range(x.ndim):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        xp = jnp.pad(x, pad, mode="symmetric")  # numpy 'symmetric' == ndimage 'reflect' (edge repeated)
        n = x.shape[axis]
        x = sum(float(w) * jax.lax.slice_in_dim(xp, t, t + n, axis=axis) for t, w in enumerate(taps))
    return x


def ssim3d(pred, target, data_range, win_size: int = 7, gaussian_weights: bool = False,
           k1: float = 0.01, k2: float = 0.03, use_sample_covariance: bool = True):
    """Mean structural similarity of two volumes f[X, Y, Z], as skimage `structural_similarity`.

    Defaults are skimage's: a 7^3 uniform window with sample covariance. With
    `gaussian_weights=True` the window is a Gaussian of sigma 1.5 truncated at 3.5
    sigma (11 taps), as in Wang et al.; pass `use_sample_covariance=False` as well to
    reproduce that paper's setting. Borders of half a window are excluded from the mean.
    """
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"ssim3d: need two volumes of one shape [X, Y, Z], got {pred.shape} and {target.shape}")
    if gaussian_weights:
        sigma, truncate = 1.5, 3.5
        r = int(truncate * sigma + 0.5)
        t = np.arange(-r, r + 1, dtype=np.float64)
        taps = np.exp(-0.5 * t * t / sigma**2)
        taps /= taps.sum()
        win_size = 2 * r + 1
    else:
        if win_size % 2 != 1 or win_size < 3:
            raise ValueError(f"ssim3d: win_size must be odd and >= 3, got {win_size}")
        taps = np.full((win_size,), 1.0 / win_size)
    if min(pred.shape) < win_size:
        raise ValueError(f"ssim3d: every side of {pred.shape} must be >= win_size {win_size}")
    npix = win_size**3
    cov_norm = npix / (npix - 1.0) if use_sample_covariance else 1.0
    x, y = target, pred
    ux, uy = _filter_separable(x, taps), _filter_separable(y, taps)
    uxx, uyy = _filter_separable(x * x, taps), _filter_separable(y * y, taps)
    uxy = _filter_separable(x * y, taps)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    p = (win_size - 1) // 2
    return jnp.mean(s[p:-p, p:-p, p:-p])
