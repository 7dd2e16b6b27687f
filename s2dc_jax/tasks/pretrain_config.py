"""The pretraining config: one ConfigDict shared by every preset, and its validation.

Presets in ``configs/`` start from :func:`pretrain_config` and change what docs/method.md
says differs per dataset; :func:`shrink` makes any preset small enough for a smoke run.
"""
from __future__ import annotations

import os

import ml_collections

from s2dc_jax import data as data_lib
from s2dc_jax import objectives
from s2dc_jax.models.encode import REMAT_POLICIES
from s2dc_jax.models.swin import MERGING_RULES
from s2dc_jax.tasks.pretrain_eval import default_eval_config, validate_eval_config


def pretrain_config() -> ml_collections.ConfigDict:
    """docs/method.md sections 2-4 defaults (paper size, one volume of 16 crops per device)."""
    c = ml_collections.ConfigDict()
    c.seed = 0                  # parameter init, queue init, the order and views of the training volumes
    c.total_steps = 100_000     # optimiser steps of the whole run (the cosine decay ends here)
    c.batch_size = 1            # global volumes per step; must be a multiple of the device count
    c.log_every = 10            # steps between training-metric lines (log.txt, TensorBoard, progress bar)
    c.checkpoint_every = 1000   # steps between checkpoints of {state, data position} (and at the end)
    c.keep_checkpoints = 3      # latest checkpoints kept
    c.max_skipped_steps = 20    # consecutive non-finite steps before the run stops
    c.num_devices = 0           # 0: every device (of every process); one process may use fewer

    c.model = ml_collections.ConfigDict()
    c.model.in_channels = 1     # image channels per volume (1 for CT/MRI/PET as pretrained)
    c.model.feature_size = 48   # embed dim of stage 0; stage i has feature_size * 2**i channels (48 in the paper)
    c.model.depths = (2, 2, 2, 2)  # Swin blocks in each of the 4 stages
    c.model.num_heads = (3, 6, 12, 24)  # attention heads per stage; stage i's feature_size * 2**i channels split among them
    c.model.window_size = 7     # attention window edge in tokens (7x7x7 windows, shifted every other block)
    c.model.patch_size = 2      # patch-embedding stride in voxels; crops must be divisible by patch_size * 16
    c.model.use_v2 = True       # MONAI SwinUNETR v2: a residual conv block before each stage (the paper uses it)
    # 3D patch-merging rule: 'monai' is MONAI >= 1.5's (all 8 neighbours); 'legacy' is MONAI <= 1.4's, for
    # weights trained there (the authors' S2DC code). New runs keep 'monai' so their weights compute in current
    # MONAI exactly what they computed here.
    c.model.merging = "monai"
    c.model.remat = False       # nn.remat per Swin block (XLA CPU drops it; crop_group/remat_policy bound memory)
    # Crops encoded per lax.map iteration of the step (models/encode.py); 0 = auto: all at once when
    # they fit a 1 GiB activation estimate, else the most that fit (one 96^3 crop at paper size).
    c.model.crop_group = 0
    # What a group keeps for the backward pass: 'auto' ('full' when grouped, else 'none') | 'none' |
    # 'full' (recompute the group's forward) | 'dots' (keep matmul outputs: less recomputation, more memory).
    c.model.remat_policy = "auto"
    c.model.attn_chunk = 0      # windows per attention chunk; 0 = all at once (chunks bound memory)
    c.model.dtype = "float32"   # compute dtype: 'float32' | 'bfloat16' (params stay float32)

    c.data = data_lib.default_data_config()
    # > 0: write this many synthetic phantoms into WORKDIR/phantoms and train on them when
    # data.datalist is empty (the demo, smoke runs).
    c.data.phantoms = 0
    c.data.phantom_shape = (96, 96, 48)  # (x, y, z) voxels of those phantoms
    # Held-out volumes of the evaluation (eval_every): a datalist JSON (or tuple) and its list
    # ("" = "validation" if it has one, else "training"), or a share of data.datalist held out
    # from training (seeded by config.seed; written to WORKDIR/heldout/datalist.json).
    c.data.val_datalist = ml_collections.FieldReference("", field_type=object)
    c.data.val_split = ""       # its list: "" = "validation" if it has one, else "training"
    c.data.val_fraction = 0.0   # or this share of data.datalist, held out from training

    # Held-out evaluation (s2dc_jax/tasks/pretrain_eval.py) every eval_every steps and at the
    # last step, and TensorBoard pictures every image_every steps; 0 = off (the paper presets).
    c.eval_every = 0
    c.image_every = 0           # steps between correspondence pictures in TensorBoard; 0 = none
    c.eval = default_eval_config()
    c.ssl = objectives.default_ssl_config()

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-4           # AdamW peak learning rate (cosine decay to 0 at total_steps)
    c.optim.weight_decay = 0.1  # AdamW decoupled weight decay
    c.optim.b1 = 0.9            # AdamW first-moment decay
    c.optim.b2 = 0.999          # AdamW second-moment decay
    c.optim.warmup_steps = 500  # linear warm-up from 0
    c.optim.grad_clip = 0.0     # global-norm clip; 0 disables (the reference does not clip)
    return c


