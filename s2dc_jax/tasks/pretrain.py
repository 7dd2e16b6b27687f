"""S2DC pretraining as a task of the training loop: its state, step, data and config checks.

State is one pytree: ``{step, params (student), teacher, opt_state, queue, queue_ptr, rng}``
(DESIGN.md section 2), replicated over the data axis; batches are sharded.
"""
from __future__ import annotations

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from s2dc_jax import data as data_lib
from s2dc_jax import objectives
from s2dc_jax.models import SwinTransformer3D
from s2dc_jax.tasks.base import Task, make_optimizer, swin_kwargs
from s2dc_jax.tasks.pretrain_config import validate
from s2dc_jax.tasks.pretrain_step import train_step


def build_encoder(model_cfg) -> SwinTransformer3D:
    """The Swin-3D encoder named by ``config.model``."""
    return SwinTransformer3D(**swin_kwargs(model_cfg))


def init_state(config, encoder: SwinTransformer3D, tx, rng: jax.Array) -> dict:
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


class PretrainTask(Task):
    """S2DC: student and EMA teacher, patch matching, Sharpe consistency, InfoNCE with a queue."""

    name = "pretrain"
    progress = (("train/loss", ".4f"), ("train/corr_acc", ".3f"))

    def __init__(self, config):
        super().__init__(config)
        self.encoder = build_encoder(config.model)
        self.tx, self.schedule = make_optimizer(config.optim, config.total_steps)

    def validate(self, num_devices: int) -> None:
        validate(self.config, num_devices)

    def prepare(self, workdir: Path, log) -> None:
        c = self.config
        if c.data.phantoms > 0 and not c.data.datalist:
            # Write data.phantoms synthetic volumes into WORKDIR/phantoms once and train on them.
            out = workdir / "phantoms"
            path = out / "datalist.json"
            if jax.process_index() == 0 and not path.exists():
                path = Path(data_lib.write_phantom_dataset(
                    out, num=c.data.phantoms, modality=c.data.modality, shape=tuple(c.data.phantom_shape),
                    seed=c.seed, labels=False, targets=False))
            multihost_utils.sync_global_devices("phantoms written")
            self.config = c = copy.deepcopy(c)
            c.data.datalist = str(path)
            log(f"training on {c.data.phantoms} synthetic phantoms: {c.data.datalist}")

    def check_data(self):
        d = self.config.data
        if not d.datalist and d.phantoms > 0:  # phantoms are written by prepare: nothing to check yet
            return None
        return data_lib.datalist.check_headers(d.datalist, root=d.root, split=d.split, task="pretrain",
                                               min_side=d.min_side, modality=d.modality)

    def dataset(self, process_index: int, process_count: int):
        c = self.config
        return data_lib.make_pretrain_dataset(c.data, batch_size=c.batch_size // process_count, seed=c.seed,
                                              process_index=process_index, process_count=process_count)

    def init_state(self, rng):
        return init_state(self.config, self.encoder, self.tx, rng)

    def describe(self, state) -> str:
        n = sum(x.size for x in jax.tree.leaves(state["params"]["encoder"]))
        return f"{n:,} encoder parameters"

    def train_step(self, state, batch):
        return train_step(state, batch, config=self.config, encoder=self.encoder, tx=self.tx,
                          schedule=self.schedule)
