"""The pretraining state (one pytree) and the optimiser, built from shapes first."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from s2dc_jax import objectives
from s2dc_jax.models import SwinTransformer3D


def build_encoder(model_cfg: ml_collections.ConfigDict) -> SwinTransformer3D:
    """The Swin-3D encoder named by ``config.model``."""
    w, p = model_cfg.window_size, model_cfg.patch_size
    return SwinTransformer3D(
        in_channels=model_cfg.in_channels,
        feature_size=model_cfg.feature_size,
        depths=tuple(model_cfg.depths),
        num_heads=tuple(model_cfg.num_heads),
        window_size=(w, w, w) if isinstance(w, int) else tuple(w),
        patch_size=(p, p, p) if isinstance(p, int) else tuple(p),
        use_v2=model_cfg.use_v2,
        remat=model_cfg.remat,
        attn_chunk=model_cfg.attn_chunk or None,
        dtype=jnp.dtype(model_cfg.dtype),
    )


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up then cosine decay to 0 at ``total_steps`` (REFERENCE.md section 4)."""
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=o.warmup_steps,
        decay_steps=max(config.total_steps, o.warmup_steps + 1), end_value=0.0)
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
    if o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx, schedule


def init_state(config: ml_collections.ConfigDict, encoder: SwinTransformer3D,
               tx: optax.GradientTransformation, rng: jax.Array) -> dict:
    """``{step, params, teacher, opt_state, queue, queue_ptr, rng}``; the teacher starts as the student."""
    rng, k_enc, k_head, k_queue = jax.random.split(rng, 4)
    c = config.data.crop_size
    x = jnp.zeros((1, c, c, c, config.model.in_channels), jnp.float32)
    enc = encoder.init(k_enc, x)["params"]
    feat_dim = encoder.feature_size * 16  # the last of the four stages doubles the width four times
    params = {"encoder": enc, "heads": objectives.init_heads(k_head, feat_dim, config.ssl)}
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "teacher": jax.tree.map(jnp.copy, params),
        "opt_state": tx.init(params),
        "queue": objectives.init_queue(k_queue, config.ssl.queue_size, config.ssl.head_dim),
        "queue_ptr": jnp.zeros((), jnp.int32),
        "rng": rng,
    }


def create_state(config, encoder, tx, mesh) -> dict:
    """Initialise the state replicated over ``mesh`` (shapes first, then one jit'd init)."""
    replicated = NamedSharding(mesh, P())
    init = lambda rng: init_state(config, encoder, tx, rng)  # noqa: E731
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = jax.tree.map(lambda _: replicated, abstract)
    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(config.seed))


def abstract_state(config, encoder, tx, mesh) -> dict:
    """ShapeDtypeStructs with shardings, the target an Orbax restore fills."""
    replicated = NamedSharding(mesh, P())
    abstract = jax.eval_shape(lambda rng: init_state(config, encoder, tx, rng), jax.random.PRNGKey(0))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
