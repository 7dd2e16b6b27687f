"""The one training loop: ``run(task, workdir)`` for pretraining and every fine-tuning task.

It owns the mesh, the state (built from shapes, or restored), the checkpoints of {state,
data position} and of the best state, preemption (SIGTERM / Ctrl-C save and stop), resume,
the next batch's transfer while a step runs, metrics fetched from the devices on log steps
only, logs (progress bar, log.txt, TensorBoard) and the evaluation schedule. The task
(`s2dc_jax.tasks.base.Task`) gives the rest.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from s2dc_jax.tasks.base import AXIS, Task
from s2dc_jax.training.checkpoint import Checkpoints
from s2dc_jax.training.logs import RunLog
from s2dc_jax.training.mesh import batch_sharding, make_mesh, replicated, to_global


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
    """With several processes, assert that every process's replica of ``params`` is the same (per-leaf sums)."""
    if jax.process_count() == 1:
        return
    # float32: process_allgather would turn float64 into float32 and never compare equal
    sums = np.array([np.asarray(x.addressable_data(0)).sum() for x in jax.tree.leaves(params)], np.float32)
    multihost_utils.assert_equal(sums, "the processes' parameter replicas differ")
    log(f"replicas agree across {jax.process_count()} processes at step {step}")


class Preemption:
    """SIGTERM or Ctrl-C -> save and stop at the next step boundary (all hosts agree on which one).

    A second Ctrl-C stops at once (KeyboardInterrupt), without saving.
    """

    def __init__(self):
        self.signal: str | None = None
        self._multi = jax.process_count() > 1
        self._old = {}
        # With several processes jax.distributed watches SIGTERM and syncs the stop step itself.
        for sig in (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._set)

    def _set(self, signum, _frame):
        if signum == signal.SIGINT and self.signal == "SIGINT":
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __call__(self, step: int) -> bool:
        if self._multi and multihost_utils.reached_preemption_sync_point(step):
            self.signal = self.signal or "SIGTERM"
        return self.signal is not None

    def close(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _guarded(task: Task):
    """The task's step, undone when its loss or gradient norm is not finite; the step counter always advances."""

    def step(state, batch):
        new, metrics = task.train_step(state, batch)
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        kept["step"] = state["step"] + 1
        return kept, dict(metrics, skipped=1.0 - ok.astype(jnp.float32))

    return step


def compile_step(task: Task, mesh):
    """``step(state, batch) -> (state, metrics)``: jit of the task's step under shard_map; the state is donated."""
    sharded = jax.shard_map(_guarded(task), mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,))


def abstract_state(task: Task, mesh) -> dict:
    """ShapeDtypeStructs with the replicated sharding: the target a restore fills, and what a compile needs."""
    shapes = jax.eval_shape(task.init_state, jax.random.PRNGKey(0))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated(mesh)), shapes)


def compilation_cache_note() -> str:
    """Where compiled programs are kept between runs (_cli.use_compilation_cache), for the log."""
    folder = jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
    return f"XLA compilation cache {folder}" if folder else "no XLA compilation cache"


