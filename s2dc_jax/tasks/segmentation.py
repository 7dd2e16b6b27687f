"""Segmentation fine-tuning: SwinUNETR, Dice + CE, foreground-biased crops, sliding-window Dice, NIfTI label maps."""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from s2dc_jax.data.presets import pad_symmetric
from s2dc_jax.tasks import data as task_data
from s2dc_jax.tasks import losses, metrics
from s2dc_jax.tasks.models import build_unetr

MAIN_METRIC = "dice"
DENSE = True
build_model = build_unetr


def prediction_name(entry: dict, suffix: str) -> str:
    """Output file name for a datalist entry: its (first) image's name + suffix, e.g. case01_seg.nii.gz."""
    img = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
    name = Path(img).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return f"{name}_{suffix}.nii.gz"


def load_target(entry, image, meta, shape, config):
    """The entry's label map on the image's grid."""
    return image, task_data.load_label_map(entry[config.data.target_key], meta, shape, config)


def sample(case, rng, config):
    """A training crop centred on a labelled voxel with probability data.pos_ratio (MONAI RandCropByPosNegLabeld)."""
    roi = tuple(config.data.roi)
    img, tgt = pad_symmetric(case.image, roi), pad_symmetric(case.target, roi)
    centre = None
    if rng.random() < config.data.pos_ratio:
        fg = np.argwhere(tgt > 0)
        if len(fg):
            centre = fg[int(rng.integers(0, len(fg)))]
    box = task_data.crop_box(rng, img.shape[:3], roi, centre)
    img, tgt = task_data.random_flips(rng, (img[box], tgt[box]), config.data.flip_prob)
    return img, tgt.astype(np.int32)


def loss(logits, labels, config):
    """Dice + cross-entropy of logits f32[B, X, Y, Z, K] against int[B, X, Y, Z]."""
    return losses.dice_ce_loss(logits, labels, config.loss.dice_weight, config.loss.ce_weight)


def evaluate(predict, params, cases, entries, config, out_dir=None) -> dict:
    """Sliding-window prediction of each validation volume; Dice per class (no background) and mean."""
    k = config.model.out_channels
    rows = []
    for case, entry in zip(cases, entries):
        logits = predict(params, jnp.asarray(case.image[None]))  # f32[1, X, Y, Z, K]
        lab = np.asarray(jnp.argmax(logits, axis=-1))[0].astype(np.int32)
        rows.append(np.asarray(metrics.dice_per_class(lab[None], case.target[None], k))[0])
        if out_dir is not None:
            raw = task_data.to_raw_grid(lab, case.meta, order=0)
            task_data.save_prediction(Path(out_dir) / prediction_name(entry, "seg"), raw, case.meta["path"],
                                      dtype=np.uint8 if k < 256 else np.int16)
    per_class, mean = metrics.aggregate_dice(np.stack(rows))
    # A class in no validation label has no Dice (MONAI's ignore_empty): it is counted as absent, not NaN.
    out = {"dice": mean, "classes_absent": float(np.isnan(per_class).sum())}
    out.update({f"dice_class{c + 1}": float(v) for c, v in enumerate(per_class) if np.isfinite(v)})
    return out
