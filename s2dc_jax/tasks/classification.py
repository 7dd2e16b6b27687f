"""Volume classification: Swin encoder + MLP head, cross-entropy, accuracy and macro one-vs-rest AUC."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from s2dc_jax.tasks import losses, metrics, trainer


def loss(logits, labels, config):
    """Cross-entropy of logits f32[B, K] against int[B]."""
    del config
    return losses.ce_loss(logits, labels)


def evaluate(predict, params, cases, entries, config, out_dir=None) -> dict:
    """Class probabilities of every validation volume; accuracy and macro one-vs-rest AUC."""
    del entries
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


SPEC = trainer.TaskSpec(loss=loss, evaluate=evaluate, main_metric="accuracy")


def run(config, workdir) -> dict:
    """Fine-tunes a Swin encoder + MLP head for classification; see trainer.run."""
    return trainer.run(config, workdir, SPEC)
