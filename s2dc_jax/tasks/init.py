"""Pretrained weights for fine-tuning: a merge of flax parameter subtrees into the fresh model.

Sources: a pretraining workdir or step folder (``init.checkpoint``: its student encoder)
or a PyTorch file in MONAI layout (``init.torch``: an encoder or a whole SwinUNETR; the
MONAI names are turned into flax paths when the file is read, nothing else sees them).
``init.skip`` regexes are matched (``re.search``) on flax paths such as
``swinViT/patch_embed/proj/kernel``; matched parameters keep their fresh values.
"""
from __future__ import annotations

import re
from pathlib import Path

from s2dc_jax.data.io import DataError
from s2dc_jax.interop import LoadReport, flatten_params, from_monai, read_state_dict, unflatten_params
from s2dc_jax.interop.workdir import encoder_params, load_params


def source_params(config) -> tuple[dict, str] | None:
    """``(flax tree rooted like the fine-tuning model, description)`` of the configured source, or None."""
    init = config.init
    if init.checkpoint:
        try:
            params, step = load_params(init.checkpoint, init.step)
        except FileNotFoundError as e:
            raise ValueError(f"init.checkpoint: {e}") from None
        return {"swinViT": encoder_params(params)}, f"pretraining checkpoint {init.checkpoint} (step {step})"
    if init.torch:
        if not Path(init.torch).is_file():
            raise DataError(init.torch, "init.torch: weights file not found")
        tree, _ = from_monai(read_state_dict(str(init.torch)))
        if "swinViT" not in tree:  # an encoder-only file: it is the fine-tuning model's swinViT
            tree = {"swinViT": tree}
        return tree, f"weights file {init.torch}"
    return None


def merge(fresh: dict, loaded: dict, skip=()) -> tuple[dict, LoadReport]:
    """``fresh``-shaped tree with ``loaded``'s arrays where paths match (None elsewhere), and what happened.

    A shape mismatch is a ValueError naming the path and both shapes; a ``skip`` pattern
    that matches no path of either tree is a ValueError too (it is almost always a typo).
    """
    patterns = []
    for s in skip or ():
        try:
            patterns.append(re.compile(s))
        except re.error as e:
            raise ValueError(f"init.skip: {s!r} is not a regular expression: {e}") from None
    want, have = flatten_params(fresh), flatten_params(loaded)
    unused = [p.pattern for p in patterns if not any(p.search(k) for k in (*want, *have))]
    if unused:
        raise ValueError(f"init.skip: {unused} match no parameter of the model or the weights; patterns match "
                         f"flax paths such as {next(iter(want), 'swinViT/patch_embed/proj/kernel')!r}")
    report, out = LoadReport(), {}
    for path, value in have.items():
        if any(p.search(path) for p in patterns):
            report.skipped.append(path)
        elif path not in want:
            report.unexpected.append(path)
        elif tuple(value.shape) != tuple(want[path].shape):
            raise ValueError(f"init: shape mismatch for {path}: the weights have {tuple(value.shape)}, the model "
                             f"expects {tuple(want[path].shape)} (check model.* against the pretrained run, or "
                             f"leave it fresh with init.skip)")
        else:
            out[path] = value
            report.matched.append(path)
    report.missing = sorted(p for p in want if p not in out and p not in report.skipped)
    return unflatten_params({p: out.get(p) for p in want}), report


def pretrained_params(fresh: dict, config, log=print) -> dict | None:
    """``fresh``-shaped tree of the configured pretrained arrays (None where kept fresh), or None without a source."""
    src = source_params(config)
    if src is None:
        log("init: from scratch (no init.checkpoint or init.torch)")
        return None
    loaded, source = src
    merged, report = merge(fresh, loaded, tuple(config.init.skip or ()))
    log(f"init: {source}: loaded {len(report.matched)}, skipped {len(report.skipped)} (init.skip), "
        f"missing {len(report.missing)} (kept fresh), unexpected {len(report.unexpected)}")
    if not report.matched:
        raise ValueError(f"init: nothing in {source} matched the model; check model.* against the weights "
                         f"({report.summary()})")
    return merged
