"""One S2DC pretraining step: a pure function, jit-compiled once under shard_map over "data"."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, PartitionSpec as P

from s2dc_jax import objectives

AXIS = "data"


def train_step(state: dict, batch: dict, *, config: ml_collections.ConfigDict, encoder,
               tx: optax.GradientTransformation, schedule: optax.Schedule) -> tuple[dict, dict]:
    """Per-device body: EMA teacher, S2DC loss, pmean'd AdamW update, queue update.

    ``batch`` holds this device's volumes (``image f32[b, X, Y, Z, 1]`` and the view
    parameters). A step whose loss or gradients are not finite leaves the state as it
    was (the teacher and queue included) and reports ``skipped = 1``.
    """
    compute_dtype = jnp.dtype(config.model.dtype)

    def encode(enc_params, x):
        # f32[N, c, c, c, C] crops -> f32[N, t, t, t, F] last-stage features
        return encoder.apply({"params": enc_params}, x.astype(compute_dtype))[-1].astype(jnp.float32)

    # REFERENCE.md section 2: before each step the teacher moves towards the student.
    teacher = objectives.ema_update(state["teacher"], state["params"], config.ssl.ema_momentum)

    def loss_fn(params):
        return objectives.s2dc_loss(params, teacher, encode, batch, state["queue"], config.ssl,
                                    crop_size=config.data.crop_size, axis_name=AXIS)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    # The params enter shard_map replicated, so the transpose already psums the per-device
    # gradients of the local mean loss; dividing by the device count makes the global mean.
    grads = jax.tree.map(lambda g: g / jax.lax.axis_size(AXIS), grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)

    keys_all = jax.lax.all_gather(aux["keys"], AXIS, tiled=True, to="invarying")  # f32[B_global, D]
    queue, queue_ptr = objectives.queue_update(state["queue"], state["queue_ptr"], keys_all)

    metrics = aux["metrics"]  # already averaged over the devices by s2dc_loss
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    new = {"params": params, "teacher": teacher, "opt_state": opt_state, "queue": queue, "queue_ptr": queue_ptr}
    kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, {k: state[k] for k in new})
    metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state["step"]),
                   skipped=1.0 - ok.astype(jnp.float32))
    return dict(kept, step=state["step"] + 1, rng=state["rng"]), metrics


def make_train_step(config, encoder, tx, schedule, mesh: Mesh):
    """``step(state, batch) -> (state, metrics)``: state replicated, batch sharded on its first axis."""
    body = lambda s, b: train_step(s, b, config=config, encoder=encoder, tx=tx, schedule=schedule)  # noqa: E731
    sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,))