def shrink(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ``:tiny`` variant of any preset: a small Swin on a small ROI, a few steps."""
    c.total_steps = 4
    c.log_every = 1
    c.checkpoint_every = 2
    c.model.feature_size = 12
    c.model.depths = (1, 1, 1, 1)
    c.model.num_heads = (1, 1, 2, 2)
    c.data.roi_large = (64, 64, 32)
    c.data.crop_size = 32
    c.data.workers = 0
    c.data.phantoms = 4
    c.data.phantom_shape = (64, 64, 32)
    c.ssl.head_hidden = 64
    c.ssl.head_dim = 32
    c.ssl.sinkhorn_iters = min(c.ssl.sinkhorn_iters, 20)
    c.ssl.queue_size = 8
    c.optim.warmup_steps = 1
    return c


_MODEL_DTYPES = ("float32", "bfloat16")


def validate(c: ml_collections.ConfigDict, device_count: int) -> None:
    """Raise ValueError naming the first config field that cannot work."""

    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"config.{field}: {msg}")

    need(c.total_steps > 0, "total_steps", f"must be > 0, got {c.total_steps}")
    need(c.batch_size > 0 and c.batch_size % device_count == 0, "batch_size",
         f"must be a positive multiple of the device count {device_count}, got {c.batch_size}")
    need(c.log_every > 0, "log_every", f"must be > 0, got {c.log_every}")
    need(c.checkpoint_every > 0, "checkpoint_every", f"must be > 0, got {c.checkpoint_every}")
    need(c.keep_checkpoints > 0, "keep_checkpoints", f"must be > 0, got {c.keep_checkpoints}")
    need(c.model.attn_chunk >= 0, "model.attn_chunk", f"must be >= 0 (0 = no chunking), got {c.model.attn_chunk}")
    need(c.model.crop_group >= 0, "model.crop_group", f"must be >= 0 (0 = auto), got {c.model.crop_group}")
    need(c.model.remat_policy in REMAT_POLICIES, "model.remat_policy",
         f"must be one of {REMAT_POLICIES}, got {c.model.remat_policy!r}")
    need(c.model.dtype in _MODEL_DTYPES, "model.dtype", f"must be one of {_MODEL_DTYPES}, got {c.model.dtype!r}")
    need(c.model.merging in MERGING_RULES, "model.merging", f"must be one of {MERGING_RULES}, got {c.model.merging!r}")
    need(len(c.model.depths) == len(c.model.num_heads) == 4, "model.depths",
         f"depths and num_heads need 4 stages, got {c.model.depths} and {c.model.num_heads}")
    for i, h in enumerate(c.model.num_heads):  # stage i has feature_size * 2**i channels
        need((c.model.feature_size << i) % h == 0, "model.num_heads",
             f"stage {i + 1} has {c.model.feature_size << i} channels (feature_size {c.model.feature_size} "
             f"x {2 ** i}), not divisible into {h} heads")
    # The encoder downsamples by patch_size * 2**4 (stem + 4 mergings): one token per 32 voxels.
    stride = c.model.patch_size * 16
    need(c.data.crop_size % stride == 0, "data.crop_size",
         f"must be a multiple of {stride} (the encoder's total stride), got {c.data.crop_size}")
    x, y, z = c.data.roi_large
    need(x % c.data.crop_size == 0 and y % c.data.crop_size == 0, "data.roi_large",
         f"in-plane size {(x, y)} must be a multiple of data.crop_size {c.data.crop_size}")
    need(z == c.data.crop_size, "data.roi_large",
         f"depth {z} must equal data.crop_size {c.data.crop_size} (one crop in depth, as in the paper)")
    need((x // c.data.crop_size) * (y // c.data.crop_size) >= 2, "data.roi_large",
         "must hold at least 2 crops for the global loss")
    need(0.0 <= c.ssl.ema_momentum <= 1.0, "ssl.ema_momentum", f"must be in [0, 1], got {c.ssl.ema_momentum}")
    need(c.optim.lr > 0, "optim.lr", f"must be > 0, got {c.optim.lr}")
    need(c.optim.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {c.optim.warmup_steps}")
    need(c.optim.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 disables), got {c.optim.grad_clip}")
    need(c.data.phantoms >= 0, "data.phantoms", f"must be >= 0, got {c.data.phantoms}")
    if c.data.datalist:  # before the held-out checks, which take the list as given
        for path in data_lib.datalist_paths(c.data.datalist):
            need(os.path.isfile(path), "data.datalist", f"{path}: datalist not found")
    validate_eval_config(c, token_size=stride)
    try:
        objectives.validate_ssl_config(c.ssl)
    except ValueError as e:
        raise ValueError(f"config.{e}") from None


def preset(*, modality: str, match: str, batch_size: int, queue_num: int, arg: str | None):
    """A paper preset: modality, matching, global batch and queue of ``queue_num x batch`` keys."""
    if arg not in (None, "", "tiny"):
        raise ValueError(f"unknown config variant {arg!r}; known: 'tiny'")
    c = pretrain_config()
    c.batch_size = batch_size
    c.data.modality = modality
    c.ssl.match = match
    c.ssl.sinkhorn_iters = 100
    c.ssl.queue_size = queue_num * batch_size
    return shrink(c) if arg == "tiny" else c
