"""One S2DC pretraining step: a pure per-device function, run by the loop under shard_map over "data"."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from s2dc_jax import objectives
from s2dc_jax.models.encode import grouped
from s2dc_jax.tasks.base import AXIS, mean_gradients


def make_encode(config: ml_collections.ConfigDict, encoder) -> Callable:
    """``encode(enc_params, f32[N, c, c, c, C]) -> f32[N, t, t, t, F]``: last-stage features in fp32.

    The crops go through the encoder in the compute dtype, in groups of ``model.crop_group``
    under ``model.remat_policy`` (models/encode.py), which bounds the step's memory.
    """
    compute_dtype = jnp.dtype(config.model.dtype)

    def features(enc_params, x):
        return encoder.apply({"params": enc_params}, x.astype(compute_dtype))[-1].astype(jnp.float32)

    return grouped(features, model=config.model, crop_size=config.data.crop_size)


def train_step(state: dict, batch: dict, *, config: ml_collections.ConfigDict, encoder,
               tx: optax.GradientTransformation, schedule: optax.Schedule) -> tuple[dict, dict]:
    """Per-device body: EMA teacher, S2DC loss, device-mean AdamW update, queue update.

    ``batch`` holds this device's volumes (``image f32[b, X, Y, Z, 1]`` and the view
    parameters). The loop undoes a step whose loss or gradients are not finite (the
    teacher and queue included).
    """
    encode = make_encode(config, encoder)

    # docs/method.md section 2: before each step the teacher moves towards the student.
    momentum = objectives.ema_momentum(state["step"], config.ssl.ema_momentum,
                                       config.ssl.get("ema_schedule", "constant"), config.total_steps)
    with jax.named_scope("ema"):
        teacher = objectives.ema_update(state["teacher"], state["params"], momentum)

    def loss_fn(params):
        return objectives.s2dc_loss(params, teacher, encode, batch, state["queue"], config.ssl,
                                    crop_size=config.data.crop_size, axis_name=AXIS)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grads = mean_gradients(grads)
    with jax.named_scope("optimizer"):
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)

    keys_all = jax.lax.all_gather(aux["keys"], AXIS, tiled=True, to="invarying")  # f32[B_global, D]
    queue, queue_ptr = objectives.queue_update(state["queue"], state["queue_ptr"], keys_all)

    metrics = aux["metrics"]  # already averaged over the devices by s2dc_loss
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]), ema_momentum=momentum)
    return dict(state, params=params, teacher=teacher, opt_state=opt_state, queue=queue, queue_ptr=queue_ptr), metrics
