"""Reading the run folders that the training loop writes, without the loop.

A workdir holds ``checkpoints/<step>/{state, data}`` (the latest states and the data
position), ``best/<step>/state`` (the best-scoring state of a fine-tuning run, params only)
and ``config.json``. Every ``state`` item has ``params``: ``{"encoder", "heads"}`` for
pretraining, the model's flax tree for fine-tuning.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import jax
import numpy as np

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
STATE = "state"


def resolve(path: str | os.PathLike, step: int | None = None) -> tuple[Path, int]:
    """A workdir, its ``checkpoints/`` or ``best/`` folder, or one step folder -> (folder of steps, step)."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path does not exist: {path}")
    if (path / STATE).is_dir():                      # a step folder
        if step is not None and str(step) != path.name:
            raise ValueError(f"--step={step} given with the step folder {path}")
        return path.parent, int(path.name)
    root = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / STATE).is_dir()) \
        if root.is_dir() else []
    if not steps:
        raise FileNotFoundError(f"no checkpoints under {root}")
    if step is None:
        return root, steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} under {root}; steps there: {steps}")
    return root, step


def failed_read_reason(e: BaseException) -> str:
    """A failed Orbax read in one line: the innermost reason, without tensorstore's spec.

    Also silences, for the rest of the process, what the failed read leaves behind: Orbax
    reads all arrays at once, and the reads abandoned after the first failure would each end in
    an asyncio "Task exception was never retrieved" log record, an "Exception ignored in
    <coroutine>" message or an "Event loop is closed" traceback from tensorstore's threads
    (hundreds of tracebacks for one damaged checkpoint).
    """
    _silence_abandoned_reads()
    while e.__cause__ is not None and "See full TensorStore details" in str(e):
        e = e.__cause__
    text = " ".join(str(e).split()).split(" [tensorstore_spec=")[0]
    return text if len(text) <= 300 else text[:297] + "..."


class _AbandonedReads(logging.Filter):
    def filter(self, record):
        return "exception was never retrieved" not in record.getMessage()


def _silence_abandoned_reads() -> None:
    if getattr(sys.unraisablehook, "_s2dc_quiet", False):
        return
    logging.getLogger("asyncio").addFilter(_AbandonedReads())
    previous = sys.unraisablehook

    def hook(unraisable):  # an abandoned read's coroutine, or its callback into the closed event loop
        closed_loop = isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
            unraisable.exc_value)
        if not (asyncio.iscoroutine(unraisable.object) or closed_loop):
            previous(unraisable)

    hook._s2dc_quiet = True
    sys.unraisablehook = hook


def load_params(path: str | os.PathLike, step: int | None = None, item: str = "params") -> tuple[dict, int]:
    """The ``params`` (or another ``item`` of it, e.g. a pretraining ``teacher``; numpy) of a saved state, and its step.

    See `resolve` for ``path``.
    """
    import orbax.checkpoint as ocp

    root, step = resolve(path, step)
    # A read-only manager knows only the items it is told about; "data" stays unread.
    with ocp.CheckpointManager(root, item_handlers={STATE: ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        try:
            meta = mngr.item_metadata(step)[STATE]
        except Exception as e:  # noqa: BLE001  orbax/tensorstore raise many kinds for a damaged folder
            raise ValueError(f"{root / str(step)}: cannot read the saved state ({failed_read_reason(e)})") from None
        if item not in meta:
            raise ValueError(f"{root / str(step)}: the saved state has no {item} (it has {sorted(meta)})")
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta[item])
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
                item={item: target}, restore_args={item: restore_args}, partial_restore=True)}))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{root / str(step)}: cannot read the saved {item} ({failed_read_reason(e)})") from None
    return restored[STATE][item], step


def params_kind(params: dict) -> str:
    """What a params tree is: 'pretrain' (encoder + heads), 'swinunetr', 'classifier' or 'encoder'."""
    if "encoder" in params and "heads" in params:
        return "pretrain"
    if "swinViT" in params:
        return "classifier" if "head_fc1" in params else "swinunetr"
    if "patch_embed" in params:
        return "encoder"
    raise ValueError(f"unknown params layout (top-level keys {sorted(params)[:6]})")


def encoder_params(params: dict) -> dict:
    """The Swin encoder subtree of any saved params (the student's, for pretraining)."""
    kind = params_kind(params)
    return {"pretrain": lambda: params["encoder"], "encoder": lambda: params}.get(kind, lambda: params["swinViT"])()


def run_config(path: str | os.PathLike) -> dict | None:
    """``config.json`` of the workdir that ``path`` (a workdir, checkpoints/, best/ or step folder) belongs to."""
    path = Path(path).absolute()
    for folder in (path, *path.parents[:3]):
        f = folder / "config.json"
        if f.is_file():
            return json.loads(f.read_text())
    return None
