"""Orbax checkpoints of the pretraining state together with the grain iterator position."""
from __future__ import annotations

import os
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def make_manager(workdir: str | os.PathLike, keep: int) -> ocp.CheckpointManager:
    """The run's manager: ``WORKDIR/checkpoints/<step>/{state,data}``, keeping the last ``keep``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_DIR, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict, data_iter) -> None:
    """Save (asynchronously) the state and the data position after ``step`` steps."""
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter)), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract: dict, data_iter) -> dict:
    """Restore ``state`` into the shapes and shardings of ``abstract``; ``data_iter`` is moved in place."""
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored["state"]


def _resolve(path: str | os.PathLike, step: int | None) -> tuple[Path, int]:
    """A workdir, its checkpoints/ folder, or one step folder -> (checkpoints folder, step)."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path does not exist: {path}")
    if (path / "state").is_dir():                       # a step folder: checkpoints/<step>
        if step is not None and str(step) != path.name:
            raise ValueError(f"--step={step} given with the step folder {path}")
        return path.parent, int(path.name)
    root = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    steps = ocp.utils.checkpoint_steps(root)
    if not steps:
        raise FileNotFoundError(f"no checkpoints under {root}")
    if step is None:
        return root, max(steps)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} under {root}; steps there: {sorted(steps)}")
    return root, step


def load_student(path: str | os.PathLike, step: int | None = None) -> tuple[dict, int]:
    """The student params ``{"encoder", "heads"}`` (numpy) of a pretraining checkpoint, and its step."""
    root, step = _resolve(path, step)
    # A read-only manager only knows the items it is told about; "data" stays unread.
    with ocp.CheckpointManager(root, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        meta = mngr.item_metadata(step)["state"]
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta["params"])
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={"params": target}, restore_args={"params": restore_args}, partial_restore=True)))
    return restored["state"]["params"], step


def load_params_for_export(path: str | os.PathLike, step: int | None = None) -> tuple[dict, str]:
    """``(encoder params, "encoder")`` of a pretraining workdir, for export and fine-tuning."""
    params, _ = load_student(path, step)
    return params["encoder"], "encoder"
