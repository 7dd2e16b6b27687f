"""Fine-tuning config: the fields shared by the four downstream tasks, and their checks."""
from __future__ import annotations

import ml_collections

from s2dc_jax.interop.mapping import SOURCES
from s2dc_jax.models.swin import MERGING_RULES

TASKS = ("segmentation", "classification", "translation", "reconstruction")
INTENSITY = ("window", "zscore_nonzero", "zscore", "minmax", "none")
LOSSES = {"segmentation": ("dice_ce",), "classification": ("ce",),
          "translation": ("l1", "mse"), "reconstruction": ("l1", "mse")}
BLEND = ("constant", "gaussian")


def base_config(task: str) -> ml_collections.ConfigDict:
    """Defaults of one task; dataset configs override what their published setup says."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    c = ml_collections.ConfigDict()
    c.task = task               # segmentation | classification | translation | reconstruction
    c.seed = 0                  # parameter init and the order and crops of training samples
    c.epochs = 100              # passes over the training cases (when total_steps is 0)
    c.total_steps = 0           # > 0 overrides epochs * steps_per_epoch
    c.batch_size = 2            # global samples (crops) per step; a multiple of the devices used
    c.num_devices = 0           # 0: every device (of every process); one process may use fewer
    c.log_every = 50            # steps between training-metric lines (log.txt, TensorBoard)
    c.eval_every = 500          # steps; evaluation also runs after the last step
    c.checkpoint_every = 500    # steps between checkpoints of the latest state (and at the end)
    c.keep_checkpoints = 2      # latest checkpoints kept; best/ keeps the best one besides
    c.max_skipped_steps = 20    # consecutive non-finite steps before the run stops

    c.model = ml_collections.ConfigDict()
    c.model.feature_size = 48   # Swin embedding width (stage 1); from init.checkpoint when given
    c.model.depths = (2, 2, 2, 2)  # Swin blocks per stage
    c.model.num_heads = (3, 6, 12, 24)  # attention heads per stage
    c.model.window_size = 7     # attention window (voxels of the token grid per side)
    c.model.patch_size = 2      # side of the patch-embedding convolution
    c.model.in_channels = 1     # input channels (image files, or 4D channels, per entry)
    c.model.out_channels = 2    # classes (segmentation, classification) or output channels
    c.model.use_v2 = True       # MONAI SwinUNETR v2: a residual conv block before each stage
    # 3D patch-merging rule: 'monai' is MONAI >= 1.5's (all 8 neighbours); 'legacy' is MONAI <= 1.4's, for
    # weights trained there (the authors' S2DC code). New runs keep 'monai' so their weights compute in current
    # MONAI exactly what they computed here.
    c.model.merging = "monai"
    c.model.remat = False       # rematerialise each Swin block in the backward pass (less memory)
    c.model.attn_chunk = 0      # windows per attention chunk; 0 = all at once
    c.model.dtype = "float32"   # compute dtype: float32 | bfloat16 (params stay float32)
    c.model.head_hidden = 512   # classification MLP width

    c.data = ml_collections.ConfigDict()
    c.data.datalist = ml_collections.config_dict.placeholder(str)  # MONAI/Decathlon JSON (make_datalist)
    c.data.root = ml_collections.config_dict.placeholder(str)  # base of relative paths; default: the JSON's folder
    c.data.train_key = "training"  # the datalist's list of training entries
    c.data.val_key = "validation"  # the datalist's list of validation entries
    # Entry field holding the target: label map, class index or target image.
    c.data.target_key = "target" if task in ("translation", "reconstruction") else "label"
    c.data.spacing = ml_collections.config_dict.placeholder(tuple)  # mm (x, y, z); None keeps the file's
    c.data.intensity = "window"  # window | zscore_nonzero | zscore | minmax | none (per channel)
    c.data.a_min, c.data.a_max = -175.0, 250.0   # the window mapped to [b_min, b_max]
    c.data.b_min, c.data.b_max = 0.0, 1.0        # the range the window is mapped to
    c.data.target_intensity = "minmax"           # translation / reconstruction targets
    c.data.roi = (96, 96, 96)                    # training crop, inference window
    c.data.label_map = ()                        # ((from, to), ...) applied to label maps, e.g. BraTS 4 -> 3
    c.data.pos_ratio = 0.5                       # fraction of crops centred on foreground
    c.data.flip_prob = 0.1                       # per-axis random flip of training crops
    c.data.num_folds = 0                         # > 0: k-fold split of the training list
    c.data.fold = 0                              # the fold held out for validation
    c.data.subject_key = ml_collections.config_dict.placeholder(str)  # split by subject, not by scan
    c.data.val_fraction = 0.0                    # > 0 and no validation list: hold out this share

    c.eval = ml_collections.ConfigDict()
    c.eval.overlap = 0.75          # sliding-window overlap (MONAI sliding_window_inference)
    c.eval.mode = "gaussian"       # blending of overlapping windows: gaussian | constant
    c.eval.sw_batch_size = 4       # windows per forward pass at inference
    c.eval.save_predictions = True  # write the best checkpoint's predictions to WORKDIR/predictions
    c.eval.ssim_win = 7            # SSIM window side (voxels)
    c.eval.at_start = False        # also evaluate before the first step (the untrained baseline)

    c.loss = ml_collections.ConfigDict()
    c.loss.name = LOSSES[task][0]  # dice_ce (segmentation), ce (classification), l1 | mse (image tasks)
    c.loss.dice_weight = 1.0       # weight of the Dice term of dice_ce
    c.loss.ce_weight = 1.0         # weight of the cross-entropy term of dice_ce

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4             # AdamW peak learning rate
    c.optim.weight_decay = 1e-5   # AdamW decoupled weight decay
    c.optim.warmup_steps = 0      # linear warm-up from 0
    c.optim.grad_clip = 0.0       # global-norm clip; 0 disables
    c.optim.schedule = "cosine"   # 'cosine' or 'constant'

    c.init = ml_collections.ConfigDict()
    c.init.checkpoint = ml_collections.config_dict.placeholder(str)  # pretraining run (or step) to start from
    c.init.step = ml_collections.config_dict.placeholder(int)  # its step; default the latest
    c.init.torch = ml_collections.config_dict.placeholder(str)  # or a MONAI-layout .pt/.safetensors
    c.init.source = "student"    # which EMA copy of a pretraining checkpoint: 'student' or 'teacher'
    c.init.skip = ()             # regexes (re.search) on flax paths, e.g. 'swinViT/patch_embed/proj', not to load
    return c


def shrink(c: ml_collections.ConfigDict, roi=(32, 32, 32), steps: int = 40) -> ml_collections.ConfigDict:
    """The ':tiny' variant of a dataset config: a small model and a few steps for a smoke run."""
    c.model.feature_size = 12
    c.model.num_heads = (1, 2, 2, 4)
    c.model.depths = (1, 1, 1, 1)
    c.model.head_hidden = 32
    c.data.roi = tuple(roi)
    c.data.spacing = None
    c.total_steps = steps
    c.batch_size = 2
    c.log_every = 10
    c.eval_every = steps
    c.checkpoint_every = steps
    c.eval.sw_batch_size = 2
    # Measured on CT phantoms: the tiny classifier trained from scratch stalls at chance with AdamW 2e-3 and
    # learns at 3e-4; the dense tasks' SwinUNETR learns fastest at 2e-3.
    c.optim.lr = 3e-4 if c.task == "classification" else 2e-3
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    return c


def variant(c: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
    """A dataset config file's variant: '' or None (its published setup) or 'tiny' (`shrink`)."""
    if arg == "tiny":
        return shrink(c)
    if arg:
        raise ValueError(f"config variant must be '' or 'tiny', got {arg!r}")
    return c


