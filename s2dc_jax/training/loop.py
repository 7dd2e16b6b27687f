"""The pretraining loop: ``run(config, workdir)``; resumable, preemption-safe, multi-host."""
from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from s2dc_jax import data as data_lib
from s2dc_jax.training import checkpoint as ckpt
from s2dc_jax.training.config import validate
from s2dc_jax.training.logs import RunLog
from s2dc_jax.training.state import abstract_state, build_encoder, create_state, make_optimizer
from s2dc_jax.training.step import AXIS, make_train_step


class TrainingError(RuntimeError):
    """The run cannot go on (after its last good state was checkpointed)."""


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` from explicit flags, or from the cluster environment when there is one."""
    if coordinator_address:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1 \
            or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # SLURM / Open MPI / explicit env: JAX reads the cluster itself


def check_replicas(params, step: int, log) -> None:
    """With several processes, assert that every process's replica of `params` is the same (per-leaf sums)."""
    if jax.process_count() == 1:
        return
    # float32: process_allgather would turn float64 into float32 and never compare equal
    sums = np.array([np.asarray(x.addressable_data(0)).sum() for x in jax.tree.leaves(params)], np.float32)
    multihost_utils.assert_equal(sums, "the processes' parameter replicas differ")
    log(f"replicas agree across {jax.process_count()} processes at step {step}")


class Preemption:
    """SIGTERM -> save and stop at the next step boundary (all hosts agree on which one)."""

    def __init__(self):
        self.flag = False
        self._multi = jax.process_count() > 1
        self._old = None
        if not self._multi:  # with several processes, jax.distributed already watches SIGTERM
            self._old = signal.signal(signal.SIGTERM, self._set)

    def _set(self, *_):
        self.flag = True

    def __call__(self, step: int) -> bool:
        return multihost_utils.reached_preemption_sync_point(step) if self._multi else self.flag

    def close(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _summary(metrics, n, seconds, batch_size, data_stats):
    out = {k: v / n for k, v in metrics.items()}
    out["volumes_per_second"] = batch_size * n / max(seconds, 1e-9)
    out["step_seconds"] = seconds / n
    out.update(data_stats)
    return out


def _phantom_datalist(config, workdir: Path) -> str:
    """Write ``data.phantoms`` synthetic volumes into WORKDIR/phantoms once; return their datalist."""
    out = workdir / "phantoms"
    path = out / "datalist.json"
    if jax.process_index() == 0 and not path.exists():
        path = Path(data_lib.write_phantom_dataset(out, num=config.data.phantoms, modality=config.data.modality,
                                                   shape=tuple(config.data.phantom_shape), seed=config.seed,
                                                   labels=False, targets=False))
    multihost_utils.sync_global_devices("phantoms written")
    return str(path)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Pretrain until ``config.total_steps``, resuming from ``workdir`` if it has checkpoints.

    Returns the last logged metrics (averaged over the last ``log_every`` steps).
    """
    validate(config, jax.device_count())
    workdir = Path(workdir)
    main = jax.process_index() == 0
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    logs = RunLog(workdir)
    if config.data.phantoms > 0 and not config.data.datalist:
        config = copy.deepcopy(config)
        config.data.datalist = _phantom_datalist(config, workdir)
        logs.line(f"training on {config.data.phantoms} synthetic phantoms: {config.data.datalist}")

    mesh = jax.make_mesh((jax.device_count(),), (AXIS,))
    batch_sharding = NamedSharding(mesh, P(AXIS))
    encoder = build_encoder(config.model)
    tx, schedule = make_optimizer(config)
    local_batch = config.batch_size // jax.process_count()
    dataset = data_lib.make_pretrain_dataset(config.data, batch_size=local_batch, seed=config.seed,
                                             process_index=jax.process_index(),
                                             process_count=jax.process_count())
    data_iter = iter(dataset)

    manager = ckpt.make_manager(workdir, config.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        state = ckpt.restore(manager, latest, abstract_state(config, encoder, tx, mesh), data_iter)
        logs.line(f"resumed from {workdir / ckpt.CHECKPOINT_DIR / str(latest)}")
    else:
        state = create_state(config, encoder, tx, mesh)
        n_params = sum(x.size for x in jax.tree.leaves(state["params"]["encoder"]))
        logs.line(f"new run: {n_params:,} encoder parameters, {jax.device_count()} devices, "
                  f"{jax.process_count()} processes, global batch {config.batch_size}")
    start = int(state["step"])
    step_fn = make_train_step(config, encoder, tx, schedule, mesh)
    preempted = Preemption()

    bar = tqdm(total=config.total_steps, initial=start, disable=not main, unit="step", dynamic_ncols=True)
    acc, n_acc, t0, last, skipped_in_a_row, step = {}, 0, time.perf_counter(), {}, 0, start
    try:
        for step in range(start + 1, config.total_steps + 1):
            batch = next(data_iter)
            batch = {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
                     for k, v in batch.items()}
            state, metrics = step_fn(state, batch)
            # Fetching the scalars blocks on the step: needed on multi-device CPU (JAX_NOTES.md),
            # and it is how a non-finite step is seen at once.
            metrics = jax.device_get(metrics)
            skipped_in_a_row = skipped_in_a_row + 1 if metrics["skipped"] > 0 else 0
            if metrics["skipped"] > 0:
                logs.line(f"step {step}: non-finite loss or gradients, update skipped "
                          f"({skipped_in_a_row} in a row)")
            for k, v in metrics.items():
                acc[k] = acc.get(k, 0.0) + float(v)
            n_acc += 1
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['corr_acc']:.3f}", refresh=False)
            # The first step of a run is logged on its own: its metrics are those of the
            # starting parameters, the baseline the correspondence accuracy should rise from.
            if step % config.log_every == 0 or step == config.total_steps or step == start + 1:
                dt = time.perf_counter() - t0
                last = _summary(acc, n_acc, dt, config.batch_size, data_lib.iterator_stats(data_iter))
                logs.scalars(step, last)
                acc, n_acc, t0 = {}, 0, time.perf_counter()
            stop = preempted(step)
            if step % config.checkpoint_every == 0 or step == config.total_steps or stop:
                ckpt.save(manager, step, state, data_iter)
            if stop:
                logs.line(f"preempted: saved step {step}, exiting")
                break
            if skipped_in_a_row > config.max_skipped_steps:
                ckpt.save(manager, step, state, data_iter)
                raise TrainingError(
                    f"{skipped_in_a_row} consecutive steps had a non-finite loss or gradients; "
                    f"stopped at step {step} (checkpoint saved; the state is the last finite one). "
                    f"Lower optim.lr or check the data.")
        check_replicas(state["params"], step, logs.line)
    finally:
        manager.wait_until_finished()
        manager.close()
        data_iter.close()  # stops grain's workers and frees their shared memory
        bar.close()
        preempted.close()
        logs.close()
    return last
