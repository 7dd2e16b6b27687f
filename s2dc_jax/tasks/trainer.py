"""The shared fine-tuning loop: config -> data -> model init -> data-parallel training -> evaluation.

Each task (segmentation.py, classification.py, regression.py) supplies a `TaskSpec`:
its loss on a batch and its evaluation on whole validation volumes. Everything else
(mesh, optimiser, Orbax checkpoints of the latest and the best state, logs, resume)
lives here once.

Data parallel: the state is replicated and each batch is sharded over the mesh axis
"data"; one `jax.jit` step lets XLA insert the gradient all-reduce. With several
processes (`jax.distributed`), every process loads the (small) downstream set, builds the
same global batch from (seed, step) and hands JAX only its own devices' rows. Evaluation
runs on each process's first device; process 0's scores pick the best checkpoint, and
process 0 alone writes logs and predictions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from s2dc_jax.tasks import config as task_config
from s2dc_jax.tasks import data as task_data
from s2dc_jax.tasks.init import initialize
from s2dc_jax.tasks.models import build_model
from s2dc_jax.training.logs import RunLog
from s2dc_jax.training.loop import Preemption, check_replicas


@dataclasses.dataclass
class TaskSpec:
    """What differs between tasks: the batch loss and the evaluation on validation cases."""

    loss: Callable          # (outputs, targets, config) -> (loss, metrics dict)
    evaluate: Callable      # (predict, params, cases, entries, config, out_dir | None) -> metrics dict
    main_metric: str        # key of evaluate's result that picks the best checkpoint (higher is better)


def make_mesh(num_devices: int = 0) -> Mesh:
    """1-D mesh, axis "data", over the first `num_devices` devices (all when 0; all of every process's when several)."""
    devs = jax.devices()
    n = num_devices or len(devs)
    if n > len(devs):
        raise ValueError(f"num_devices ({n}) exceeds the {len(devs)} devices")
    if jax.process_count() > 1 and n != len(devs):
        raise ValueError(f"num_devices ({n}) must be 0 or all {len(devs)} devices when running {jax.process_count()} "
                         "processes")
    return Mesh(np.asarray(devs[:n]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _first_device(params):
    """This process's copy of replicated params, on its first device (validation is not sharded)."""
    return jax.tree.map(lambda a: a.addressable_data(0), params)


def _global(tree, sharding: NamedSharding):
    """Host numpy arrays, the same on every process, as global arrays with `sharding` (each process gives its part)."""
    return jax.tree.map(lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda idx: np.asarray(a)[idx]),
                        tree)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    """AdamW with warm-up then cosine decay to 0 (or a constant rate), optional global-norm clipping."""
    o = config.optim
    if o.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(total_steps, o.warmup_steps + 1), 0.0)
    else:
        lr = optax.join_schedules([optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1)),
                                   optax.constant_schedule(o.lr)], [o.warmup_steps]) if o.warmup_steps else o.lr
    tx = optax.adamw(lr, weight_decay=o.weight_decay)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), tx) if o.grad_clip > 0 else tx


def train_step(state: dict, batch: dict, *, model, tx, loss_fn, config):
    """One optimiser step on a global batch; returns the new state and scalar metrics."""

    def objective(params):
        out = model.apply({"params": params}, batch["image"])
        return loss_fn(out, batch["target"], config)

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics


def _fmt(metrics: dict) -> str:
    return json.dumps({k: (round(float(v), 5) if np.ndim(v) == 0 else [round(float(x), 4) for x in np.ravel(v)])
                       for k, v in metrics.items()})


