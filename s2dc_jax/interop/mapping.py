"""Weights between our flax params and MONAI `SwinTransformer` / `SwinUNETR` state dicts.

Conversion is data: `RULES` pairs a flax path template with a MONAI key template and a
transform kind; the same table runs in both directions. Every load returns a
`LoadReport` (matched, missing, unexpected, ignored, skipped, buffers); a shape mismatch
is a ValueError naming the key and both shapes. Nothing is dropped silently: the parts
of a training checkpoint that are not the chosen encoder (the authors' S2DC layout: the
other EMA copy, projection heads, queue) are listed as ignored, anything else unknown
as unexpected.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from s2dc_jax.interop.merging import merging_from_metadata, resolve_merging
from s2dc_jax.models.swin import relative_position_index

ENCODER_PREFIX = "swinViT."
SOURCES = ("student", "teacher")  # the two EMA copies of a pretraining checkpoint
_WRAPPERS = ("module.", "model.")  # DDP / wrapper prefixes, stripped wherever they appear first
# Keys of the authors' S2DC checkpoint (S2DCTokenHead, commit b65c9aa) that are not encoder weights:
# in each copy the two projection heads and the unused `encoder_cof` block; beside them the InfoNCE queue
S2DC_HEAD_RE = re.compile(
    r"^(?:proj_head_(?:geo|cl)\.layer[123]\.0\.(?:weight|bias)|encoder_cof\.layer\.conv[12]\.conv\.weight)$"
)
S2DC_QUEUE_KEYS = ("queue_cl", "queue_ptr")

# Templates: `{s}` and `{b}` match digits, `{m}` a lowercase name with digits (conv1, linear2),
# `{e}` a block name such as encoder10 / decoder5. Kinds say how the array is transformed.
RULES: tuple[tuple[str, str, str], ...] = (
    ("patch_embed/proj/kernel", "patch_embed.proj.weight", "conv"),
    ("patch_embed/proj/bias", "patch_embed.proj.bias", "vector"),
    ("patch_embed/norm/scale", "patch_embed.norm.weight", "vector"),
    ("patch_embed/norm/bias", "patch_embed.norm.bias", "vector"),
    ("layers{s}/blocks_{b}/{m}/scale", "layers{s}.0.blocks.{b}.{m}.weight", "vector"),
    ("layers{s}/blocks_{b}/{m}/bias", "layers{s}.0.blocks.{b}.{m}.bias", "vector"),
    (
        "layers{s}/blocks_{b}/attn/relative_position_bias_table",
        "layers{s}.0.blocks.{b}.attn.relative_position_bias_table",
        "vector",
    ),
    ("layers{s}/blocks_{b}/attn/{m}/kernel", "layers{s}.0.blocks.{b}.attn.{m}.weight", "linear"),
    ("layers{s}/blocks_{b}/attn/{m}/bias", "layers{s}.0.blocks.{b}.attn.{m}.bias", "vector"),
    ("layers{s}/blocks_{b}/mlp/{m}/kernel", "layers{s}.0.blocks.{b}.mlp.{m}.weight", "linear"),
    ("layers{s}/blocks_{b}/mlp/{m}/bias", "layers{s}.0.blocks.{b}.mlp.{m}.bias", "vector"),
    ("layers{s}/downsample/reduction/kernel", "layers{s}.0.downsample.reduction.weight", "linear"),
    ("layers{s}/downsample/norm/scale", "layers{s}.0.downsample.norm.weight", "vector"),
    ("layers{s}/downsample/norm/bias", "layers{s}.0.downsample.norm.bias", "vector"),
    ("layers{s}c/layer/{m}/kernel", "layers{s}c.0.layer.{m}.conv.weight", "conv"),
)
DECODER_RULES: tuple[tuple[str, str, str], ...] = (
    ("{e}/layer/{m}/kernel", "{e}.layer.{m}.conv.weight", "conv"),
    ("{e}/transp_conv/kernel", "{e}.transp_conv.conv.weight", "conv_transpose"),
    ("{e}/conv_block/{m}/kernel", "{e}.conv_block.{m}.conv.weight", "conv"),
    ("out/conv/kernel", "out.conv.conv.weight", "conv"),
    ("out/conv/bias", "out.conv.conv.bias", "vector"),
)
# Non-trainable buffers MONAI keeps in state dicts; derived from the window, never learned.
BUFFER_TEMPLATE = "layers{s}.0.blocks.{b}.attn.relative_position_index"

_PLACEHOLDERS = {"s": r"\d+", "b": r"\d+", "m": r"[a-z]+\d*", "e": r"(?:encoder|decoder)\d+"}

# torch layout -> flax layout, and back
_TO_FLAX = {
    "vector": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(2, 3, 4, 1, 0),  # [O, I, kx, ky, kz] -> [kx, ky, kz, I, O]
    "conv_transpose": lambda a: a.transpose(2, 3, 4, 0, 1),  # [I, O, kx, ky, kz] -> [kx, ky, kz, I, O]
}
_TO_TORCH = {
    "vector": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(4, 3, 0, 1, 2),
    "conv_transpose": lambda a: a.transpose(3, 4, 0, 1, 2),
}


def _compile(template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w)\}", template):
        out += re.escape(template[pos : m.start()]) + f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})"
        pos = m.end()
    return re.compile("^" + out + re.escape(template[pos:]) + "$")


_ENC = [(_compile(f), _compile(t), f, t, k) for f, t, k in RULES]
_DEC = [(_compile(f), _compile(t), f, t, k) for f, t, k in DECODER_RULES]
_BUFFER_RE = _compile(BUFFER_TEMPLATE)


def flax_to_monai_key(path: str) -> tuple[str, str]:
    """Flax path ('swinViT/layers1/blocks_0/attn/qkv/kernel') -> (MONAI key, transform kind)."""
    prefix = ""
    rules = _DEC
    if path.startswith("swinViT/"):
        prefix, path, rules = ENCODER_PREFIX, path[len("swinViT/") :], _ENC
    elif not any(r[0].match(path) for r in _DEC):
        rules = _ENC
    for frx, _, _, ttpl, kind in rules:
        m = frx.match(path)
        if m:
            return prefix + ttpl.format(**m.groupdict()), kind
    raise KeyError(f"no MONAI key for parameter {prefix.replace('.', '/')}{path!r}")


def monai_to_flax_key(key: str) -> tuple[str, str] | None:
    """MONAI key -> (flax path, transform kind); None when no rule matches (an unexpected key)."""
    if key.startswith(ENCODER_PREFIX):
        rest = key[len(ENCODER_PREFIX) :]
        for _, trx, ftpl, _, kind in _ENC:
            m = trx.match(rest)
            if m:
                return "swinViT/" + ftpl.format(**m.groupdict()), kind
        return None
    for _, trx, ftpl, _, kind in _DEC + _ENC:
        m = trx.match(key)
        if m:
            return ftpl.format(**m.groupdict()), kind
    return None


def split_copy(key: str) -> tuple[str | None, str]:
    """('student' | 'teacher' | None, the key without wrapper prefixes and the copy's)."""
    copy = None
    changed = True
    while changed:
        changed = False
        for p in _WRAPPERS + tuple(f"{c}." for c in SOURCES):
            if key.startswith(p):
                if p[:-1] in SOURCES:
                    if copy is not None:
                        return copy, key  # 'student.teacher.' is no layout we know: leave it to fail
                    copy = p[:-1]
                key, changed = key[len(p) :], True
    return copy, key


def normalize_key(key: str) -> str:
    """Real checkpoints' spellings to MONAI's: strip `module.`/`student.`, `swin_vit` -> `swinViT`."""
    changed = True
    while changed:
        changed = False
        for p in ("module.", "student.", "model."):
            if key.startswith(p):
                key, changed = key[len(p) :], True
    if key.startswith("swin_vit."):
        key = "swinViT." + key[len("swin_vit.") :]
    return key


@dataclasses.dataclass
class LoadReport:
    """What a load did with every key: nothing is left out of these lists."""

    matched: list[str] = dataclasses.field(default_factory=list)  # loaded into params
    missing: list[str] = dataclasses.field(default_factory=list)  # expected flax paths not in the file
    unexpected: list[str] = dataclasses.field(default_factory=list)  # file keys with no place in the model
    skipped: list[str] = dataclasses.field(default_factory=list)  # file keys excluded by `skip` patterns
    buffers: list[str] = dataclasses.field(default_factory=list)  # relative_position_index, checked not loaded
    # known parts of a training checkpoint that are not the chosen encoder: the other EMA copy,
    # the S2DC heads and queue, and (from files) top-level entries such as `optimizer`, `epoch`
    ignored: list[str] = dataclasses.field(default_factory=list)
    merging: str | None = None  # the merging rule the weights need, as far as the load could tell
    notes: list[str] = dataclasses.field(default_factory=list)  # one-line hints to show the user

    def summary(self) -> str:
        """One line of counts, plus the first few missing/unexpected names."""
        s = (
            f"matched {len(self.matched)}, missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"ignored {len(self.ignored)}, skipped {len(self.skipped)}, buffers {len(self.buffers)}"
        )
        for name in ("missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                s += f"; {name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        return s

    __str__ = summary


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch tensor, without importing torch
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        v = v.numpy()
    return np.asarray(v)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        p = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, p + "/"))
        else:
            out[p] = v
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def flatten_params(params: Mapping) -> dict[str, Any]:
    """Nested params -> {'a/b/c': array}."""
    return _flatten(params)


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    """{'a/b/c': array} -> nested params."""
    return _unflatten(flat)


def to_monai(params: Mapping, *, encoder_prefix: str = ENCODER_PREFIX, window_size=None) -> dict[str, np.ndarray]:
    """Flax params of `SwinTransformer3D` or `SwinUNETR` -> MONAI state dict of float32 numpy arrays.

    An encoder tree is written under `encoder_prefix` (default `swinViT.`, the keys of
    MONAI `SwinUNETR`; pass "" for a bare MONAI `SwinTransformer`). The
    `relative_position_index` buffers are written too, so that every key MONAI has is
    present; the window is read from the bias-table size (cubic) unless `window_size` is given.
    """
    flat = flatten_params(params)
    is_unetr = any(p.startswith("swinViT/") for p in flat)
    sd: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        key, kind = flax_to_monai_key(path)
        if not is_unetr and key.startswith(("layers", "patch_embed")):
            key = encoder_prefix + key
        sd[key] = np.ascontiguousarray(_TO_TORCH[kind](np.asarray(value, dtype=np.float32)))
    for key in list(sd):
        if key.endswith("attn.relative_position_bias_table"):
            win = _window_from_table(sd[key].shape[0], window_size, key)
            sd[key[: -len("relative_position_bias_table")] + "relative_position_index"] = (
                relative_position_index(win).astype(np.int64)
            )
    return sd


def _window_from_table(rows: int, window_size, key: str) -> tuple[int, int, int]:
    if window_size is not None:
        win = (int(window_size),) * 3 if np.isscalar(window_size) else tuple(int(w) for w in window_size)
        if int(np.prod([2 * w - 1 for w in win])) != rows:
            raise ValueError(f"{key}: window_size {win} needs {np.prod([2 * w - 1 for w in win])} rows, has {rows}")
        return win
    side = round(rows ** (1 / 3))
    if side**3 != rows or side % 2 == 0:
        raise ValueError(f"{key}: {rows} bias rows is not a cubic window; pass window_size=")
    return ((side + 1) // 2,) * 3


def _compile_skip(skip: str | Iterable[str] | None) -> list[re.Pattern]:
    if skip is None:
        return []
    if isinstance(skip, str):
        skip = [skip]
    out = []
    for s in skip:
        try:
            out.append(re.compile(s))
        except re.error as e:
            raise ValueError(f"skip pattern {s!r} is not a valid regular expression: {e}") from None
    return out


def expected_params(model, in_shape: Sequence[int] | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat {flax path: ShapeDtypeStruct} of a flax model's params, without computing anything."""
    if in_shape is None:
        in_shape = (1, 32, 32, 32, model.in_channels)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(in_shape, jnp.float32))
    return flatten_params(shapes["params"])


def from_monai(
    state_dict: Mapping[str, Any],
    *,
    model=None,
    init_params: Mapping | None = None,
    skip: str | Iterable[str] | None = None,
    what: str = "auto",
    source: str = "student",
    merging: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[dict, LoadReport]:
    """MONAI-layout state dict (numpy or torch) -> (flax params, LoadReport).

    Accepts a whole `SwinUNETR`, its encoder (`swinViT.*`) or a bare `SwinTransformer`
    (`patch_embed.*`, `layers1.*`), with `module.`, `student.`, `model.` prefixes and
    `swin_vit` spellings. The target is `what` ("encoder" -> a `SwinTransformer3D` tree,
    "swinunetr" -> a `SwinUNETR` tree; "auto" takes the type of `model`, else "encoder" when
    the file has only encoder keys). Expected parameters come from `init_params`, else from
    `model`, else from the model the file itself describes (`infer_config`); those not
    loaded are reported missing and, when `init_params` is given, keep its values.
    `skip`: regular expressions; a MONAI key or flax path matching any is not loaded
    (e.g. `patch_embed.proj|encoder1.layer.conv[13]` when in_channels differ).
    `source`: which EMA copy of a pretraining checkpoint (`student.*` / `teacher.*` keys) to
    load; the other copy, when it is a whole twin, and the S2DC heads and queue are reported
    `ignored`. `merging`: the rule the caller's model uses (default: `model.merging`);
    `metadata`: the file's string metadata. `report.merging` is the rule the weights need
    (the recorded one wins) and `report.notes` says when the file records none.
    """
    if what not in ("auto", "encoder", "swinunetr"):
        raise ValueError(f"what must be one of ('auto', 'encoder', 'swinunetr'), got {what!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    skips = _compile_skip(skip)
    report = LoadReport()
    _resolve_report_merging(report, model, merging, metadata)
    copies: dict[str | None, set[str]] = {c: set() for c in (*SOURCES, None)}
    for raw_key in state_dict:
        copy, rest = split_copy(raw_key)
        copies[copy].add(rest)
    other = SOURCES[1 - SOURCES.index(source)]
    if not copies[source] and copies[other] and not copies[None] - set(S2DC_QUEUE_KEYS):
        raise ValueError(f"source={source!r} but the weights have no {source}.* keys, only "
                         f"{len(copies[other])} {other}.* ones; pass source={other!r} (init.source={other})")
    # the other EMA copy is known only when it mirrors the chosen one key for key; a partial
    # copy is no layout we know, so its keys stay unexpected
    twin = bool(copies[other]) and copies[other] == copies[source]
    converted: dict[str, tuple[str, str, np.ndarray]] = {}  # flax path -> (src key, kind, array)
    normalized: dict[str, str] = {}  # src key -> its MONAI spelling, which `skip` patterns see
    for raw_key, value in state_dict.items():
        copy, rest = split_copy(raw_key)
        if S2DC_HEAD_RE.match(rest) or (copy is None and rest in S2DC_QUEUE_KEYS):
            report.ignored.append(raw_key)
            continue
        if copy == other:
            (report.ignored if twin else report.unexpected).append(raw_key)
            continue
        key = normalize_key(rest)
        normalized[raw_key] = key
        if _BUFFER_RE.match(key.removeprefix(ENCODER_PREFIX)):
            _check_buffer(raw_key, value, state_dict, key)
            report.buffers.append(raw_key)
            continue
        hit = monai_to_flax_key(key)
        if hit is None:
            report.unexpected.append(raw_key)
            continue
        path, kind = hit
        if path in converted:
            raise ValueError(f"keys {converted[path][0]!r} and {raw_key!r} both map to parameter {path!r}")
        converted[path] = (raw_key, kind, _to_numpy(value))

    if what == "auto":
        if model is not None:
            what = "swinunetr" if type(model).__name__ == "SwinUNETR" else "encoder"
        elif init_params is not None:
            what = "swinunetr" if "swinViT" in init_params else "encoder"
        else:
            decoder = any(not p.startswith(("swinViT/", "patch_embed/", "layers")) for p in converted)
            what = "swinunetr" if decoder else "encoder"
    # re-root: encoder weights for a SwinUNETR go under swinViT/, and the reverse
    rooted: dict[str, tuple[str, str, np.ndarray]] = {}
    for path, entry in converted.items():
        enc_path = path.removeprefix("swinViT/")
        is_enc = path.startswith("swinViT/") or enc_path.startswith(("patch_embed/", "layers"))
        if what == "swinunetr":
            rooted["swinViT/" + enc_path if is_enc else path] = entry
        elif is_enc:
            rooted[enc_path] = entry
        else:
            report.unexpected.append(entry[0])  # decoder weights have no place in an encoder

    if init_params is not None:
        expected = {p: jax.ShapeDtypeStruct(np.shape(v), jnp.float32) for p, v in flatten_params(init_params).items()}
    elif model is not None:
        expected = expected_params(model)
    else:
        expected = _expected_from_file(rooted, what)

    out: dict[str, Any] = {}
    for path, (raw_key, kind, arr) in rooted.items():
        if any(s.search(normalized[raw_key]) or s.search(path) for s in skips):
            report.skipped.append(raw_key)
            continue
        if path not in expected:
            report.unexpected.append(raw_key)
            continue
        value = _TO_FLAX[kind](arr)
        want = tuple(expected[path].shape)
        if tuple(value.shape) != want:
            raise ValueError(
                f"shape mismatch for {raw_key!r} -> {path!r}: file has {tuple(arr.shape)} "
                f"(as flax {tuple(value.shape)}), model expects {want}"
            )
        out[path] = np.ascontiguousarray(value, dtype=np.float32)
        report.matched.append(raw_key)
    report.missing = sorted(p for p in expected if p not in out)
    if init_params is not None:
        init_flat = flatten_params(init_params)
        for p in report.missing:
            out[p] = init_flat[p]
    return unflatten_params(out), report


def _resolve_report_merging(report: LoadReport, model, merging: str | None, metadata) -> None:
    """Fill `report.merging` / `report.notes` from the file's record, the caller's rule and the model's."""
    has_model_rule = model is not None and hasattr(model, "merging")
    if merging is None and has_model_rule:
        merging = model.merging
    rule, note = resolve_merging(merging, metadata)
    report.merging = rule
    if has_model_rule and merging_from_metadata(metadata) is not None and model.merging != rule:
        note = (f"note: the weights record merging={rule} but the model has merging={model.merging}: "
                f"its features will differ; build it with merging='{rule}'")
    if note:
        report.notes.append(note)


def _check_buffer(raw_key: str, value, state_dict, key: str) -> None:
    """A relative_position_index must be the one the window implies; otherwise the weights mean something else."""
    table_key = raw_key[: -len("relative_position_index")] + "relative_position_bias_table"
    if table_key not in state_dict:
        return
    idx = _to_numpy(value)
    rows = _to_numpy(state_dict[table_key]).shape[0]
    try:
        win = _window_from_table(rows, None, table_key)
    except ValueError:
        return  # non-cubic windows: nothing to derive the index from
    want = relative_position_index(win)
    if idx.shape != want.shape or not np.array_equal(idx, want):
        raise ValueError(f"{raw_key}: relative_position_index differs from the one of window {win}")


def infer_config(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Model constructor arguments read off a MONAI-layout state dict (encoder or SwinUNETR)."""
    sd = {normalize_key(k): _to_numpy(v).shape for k, v in state_dict.items()}
    enc = {k.removeprefix(ENCODER_PREFIX): s for k, s in sd.items()}
    if "patch_embed.proj.weight" not in enc:
        raise ValueError("state dict has no patch_embed.proj.weight (or swinViT.patch_embed.proj.weight)")
    fs, cin, *patch = enc["patch_embed.proj.weight"]
    depths, heads = [], []
    for s in range(1, 5):
        blocks = sorted(
            {int(m.group(1)) for k in enc for m in [re.match(rf"layers{s}\.0\.blocks\.(\d+)\.", k)] if m}
        )
        if not blocks:
            raise ValueError(f"state dict has no blocks for stage layers{s}")
        depths.append(blocks[-1] + 1)
        heads.append(enc[f"layers{s}.0.blocks.0.attn.relative_position_bias_table"][1])
    rows = enc["layers1.0.blocks.0.attn.relative_position_bias_table"][0]
    win = _window_from_table(rows, None, "layers1.0.blocks.0.attn.relative_position_bias_table")
    cfg = dict(
        in_channels=int(cin),
        feature_size=int(fs),
        depths=tuple(depths),
        num_heads=tuple(int(h) for h in heads),
        window_size=win[0],
        patch_size=int(patch[0]),
        mlp_ratio=enc["layers1.0.blocks.0.mlp.linear1.weight"][0] / fs,
        qkv_bias="layers1.0.blocks.0.attn.qkv.bias" in enc,
        use_v2="layers1c.0.layer.conv1.conv.weight" in enc,
        patch_norm="patch_embed.norm.weight" in enc,
    )
    if "out.conv.conv.weight" in sd:
        cfg["out_channels"] = int(sd["out.conv.conv.weight"][0])
    return cfg


def _expected_from_file(rooted: Mapping[str, Any], what: str) -> dict:
    sd = {flax_to_monai_key(path)[0]: arr for path, (_, _, arr) in rooted.items()}
    cfg = infer_config(sd)
    if what == "swinunetr" and "out_channels" not in cfg:
        raise ValueError("a SwinUNETR state dict needs out.conv.conv.weight to know out_channels")
    return expected_params(build_model(cfg, what))


def build_model(cfg: Mapping[str, Any], what: str):
    """A flax model from `infer_config` output: `SwinUNETR` or `SwinTransformer3D`."""
    from s2dc_jax.models import SwinTransformer3D, SwinUNETR

    cfg = dict(cfg)
    if what == "swinunetr":
        return SwinUNETR(**cfg)
    cfg.pop("out_channels", None)
    return SwinTransformer3D(**cfg)
