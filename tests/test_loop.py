"""The training loop on a small linear-regression task: resume, preemption, bad steps, best, logging, compiles."""
import json
import os
import signal

import chex
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from s2dc_jax.interop.workdir import load_params
from s2dc_jax.tasks.base import AXIS, Task, mean_gradients
from s2dc_jax.training import loop

DIM = 6
W_TRUE = np.linspace(-1.0, 1.0, DIM).astype(np.float32)


def toy_config(**kw):
    c = ml_collections.ConfigDict(dict(seed=0, total_steps=8, batch_size=4, num_devices=2, log_every=3,
                                       checkpoint_every=4, keep_checkpoints=5, eval_every=4, max_skipped_steps=2))
    c.update(kw)
    return c


class _Rows:
    """Element i: a regression sample from the rng of i; NaN inputs for the indices in ``nan``."""

    def __init__(self, nan=(), sigterm_at=None, sig=signal.SIGTERM):
        self.nan, self.sigterm_at, self.sig = set(nan), sigterm_at, sig

    def __call__(self, i):
        if i == self.sigterm_at:
            os.kill(os.getpid(), self.sig)
        rng = np.random.default_rng([0, int(i)])
        x = rng.normal(size=DIM).astype(np.float32)
        if i in self.nan:
            x[:] = np.nan
        return {"x": x, "y": np.float32(x @ W_TRUE)}


class ToyTask(Task):
    """y = w.x by SGD; evaluation: minus the squared error of w (higher is better)."""

    name = "toy"
    main_metric = "score"

    def __init__(self, config, rows=None):
        super().__init__(config)
        self.rows = rows or _Rows()
        self.tx = optax.sgd(0.1)
        self.evaluated = []

    def dataset(self, process_index, process_count):
        b = self.config.batch_size // process_count
        ds = grain.MapDataset.range(10**9).map(self.rows).batch(b)[process_index::process_count]
        return ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))

    def init_state(self, rng):
        w = jax.random.normal(rng, (DIM,))
        return {"step": jnp.zeros((), jnp.int32), "params": {"w": w}, "opt_state": self.tx.init({"w": w})}

    def train_step(self, state, batch):
        def loss_fn(p):
            return jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        grads = mean_gradients(grads)
        updates, opt = self.tx.update(grads, state["opt_state"])
        return (dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt),
                {"loss": jax.lax.pmean(loss, AXIS), "grad_norm": optax.tree.norm(grads)})

    def evaluate(self, params, out_dir=None):
        err = float(np.sum((np.asarray(params["w"]) - W_TRUE) ** 2))
        self.evaluated.append(out_dir)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "w.txt").write_text(str(np.asarray(params["w"]).tolist()))
        return {"score": -err}


def test_trains_logs_checkpoints_and_keeps_the_best(tmp_path, monkeypatch):
    flushed = []
    real_flush = loop._TrainLog.flush

    def spy(self, *a, **kw):
        # Until a log step the metrics stay on the devices (no host transfer per step).
        assert all(isinstance(v, jax.Array) for _, m in self.pending for v in m.values())
        flushed.append(self.pending[-1][0])
        return real_flush(self, *a, **kw)

    monkeypatch.setattr(loop._TrainLog, "flush", spy)
    task = ToyTask(toy_config())
    task.train_step = chex.assert_max_traces(task.train_step, n=1)  # one compile for the whole run
    r = loop.run(task, tmp_path)
    assert flushed == [1, 3, 6, 8]  # the first step, every log_every, the last
    assert [s for s, _ in r["history"]] == [4, 8] and r["history"][1][1]["score"] > r["history"][0][1]["score"]
    assert np.isfinite(r["train"]["train/loss"]) and r["preempted"] is None and r["step"] == 8
    # The best of the two evaluations is the last one: its predictions are written once, at the end.
    assert r["best_step"] == 8 and r["best"] == r["history"][1][1]
    assert task.evaluated == [None, tmp_path / "predictions"] and (tmp_path / "predictions" / "w.txt").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4", "8"]
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["8"]
    params, step = load_params(tmp_path / "best")
    assert step == 8 and params["w"].shape == (DIM,)
    log = (tmp_path / "log.txt").read_text()
    assert "eval step 4 " in log and "done: 8 steps; best checkpoint" in log
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 4
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_best_earlier_than_the_last_is_evaluated_again_with_predictions(tmp_path):
    class Worse(ToyTask):
        def evaluate(self, params, out_dir=None):  # the first evaluation scores best
            m = super().evaluate(params, out_dir)
            return {"score": 1.0} if len(self.evaluated) == 1 else m

    task = Worse(toy_config())
    r = loop.run(task, tmp_path)
    assert r["best_step"] == 4 and task.evaluated == [None, tmp_path / "predictions", tmp_path / "predictions"]