def run(config, workdir, spec: TaskSpec) -> dict:
    """Fine-tunes per `config` in `workdir` (resuming from its latest checkpoint); returns the evaluation history."""
    mesh = make_mesh(config.num_devices)
    n_dev = mesh.devices.size
    task_config.validate(config, n_dev)
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    log = RunLog(workdir)
    main_process = jax.process_index() == 0
    if main_process:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    train_entries, val_entries = task_data.splits(config)
    if not train_entries:
        raise ValueError(f"data.datalist {config.data.datalist}: no training entries")
    if not val_entries:
        raise ValueError(f"data.datalist {config.data.datalist}: no validation entries "
                         f"(add a '{config.data.val_key}' list, data.num_folds or data.val_fraction)")
    t0 = time.time()
    train_cases = [task_data.load_case(e, config) for e in train_entries]
    val_cases = [task_data.load_case(e, config) for e in val_entries]
    log.line(f"data: {len(train_cases)} training and {len(val_cases)} validation cases loaded in "
             f"{time.time() - t0:.1f}s")

    steps_per_epoch = math.ceil(len(train_cases) / config.batch_size)
    total_steps = config.total_steps or config.epochs * steps_per_epoch
    model = build_model(config)
    tx = make_optimizer(config, total_steps)
    x0 = jnp.zeros((1,) + tuple(config.data.roi) + (config.model.in_channels,), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(config.seed), x0)["params"]
    params, _ = initialize(params, config, log=log.line)

    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    state = {"step": np.zeros((), np.int32), "params": params, "opt_state": tx.init(params)}
    # From host values: a device_put of process-local jax arrays onto a multi-process sharding breaks Orbax saves.
    state = _global(jax.tree.map(np.asarray, state), replicated)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)

    latest = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True))
    # Orbax keeps the one checkpoint with the best validation score here.
    best = ocp.CheckpointManager(workdir / "best", options=ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, best_fn=lambda m: m[spec.main_metric], best_mode="max"))
    if latest.latest_step() is not None:
        state = latest.restore(latest.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        state = state["state"]
        log.line(f"resumed from step {int(state['step'])} in {workdir / 'checkpoints'}")
    for s in best.all_steps():  # evaluated after the step resumed from: it is evaluated again on the way
        if s > int(state["step"]):
            best.delete(s)

    step_fn = jax.jit(
        lambda s, b: train_step(s, b, model=model, tx=tx, loss_fn=spec.loss, config=config),
        in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated), donate_argnums=(0,))
    predict = _make_predictor(model, config)

    def evaluate(params):
        # Validation runs on this process's first device (its copy of the replicated params): windows of one
        # volume are too few to shard usefully. Process 0's scores are everyone's, so that every process keeps
        # the same best checkpoint even if accelerator arithmetic differed in the last bits.
        m = spec.evaluate(predict, _first_device(params), val_cases, val_entries, config, None)
        if jax.process_count() > 1:
            m = jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(m))
        return m

    history = []
    start = int(state["step"])
    if config.eval.at_start and start == 0:
        m = evaluate(state["params"])
        history.append((0, m))
        log.line(f"eval step 0 (before training) {_fmt(m)}")
    preempted, stop = Preemption(), False  # SIGTERM (a scheduler's preemption) -> save and stop
    log.line(f"training {config.task}: steps {start} -> {total_steps}, batch {config.batch_size} over {n_dev} devices")
    bar = tqdm(total=total_steps, initial=start, disable=not main_process, desc=config.task)
    t_log, acc = time.time(), []
    for step in range(start, total_steps):
        batch = task_data.train_batch(train_cases, step, config)
        batch = _global(batch, batch_sharding)
        state, metrics = step_fn(state, batch)
        # Fetching the metrics blocks on every step: avoids the CPU collective deadlock (JAX_NOTES.md).
        acc.append(jax.device_get(metrics))
        bar.update(1)
        done = step + 1
        if done % config.log_every == 0 or done == total_steps:
            mean = {k: float(np.mean([a[k] for a in acc])) for k in acc[0]}
            mean["steps_per_s"] = len(acc) / max(time.time() - t_log, 1e-9)
            log.scalars(done, {f"train/{k}": v for k, v in mean.items()})
            bar.set_postfix(loss=f"{mean['loss']:.4f}")
            t_log, acc = time.time(), []
        if done % config.eval_every == 0 or done == total_steps:
            m = evaluate(state["params"])
            history.append((done, m))
            log.scalars(done, {f"val/{k}": v for k, v in m.items() if np.ndim(v) == 0})
            best.save(done, args=ocp.args.Composite(params=ocp.args.StandardSave(state["params"])),
                      metrics={spec.main_metric: float(m[spec.main_metric])}, force=True)
        stop = preempted(done)
        if done % config.checkpoint_every == 0 or done == total_steps or stop:
            latest.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
        if stop:
            log.line(f"preempted: saved step {done}; re-run the same command to resume")
            break
    bar.close()
    preempted.close()
    check_replicas(state["params"], int(state["step"]), log.line)
    latest.wait_until_finished()
    best.wait_until_finished()

    result = {"history": history, "total_steps": total_steps, "preempted": stop}
    best_step = best.best_step()
    if best_step is not None and not stop:
        best_params = best.restore(best_step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract["params"])))["params"]
        out_dir = workdir / "predictions" if config.eval.save_predictions else None
        if main_process:  # the other processes wait below rather than redo it
            final = spec.evaluate(predict, _first_device(best_params), val_cases, val_entries, config, out_dir)
            log.line(f"best checkpoint: step {best_step}; its evaluation {_fmt(final)}"
                     + (f"; predictions in {out_dir}" if out_dir else ""))
            result.update(best_step=best_step, best=final)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("fine-tuning: final evaluation written")
    latest.close()
    best.close()
    log.close()
    return result


def _make_predictor(model, config):
    """jit'd whole-volume predictor (params, f32[1, X, Y, Z, C]) -> outputs, by sliding window for dense tasks."""
    if config.task == "classification":
        return jax.jit(lambda p, x: model.apply({"params": p}, x))
    from s2dc_jax.tasks.sliding_window import sliding_window_inference
    e = config.eval
    return jax.jit(lambda p, x: sliding_window_inference(
        x, tuple(config.data.roi), lambda w: model.apply({"params": p}, w), sw_batch_size=e.sw_batch_size,
        overlap=e.overlap, mode=e.mode))
