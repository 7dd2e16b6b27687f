"""Fine-tuning as a task of the training loop: one task class, four kinds.

A kind (segmentation.py, classification.py, regression.py for translation and
reconstruction) gives its model, how an entry's target is read, how a training sample is
cut, the batch loss and the evaluation on whole validation volumes. Everything else is
shared here: splits, cases in memory, the grain sample stream, the state, the per-device
step, initialisation from pretrained weights and the predictor.

Several processes (`jax.distributed`): every process loads the (small) downstream set;
each one's grain stream yields its block of rows of the global batch. Evaluation runs on
each process's first device and process 0's scores pick the best checkpoint (the loop).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from s2dc_jax.data import datalist
from s2dc_jax.models import init_key
from s2dc_jax.tasks import classification, regression, segmentation
from s2dc_jax.tasks import data as task_data
from s2dc_jax.tasks import finetune_config
from s2dc_jax.tasks.base import AXIS, Task, first_device, make_optimizer, mean_gradients
from s2dc_jax.tasks.init import adopt_architecture, pretrained_params, read_pretrained, resumed_architecture

KINDS = {"segmentation": segmentation, "classification": classification,
         "translation": regression, "reconstruction": regression}


class FinetuneTask(Task):
    """Supervised training of a SwinUNETR or a Swin classifier on a downstream datalist."""

    def __init__(self, config, explicit=(), workdir=None):
        """``explicit``: the config keys the user set (``model.window_size``, ...), checked against the weights.

        ``workdir``: the run folder; when it holds checkpoints (a resume) the architecture
        comes from its config.json and the init weights are not read (the checkpoint has the
        parameters).
        """
        if config.task not in KINDS:
            raise ValueError(f"config.task: must be one of {tuple(KINDS)}, got {config.task!r}")
        if config.init.checkpoint and config.init.torch:
            raise ValueError("set at most one of init.checkpoint and init.torch")
        # Read before the model is built: the weights' architecture is the model's.
        resumed = resumed_architecture(workdir) if (config.init.checkpoint or config.init.torch) else None
        self.pretrained = None if resumed else read_pretrained(config)
        self.init_lines = []
        if resumed is not None:
            config, _ = adopt_architecture(config, resumed, set(explicit))
            self.init_lines = [f"init: resuming; init.{'checkpoint' if config.init.checkpoint else 'torch'} "
                               f"is not read again (architecture from {workdir}/config.json)"]
        elif self.pretrained is not None:
            config, self.init_lines = adopt_architecture(config, self.pretrained, set(explicit))
        super().__init__(config)
        self.kind = KINDS[config.task]
        self.name = config.task
        self.main_metric = self.kind.MAIN_METRIC
        self.model = self.kind.build_model(config)
        self._total = None

    def validate(self, num_devices: int) -> None:
        finetune_config.validate(self.config, num_devices)

    def prepare(self, workdir: Path, log) -> None:
        c = self.config
        train_entries, self.val_entries = task_data.splits(c)
        if not train_entries:
            raise ValueError(f"data.datalist {c.data.datalist}: no training entries")
        if not self.val_entries:
            raise ValueError(f"data.datalist {c.data.datalist}: no validation entries "
                             f"(add a '{c.data.val_key}' list, data.num_folds or data.val_fraction)")
        for line in self.init_lines:
            log(line)
        t0 = time.time()
        self.train_cases = [self.load_case(e) for e in train_entries]
        self.val_cases = [self.load_case(e) for e in self.val_entries]
        log(f"data: {len(self.train_cases)} training and {len(self.val_cases)} validation cases loaded in "
            f"{time.time() - t0:.1f}s")
        self._total = c.total_steps or c.epochs * math.ceil(len(self.train_cases) / c.batch_size)
        self.tx, _ = make_optimizer(c.optim, self._total)
        self.predict = _make_predictor(self.model, c, self.kind.DENSE)

    def check_data(self):
        c, d = self.config, self.config.data
        return datalist.check_headers(d.datalist, root=d.root, split=None, task=c.task,
                                      in_channels=c.model.in_channels, num_classes=c.model.out_channels,
                                      label_map=tuple(d.label_map))

    def load_case(self, entry: dict) -> task_data.Case:
        """One datalist entry, preprocessed for this task."""
        image, meta, shape = task_data.load_image(entry, self.config)
        image, target = self.kind.load_target(entry, image, meta, shape, self.config)
        return task_data.Case(image=image, target=target, meta=meta)

    @property
    def total_steps(self) -> int:
        return int(self._total)

    def dataset(self, process_index: int, process_count: int):
        c = self.config
        return task_data.sample_dataset(self.train_cases, lambda case, rng: self.kind.sample(case, rng, c),
                                        batch_size=c.batch_size, seed=c.seed, process_index=process_index,
                                        process_count=process_count)

    def init_state(self, rng):
        x = jnp.zeros((1,) + tuple(self.config.data.roi) + (self.config.model.in_channels,), jnp.float32)
        params = self.model.init(init_key(rng), x)["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}

    def initialize(self, state, log):
        if self.pretrained is None:
            log("init: from scratch (no init.checkpoint or init.torch)")
            return state
        loaded = pretrained_params(state["params"], self.pretrained, self.config, log)
        # Only the loaded leaves travel host -> device, straight into the replicated sharding.
        params = jax.tree.map(lambda fresh, new: fresh if new is None else jax.device_put(new, fresh.sharding),
                              state["params"], loaded, is_leaf=lambda x: x is None)
        return dict(state, params=params)

    def train_step(self, state, batch):
        c = self.config

        def objective(params):
            out = self.model.apply({"params": params}, batch["image"])
            return self.kind.loss(out, batch["target"], c)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        grads = mean_gradients(grads)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = jax.lax.pmean(dict(metrics, loss=loss), AXIS)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return dict(state, params=params, opt_state=opt_state), metrics

    def evaluate(self, params, out_dir=None):
        # On this process's first device: the windows of one volume are too few to shard usefully.
        save = out_dir is not None and self.config.eval.save_predictions
        return self.kind.evaluate(self.predict, first_device(params), self.val_cases, self.val_entries,
                                  self.config, Path(out_dir) if save else None)


def _make_predictor(model, config, dense: bool):
    """jit'd whole-volume predictor (params, f32[1, X, Y, Z, C]) -> outputs, by sliding window for dense tasks."""
    if not dense:
        return jax.jit(lambda p, x: model.apply({"params": p}, x))
    from s2dc_jax.tasks.sliding_window import sliding_window_inference
    e = config.eval
    return jax.jit(lambda p, x: sliding_window_inference(
        x, tuple(config.data.roi), lambda w: model.apply({"params": p}, w), sw_batch_size=e.sw_batch_size,
        overlap=e.overlap, mode=e.mode))
