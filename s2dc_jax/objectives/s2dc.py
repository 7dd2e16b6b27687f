"""The whole S2DC objective for one (per-device) batch: views, passes, three losses (docs/method.md 1-3)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from s2dc_jax.objectives import correspondence, heads, matching, views
from s2dc_jax.objectives.teacher import EMA_SCHEDULES

MATCHES = ("sinkhorn", "dual_softmax")
BATCH_KEYS = ("image", "full_affine", "full_shift", "crop_affine", "crop_shift", "global_index")


def default_ssl_config() -> ml_collections.ConfigDict:
    """The ``ssl`` config block with docs/method.md defaults (plus our documented extras)."""
    c = ml_collections.ConfigDict()
    c.match = "sinkhorn"           # 'sinkhorn' | 'dual_softmax' (dual softmax for MRI and PET)
    c.sinkhorn_iters = 100         # log-domain Sinkhorn iterations (supplementary Table 3: 100)
    c.bin_score = 1.0              # dustbin score, on the cosine scale
    c.temperature = 1.0            # divides the matching scores; 1.0 = reference (docs/method.md 6)
    c.queue_size = 200             # K keys; the reference uses queue_num * batch (90 CT-1k, 200 else)
    c.global_temperature = 0.9     # InfoNCE temperature of the global (crop-level) contrast
    c.global_normalize = True      # L2-normalise global features (the reference does not)
    c.ema_momentum = 0.999         # teacher = m * teacher + (1 - m) * student before each step
    c.ema_schedule = "constant"    # 'constant' (reference) | 'cosine': m rises from ema_momentum to 1 over the run
    c.w_p2p = 0.5                  # weight of the patch-to-patch (optimal transport) loss
    c.w_p2s = 0.5                  # weight of the patch-to-structure (Sharpe ratio) loss
    c.w_global = 0.5               # weight of the global InfoNCE loss with the key queue
    c.head_hidden = 2048           # hidden width of the patch and global projection MLPs
    c.head_dim = 512               # output width of both heads (L2-normalised features)
    c.correspondence = "inplane"   # 'inplane' (reference) | '3d' (aug_full also zooms z; 3D ground truth)
    c.sharpe_detach = True         # stop the gradient through the Sharpe weights (the reference does not)
    return c


def validate_ssl_config(cfg) -> None:
    """ValueError naming the first ``ssl.*`` field that cannot work."""
    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"ssl.{field}: {msg}")

    need(cfg.match in MATCHES, "match", f"must be one of {MATCHES}, got {cfg.match!r}")
    mode = getattr(cfg, "correspondence", "inplane")
    need(mode in correspondence.MODES, "correspondence", f"must be one of {correspondence.MODES}, got {mode!r}")
    need(cfg.sinkhorn_iters >= 1, "sinkhorn_iters", f"must be >= 1, got {cfg.sinkhorn_iters}")
    need(cfg.temperature > 0, "temperature", f"must be > 0, got {cfg.temperature}")
    need(cfg.global_temperature > 0, "global_temperature", f"must be > 0, got {cfg.global_temperature}")
    need(cfg.queue_size >= 1, "queue_size", f"must be >= 1, got {cfg.queue_size}")
    schedule = getattr(cfg, "ema_schedule", "constant")
    need(schedule in EMA_SCHEDULES, "ema_schedule", f"must be one of {EMA_SCHEDULES}, got {schedule!r}")


def _pool_tokens(feats: jax.Array) -> jax.Array:
    # f32[N, t, t, t, F] -> f32[N, F]: the global head's average-pooled crop feature
    return jnp.mean(feats, axis=(1, 2, 3))


def roi_tokens(feats: jax.Array, b: int, nx: int, ny: int) -> jax.Array:
    """Crop tokens ``f32[b*n, t, t, t, F]`` -> ROI token grid ``f32[b, nx*t, ny*t, t, F]``."""
    _, t, _, tz, f = feats.shape
    g = feats.reshape(b, nx, ny, t, t, tz, f).transpose(0, 1, 3, 2, 4, 5, 6)
    return g.reshape(b, nx * t, ny * t, tz, f)


def _check_batch(batch: dict, crop_size: int) -> tuple[int, int, int]:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; s2dc_loss needs {BATCH_KEYS}")
    image = batch["image"]
    if image.ndim != 5:
        raise ValueError(f"batch['image'] must be f32[b, X, Y, Z, C], got shape {image.shape}")
    b = image.shape[0]
    nx, ny = views._check_roi(image.shape[1:], crop_size)
    expect = {"full_affine": (b, 4), "full_shift": (b,), "crop_affine": (b, nx * ny, 4),
              "crop_shift": (b, nx * ny), "global_index": (b,)}
    for k, shape in expect.items():
        if tuple(batch[k].shape) != shape:
            raise ValueError(f"batch[{k!r}] must have shape {shape} for {b} ROIs of {nx * ny} crops, "
                             f"got {tuple(batch[k].shape)}")
    return b, nx, ny


def s2dc_loss(params: dict, teacher: dict, encode: Callable, batch: dict, queue: jax.Array, ssl_cfg,
              crop_size: int, axis_name: str | None = None) -> tuple[jax.Array, dict]:
    """S2DC loss of this device's ``b`` volumes and ``aux = {"metrics", "keys"}``.

    ``params``/``teacher``: ``{"encoder", "heads"}``; ``encode(enc_params, f32[N, c, c, c, C])
    -> f32[N, t, t, t, F]``. ``batch``: ``image f32[b, X, Y, Z, C]`` and the stacked view
    parameters of view_params.py. ``queue f32[K, D]``. With ``axis_name`` (inside
    shard_map) the global head's BN statistics and the InfoNCE negatives span the global
    batch, so the value does not depend on how the batch is split; the loss is the mean
    over local volumes and the metrics are pmean'd (global means). ``aux["keys"] f32[b, D]``
    are the teacher global features of ``src[global_index]`` to enqueue.
    """
    validate_ssl_config(ssl_cfg)
    b, nx, ny = _check_batch(batch, crop_size)
    n = nx * ny
    mode = getattr(ssl_cfg, "correspondence", "inplane")
    image = batch["image"].astype(jnp.float32)
    _, size_x, size_y, size_z, ch = image.shape
    gidx = batch["global_index"].astype(jnp.int32)
    teacher = jax.lax.stop_gradient(teacher)

    # Views are data, not functions of the parameters. The named scopes ("views", "student",
    # "teacher", "matching", "infonce") label the compiled ops for bench/profile.py.
    with jax.named_scope("views"):
        src, aug_full, aug_crop = jax.lax.stop_gradient(views.make_views(
            image, batch["full_affine"], batch["full_shift"], batch["crop_affine"], batch["crop_shift"],
            crop_size, scale_z=(mode == "3d")))                                   # [b, n, c, c, c, C]
    flat = lambda v: v.reshape(b * n, crop_size, crop_size, size_z, ch)          # noqa: E731
    src_key = src[jnp.arange(b), gidx]                                            # [b, c, c, c, C]

    with jax.named_scope("student"):
        s_feat = encode(params["encoder"], flat(src))                             # [b*n, t, t, t, F]
    # The three teacher passes as one call (one loop of crop groups, no gradient).
    with jax.named_scope("teacher"):
        t_all = encode(teacher["encoder"], jnp.concatenate([flat(aug_full), flat(aug_crop), src_key]))
    t_full, t_crop, t_key = t_all[:b * n], t_all[b * n:2 * b * n], t_all[2 * b * n:]  # [b*n], [b*n], [b] crops
    t = s_feat.shape[1]
    if s_feat.shape[1:4] != (t, t, t):
        raise ValueError(f"encode must return f32[N, t, t, t, F] (cubic token grid), got {s_feat.shape}")
    (gx, gy, gz), token_size = correspondence.token_grid((size_x, size_y, size_z), crop_size, t)

    # ---- patch losses: one matching problem per z-slice (inplane) or per volume (3d)
    def patch_tokens(p, feats):
        grid = roi_tokens(feats, b, nx, ny)                                      # [b, gx, gy, gz, F]
        tok = heads.patch_head(p, grid.reshape(b, gx * gy * gz, -1), ssl_cfg)    # [b, gx*gy*gz, D]
        if mode == "inplane":
            return tok.reshape(b, gx * gy, gz, -1).transpose(0, 2, 1, 3)          # [b, gz, M, D]
        return tok[:, None]                                                       # [b, 1, M, D]

    q_tok = patch_tokens(params["heads"], s_feat)
    with jax.named_scope("teacher"):
        k_tok = patch_tokens(teacher["heads"], t_full)
    with jax.named_scope("matching"):
        cos = jnp.einsum("bsmd,bsnd->bsmn", q_tok, k_tok)                        # [b, S, M, M]
        gt = correspondence.ground_truth(batch["full_affine"], (size_x, size_y, size_z), token_size, mode)
        gt = jnp.broadcast_to(gt[:, None], cos.shape)                            # [b, S, M, M]

        if ssl_cfg.match == "sinkhorn":
            log_plan = matching.sinkhorn_log(cos, ssl_cfg.bin_score, ssl_cfg.sinkhorn_iters, ssl_cfg.temperature)
            plan = jnp.exp(log_plan[..., :-1, :-1])
        else:
            plan = matching.dual_softmax(cos, ssl_cfg.temperature)
        p2p, p2p_pos, p2p_neg = (jnp.mean(x) for x in matching.match_loss(plan, gt))
        p2s = jnp.mean(matching.sharpe_loss(cos, gt, detach_weights=getattr(ssl_cfg, "sharpe_detach", True)))

        # Correspondence accuracy: a gt pair is right when its src token's best match is its partner.
        hits, pairs = matching.correspondence_hits(plan, gt)

    # ---- global loss: student src[j] vs teacher aug_crop[j], negatives from all volumes + queue
    s_glob = heads.global_head(params["heads"], _pool_tokens(s_feat), ssl_cfg, axis_name)     # [b*n, D]
    query = s_glob.reshape(b, n, -1)[jnp.arange(b), gidx]                                      # [b, D]
    # One teacher head call so the src keys are normalised with the aug_crop crops' BN
    # statistics: the reference passes all 16 src crops, we pass only the enqueued one.
    t_pool = jnp.concatenate([_pool_tokens(t_crop), _pool_tokens(t_key)])                     # [b*n + b, F]
    mask = jnp.arange(b * n + b) < b * n
    with jax.named_scope("teacher"):
        t_glob = heads.global_head(teacher["heads"], t_pool, ssl_cfg, axis_name, stats_mask=mask)
    k_crop, keys = t_glob[:b * n].reshape(b, n, -1), t_glob[b * n:]                           # [b, n, D], [b, D]
    positive = k_crop[jnp.arange(b), gidx]                                                     # [b, D]
    if axis_name is not None:
        all_crop = jax.lax.all_gather(k_crop, axis_name, tiled=True)                           # [B, n, D]
        all_idx = jax.lax.all_gather(gidx, axis_name, tiled=True)                              # [B]
    else:
        all_crop, all_idx = k_crop, gidx
    # The other n - 1 crops of every volume (its own global crop is some query's positive).
    others = jnp.arange(n - 1)[None, :] + (jnp.arange(n - 1)[None, :] >= all_idx[:, None])    # [B, n-1]
    negatives = jnp.take_along_axis(all_crop, others[..., None], axis=1).reshape(-1, all_crop.shape[-1])
    negatives = jnp.concatenate([negatives, queue.astype(negatives.dtype)])                   # [B(n-1)+K, D]
    with jax.named_scope("infonce"):
        g_loss, g_hit = matching.info_nce(query, positive, negatives, ssl_cfg.global_temperature)
    glob = jnp.mean(g_loss)

    loss = ssl_cfg.w_p2p * p2p + ssl_cfg.w_p2s * p2s + ssl_cfg.w_global * glob
    metrics = {"loss": loss, "p2p": p2p, "p2p_pos": p2p_pos, "p2p_neg": p2p_neg, "p2s": p2s,
               "global": glob, "global_acc": jnp.mean(g_hit),
               "gt_pairs": pairs / (b * gt.shape[1])}                  # positives per matching problem
    if axis_name is not None:
        metrics = jax.lax.pmean(metrics, axis_name)
        hits, pairs = jax.lax.psum(hits, axis_name), jax.lax.psum(pairs, axis_name)
    metrics["corr_acc"] = hits / jnp.maximum(pairs, 1.0)
    metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
    return loss, {"metrics": metrics, "keys": jax.lax.stop_gradient(keys)}
