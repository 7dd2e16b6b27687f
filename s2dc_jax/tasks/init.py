"""Pretrained weights for fine-tuning: the source's architecture, then a merge of flax parameter subtrees.

Sources: a pretraining workdir or step folder (``init.checkpoint``: its student or teacher
encoder, ``init.source``) or a PyTorch file in MONAI layout (``init.torch``: an encoder or a
whole SwinUNETR, in our export layout or the authors'). MONAI names are turned into flax
paths when the file is read; nothing else sees them.

The architecture travels with the weights: the encoder fields of ``config.model`` are
taken from the source (the run's config.json, or the shapes of the weights), and a field
the user set explicitly to something else is an error naming both values. ``init.skip``
regexes are matched (``re.search``) on flax paths such as ``swinViT/patch_embed/proj/kernel``;
matched parameters keep their fresh values.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import numpy as np

from s2dc_jax.data.io import DataError
from s2dc_jax.interop import MERGING_HINT, LoadReport, flatten_params, from_monai, merging_from_metadata
from s2dc_jax.interop import read_checkpoint, unflatten_params
from s2dc_jax.interop.workdir import CHECKPOINT_DIR, encoder_params, load_params, resolve, run_config

# config.model fields that must equal the pretrained encoder's (in_channels may differ: init.skip)
ARCHITECTURE = ("feature_size", "depths", "num_heads", "window_size", "patch_size", "use_v2", "merging")


@dataclasses.dataclass
class Pretrained:
    """Weights read from ``init.checkpoint`` or ``init.torch``, rooted like the fine-tuning model."""

    tree: dict                       # flax tree: {"swinViT": ...} (+ decoder parts of a whole SwinUNETR)
    source: str                      # for the log
    model: dict                      # the source's architecture: ARCHITECTURE fields it determines
    notes: list = dataclasses.field(default_factory=list)   # lines to print (e.g. the merging hint)
    ignored: int = 0                 # file entries known and left out (the other EMA copy, heads, queue, ...)


def _architecture_of(encoder: dict) -> dict:
    """ARCHITECTURE fields (all but merging) read off the shapes of our encoder's flax parameters.

    ``patch_embed/proj/kernel`` is ``[p, p, p, C_in, feature_size]``; stage s has
    ``layers{s}/blocks_{i}`` and each block's ``relative_position_bias_table`` is
    ``[(2 * window - 1)^3, heads]``; the v2 blocks are ``layers{s}c``.
    """
    p, *_, fs = np.shape(encoder["patch_embed"]["proj"]["kernel"])
    depths, heads = [], []
    for s in range(1, 5):
        layer = encoder[f"layers{s}"]
        depths.append(1 + max(int(k.removeprefix("blocks_")) for k in layer if k.startswith("blocks_")))
        heads.append(int(np.shape(layer["blocks_0"]["attn"]["relative_position_bias_table"])[1]))
    rows = np.shape(encoder["layers1"]["blocks_0"]["attn"]["relative_position_bias_table"])[0]
    return {"feature_size": int(fs), "depths": tuple(depths), "num_heads": tuple(heads),
            "window_size": (round(rows ** (1 / 3)) + 1) // 2, "patch_size": int(p), "use_v2": "layers1c" in encoder}


def read_pretrained(config) -> Pretrained | None:
    """The configured source's weights and architecture; None without one. Errors name the config field."""
    init = config.init
    if init.checkpoint:
        item = "params" if init.source == "student" else "teacher"
        try:
            params, step = load_params(init.checkpoint, init.step, item=item)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"init.checkpoint: {e}") from None
        encoder = encoder_params(params)
        model = _architecture_of(encoder)
        run = run_config(init.checkpoint)
        # Runs older than the merging field were all trained with MONAI >= 1.5's rule.
        model["merging"] = ((run or {}).get("model") or {}).get("merging", "monai")
        return Pretrained({"swinViT": encoder}, f"pretraining checkpoint {init.checkpoint} (step {step}, "
                                                f"{init.source})", model)
    if init.torch:
        if not Path(init.torch).is_file():
            raise DataError(init.torch, "init.torch: weights file not found")
        ckpt = read_checkpoint(str(init.torch))
        tree, report = from_monai(ckpt.state_dict, source=init.source, metadata=ckpt.metadata)
        if "swinViT" not in tree:  # an encoder-only file: it is the fine-tuning model's swinViT
            tree = {"swinViT": tree}
        model = _architecture_of(tree["swinViT"])
        recorded = merging_from_metadata(ckpt.metadata)
        if recorded is not None:  # our exports record the rule; a file that does not leaves it to the config
            model["merging"] = recorded
        return Pretrained(tree, f"weights file {init.torch}", model, [] if recorded else [MERGING_HINT],
                          len(report.ignored) + len(ckpt.extras))
    return None