def test_preempted_run_saves_and_the_rerun_ends_as_an_uninterrupted_one(tmp_path):
    straight = loop.run(ToyTask(toy_config()), tmp_path / "straight")
    # SIGTERM while element 21 is read (step 6's batch; grain reads ahead, so a step or two earlier)
    r = loop.run(ToyTask(toy_config(), _Rows(sigterm_at=21)), tmp_path / "cut")
    cut = r["step"]
    assert r["preempted"] == "SIGTERM" and 2 <= cut < 8
    assert (tmp_path / "cut" / "checkpoints" / str(cut)).is_dir()
    assert f"preempted (SIGTERM): saved step {cut}" in (tmp_path / "cut" / "log.txt").read_text()
    resumed = loop.run(ToyTask(toy_config()), tmp_path / "cut")
    assert f"resumed from step {cut}" in (tmp_path / "cut" / "log.txt").read_text()
    a, _ = load_params(tmp_path / "straight")
    b, _ = load_params(tmp_path / "cut")
    np.testing.assert_array_equal(a["w"], b["w"])  # the same batches in the same order
    assert resumed["best_step"] == straight["best_step"] == 8


def test_ctrl_c_saves_like_sigterm_and_a_second_one_stops_at_once(tmp_path):
    r = loop.run(ToyTask(toy_config(), _Rows(sigterm_at=21, sig=signal.SIGINT)), tmp_path)
    assert r["preempted"] == "SIGINT" and (tmp_path / "checkpoints" / str(r["step"])).is_dir()
    assert f"preempted (SIGINT): saved step {r['step']}" in (tmp_path / "log.txt").read_text()
    watch = loop.Preemption()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert watch(1) and watch.signal == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        watch.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_nonfinite_steps_are_undone_counted_and_stop_the_run(tmp_path):
    # Batch 2 (elements 4-7) has a NaN row: that step is undone and logged, the run goes on.
    r = loop.run(ToyTask(toy_config(eval_every=0), _Rows(nan={5})), tmp_path / "one")
    assert r["step"] == 8 and np.isfinite(r["train"]["train/loss"])
    assert "step 2: non-finite loss or gradients, update skipped (1 in a row)" in (tmp_path / "one" / "log.txt").read_text()
    # Three bad steps in a row (> max_skipped_steps=2): the run stops with a checkpoint of the last good state.
    with pytest.raises(loop.TrainingError, match="3 consecutive steps"):
        loop.run(ToyTask(toy_config(eval_every=0, log_every=1), _Rows(nan={4, 8, 12})), tmp_path / "bad")
    params, step = load_params(tmp_path / "bad")
    assert step == 4 and np.isfinite(params["w"]).all()
    assert "error: TrainingError" in (tmp_path / "bad" / "log.txt").read_text()


def test_unwritable_workdir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="--workdir .*cannot write there"):
        loop.run(ToyTask(toy_config()), blocker / "run")


def test_a_damaged_latest_checkpoint_is_kept_aside_and_the_one_before_resumes(tmp_path):
    """Truncated array files in the newest checkpoint: resume from the one before, move it to WORKDIR/damaged."""
    from s2dc_jax.training.checkpoint import Checkpoints

    def saved(steps):
        it = iter(grain.MapDataset.range(8).to_iter_dataset())
        ck = Checkpoints(tmp_path, 3, None)
        for step in steps:
            next(it)
            ck.save(step, {"w": np.full((64, 64), step, np.float32)}, it)
        ck.close()

    def damage(step):
        files = [p for p in (tmp_path / "checkpoints" / str(step) / "state").rglob("*") if p.parent.name == "d"]
        assert files
        for p in files:
            p.write_bytes(p.read_bytes()[:10])

    saved([1, 2])
    damage(2)
    logs = []
    ck = Checkpoints(tmp_path, 3, None)
    it = iter(grain.MapDataset.range(8).to_iter_dataset())
    state, step = ck.restore_newest({"w": jax.ShapeDtypeStruct((64, 64), jnp.float32)}, it, logs.append)
    assert step == 1 and float(state["w"][0, 0]) == 1.0
    assert next(it) == 1  # the data position of step 1 (one element drawn)
    assert len(logs) == 1 and "checkpoint 2 cannot be read" in logs[0] and "resuming from step 1" in logs[0]
    assert (tmp_path / "damaged" / "2").is_dir() and ck.latest_step() == 1
    ck.save(2, {"w": np.full((64, 64), 2.0, np.float32)}, it)  # the step can be saved again
    ck.close()

    damage(1)
    damage(2)
    with pytest.raises(ValueError, match=r"checkpoints/2: cannot read the checkpoint .*nor any older one"):
        Checkpoints(tmp_path, 3, None).restore_newest({"w": jax.ShapeDtypeStruct((64, 64), jnp.float32)},
                                                      iter(grain.MapDataset.range(8).to_iter_dataset()), print)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]  # nothing moved