def _choice(value, allowed, field):
    if value not in allowed:
        raise ValueError(f"{field} must be one of {tuple(allowed)}, got {value!r}")


def validate(c: ml_collections.ConfigDict, num_devices: int) -> None:
    """ValueError naming the field for any config this library cannot run."""
    _choice(c.task, TASKS, "task")
    _choice(c.loss.name, LOSSES[c.task], "loss.name")
    _choice(c.data.intensity, INTENSITY, "data.intensity")
    _choice(c.data.target_intensity, INTENSITY, "data.target_intensity")
    _choice(c.eval.mode, BLEND, "eval.mode")
    _choice(c.optim.schedule, ("cosine", "constant"), "optim.schedule")
    _choice(c.model.dtype, ("float32", "bfloat16"), "model.dtype")
    _choice(c.model.merging, MERGING_RULES, "model.merging")
    _choice(c.init.source, SOURCES, "init.source")
    if not c.data.datalist:
        raise ValueError("data.datalist must be set to a MONAI/Decathlon JSON file")
    if c.batch_size < 1 or c.batch_size % num_devices:
        raise ValueError(f"batch_size ({c.batch_size}) must be a positive multiple of the {num_devices} devices used "
                         "(one process: set num_devices to use fewer)")
    if len(tuple(c.data.roi)) != 3 or min(c.data.roi) < 1:
        raise ValueError(f"data.roi must be 3 positive sizes (x, y, z), got {c.data.roi}")
    div = c.model.patch_size ** 5
    if any(r % div for r in c.data.roi):
        raise ValueError(f"data.roi {tuple(c.data.roi)} must be divisible by patch_size**5 = {div}")
    if not 0.0 <= c.eval.overlap < 1.0:
        raise ValueError(f"eval.overlap must be in [0, 1), got {c.eval.overlap}")
    if not 0.0 <= c.data.pos_ratio <= 1.0:
        raise ValueError(f"data.pos_ratio must be in [0, 1], got {c.data.pos_ratio}")
    if c.data.num_folds and not 0 <= c.data.fold < c.data.num_folds:
        raise ValueError(f"data.fold must be in [0, {c.data.num_folds}), got {c.data.fold}")
    if c.data.spacing is not None and (len(tuple(c.data.spacing)) != 3 or min(c.data.spacing) <= 0):
        raise ValueError(f"data.spacing must be None or 3 positive mm values, got {c.data.spacing}")
    if c.init.checkpoint and c.init.torch:
        raise ValueError("set at most one of init.checkpoint and init.torch")
    if c.model.out_channels < 1 or (c.task in ("segmentation", "classification") and c.model.out_channels < 2):
        raise ValueError(f"model.out_channels must be >= 2 classes for {c.task}, got {c.model.out_channels}")
