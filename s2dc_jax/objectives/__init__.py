"""s2dc_jax.objectives: the S2DC losses, device-side views, ground truth, heads, EMA and queue."""
from s2dc_jax.objectives.correspondence import ground_truth, token_grid
from s2dc_jax.objectives.heads import ProjectionHead, batch_norm, global_head, init_heads, l2_normalize, patch_head
from s2dc_jax.objectives.matching import (correspondence_hits, dual_softmax, info_nce, match_loss, sharpe_loss, sharpe_weights,
                                          sinkhorn_log)
from s2dc_jax.objectives.s2dc import default_ssl_config, s2dc_loss, validate_ssl_config
from s2dc_jax.objectives.teacher import EMA_SCHEDULES, ema_momentum, ema_update, init_queue, queue_update
from s2dc_jax.objectives.views import make_views, split_crops, warp_volume

__all__ = [
    "EMA_SCHEDULES", "ProjectionHead", "batch_norm", "correspondence_hits", "default_ssl_config", "dual_softmax",
    "ema_momentum", "ema_update", "global_head", "ground_truth", "info_nce", "init_heads", "init_queue", "l2_normalize", "make_views",
    "match_loss", "patch_head", "queue_update", "s2dc_loss", "sharpe_loss",
    "sharpe_weights", "sinkhorn_log", "split_crops", "token_grid", "validate_ssl_config", "warp_volume",
]
