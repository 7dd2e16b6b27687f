"""Image-to-image translation and reconstruction: SwinUNETR regression output, L1/MSE, PSNR/SSIM/NRMSE."""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from s2dc_jax.data.presets import pad_symmetric
from s2dc_jax.tasks import data as task_data
from s2dc_jax.tasks import losses, metrics
from s2dc_jax.tasks.models import build_unetr
from s2dc_jax.tasks.segmentation import prediction_name

MAIN_METRIC = "psnr"
DENSE = True
build_model = build_unetr


def load_target(entry, image, meta, shape, config):
    """The entry's target image on the input's grid."""
    key = config.data.target_key
    return image, task_data.load_target_image(entry[key], meta, shape, config, str(entry.get("image")))


def sample(case, rng, config):
    """A random training crop of input and target together."""
    roi = tuple(config.data.roi)
    img, tgt = pad_symmetric(case.image, roi), pad_symmetric(case.target, roi)
    box = task_data.crop_box(rng, img.shape[:3], roi)
    img, tgt = task_data.random_flips(rng, (img[box], tgt[box]), config.data.flip_prob)
    return img, tgt.astype(np.float32)


def loss(pred, target, config):
    """L1 or MSE (config.loss.name) of pred f32[B, X, Y, Z, C] against the target image."""
    return losses.regression_loss(pred, target, config.loss.name)


def evaluate(predict, params, cases, entries, config, out_dir=None) -> dict:
    """Sliding-window prediction of each validation volume; mean PSNR, SSIM and NRMSE over volumes.

    The data range of PSNR/SSIM is the target's own range (max - min) per volume.
    """
    rows = []
    for case, entry in zip(cases, entries):
        pred = np.asarray(predict(params, jnp.asarray(case.image[None])))[0]  # f32[X, Y, Z, C]
        tgt = case.target
        dr = float(tgt.max() - tgt.min()) or 1.0
        ssim = np.mean([float(metrics.ssim3d(pred[..., c], tgt[..., c], dr, win_size=config.eval.ssim_win))
                        for c in range(tgt.shape[-1])])
        rows.append((float(metrics.psnr(pred, tgt, dr)), ssim, float(metrics.nrmse(pred, tgt))))
        if out_dir is not None:
            raw = task_data.to_raw_grid(pred, case.meta, order=1)
            raw = raw[..., 0] if raw.shape[-1] == 1 else raw
            task_data.save_prediction(Path(out_dir) / prediction_name(entry, "pred"), raw, case.meta["path"],
                                      dtype=np.float32)
    r = np.asarray(rows)
    return {"psnr": float(r[:, 0].mean()), "ssim": float(r[:, 1].mean()), "nrmse": float(r[:, 2].mean())}
