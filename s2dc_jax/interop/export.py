"""Export our weights to a MONAI-layout file and, where torch + MONAI exist, measure parity there."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from s2dc_jax.interop import workdir
from s2dc_jax.interop.files import SUFFIXES, load_params, read_metadata, write_state_dict
from s2dc_jax.interop.mapping import SOURCES, ENCODER_PREFIX, build_model, from_monai, infer_config, to_monai
from s2dc_jax.interop.merging import (MERGING_HINT, check_merging, export_metadata, legacy_export_warning,
                                      merging_from_metadata, monai_args, patch_monai_merging)

WHATS = ("encoder", "swinunetr")


def load_for_export(checkpoint: str, step: int | None = None, source: str = "student") -> tuple[dict, str, str | None]:
    """(flax params, kind, merging rule the source records or None) from a run folder or a weights file.

    A run folder is a workdir, its checkpoints/ or best/, or a step folder; ``kind`` is one
    of `workdir.params_kind`'s: 'pretrain', 'swinunetr', 'classifier', 'encoder'. ``source``
    picks the student or the teacher of a pretraining state.
    """
    if source not in SOURCES:
        raise ValueError(f"--source must be one of {SOURCES}, got {source!r}")
    if os.path.isdir(checkpoint):
        try:
            params, _ = workdir.load_params(checkpoint, step, item="params" if source == "student" else "teacher")
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(str(e)) from None
        except Exception as e:  # an unreadable workdir must still end in one line, not a deep traceback
            raise ValueError(
                f"{checkpoint}: could not read the checkpoint (step {step or 'latest'}): {type(e).__name__}: {e}"
            ) from e
        run = workdir.run_config(checkpoint)
        # Runs older than the model.merging field were all trained with MONAI >= 1.5's rule.
        rule = ((run or {}).get("model") or {}).get("merging", "monai") if run else None
        return params, workdir.params_kind(params), rule
    if not os.path.exists(checkpoint):
        raise ValueError(f"--checkpoint: {checkpoint} does not exist")
    if step is not None:
        raise ValueError(f"--step is only meaningful for a checkpoint directory, not the file {checkpoint}")
    params, report = load_params(checkpoint, source=source)
    if report is not None and report.unexpected:
        raise ValueError(f"{checkpoint}: keys with no place in the model: {report.summary()}")
    recorded = merging_from_metadata(read_metadata(checkpoint))
    return params, workdir.params_kind(params), recorded


def select(params: Mapping, kind: str, what: str) -> dict:
    """The part of ``params`` (of ``kind``) that ``what`` asks for: the encoder of anything, or a whole SwinUNETR."""
    if what not in WHATS:
        raise ValueError(f"--what must be one of {WHATS}, got {what!r}")
    if what == "encoder":
        return dict(workdir.encoder_params(dict(params)))
    if kind != "swinunetr":
        holds = {"pretrain": "a pretraining state (encoder + heads)", "classifier": "a classifier (encoder + MLP head)",
                 "encoder": "only an encoder"}[kind]
        raise ValueError(f"--what=swinunetr needs a whole SwinUNETR checkpoint; this one holds {holds}: "
                         f"export its encoder with --what=encoder")
    return dict(params)


def monai_parity(state_dict: Mapping[str, np.ndarray], what: str, size: int = 64, seed: int = 0,
                 merging: str = "monai") -> dict[str, Any]:
    """Load `state_dict` into the MONAI model it describes and return the max abs difference to ours.

    For an encoder it also loads the keys into a MONAI `SwinUNETR` with `strict=False`
    and counts unexpected and absent `swinViT.*` keys, which is how users will load it.
    With ``merging="legacy"`` MONAI's patch merging is given the legacy rule for the comparison.
    """
    import jax
    import jax.numpy as jnp
    import torch
    from monai.networks.nets.swin_unetr import SwinTransformer, SwinUNETR

    cfg = infer_config(state_dict)
    params, _ = from_monai(state_dict, what=what)
    rng = np.random.RandomState(seed)
    x = rng.randn(1, size, size, size, cfg["in_channels"]).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
    tsd = {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}
    out: dict[str, Any] = {}
    win, patch = (cfg["window_size"],) * 3, (cfg["patch_size"],) * 3
    with torch.no_grad():
        if what == "encoder":
            tm = SwinTransformer(
                in_chans=cfg["in_channels"], embed_dim=cfg["feature_size"], window_size=win, patch_size=patch,
                depths=cfg["depths"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
                qkv_bias=cfg["qkv_bias"], patch_norm=cfg["patch_norm"], use_v2=cfg["use_v2"],
            ).eval()
            bare = {k.removeprefix(ENCODER_PREFIX): v for k, v in tsd.items()}
            tm.load_state_dict(bare, strict=True)
            patch_monai_merging(tm, merging)
            ref = [t.permute(0, 2, 3, 4, 1).numpy() for t in tm(xt)]
            if cfg["feature_size"] % 12 == 0:
                unetr = SwinUNETR(
                    in_channels=cfg["in_channels"], out_channels=2, feature_size=cfg["feature_size"],
                    depths=cfg["depths"], num_heads=cfg["num_heads"], window_size=win, patch_size=cfg["patch_size"],
                    mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"], patch_norm=cfg["patch_norm"],
                    use_v2=cfg["use_v2"],
                )
                res = unetr.load_state_dict(tsd, strict=False)
                expected = {k for k in unetr.state_dict() if k.startswith(ENCODER_PREFIX)}
                out["swinunetr_unexpected"] = list(res.unexpected_keys)
                out["swinunetr_absent_swinvit"] = sorted(expected - set(tsd))
        else:
            tm = SwinUNETR(
                in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], feature_size=cfg["feature_size"],
                depths=cfg["depths"], num_heads=cfg["num_heads"], window_size=win, patch_size=cfg["patch_size"],
                mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"], patch_norm=cfg["patch_norm"],
                use_v2=cfg["use_v2"],
            ).eval()
            tm.load_state_dict(tsd, strict=True)
            patch_monai_merging(tm, merging)
            ref = [tm(xt).permute(0, 2, 3, 4, 1).numpy()]
    ours = jax.jit(build_model({**cfg, "merging": merging}, what).apply)({"params": params}, jnp.asarray(x))
    ours = ours if isinstance(ours, (list, tuple)) else [ours]
    out["max_abs_error"] = max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(ours, ref))
    out["input_shape"] = tuple(x.shape)
    return out


def monai_load_line(model_args: Mapping[str, Any], what: str, path: str) -> str:
    """One executable Python line that builds the matching MONAI `SwinUNETR` (MONAI >= 1.5) and loads ``path``."""
    args = monai_args(model_args, what)
    if what == "encoder":  # the class count is the user's task; any value loads the encoder
        args = {"in_channels": args.pop("in_channels"), "out_channels": 2, **args}
    body = ", ".join(f"{k}={v!r}" for k, v in args.items())
    read = (f"safetensors.torch.load_file({path!r})" if str(path).endswith(".safetensors")
            else f"torch.load({path!r}, weights_only=True)['state_dict']")
    imports = "import monai, torch" + (", safetensors.torch" if str(path).endswith(".safetensors") else "")
    if what == "swinunetr":
        return f"{imports}; net = monai.networks.nets.SwinUNETR({body}); net.load_state_dict({read}, strict=True)"
    return (f"{imports}; net = monai.networks.nets.SwinUNETR({body}); r = net.load_state_dict({read}, strict=False); "
            "print(len([k for k in r.missing_keys if k.startswith('swinViT.')]), 'swinViT keys missing,', "
            "len(r.unexpected_keys), 'unexpected')")


def export(checkpoint: str, out: str, what: str = "encoder", step: int | None = None, log=print,
           parity: bool = True, parity_size: int = 64, merging: str = "auto",
           source: str = "student") -> dict[str, Any]:
    """Write ``checkpoint``'s weights (``what``) under MONAI key names to ``out``; report keys, the MONAI line, parity.

    ``merging``: 'auto' takes the rule the run's config.json or the input file records
    (else 'monai', with a one-line hint); it is written into the file's metadata with the
    MONAI constructor arguments, so that our loaders and users rebuild the same model.
    """
    if not str(out).endswith(SUFFIXES[:3]):
        raise ValueError(f"--out must end with .pt, .pth or .safetensors, got {out!r}")
    if what not in WHATS:
        raise ValueError(f"--what must be one of {WHATS}, got {what!r}")
    if merging != "auto":
        check_merging(merging, "--merging")
    params, kind, recorded = load_for_export(checkpoint, step, source)
    if merging == "auto":
        merging = recorded or "monai"
        if recorded is None:
            log(MERGING_HINT)
    sd = to_monai(select(params, kind, what))
    model_args = infer_config(sd)
    try:
        n = write_state_dict(out, sd, metadata=export_metadata(model_args, merging, what))
        os.chmod(out, 0o666 & ~_umask())  # readable like any file the user writes (safetensors makes it 0600)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there ({e.strerror})") from None
    log(f"wrote {n} keys ({what}, MONAI SwinUNETR names, merging={merging}) to {out}")
    line = monai_load_line(model_args, what, out)
    log(f"load it in PyTorch (MONAI >= 1.5):\n  {line}")
    warning = legacy_export_warning(model_args, merging, what)
    if warning:
        log(warning)
    result: dict[str, Any] = {"keys": n, "out": out, "merging": merging, "monai_line": line}
    if parity:
        try:
            import monai  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            log("torch/MONAI not installed: parity not measured")
            return result
        result.update(monai_parity(sd, what, size=parity_size, merging=merging))
        log(f"max abs parity error vs MONAI on a random {result['input_shape']} input: {result['max_abs_error']:.3g}")
        if "swinunetr_unexpected" in result:
            log(
                f"loads into MONAI SwinUNETR(strict=False): {len(result['swinunetr_unexpected'])} unexpected keys, "
                f"{len(result['swinunetr_absent_swinvit'])} swinViT.* keys absent"
            )
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
