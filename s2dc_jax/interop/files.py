"""Weight files: `.safetensors` (no torch), `.npz`, and `.pt` (torch, `weights_only=True` only).

Two layouts: a MONAI state dict (`swinViT.layers1.0...` keys) and our flat flax params
(`layers1/blocks_0/...` keys, written by `save_params`). `read_state_dict` returns
whatever a file holds; `load_params` turns either layout into a flax params tree.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from s2dc_jax.interop.mapping import LoadReport, flatten_params, from_monai, unflatten_params

SUFFIXES = (".safetensors", ".pt", ".pth", ".npz")
_FLAX_FORMAT = "s2dc_jax.flax_params"
# Top-level keys under which PyTorch checkpoints usually keep the state dict
_CONTAINER_KEYS = ("state_dict", "model", "net", "student")


def _suffix(path: str) -> str:
    for s in SUFFIXES:
        if str(path).endswith(s):
            return s
    raise ValueError(f"{path}: unknown weight file type; expected one of {SUFFIXES}")


def write_state_dict(path: str, state_dict: Mapping[str, Any]) -> int:
    """Write a MONAI-layout state dict; `.pt` as `torch.save({"state_dict": ...})`. Returns the key count."""
    suffix = _suffix(path)
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state_dict.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, path, metadata={"format": "monai_state_dict"})
    elif suffix == ".npz":
        np.savez(path, **arrays)
    else:
        try:
            import torch
        except ImportError:
            raise ValueError(
                f"{path}: writing .pt needs torch (pip install s2dc_jax[torch]); use .safetensors"
            ) from None
        torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in arrays.items()}}, path)
    return len(arrays)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read every array of a weight file as numpy, whatever its layout; `.pt` via torch.load(weights_only=True)."""
    suffix = _suffix(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such weight file")
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading .pt needs torch (pip install s2dc_jax[torch])") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them are refused here, on purpose
        raise ValueError(f"{path}: not loadable with torch.load(weights_only=True): {e}") from None
    if isinstance(obj, Mapping):
        for k in _CONTAINER_KEYS:
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
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
    return out


def save_params(path: str, params: Mapping) -> int:
    """Write a flax params tree flat ('a/b/c' keys) to .safetensors or .npz. Returns the key count."""
    suffix = _suffix(path)
    flat = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in flatten_params(params).items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(flat, path, metadata={"format": _FLAX_FORMAT})
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
    """A flax params tree from a weight file of either layout; MONAI files go through `from_monai`."""
    flat = read_state_dict(path)
    if not flat:
        raise ValueError(f"{path}: the file holds no arrays")
    if is_flax_layout(flat):
        return unflatten_params(flat), None
    return from_monai(flat, **from_monai_kwargs)
