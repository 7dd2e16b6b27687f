"""Run logs from process 0: a plain-text log, TensorBoard scalars and a progress bar."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import jax
from tqdm import tqdm


class RunLog:
    """Writes ``WORKDIR/log.txt`` and TensorBoard event files; silent on processes other than 0."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = Path(workdir)
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            self._text = open(self.workdir / "log.txt", "a", buffering=1)

    def line(self, msg: str, echo: bool = True) -> None:
        """One line to log.txt (timestamped) and, with ``echo``, to the terminal above any progress bar."""
        if self.enabled:
            self._text.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
            if echo:
                tqdm.write(msg)

    def scalars(self, step: int, values: dict, label: str = "step") -> None:
        """TensorBoard scalars and one log line ``{label} {step} {json}``."""
        if not self.enabled:
            return
        for k, v in values.items():
            if math.isfinite(float(v)):  # the log line shows a NaN; TensorBoard would only warn about it
                self._tb.add_scalar(k, float(v), step)
        self.line(f"{label} {step} " + json.dumps({k: round(float(v), 6) for k, v in values.items()}))

    def images(self, step: int, pictures: dict) -> None:
        """TensorBoard images ``{name: uint8[H, W, 3]}`` for ``step``."""
        if not self.enabled:
            return
        for name, img in pictures.items():
            self._tb.add_image(name, img, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._text.close()
