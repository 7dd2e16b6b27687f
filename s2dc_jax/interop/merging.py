"""Which 3D patch-merging rule a weight file needs: recorded in the files we write, read back from them.

MONAI 0.9-1.4's `PatchMerging` concatenated two of the eight 2x2x2 neighbours twice and
left two out; MONAI 1.5 takes all eight (Project-MONAI/MONAI#8285). Weights trained on one
side load into the other with every key matched and compute different features, so the
rule ("legacy" or "monai", `s2dc_jax.models.swin.MERGING_RULES`) has to travel with the
weights: as string metadata (`.safetensors` header, a `"metadata"` dict beside a `.pt`'s
`"state_dict"`) written by `export_metadata` and read by `merging_from_metadata`.
"""
from __future__ import annotations

import json
import re
import types
from collections.abc import Mapping
from typing import Any

from s2dc_jax.models.swin import MERGING_RULES

FIRST_MONAI_FIXED = (1, 5)  # the first MONAI release whose PatchMerging takes all 8 neighbours
MONAI_VERSIONS = {"monai": ">=1.5", "legacy": "0.9-1.4"}  # MONAI releases that compute each rule
MERGING_HINT = (
    "note: the weights record no MONAI version or merging rule; models trained with MONAI <= 1.4 "
    "(the authors' S2DC code runs on MONAI 1.2) need model.merging=legacy (merging='legacy' in Python)"
)
# model arguments (our names, as `infer_config` returns them) that MONAI >= 1.5's SwinUNETR takes,
# with MONAI's defaults; MONAI <= 1.4's SwinUNETR hard-codes the last five
_MONAI_DEFAULTS = {"depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "use_v2": False, "window_size": 7,
                   "patch_size": 2, "mlp_ratio": 4.0, "qkv_bias": True, "patch_norm": False}
_FIXED_BEFORE_1_5 = ("window_size", "patch_size", "mlp_ratio", "qkv_bias", "patch_norm")


def check_merging(rule: Any, field: str = "merging") -> str:
    """`rule` if it is one of MERGING_RULES; a ValueError naming `field` otherwise."""
    if rule not in MERGING_RULES:
        raise ValueError(f"{field} must be one of {MERGING_RULES}, got {rule!r}")
    return rule


def merging_for_monai_version(version: str) -> str:
    """The merging rule MONAI `version` computes ('1.2.0' -> 'legacy', '1.5.0' -> 'monai')."""
    m = re.match(r"^\s*v?(\d+)\.(\d+)", str(version))
    if not m:
        raise ValueError(f"monai_version {version!r} is not a version like '1.2.0'")
    return "monai" if (int(m.group(1)), int(m.group(2))) >= FIRST_MONAI_FIXED else "legacy"


def merging_from_metadata(metadata: Mapping[str, Any] | None) -> str | None:
    """The rule a file's metadata records (its `merging`, else its `monai_version`); None if neither."""
    if not metadata:
        return None
    if metadata.get("merging") is not None:
        return check_merging(metadata["merging"], "metadata field 'merging'")
    if metadata.get("monai_version") is not None:
        return merging_for_monai_version(metadata["monai_version"])
    return None


