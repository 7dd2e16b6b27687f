"""Training losses: Dice + cross-entropy (as MONAI DiceCELoss with softmax), cross-entropy, L1, MSE."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_SMOOTH = 1e-5  # MONAI DiceLoss smooth_nr / smooth_dr


def dice_ce_loss(logits, labels, dice_weight: float = 1.0, ce_weight: float = 1.0):
    """MONAI DiceCELoss(to_onehot_y=True, softmax=True): soft Dice per sample and class, plus mean CE."""
    # logits: f32[B, X, Y, Z, K]; labels: int[B, X, Y, Z]
    k = logits.shape[-1]
    probs = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, k, dtype=logits.dtype)
    axes = (1, 2, 3)
    inter = jnp.sum(probs * onehot, axis=axes)
    denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
    dice = 1.0 - (2.0 * inter + _SMOOTH) / (denom + _SMOOTH)  # f32[B, K]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    d, c = jnp.mean(dice), jnp.mean(ce)
    return dice_weight * d + ce_weight * c, {"dice_loss": d, "ce_loss": c}


def ce_loss(logits, labels):
    """Mean softmax cross-entropy of logits f32[B, K] against int[B]."""
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return ce, {"ce_loss": ce}


def regression_loss(pred, target, name: str):
    """Mean L1 or MSE of pred f32[B, X, Y, Z, C] against target of the same shape."""
    err = pred - target
    v = jnp.mean(jnp.abs(err)) if name == "l1" else jnp.mean(err * err)
    return v, {name: v}