def resumed_architecture(workdir) -> Pretrained | None:
    """On a resume, the architecture the run was started with (``WORKDIR/config.json``), else None.

    A fine-tuning run that resumes restores its parameters from its own checkpoints, so it
    need not read ``init.checkpoint`` / ``init.torch`` again (which may have moved since); only
    the architecture they gave the model is needed, and the run's config.json recorded it.
    """
    if workdir is None:
        return None
    workdir = Path(workdir)
    try:
        resolve(workdir / CHECKPOINT_DIR)
    except FileNotFoundError:  # a new run
        return None
    model = ((run_config(workdir) or {}).get("model")) or {}
    if not all(f in model for f in ARCHITECTURE):
        return None  # a config.json older than these fields: read the weights as at the start
    arch = {f: tuple(model[f]) if isinstance(model[f], list) else model[f] for f in ARCHITECTURE}
    return Pretrained({}, f"the run's own {workdir / 'config.json'} (resuming)", arch)


def adopt_architecture(config, pretrained: Pretrained, explicit=()) -> tuple[object, list[str]]:
    """``config`` with the source's encoder fields, and a line per field taken; ``explicit`` user overrides must agree.

    ``explicit``: config keys the user set (e.g. ``{"model.window_size"}`` from the command
    line); one that differs from the weights' is a ValueError naming both values.
    """
    config = copy.deepcopy(config)
    taken, clash = [], []
    for field, theirs in pretrained.model.items():
        ours = config.model[field]
        ours_n = tuple(ours) if isinstance(ours, (list, tuple)) else ours
        if ours_n == theirs:
            continue
        if f"model.{field}" in explicit:
            clash.append(f"model.{field}={ours_n!r} but the weights have {theirs!r}")
        else:
            config.model[field] = theirs
            taken.append(f"model.{field}={theirs!r}")
    if clash:
        raise ValueError(f"init: {'; '.join(clash)} ({pretrained.source}); drop the override to use the weights' "
                         f"architecture")
    lines = [f"init: architecture from the weights: {', '.join(taken)}"] if taken else []
    notes = [n for n in pretrained.notes if not (n == MERGING_HINT and ("model.merging" in explicit
                                                                        or config.model.merging == "legacy"))]
    return config, lines + notes


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
                             f"expects {tuple(want[path].shape)} (leave it fresh with init.skip, e.g. when "
                             f"model.in_channels differs)")
        else:
            out[path] = value
            report.matched.append(path)
    report.missing = sorted(p for p in want if p not in out and p not in report.skipped)
    return unflatten_params({p: out.get(p) for p in want}), report


def pretrained_params(fresh: dict, pretrained: Pretrained, config, log=print) -> dict:
    """``fresh``-shaped tree of the pretrained arrays (None where kept fresh); logs what was loaded."""
    merged, report = merge(fresh, pretrained.tree, tuple(config.init.skip or ()))
    log(f"init: {pretrained.source}: loaded {len(report.matched)}, skipped {len(report.skipped)} (init.skip), "
        f"missing {len(report.missing)} (kept fresh), unexpected {len(report.unexpected)}"
        + (f", ignored {pretrained.ignored} (other copy, heads, queue, optimizer)" if pretrained.ignored else ""))
    if not report.matched:
        raise ValueError(f"init: nothing in {pretrained.source} matched the model ({report.summary()})")
    return merged