def resolve_merging(configured: str | None, metadata: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """(rule to build the model with, one line to print or None): the file's record wins over `configured`."""
    if configured is not None:
        check_merging(configured, "model.merging")
    recorded = merging_from_metadata(metadata)
    if recorded is None:
        rule = configured or "monai"
        return rule, (None if rule == "legacy" else MERGING_HINT)
    if configured is not None and configured != recorded:
        return recorded, (f"note: the weights record merging={recorded} (MONAI {MONAI_VERSIONS[recorded]}); "
                          f"building the model with it, not model.merging={configured}")
    return recorded, None


def monai_versions(merging: str, use_v2: bool = False) -> str:
    """The MONAI releases whose SwinUNETR computes `merging` ('>=1.5', '0.9-1.4', or '1.2-1.4' for v2)."""
    if check_merging(merging) == "legacy" and use_v2:
        return "1.2-1.4"  # use_v2 arrived in MONAI 1.2
    return MONAI_VERSIONS[merging]


def monai_args(model_args: Mapping[str, Any], what: str = "encoder") -> dict[str, Any]:
    """MONAI `SwinUNETR` keyword arguments (>= 1.5 names) for a model of `model_args` (`infer_config` output)."""
    if what not in ("encoder", "swinunetr"):
        raise ValueError(f"what must be 'encoder' or 'swinunetr', got {what!r}")
    if what == "swinunetr" and "out_channels" not in model_args:
        raise ValueError("a whole SwinUNETR's MONAI arguments need out_channels")
    out: dict[str, Any] = {"in_channels": int(model_args["in_channels"])}
    if "out_channels" in model_args:
        out["out_channels"] = int(model_args["out_channels"])
    out["feature_size"] = int(model_args["feature_size"])
    for k, default in _MONAI_DEFAULTS.items():
        v = model_args.get(k, default)
        v = tuple(int(i) for i in v) if isinstance(v, (list, tuple)) else v
        if k in ("depths", "num_heads", "use_v2") or v != default:
            out[k] = v
    if model_args.get("downsample", "merging") != "merging":
        out["downsample"] = model_args["downsample"]
    return out


def monai_constructor_line(model_args: Mapping[str, Any], merging: str = "monai", what: str = "encoder") -> str:
    """The Python line that builds this model in the MONAI releases that compute `merging`, with them named."""
    check_merging(merging)
    args = monai_args(model_args, what)
    if "out_channels" not in args:  # an encoder export: the class count is the user's task
        args = {"in_channels": args["in_channels"], "out_channels": "<your out_channels>",
                **{k: v for k, v in args.items() if k != "in_channels"}}
    if merging == "legacy":
        fixed = [k for k in _FIXED_BEFORE_1_5 if k in args]
        if fixed:  # MONAI <= 1.4's SwinUNETR cannot set these; its bare SwinTransformer (the encoder) can
            return _swin_transformer_line(model_args) + (
                f"  # MONAI {monai_versions(merging, bool(args.get('use_v2')))}: its SwinUNETR fixes "
                f"{', '.join(fixed)}; load the swinViT.* keys without that prefix")
        args = {"img_size": (96, 96, 96), **args}  # required (only checked for divisibility by 32) before 1.5
    versions = monai_versions(merging, bool(args.get("use_v2")))
    body = ", ".join(f"{k}={v}" if k == "out_channels" and isinstance(v, str) and v.startswith("<")
                     else f"{k}={v!r}" for k, v in args.items())
    return f"monai.networks.nets.SwinUNETR({body})  # MONAI {versions}"


def _swin_transformer_line(model_args: Mapping[str, Any]) -> str:
    a = {**_MONAI_DEFAULTS, **model_args}
    triple = lambda v: (int(v),) * 3 if isinstance(v, (int, float)) else tuple(int(i) for i in v)  # noqa: E731
    body = (f"in_chans={int(a['in_channels'])}, embed_dim={int(a['feature_size'])}, "
            f"window_size={triple(a['window_size'])!r}, patch_size={triple(a['patch_size'])!r}, "
            f"depths={tuple(int(i) for i in a['depths'])!r}, num_heads={tuple(int(i) for i in a['num_heads'])!r}, "
            f"mlp_ratio={float(a['mlp_ratio'])!r}, qkv_bias={bool(a['qkv_bias'])!r}, "
            f"patch_norm={bool(a['patch_norm'])!r}, use_v2={bool(a['use_v2'])!r}")
    return f"monai.networks.nets.swin_unetr.SwinTransformer({body})"


def export_metadata(model_args: Mapping[str, Any], merging: str = "monai", what: str = "encoder") -> dict[str, str]:
    """String metadata an export writes beside the weights: merging rule, MONAI versions and constructor."""
    check_merging(merging)
    return {
        "format": "monai_state_dict",
        "producer": "s2dc_jax",
        "what": what,
        "merging": merging,
        "monai_versions": monai_versions(merging, bool(model_args.get("use_v2"))),
        "monai_args": json.dumps(monai_args(model_args, what)),
        "monai_line": monai_constructor_line(model_args, merging, what),
    }


def legacy_export_warning(model_args: Mapping[str, Any], merging: str, what: str = "encoder") -> str | None:
    """None for merging='monai'; for 'legacy', one line saying MONAI >= 1.5 computes the newer merging."""
    if check_merging(merging) == "monai":
        return None
    return ("warning: this model uses merging=legacy (MONAI <= 1.4's PatchMerging); MONAI >= 1.5 loads the "
            "weights without complaint but computes the newer merging, so its features differ. Build it with: "
            + monai_constructor_line(model_args, "legacy", what))


def _merging_forward(rule: str):
    """A 3D PatchMerging.forward computing `rule`, for a MONAI module (channels-last x), whatever MONAI's version."""

    def forward(self, x):
        import torch
        import torch.nn.functional as F

        from s2dc_jax.models.swin import merging_offsets

        if x.dim() != 5:
            raise ValueError(f"patched merging is 3D only: expected a 5D input, got {tuple(x.shape)}")
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in merging_offsets("merging", rule)], -1)
        return self.reduction(self.norm(x))

    return forward


def patch_monai_merging(module, merging: str) -> int:
    """Give every MONAI `PatchMerging` inside the torch `module` the `merging` rule; returns how many.

    For measuring a legacy export against MONAI >= 1.5 (which no longer has that rule), or
    the reverse on MONAI <= 1.4: it replaces the instances' `forward`, never MONAI's class.
    """
    from monai.networks.nets.swin_unetr import PatchMerging

    forward = _merging_forward(check_merging(merging))
    n = 0
    for m in module.modules():
        if type(m) is PatchMerging:
            m.forward = types.MethodType(forward, m)
            n += 1
    return n
