"""What a task gives the training loop (`s2dc_jax.training.loop.run`), and what every task shares.

The loop owns the mesh, state creation from shapes, checkpoints of {state, data
position} and of the best state, preemption, resume, device prefetch, logging and the
evaluation schedule. A task owns what differs: its config checks, its data (a grain
dataset of this process's batches), its state, a pure per-device step run under
`jax.shard_map` over the mesh axis "data", and its evaluation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from s2dc_jax.models import SwinTransformer3D

AXIS = "data"  # the mesh axis batches are split over


class Task:
    """Base class of a task; the loop calls these methods in this order."""

    name: str = "task"
    # evaluate()'s key that picks the best checkpoint (higher is better); None: no best checkpoint.
    main_metric: str | None = None
    # metrics shown on the progress bar, with their formats: "train/<key of train_step's metrics>"
    # or "val/<key of evaluate's scores>" (the latest evaluation)
    progress: tuple[tuple[str, str], ...] = (("train/loss", ".4f"),)

    def __init__(self, config):
        self.config = config
        self.mesh = None  # the run's mesh, set by the loop before `validate`

    def validate(self, num_devices: int) -> None:
        """ValueError naming the first config field that cannot work on `num_devices` devices."""

    def prepare(self, workdir: Path, log: Callable[[str], None]) -> None:
        """Host work before the state exists (read the data list, load cases, write phantoms); every process."""

    def check_data(self):
        """A header check of every datalist entry (``s2dc_jax.data.datalist.Report``) for the dry run; None: none."""
        return None

    @property
    def total_steps(self) -> int:
        """Steps of the whole run (known after `prepare`)."""
        return int(self.config.total_steps)

    def dataset(self, process_index: int, process_count: int):
        """A grain IterDataset of this process's share of each global batch (numpy dicts), restorable."""
        raise NotImplementedError

    def init_state(self, rng: jax.Array) -> dict:
        """The fresh state pytree (pure; jit-compiled with replicated outputs). Must hold an int32 `step`."""
        raise NotImplementedError

    def describe(self, state: dict) -> str:
        """A few words on a fresh state for the first log line."""
        return f"{sum(x.size for x in jax.tree.leaves(state['params'])):,} parameters"

    def initialize(self, state: dict, log: Callable[[str], None]) -> dict:
        """A fresh state with pretrained weights put in (host side, once, not on resume); default: as is."""
        del log
        return state

    def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        """One step on this device's rows of the batch, under shard_map over AXIS.

        Returns the new state (its `step` is advanced by the loop) and scalar metrics that are
        the same on every device (pmean'd), including `loss` and `grad_norm`: a step where
        either is not finite is undone by the loop.
        """
        raise NotImplementedError

    def evaluate(self, params, out_dir: Path | None = None) -> dict | None:
        """Scores of ``params`` (the replicated global arrays); writes predictions into ``out_dir`` if given.

        Called on every process at the same steps (collectives over the mesh are allowed);
        ``out_dir`` is given on process 0 only. None: the task does not evaluate.
        """
        del params, out_dir
        return None

    def images(self, params) -> dict | None:
        """Pictures for TensorBoard every ``config.image_every`` steps: ``{name: uint8[H, W, 3]}``; None: none."""
        del params
        return None


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up, then cosine decay to 0 at `total_steps` or a constant rate; optional clipping.

    `optim` is a config block with lr, weight_decay, warmup_steps, grad_clip and optionally
    b1, b2 (default 0.9, 0.999) and schedule ('cosine' default, or 'constant').
    """
    schedule_kind = optim.get("schedule", "cosine")
    if schedule_kind == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=optim.lr, warmup_steps=optim.warmup_steps,
            decay_steps=max(total_steps, optim.warmup_steps + 1), end_value=0.0)
    elif optim.warmup_steps:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, optim.lr, optim.warmup_steps),
                                         optax.constant_schedule(optim.lr)], [optim.warmup_steps])
    else:
        schedule = optax.constant_schedule(optim.lr)
    tx = optax.adamw(schedule, b1=optim.get("b1", 0.9), b2=optim.get("b2", 0.999), weight_decay=optim.weight_decay)
    if optim.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    return tx, schedule


def swin_kwargs(model) -> dict:
    """Constructor arguments of the Swin encoder named by a `config.model` block (pretraining or fine-tuning)."""
    w, p = model.window_size, model.patch_size
    return dict(
        in_channels=model.in_channels,
        feature_size=model.feature_size,
        depths=tuple(model.depths),
        num_heads=tuple(model.num_heads),
        window_size=(w, w, w) if isinstance(w, int) else tuple(w),
        patch_size=(p, p, p) if isinstance(p, int) else tuple(p),
        use_v2=model.use_v2,
        merging=model.get("merging", "monai"),
        remat=model.remat,
        attn_chunk=model.get("attn_chunk", 0) or None,
        dtype=jnp.dtype(model.dtype),
    )


def build_encoder(model):
    """The Swin-3D encoder named by a ``config.model`` block."""
    return SwinTransformer3D(**swin_kwargs(model))


def mean_gradients(grads):
    """Gradients of replicated params under shard_map -> the global mean.

    The params enter shard_map replicated, so the transpose already psums the per-device
    gradients of each device's mean loss; dividing by the device count makes the mean.
    """
    return jax.tree.map(lambda g: g / jax.lax.axis_size(AXIS), grads)


def first_device(tree):
    """This process's copy of a replicated tree, on its first device (for work that is not sharded)."""
    return jax.tree.map(lambda a: a.addressable_data(0), tree)
