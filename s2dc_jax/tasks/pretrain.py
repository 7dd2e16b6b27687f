"""S2DC pretraining as a task of the training loop: its state, step, data and config checks.

State is one pytree: ``{step, params (student), teacher, opt_state, queue, queue_ptr, rng}``
replicated over the data axis; batches are sharded.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from s2dc_jax import data as data_lib
from s2dc_jax.data import datalist as datalist_lib
from s2dc_jax import objectives
from s2dc_jax.models import SwinTransformer3D, init_key
from s2dc_jax.tasks.base import Task, build_encoder, make_optimizer
from s2dc_jax.tasks import pretrain_eval
from s2dc_jax.tasks.pretrain_config import validate
from s2dc_jax.tasks.pretrain_step import train_step


def _have_sklearn() -> bool:
    """Whether the linear probe's library (scikit-learn, in the test extras) is installed."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def _has_validation(path: Path, count: int) -> bool:
    """Whether the phantom list at ``path`` exists with ``count`` validation records (0: just exists)."""
    if not path.exists():
        return False
    if not count:
        return True
    return len(json.loads(path.read_text()).get("validation", [])) == count


def init_state(config, encoder: SwinTransformer3D, tx, rng: jax.Array) -> dict:
    """``{step, params, teacher, opt_state, queue, queue_ptr, rng}``; the teacher starts as the student."""
    rng, k_enc, k_head, k_queue = jax.random.split(rng, 4)
    c = config.data.crop_size
    x = jnp.zeros((1, c, c, c, config.model.in_channels), jnp.float32)
    enc = encoder.init(init_key(k_enc), x)["params"]
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
    # With held-out evaluation: its last-stage accuracy against both baselines, "pretrained vs random vs raw".
    EVAL_PROGRESS = (("val/corr_last", ".3f"), ("val/random_corr_last", ".3f"), ("val/raw_corr_last", ".3f"))

    def __init__(self, config):
        super().__init__(config)
        self.encoder = build_encoder(config.model)
        self.tx, self.schedule = make_optimizer(config.optim, config.total_steps)
        self.heldout: pretrain_eval.HeldOutEval | None = None
        self.picture_view = None  # (image f32[X, Y, Z, 1], affine f32[4], shift) of Task.images' figure
        if self._evaluating:
            self.progress = self.progress + self.EVAL_PROGRESS

    @property
    def _evaluating(self) -> bool:
        c = self.config
        return c.get("eval_every", 0) > 0 or ("eval" in c and c.eval.at_start)

    def validate(self, num_devices: int) -> None:
        validate(self.config, num_devices)

    def prepare(self, workdir: Path, log) -> None:
        c = self.config
        if c.data.phantoms > 0 and not c.data.datalist:
            # Write data.phantoms synthetic volumes into WORKDIR/phantoms once and train on them;
            # eval.phantoms more, labelled, are the held-out "validation" list (the training ones
            # come first from the same seed, so they are the same with or without them).
            held = int(c.eval.phantoms) if self._evaluating or c.get("image_every", 0) > 0 else 0
            out = workdir / "phantoms"
            path = out / "datalist.json"
            if jax.process_index() == 0 and not _has_validation(path, held):
                path = Path(data_lib.write_phantom_dataset(
                    out, num=c.data.phantoms, modality=c.data.modality, shape=tuple(c.data.phantom_shape),
                    seed=c.seed, labels=held > 0, targets=False, num_val=held))
            multihost_utils.sync_global_devices("phantoms written")
            self.config = c = copy.deepcopy(c)
            c.data.datalist = str(path)
            if held:
                c.data.val_datalist, c.data.val_split = str(path), "validation"
                if not c.eval.probe_datalist and _have_sklearn():
                    c.eval.probe_datalist, c.eval.probe_split = str(path), "validation"
                elif not c.eval.probe_datalist:
                    log("held-out phantoms: no linear probe (it needs scikit-learn: pip install scikit-learn)")
            log(f"training on {c.data.phantoms} synthetic phantoms: {c.data.datalist}"
                + (f" ({held} more held out)" if held else ""))
        if c.data.val_fraction > 0:
            c = self._hold_out(workdir, log)
        if self._evaluating or c.get("image_every", 0) > 0:
            self._prepare_eval(log)

    def _hold_out(self, workdir: Path, log):
        """Move a seeded share of the training list into WORKDIR/heldout/datalist.json's validation list."""
        c = self.config
        records = data_lib.read_datalist(c.data.datalist, root=c.data.root, split=c.data.split)
        train, val = datalist_lib.seeded_split(records, c.data.val_fraction, c.seed)
        if not val or not train:
            raise ValueError(f"config.data.val_fraction: {c.data.val_fraction} of {len(records)} records leaves "
                             f"{len(train)} to train on and {len(val)} held out; both need at least one")
        path = workdir / "heldout" / "datalist.json"
        if jax.process_index() == 0:
            data_lib.write_datalist(train, path, split=c.data.split, validation=val, absolute=True)
        multihost_utils.sync_global_devices("held-out list written")
        self.config = c = copy.deepcopy(c)
        c.data.datalist = c.data.val_datalist = str(path)
        c.data.val_split, c.data.val_fraction = "validation", 0.0
        log(f"held out {len(val)} of {len(records)} records (data.val_fraction, seed {c.seed}): {path}")
        return c

    def _prepare_eval(self, log) -> None:
        c = self.config
        val = []
        if c.data.val_datalist:
            split = pretrain_eval.resolve_split(c.data.val_datalist, c.data.val_split)
            val = [r["image"] for r in data_lib.read_datalist(c.data.val_datalist, root=c.data.root, split=split)]
        probe = []
        if c.eval.probe_datalist and self._evaluating:
            if not _have_sklearn():
                raise ValueError("config.eval.probe_datalist: the linear probe needs scikit-learn "
                                 "(pip install scikit-learn)")
            split = pretrain_eval.resolve_split(c.eval.probe_datalist, c.eval.probe_split)
            recs = data_lib.read_datalist(c.eval.probe_datalist, root=c.data.root, split=split)
            if any("label" not in r for r in recs):
                raise ValueError(f"config.eval.probe_datalist: every {split!r} entry needs a 'label' "
                                 f"({c.eval.probe_datalist})")
            probe = [(r["image"], r["label"]) for r in recs]
            if len(probe[:c.eval.probe_volumes or None]) < 2:
                raise ValueError("config.eval.probe_datalist: the probe needs at least 2 labelled volumes "
                                 "(one to fit, one to score)")
        self.heldout = pretrain_eval.HeldOutEval(c, self.encoder, self.mesh, self._init_params)
        self.heldout.load(val if self._evaluating else [], probe, log)
        if c.get("image_every", 0) > 0:
            # The picture's view: the first held-out view, else fixed view 0 of the first training volume.
            if self.heldout.views is not None:
                v = self.heldout.views
                self.picture_view = (v.image[0], v.affine[0], v.shift[0])
            else:
                if not val:
                    val = [data_lib.read_datalist(c.data.datalist, root=c.data.root, split=c.data.split)[0]["image"]]
                img, aff, sh = pretrain_eval.fixed_view(val[0], 0, 0, c.data, c.eval.seed)
                self.picture_view = (img[..., None], aff, sh)

    def _init_params(self, rng):
        return init_state(self.config, self.encoder, self.tx, rng)["params"]

    def evaluate(self, params, out_dir=None):
        if self.heldout is None or not self._evaluating:
            return None
        scores = self.heldout.evaluate(params)
        if out_dir is not None and self.picture_view is not None:
            from s2dc_jax.tasks import visualize
            if visualize.have_matplotlib():
                visualize.write_pngs(self._analyser()(params, *self.picture_view), out_dir)
        return scores

    def images(self, params):
        if self.picture_view is None or jax.process_index() != 0:
            return None
        from s2dc_jax.tasks import visualize
        if not visualize.have_matplotlib():
            return None
        result = self._analyser()(params, *self.picture_view)
        return {"correspondence": visualize.to_array(visualize.correspondence_figure(result)[0])}

    def _analyser(self):
        from s2dc_jax.tasks import visualize
        if getattr(self, "_analyse", None) is None:
            self._analyse = visualize.Analyser(self.config, self.encoder)
        return self._analyse

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
