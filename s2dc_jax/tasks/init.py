"""Model initialisation for fine-tuning: from scratch, a pretraining workdir, or MONAI-layout weights.

Both sources go through `s2dc_jax.interop.from_monai`, so `init.skip` patterns and the
loaded / skipped / missing / unexpected report mean the same for either: a pretraining
checkpoint's student encoder is first written under MONAI `swinViT.*` names.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from s2dc_jax.data.io import DataError
from s2dc_jax.interop import from_monai, read_state_dict, to_monai


def initialize(params: dict, config, log=print) -> tuple[dict, object]:
    """Fresh params -> params with `init.checkpoint` or `init.torch` loaded (minus `init.skip`), and the report."""
    init = config.init
    skip = tuple(init.skip) if init.skip else None
    if init.checkpoint:
        from s2dc_jax.training.checkpoint import load_params_for_export
        encoder, _ = load_params_for_export(init.checkpoint, init.step)
        state_dict, source = to_monai(encoder), f"pretraining checkpoint {init.checkpoint}"
    elif init.torch:
        if not Path(init.torch).is_file():
            raise DataError(init.torch, "init.torch: weights file not found")
        state_dict, source = read_state_dict(os.fspath(init.torch)), f"weights file {init.torch}"
    else:
        log("init: from scratch (no init.checkpoint or init.torch)")
        return params, None
    flat_init = jax_to_numpy(params)
    loaded, report = from_monai(state_dict, init_params=flat_init, skip=skip, what="swinunetr")
    log(f"init: {source}: loaded {len(report.matched)}, skipped {len(report.skipped)} (init.skip), "
        f"missing {len(report.missing)} (kept fresh), unexpected {len(report.unexpected)}")
    if not report.matched:
        raise ValueError(f"init: nothing in {source} matched the model; check model.* against the weights "
                         f"({report.summary()})")
    return loaded, report


def jax_to_numpy(tree):
    """A params tree as nested dicts of numpy arrays."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: jax_to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
