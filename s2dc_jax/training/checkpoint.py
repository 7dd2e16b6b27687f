"""The run's Orbax checkpoints: the latest states with the data position, and the best-scoring state.

``WORKDIR/checkpoints/<step>/{state, data}`` (the grain iterator position beside the
state, so a resume continues the same batches) keeps the last ``keep``;
``WORKDIR/best/<step>/state`` keeps the params of the one evaluation with the highest
main metric (fine-tuning). The layout is read back by `s2dc_jax.interop.workdir`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from s2dc_jax.interop.workdir import BEST_DIR, CHECKPOINT_DIR, STATE, failed_read_reason

DAMAGED_DIR = "damaged"  # WORKDIR/damaged/<step>: checkpoints that could not be read, kept for the user


class Checkpoints:
    """The latest-states manager and, when the task has a main metric, the best-state manager."""

    def __init__(self, workdir: Path, keep: int, main_metric: str | None):
        self.latest = ocp.CheckpointManager(Path(workdir) / CHECKPOINT_DIR,
                                            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = None
        if main_metric:
            self.best = ocp.CheckpointManager(Path(workdir) / BEST_DIR, options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m[main_metric], best_mode="max"))
        self.main_metric = main_metric
        self.workdir = Path(workdir)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: dict, data_iter) -> None:
        """Save (asynchronously) the state and the data position after ``step`` steps."""
        self.latest.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state), "data": grain.checkpoint.CheckpointSave(data_iter)}), force=True)

    def restore(self, step: int, abstract: dict, data_iter) -> dict:
        """The state saved at ``step``, in the shapes and shardings of ``abstract``; ``data_iter`` is moved in place."""
        restored = self.latest.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(abstract), "data": grain.checkpoint.CheckpointRestore(data_iter)}))
        return restored[STATE]

    def restore_newest(self, abstract: dict, data_iter, log) -> tuple[dict, int]:
        """``(state, step)`` of the newest checkpoint that can be read, ``data_iter`` moved in place.

        A newer one that cannot be read (a file truncated by a full disk or a copy cut short)
        is moved to ``WORKDIR/damaged/<step>``, kept, and named in the log, and the run goes on
        from the one before. If none can be read, nothing is moved: a ValueError names the newest.
        """
        failed = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                state = self.restore(step, abstract, data_iter)
            except Exception as e:  # noqa: BLE001  Orbax/tensorstore raise many kinds for a damaged folder
                failed.append((step, failed_read_reason(e)))
                continue
            if failed:
                multihost_utils.sync_global_devices("damaged checkpoints found")
                if jax.process_index() == 0:
                    for bad, why in failed:
                        dest = self.workdir / DAMAGED_DIR / str(bad)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.move(str(self.latest.directory / str(bad)), str(dest))
                        log(f"checkpoint {bad} cannot be read ({why}); moved to {dest}; resuming from step {step}")
                multihost_utils.sync_global_devices("damaged checkpoints moved")
                self.latest.reload()
            return state, step
        newest, why = failed[0]
        raise ValueError(f"{self.latest.directory / str(newest)}: cannot read the checkpoint ({why}), nor any older "
                         f"one; move {self.latest.directory} away to start the run again")

    def save_best(self, step: int, params, metrics: dict) -> None:
        """Offer the params evaluated at ``step``; Orbax keeps them if their main metric is the best so far."""
        self.best.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave({"params": params})}),
                       metrics={self.main_metric: float(metrics[self.main_metric])}, force=True)

    def forget_best_after(self, step: int) -> None:
        """A resumed run evaluates the steps after ``step`` again: drop their best entries (they could clash)."""
        if self.best is not None:
            for s in self.best.all_steps():
                if s > step:
                    self.best.delete(s)

    def best_step(self) -> int | None:
        return None if self.best is None else self.best.best_step()

    def restore_best_params(self, abstract_params):
        """The params of the best step, into the shapes and shardings of ``abstract_params``."""
        self.best.wait_until_finished()
        return self.best.restore(self.best.best_step(), args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore({"params": abstract_params})}))[STATE]["params"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        if self.best is not None:
            self.best.close()