def create_state(task: Task, mesh) -> dict:
    """A fresh state, replicated over ``mesh``: shapes first, then one jit'd init with those output shardings."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract_state(task, mesh))
    return jax.jit(task.init_state, out_shardings=shardings)(jax.random.PRNGKey(task.config.seed))


def _eval_config(config) -> tuple[int, bool]:
    every = int(config.get("eval_every", 0) or 0)
    at_start = bool(config.eval.get("at_start", False)) if "eval" in config else False
    return every, at_start


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items() if np.ndim(v) == 0)


class _TrainLog:
    """Per-step metrics kept on the devices until a log step, then fetched at once and averaged."""

    def __init__(self, logs: RunLog, max_skipped: int):
        self.logs, self.max_skipped = logs, max_skipped
        self.pending: list[tuple[int, dict]] = []
        self.in_a_row = 0
        self.t0 = time.perf_counter()

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def flush(self, batch_size: int, extra: dict) -> dict:
        """Fetch, log skipped steps, write the means; returns them. Raises TrainingError past max_skipped_steps."""
        steps = [s for s, _ in self.pending]
        host = jax.device_get([m for _, m in self.pending])
        dt = time.perf_counter() - self.t0
        for s, m in zip(steps, host):
            if m["skipped"] > 0:
                self.in_a_row += 1
                self.logs.line(f"step {s}: non-finite loss or gradients, update skipped ({self.in_a_row} in a row)")
            else:
                self.in_a_row = 0
        # A skipped step's metrics are not finite: the means are over the steps that were applied.
        good = [m for m in host if m["skipped"] == 0] or host
        mean = {f"train/{k}": float(np.mean([m[k] for m in good])) for k in host[0] if k != "skipped"}
        mean["train/skipped"] = float(np.sum([m["skipped"] for m in host]))
        mean["train/volumes_per_second"] = batch_size * len(host) / max(dt, 1e-9)
        mean["train/step_seconds"] = dt / len(host)
        mean.update(extra)
        self.logs.scalars(steps[-1], mean)
        self.pending, self.t0 = [], time.perf_counter()
        return mean

    @property
    def too_many_skipped(self) -> bool:
        return self.in_a_row > self.max_skipped


def run(task: Task, workdir: str | os.PathLike) -> dict:
    """Train ``task`` until its total steps, resuming from ``workdir`` if it has checkpoints.

    Returns ``{"history": [(step, eval metrics)], "train": last logged means, "best_step",
    "best", "preempted" (the signal's name or None), "step"}``.
    """
    config = task.config
    mesh = make_mesh(config.get("num_devices", 0))
    n_dev = mesh.devices.size
    task.mesh = mesh
    task.validate(n_dev)
    workdir = Path(workdir).absolute()
    main = jax.process_index() == 0
    if main:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        except OSError as e:
            raise ValueError(f"--workdir {workdir}: cannot write there ({e.strerror})") from None
    logs = RunLog(workdir)
    preempted = Preemption()
    data_iter = ckpts = bar = None
    try:
        task.prepare(workdir, logs.line)
        total = task.total_steps
        data_iter = iter(task.dataset(jax.process_index(), jax.process_count()))
        ckpts = Checkpoints(workdir, config.keep_checkpoints, task.main_metric)
        if ckpts.latest_step() is not None:
            state, latest = ckpts.restore_newest(abstract_state(task, mesh), data_iter, logs.line)
            logs.line(f"resumed from step {latest} in {workdir / 'checkpoints'}")
        else:
            state = task.initialize(create_state(task, mesh), logs.line)
            logs.line(f"new run ({task.name}): {task.describe(state)}, {n_dev} devices, "
                      f"{jax.process_count()} processes, global batch {config.batch_size}, {total} steps")
        start = int(state["step"])
        ckpts.forget_best_after(start)
        if start < total:
            logs.line(f"compiling the step, or loading it ({compilation_cache_note()})")
        step_fn = compile_step(task, mesh)
        sharding = batch_sharding(mesh)
        on_cpu = mesh.devices.flat[0].platform == "cpu"
        eval_every, eval_at_start = _eval_config(config)
        image_every = int(config.get("image_every", 0) or 0)
        history: list[tuple[int, dict]] = []

        shown: dict = {}  # the progress bar's figures

        def evaluate(step: int, out_dir: Path | None = None) -> dict | None:
            m = task.evaluate(state["params"], out_dir if main else None)
            if m is None:
                return None
            if jax.process_count() > 1:  # process 0's scores are everyone's: the same best checkpoint everywhere
                m = jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(m))
            m = {k: float(v) for k, v in m.items()}
            history.append((step, m))
            logs.scalars(step, {f"val/{k}": v for k, v in m.items()}, label="eval step")
            shown.update({f"val/{k}": v for k, v in m.items()})
            if task.main_metric:
                ckpts.save_best(step, state["params"], m)
            return m

        def draw(step: int) -> None:
            pictures = task.images(state["params"])
            if pictures:
                logs.images(step, pictures)

        if eval_at_start and start == 0:
            evaluate(0)
            if image_every:
                draw(0)  # the starting point, beside its scores
        train = _TrainLog(logs, int(config.get("max_skipped_steps", 20)))
        bar = tqdm(total=total, initial=start, disable=not main, unit="step", dynamic_ncols=True, desc=task.name)
        batch = to_global(next(data_iter), sharding) if start < total else None
        last, step, saved = {}, start, None
        for step in range(start + 1, total + 1):
            state, metrics = step_fn(state, batch)
            if on_cpu:  # several CPU devices running collectives without blocking can hang (a known XLA CPU issue)
                jax.block_until_ready(metrics)
            train.add(step, metrics)
            bar.update(1)
            stop = preempted(step)
            if step % config.checkpoint_every == 0 or step == total or stop:
                # Before the next batch is drawn, so the saved data position is this step's.
                ckpts.save(step, state, data_iter)
                saved = step
            if step < total and not stop:
                batch = to_global(next(data_iter), sharding)  # copies while the step runs
            # The first step is logged on its own: its metrics are those of the starting parameters.
            if step % config.log_every == 0 or step == total or step == start + 1 or stop:
                last = train.flush(config.batch_size, dict(getattr(data_iter, "stats", {})))
                shown.update(last)
                if train.too_many_skipped:
                    if saved != step:
                        ckpts.save(step, state, data_iter)  # the state is the last finite one
                    raise TrainingError(
                        f"{train.in_a_row} consecutive steps had a non-finite loss or gradients; stopped at "
                        f"step {step} (checkpoint saved; the state is the last finite one). Lower optim.lr or "
                        f"check the data.")
            t_aside = time.perf_counter()
            if eval_every and (step % eval_every == 0 or step == total) and not stop:
                evaluate(step, workdir / "predictions" if step == total else None)
            if image_every and (step % image_every == 0 or step == start + 1) and not stop:
                draw(step)
            train.t0 += time.perf_counter() - t_aside  # evaluation and pictures are not training time
            bar.set_postfix({k.split("/", 1)[1]: format(shown[k], f) for k, f in task.progress if k in shown},
                            refresh=False)
            if stop:
                break
        bar.close()
        check_replicas(state["params"], step, logs.line)
        ckpts.wait()

        result = {"history": history, "train": last, "step": step, "preempted": preempted.signal,
                  "best_step": ckpts.best_step(), "best": None}
        if preempted.signal:
            logs.line(f"preempted ({preempted.signal}): saved step {step} in {workdir / 'checkpoints'}; "
                      f"re-run the same command to resume")
        elif result["best_step"] is not None:
            best = result["best_step"]
            scores = dict(history).get(best)
            if not history or history[-1][0] != best:  # the predictions written at the end are the last step's
                params = ckpts.restore_best_params(abstract_state(task, mesh)["params"])
                scores = task.evaluate(params, workdir / "predictions" if main else None)
            result["best"] = scores
            logs.line(f"done: {step} steps; best checkpoint {workdir / 'best' / str(best)}: {_fmt(scores or {})}")
        else:
            logs.line(f"done: {step} steps; " + _fmt({k.removeprefix("train/"): v for k, v in last.items()}))
        return result
    except Exception as e:
        logs.line(f"error: {type(e).__name__}: {e}", echo=False)
        raise
    finally:
        if bar is not None:
            bar.close()
        if ckpts is not None:
            ckpts.close()
        if data_iter is not None and hasattr(data_iter, "close"):
            data_iter.close()  # stops grain's workers and frees their shared memory
        preempted.close()
        logs.close()


def memory_bytes(compiled) -> dict:
    """XLA's memory analysis of a compiled step in bytes; peak = arguments + outputs + temporaries - donated."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def memory_line(compiled) -> str:
    """XLA's estimate of one compiled step's device memory, in one line."""
    m = memory_bytes(compiled)
    if not m:
        return "memory analysis not available on this backend"
    gib = lambda b: b / 2**30  # noqa: E731
    return (f"per device: arguments {gib(m['argument']):.2f} GiB, outputs {gib(m['output']):.2f} "
            f"GiB (donated {gib(m['alias']):.2f}), temporaries {gib(m['temp']):.2f} GiB, "
            f"peak about {gib(m['peak']):.2f} GiB")


def dry_run(task: Task, workdir: str | os.PathLike, log=print) -> bool:
    """Check a run before it starts: the config, every datalist entry's header, one compiled and timed step.

    Prints the per-device batch, XLA's memory estimate and the step time; writes no
    checkpoint (pretraining phantoms may be written into ``workdir``). False if the data
    has problems.
    """
    config = task.config
    mesh = make_mesh(config.get("num_devices", 0))
    task.mesh = mesh
    n_dev = mesh.devices.size
    task.validate(n_dev)
    log(f"config: OK ({task.name}, {n_dev} devices, {jax.process_count()} processes, global batch "
        f"{config.batch_size}, {config.batch_size // n_dev} per device)")
    report = task.check_data()
    if report is not None:
        for path, reason in report.problems[:20]:
            log(f"BAD {path}: {reason}")
        log(f"data: {report.summary()} ({report.rate()})")
        if report.problems:
            return False
    task.prepare(Path(workdir).absolute(), log)
    data_iter = iter(task.dataset(jax.process_index(), jax.process_count()))
    try:
        batch = to_global(next(data_iter), batch_sharding(mesh))
        t0 = time.perf_counter()
        compiled = compile_step(task, mesh).lower(abstract_state(task, mesh), batch).compile()
        log(f"step compiled in {time.perf_counter() - t0:.1f} s ({compilation_cache_note()}); {memory_line(compiled)}")
        state = task.initialize(create_state(task, mesh), log)
        times = []
        for _ in range(2):  # the first call also moves the state in place
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        # No FLOP count here: XLA's cost analysis counts a lax.map body (a crop group) once
        # (launch/benchmark.py memory gives the model's FLOPs).
        log(f"one step: {times[-1]:.2f} s; {task.total_steps} steps would take about "
            f"{times[-1] * task.total_steps / 3600:.1f} h")
    finally:
        if hasattr(data_iter, "close"):
            data_iter.close()
    return True
