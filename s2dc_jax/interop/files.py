"""Weight files: `.safetensors` (no torch), `.npz`, and `.pt` (torch, `weights_only=True` only).

Two layouts: a MONAI state dict (`swinViT.layers1.0...` keys) and our flat flax params
(`layers1/blocks_0/...` keys, written by `save_params`). `read_state_dict` returns
whatever a file holds; `load_params` turns either layout into a flax params tree.
String metadata (the merging rule, `s2dc_jax.interop.merging`) travels in a
`.safetensors` header or as a `"metadata"` dict beside a `.pt`'s `"state_dict"`;
`read_checkpoint` returns it with the arrays and the names of a training checkpoint's
other top-level entries (`optimizer`, `epoch`), which are known and not loaded.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from s2dc_jax.interop.mapping import LoadReport, flatten_params, from_monai, unflatten_params

SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")
_FLAX_FORMAT = "s2dc_jax.flax_params"
# Top-level keys under which PyTorch checkpoints usually keep the state dict
_CONTAINER_KEYS = ("state_dict", "model", "net", "student")
_METADATA_KEY = "metadata"  # beside "state_dict" in a .pt we write: a dict of strings
# top-level strings some writers leave beside the state dict instead of a metadata dict
_TOP_LEVEL_META = ("merging", "monai_version")


class Checkpoint(NamedTuple):
    """What a weight file holds: its arrays, its string metadata, the top-level entries not loaded."""

    state_dict: dict[str, np.ndarray]
    metadata: dict[str, str]
    extras: list[str]  # e.g. ["epoch", "optimizer"] of the authors' main.py checkpoints


def _check_metadata(path: str, metadata: Mapping[str, Any] | None) -> dict[str, str]:
    if not metadata:
        return {}
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ValueError(f"{path}: metadata must map strings to strings; not so for {bad}")
    if _suffix(path) == ".npz":
        raise ValueError(f"{path}: .npz files carry no metadata; use .safetensors or .pt")
    return dict(metadata)


def _suffix(path: str) -> str:
    for s in SUFFIXES:
        if str(path).endswith(s):
            return s
    raise ValueError(f"{path}: unknown weight file type; expected one of {SUFFIXES}")


def write_state_dict(path: str, state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> int:
    """Write a MONAI-layout state dict (`.pt`: `torch.save({"state_dict": ..., "metadata": ...})`); returns its size."""
    suffix = _suffix(path)
    metadata = _check_metadata(path, metadata)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state_dict.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, path, metadata={"format": "monai_state_dict", **metadata})
    elif suffix == ".npz":
        np.savez(path, **arrays)
    else:
        try:
            import torch
        except ImportError:
            raise ValueError(
                f"{path}: writing .pt needs torch (pip install s2dc_jax[torch]); use .safetensors"
            ) from None
        obj: dict[str, Any] = {"state_dict": {k: torch.from_numpy(v) for k, v in arrays.items()}}
        if metadata:
            obj[_METADATA_KEY] = metadata
        torch.save(obj, path)
    return len(arrays)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read every array of a weight file as numpy, whatever its layout; `.pt` via torch.load(weights_only=True)."""
    return read_checkpoint(path).state_dict


def read_metadata(path: str) -> dict[str, str]:
    """The string metadata a weight file records ({} when none)."""
    return read_checkpoint(path).metadata


def read_checkpoint(path: str) -> Checkpoint:
    """(arrays, string metadata, top-level entries not loaded) of a weight file."""
    suffix = _suffix(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such weight file")
    if suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(path, framework="np") as f:
            meta = dict(f.metadata() or {})
        return Checkpoint(dict(load_file(path)), meta, [])
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return Checkpoint({k: z[k] for k in z.files}, {}, [])
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading .pt needs torch (pip install s2dc_jax[torch])") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them are refused here, on purpose
        raise ValueError(f"{path}: not loadable with torch.load(weights_only=True): {e}") from None
    meta: dict[str, str] = {}
    extras: list[str] = []
    if isinstance(obj, Mapping):
        for k in _CONTAINER_KEYS:
            if k in obj and isinstance(obj[k], Mapping):
                top, obj = obj, obj[k]
                meta = _pt_metadata(path, top)
                extras = [str(e) for e in top if e != k and e != _METADATA_KEY and e not in _TOP_LEVEL_META]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path}: expected a dict of tensors (or one under {_CONTAINER_KEYS}), got {type(obj).__name__}"
        )
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        v = v.detach().cpu()
        out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return Checkpoint(out, meta, extras)


def _pt_metadata(path: str, top: Mapping) -> dict[str, str]:
    meta = top.get(_METADATA_KEY) or {}
    if not isinstance(meta, Mapping):
        raise ValueError(f"{path}: top-level {_METADATA_KEY!r} is a {type(meta).__name__}, not a dict of strings")
    meta = {str(k): str(v) for k, v in meta.items()}
    for k in _TOP_LEVEL_META:
        if isinstance(top.get(k), str):
            meta.setdefault(k, top[k])
    return meta


def save_params(path: str, params: Mapping, metadata: Mapping[str, str] | None = None) -> int:
    """Write a flax params tree flat ('a/b/c' keys) to .safetensors (with metadata) or .npz; returns the key count."""
    suffix = _suffix(path)
    metadata = _check_metadata(path, metadata)
    flat = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in flatten_params(params).items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(flat, path, metadata={"format": _FLAX_FORMAT, **metadata})
    elif suffix == ".npz":
        np.savez(path, **flat)
    else:
        raise ValueError(f"{path}: flax params are saved as .safetensors or .npz, not {suffix}")
    return len(flat)


def is_flax_layout(flat: Mapping[str, Any]) -> bool:
    """True for our flat params ('/'-separated paths), False for MONAI keys ('.'-separated)."""
    slash = sum("/" in k for k in flat)
    if slash and slash != len(flat):
        raise ValueError("weight file mixes flax paths ('/') and MONAI keys ('.'); cannot tell its layout")
    return bool(slash)


def load_params(path: str, **from_monai_kwargs) -> tuple[dict, LoadReport | None]:
    """A flax params tree from a weight file of either layout; MONAI files go through `from_monai`.

    The file's metadata reaches `from_monai` (so a recorded merging rule lands in
    `report.merging`, and its absence in `report.notes`); top-level entries such as
    `optimizer` are added to `report.ignored`. Our own flat params come back with no report.
    """
    ckpt = read_checkpoint(path)
    if not ckpt.state_dict:
        raise ValueError(f"{path}: the file holds no arrays")
    if is_flax_layout(ckpt.state_dict):
        return unflatten_params(ckpt.state_dict), None
    from_monai_kwargs.setdefault("metadata", ckpt.metadata)
    params, report = from_monai(ckpt.state_dict, **from_monai_kwargs)
    report.ignored.extend(ckpt.extras)
    return params, report
