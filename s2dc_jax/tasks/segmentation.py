"""Segmentation fine-tuning: SwinUNETR, Dice + CE, sliding-window Dice, NIfTI label maps."""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from s2dc_jax.tasks import data as task_data
from s2dc_jax.tasks import losses, metrics, trainer


def prediction_name(entry: dict, suffix: str) -> str:
    """Output file name for a datalist entry: its (first) image's name + suffix, e.g. case01_seg.nii.gz."""
    img = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
    name = Path(img).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return f"{name}_{suffix}.nii.gz"


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
    out = {"dice": mean}
    out.update({f"dice_class{c + 1}": float(v) for c, v in enumerate(per_class)})
    return out


SPEC = trainer.TaskSpec(loss=loss, evaluate=evaluate, main_metric="dice")


def run(config, workdir) -> dict:
    """Fine-tunes a SwinUNETR for segmentation; see trainer.run."""
    return trainer.run(config, workdir, SPEC)
