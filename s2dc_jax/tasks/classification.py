"""Volume classification: Swin encoder + MLP head, cross-entropy, accuracy and macro one-vs-rest AUC."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from s2dc_jax.data.io import DataError
from s2dc_jax.data.presets import resize
from s2dc_jax.tasks import data as task_data
from s2dc_jax.tasks import losses, metrics
from s2dc_jax.tasks.models import build_classifier

MAIN_METRIC = "accuracy"
DENSE = False
build_model = build_classifier


def load_target(entry, image, meta, shape, config):
    """The entry's class index; the volume is resized to data.roi (the classifier sees it whole)."""
    del meta, shape
    target = int(entry[config.data.target_key])
    if not 0 <= target < config.model.out_channels:
        raise DataError(str(entry.get("image")), f"class {target} outside [0, model.out_channels="
                                                 f"{config.model.out_channels})")
    return resize(image, tuple(config.data.roi), order=1), target


def sample(case, rng, config):
    """The whole (resized) volume, randomly flipped."""
    (img,) = task_data.random_flips(rng, (case.image,), config.data.flip_prob)
    return img, np.int32(case.target)


def loss(logits, labels, config):
    """Cross-entropy of logits f32[B, K] against int[B]."""
    del config
    return losses.ce_loss(logits, labels)


def evaluate(predict, params, cases, entries, config, out_dir=None) -> dict:
    """Class probabilities of every validation volume; accuracy and macro one-vs-rest AUC."""
    del entries, config
    probs = np.concatenate([np.asarray(jax.nn.softmax(predict(params, jnp.asarray(c.image[None])), axis=-1))
                            for c in cases])
    labels = np.asarray([c.target for c in cases])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = ["path,label,pred," + ",".join(f"p{k}" for k in range(probs.shape[1]))]
        rows += [f"{c.meta['path']},{c.target},{int(p.argmax())}," + ",".join(f"{v:.6f}" for v in p)
                 for c, p in zip(cases, probs)]
        (out_dir / "predictions.csv").write_text("\n".join(rows) + "\n")
    return {"accuracy": metrics.accuracy(labels, probs), "auc": metrics.auc_ovr_macro(labels, probs)}
