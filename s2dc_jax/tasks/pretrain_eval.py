"""Held-out evaluation of pretraining (issue 14): patch correspondence on fixed views, baselines, a probe.

Every held-out volume gets ``eval.views_per_volume`` fixed views: the large-ROI crop and the
``aug_full`` affine of view ``v`` of volume ``i`` come from ``np.random.default_rng([eval.seed,
EVAL_STREAM, i, v])``, never from the training stream, so they are the same at every
evaluation, in every run and for any worker or device count. On each view the encoder sees
``src`` and ``aug_full`` (docs/method.md section 1) and every ``src`` token that has a
ground-truth partner (correspondence.py, exact inverse) is matched to its top-1 cosine
neighbour among the ``aug_full`` tokens of the same matching problem. Accuracy = matched
partners / ground-truth pairs, at three levels:

- ``last``: the encoder's last stage (the tokens the method matches, ``crop/32`` per side);
- ``finer``: the stage before it (twice as many tokens per side), against the ground truth
  of that finer grid (the same definition at half the token size, so still exact);
- ``head``: the patch head's tokens (what the loss sees).

The same numbers for random-init encoders (``random_*``, mean over ``eval.random_inits``)
and for raw intensities (``raw_*``: each token's voxels average-pooled to ``eval.raw_pool^3``
values, centred over the view's tokens) are computed once and logged with every evaluation.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from s2dc_jax import objectives
from s2dc_jax.data import io, presets
from s2dc_jax.data.pipeline import num_crops, view_ranges
from s2dc_jax.data.view_params import sample_view_params
from s2dc_jax.objectives import correspondence, matching, views
from s2dc_jax.objectives.s2dc import roi_tokens  # the training's crop -> ROI token order
from s2dc_jax.tasks.base import AXIS

EVAL_STREAM = 0x5EED14   # keeps the fixed views' random stream apart from the training's
LEVELS = ("last", "finer", "head")
RAW_LEVELS = ("last", "finer")
PROBE_LEVELS = ("last", "finer")


def default_eval_config() -> ml_collections.ConfigDict:
    """The ``eval`` block of the pretraining config (off unless ``eval_every`` or ``image_every`` > 0)."""
    c = ml_collections.ConfigDict()
    c.at_start = False          # also evaluate before the first step (the loop reads it)
    c.seed = 0                  # fixed views: rng([seed, EVAL_STREAM, volume, view])
    c.num_volumes = 8           # held-out volumes used, the first of the list; 0 = all
    c.views_per_volume = 2      # fixed affines per volume (more ground-truth pairs per volume)
    # random-init encoders whose mean is the "random" baseline; 0 = none. Their last-stage accuracy
    # varies a lot with the draw (demo views: 0.11-0.35 over 10 inits), so a few are not enough.
    c.random_inits = 8
    c.raw_pool = 4              # raw baseline: a token's voxels average-pooled to raw_pool^3 values
    # With data.phantoms (and no datalist): also write this many labelled phantoms, held out
    # from training, evaluated and (with probe_datalist unset) probed.
    c.phantoms = 0
    # Linear probe: volumes with "label" maps; "" = none (or the held-out phantoms).
    c.probe_datalist = ml_collections.FieldReference("", field_type=object)
    c.probe_split = ""          # its list; "" = "validation" if the JSON has one, else "training"
    c.probe_level = "finer"     # 'last' | 'finer': the tokens the probe classifies
    c.probe_volumes = 8         # probe volumes used, the first of the list; 0 = all
    c.probe_train_fraction = 0.5  # the first share of them fits the classifier, the rest scores it
    c.probe_min_fraction = 0.25   # a token's label: its most frequent structure if it covers this share, else 0
    return c


def validate_eval_config(c, token_size: int) -> None:
    """ValueError naming the first ``eval_every`` / ``image_every`` / ``eval.*`` / ``data.val_*`` field that fails."""

    def need(ok, field, msg):
        if not ok:
            raise ValueError(f"config.{field}: {msg}")

    e = c.eval
    need(c.eval_every >= 0, "eval_every", f"must be >= 0 (0 = no held-out evaluation), got {c.eval_every}")
    need(c.image_every >= 0, "image_every", f"must be >= 0 (0 = no pictures), got {c.image_every}")
    need(0.0 <= c.data.val_fraction < 1.0, "data.val_fraction", f"must be in [0, 1), got {c.data.val_fraction}")
    need(not (c.data.val_fraction > 0 and c.data.val_datalist), "data.val_fraction",
         "give data.val_datalist or data.val_fraction, not both")
    need(e.num_volumes >= 0, "eval.num_volumes", f"must be >= 0 (0 = all), got {e.num_volumes}")
    need(e.views_per_volume >= 1, "eval.views_per_volume", f"must be >= 1, got {e.views_per_volume}")
    need(e.random_inits >= 0, "eval.random_inits", f"must be >= 0, got {e.random_inits}")
    need(e.phantoms >= 0, "eval.phantoms", f"must be >= 0, got {e.phantoms}")
    finer = token_size // 2
    need(e.raw_pool >= 1 and finer % e.raw_pool == 0, "eval.raw_pool",
         f"must divide the finer token size {finer} (data.crop_size / (2 * tokens per crop side)), got {e.raw_pool}")
    need(e.probe_level in PROBE_LEVELS, "eval.probe_level", f"must be one of {PROBE_LEVELS}, got {e.probe_level!r}")
    need(e.probe_volumes >= 0, "eval.probe_volumes", f"must be >= 0 (0 = all), got {e.probe_volumes}")
    need(0.0 < e.probe_min_fraction <= 1.0, "eval.probe_min_fraction", f"must be in (0, 1], got {e.probe_min_fraction}")
    need(0.0 < e.probe_train_fraction < 1.0, "eval.probe_train_fraction",
         f"must be in (0, 1), got {e.probe_train_fraction}")
    if c.eval_every > 0 or e.at_start:
        phantoms = c.data.phantoms > 0 and not c.data.datalist and e.phantoms > 0
        need(bool(c.data.val_datalist) or c.data.val_fraction > 0 or phantoms, "data.val_datalist",
             "held-out evaluation (eval_every > 0) needs held-out volumes: set data.val_datalist, "
             "data.val_fraction > 0, or (with data.phantoms) eval.phantoms > 0")


def resolve_split(path_or_paths, split: str) -> str:
    """``split``, or with "" the "validation" list when the (first) JSON has one, else "training"."""
    if split:
        return split
    first = path_or_paths if isinstance(path_or_paths, str) else list(path_or_paths)[0]
    try:
        doc = json.loads(Path(first).read_text())
    except (OSError, ValueError):
        return "training"  # read_datalist names the file and the problem
    return "validation" if isinstance(doc, dict) and doc.get("validation") else "training"


# ---------------------------------------------------------------- fixed views (host)

@dataclasses.dataclass
class FixedViews:
    """Held-out views: ``image f32[V, X, Y, Z, 1]``, ``affine f32[V, 4]``, ``shift f32[V]`` and where each came from."""

    image: np.ndarray
    affine: np.ndarray
    shift: np.ndarray
    paths: list[str]
    volume: list[int]   # index of each view's volume in the held-out list
    view: list[int]     # index of the view among its volume's

    def __len__(self) -> int:
        return int(self.image.shape[0])


def fixed_view_rng(seed: int, volume: int, view: int) -> np.random.Generator:
    """The random stream of view ``view`` of held-out volume ``volume``: a function of these three only."""
    return np.random.default_rng([int(seed), EVAL_STREAM, int(volume), int(view)])


def fixed_view(path: str, volume: int, view: int, data_cfg, seed: int) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """A volume's fixed view: large ROI ``f32[X, Y, Z]`` (training's preset), ``aug_full`` affine ``f32[4]``, shift."""
    rng = fixed_view_rng(seed, volume, view)
    raw = io.open_raw(path)
    roi = tuple(int(r) for r in data_cfg.roi_large)
    image = presets.pretrain_volume(raw.data, rng, modality=data_cfg.modality, roi=roi, slope=raw.slope,
                                    inter=raw.inter, path=path, min_side=int(data_cfg.min_side))
    params = sample_view_params(rng, num_crops(roi, data_cfg.crop_size), view_ranges(data_cfg))
    return image, params["full_affine"], params["full_shift"]


def make_fixed_views(paths: list[str], data_cfg, seed: int, views_per_volume: int) -> FixedViews:
    """``views_per_volume`` fixed views of each volume in ``paths`` (DataError naming a file that cannot be used)."""
    out = [(fixed_view(p, i, v, data_cfg, seed), p, i, v) for i, p in enumerate(paths) for v in range(views_per_volume)]
    return FixedViews(image=np.stack([o[0][0] for o in out])[..., None], affine=np.stack([o[0][1] for o in out]),
                      shift=np.asarray([o[0][2] for o in out], np.float32), paths=[o[1] for o in out],
                      volume=[o[2] for o in out], view=[o[3] for o in out])


# ---------------------------------------------------------------- the shared correspondence function

def nearest_matches(q: jax.Array, k: jax.Array, gt: jax.Array) -> dict:
    """Top-1 cosine match of every src token: the one function of the evaluation, the figures and the tests.

    ``q f32[..., M, F]`` src tokens, ``k f32[..., N, F]`` aug tokens, ``gt 0/1 [..., M, N]``.
    Returns ``cos [..., M, N]``, ``best int[..., M]`` (argmax over the aug tokens), ``right
    bool[..., M]`` (best is the ground-truth partner), ``has_gt bool[..., M]`` and the scalar
    ``hits``, ``pairs`` of `matching.correspondence_hits` (accuracy = hits / pairs).
    """
    cos = jnp.einsum("...mf,...nf->...mn", objectives.l2_normalize(q), objectives.l2_normalize(k))
    hits, pairs = matching.correspondence_hits(cos, gt)
    best = jnp.argmax(cos, axis=-1)
    right = jnp.take_along_axis(gt, best[..., None], axis=-1)[..., 0] > 0.5
    return {"cos": cos, "best": best, "right": right, "has_gt": jnp.any(gt > 0.5, axis=-1),
            "hits": hits, "pairs": pairs}


def problems(grid: jax.Array, mode: str) -> jax.Array:
    """ROI tokens ``f32[gx, gy, gz, F]`` -> matching problems ``f32[S, M, F]``: z-slices (inplane) or the ROI (3d)."""
    gx, gy, gz, f = grid.shape
    if mode == "inplane":
        return grid.reshape(gx * gy, gz, f).transpose(1, 0, 2)   # [gz, gx*gy, F], token ix * gy + iy
    return grid.reshape(1, gx * gy * gz, f)                       # [1, gx*gy*gz, F]


def view_pair(image: jax.Array, affine: jax.Array, shift: jax.Array, mode: str) -> tuple[jax.Array, jax.Array]:
    """``src`` and ``aug_full`` of one ROI ``f32[X, Y, Z, C]``, both as whole ROIs ``f32[X, Y, Z, C]`` (views.py)."""
    aug = views.warp_volume(image, affine, scale_z=(mode == "3d")) + shift
    return image, aug


def _crops(roi: jax.Array, crop_size: int) -> jax.Array:
    return views.split_crops(roi[None], crop_size)[0]            # [n, c, c, Z, C]


def analyse_view(encode: Callable, params: dict | None, image: jax.Array, affine: jax.Array, shift: jax.Array, *,
                 ssl_cfg, crop_size: int, raw: tuple[int, int] | None = None) -> dict:
    """What is measured on one view ``image f32[X, Y, Z, C]``: ``{level: {src, aug, gt, token_size, **matches}}``.

    ``encode(enc_params, f32[n, c, c, c, C]) -> list of stage features f32[n, t, t, t, F]``
    (the last two are used) gives the levels last, finer, head when ``params``
    (``{"encoder", "heads"}``) is given; ``raw = (token_size, pool)`` gives raw_last and
    raw_finer. ``src``/``aug`` are the level's ROI token grids ``f32[gx, gy, gz, F]``; ``views``
    the two views ``f32[X, Y, Z, C]``.
    """
    mode = getattr(ssl_cfg, "correspondence", "inplane")
    size_x, size_y, size_z, _ = image.shape
    nx, ny = size_x // crop_size, size_y // crop_size
    src, aug = view_pair(image, affine, shift, mode)
    out: dict = {"views": (src, aug)}

    def level(name, s_grid, a_grid, token_size):
        gt = correspondence.ground_truth(affine[None], (size_x, size_y, size_z), token_size, mode)[0]   # [M, M]
        q, k = problems(s_grid, mode), problems(a_grid, mode)
        gt = jnp.broadcast_to(gt, q.shape[:1] + gt.shape)                                              # [S, M, M]
        out[name] = dict(nearest_matches(q, k, gt), src=s_grid, aug=a_grid, gt=gt, token_size=token_size)

    if params is not None:
        feats = [encode(params["encoder"], _crops(v, crop_size)) for v in (src, aug)]   # 2 x list of [n, t, t, t, F]
        grids = {}
        for name, stage in (("last", -1), ("finer", -2)):
            s_grid, a_grid = (roi_tokens(f[stage], 1, nx, ny)[0] for f in feats)          # [gx, gy, gz, F]
            grids[name] = (s_grid, a_grid)
            level(name, s_grid, a_grid, size_x // s_grid.shape[0])
        heads = [objectives.patch_head(params["heads"], g.reshape(1, -1, g.shape[-1]), ssl_cfg)[0].reshape(
            g.shape[:3] + (-1,)) for g in grids["last"]]                                   # BN over the view's tokens
        level("head", heads[0], heads[1], out["last"]["token_size"])
    if raw is not None:
        t_last, pool = raw
        for name, ts in (("raw_last", t_last), ("raw_finer", t_last // 2)):
            s_grid, a_grid = (raw_tokens(v, ts, pool) for v in (src, aug))
            level(name, s_grid, a_grid, ts)
    return out


def raw_tokens(roi: jax.Array, token_size: int, pool: int) -> jax.Array:
    """Raw-intensity tokens ``f32[gx, gy, gz, pool^3 * C]`` of ROI ``f32[X, Y, Z, C]``, centred over the view's tokens.

    Centring removes the view's mean pattern and an intensity shift; without it every
    pair of (positive) CT intensities has a cosine near 1 and the baseline would be noise.
    """
    x, y, z, ch = roi.shape
    s, p = token_size, pool
    g = roi.reshape(x // s, p, s // p, y // s, p, s // p, z // s, p, s // p, ch).mean(axis=(2, 5, 8))
    g = g.transpose(0, 2, 4, 1, 3, 5, 6).reshape(x // s, y // s, z // s, p ** 3 * ch)   # [gx, gy, gz, p^3 C]
    return g - jnp.mean(g, axis=(0, 1, 2), keepdims=True)


def view_scores(encode, params, image, affine, shift, *, ssl_cfg, crop_size, raw=None) -> dict:
    """``{level: (hits, pairs)}`` of one view (the levels of `analyse_view`)."""
    r = analyse_view(encode, params, image, affine, shift, ssl_cfg=ssl_cfg, crop_size=crop_size, raw=raw)
    return {k: (v["hits"], v["pairs"]) for k, v in r.items() if k != "views"}


def _accuracy(sums: dict) -> dict:
    return {k: float(h) / max(float(p), 1.0) for k, (h, p) in sums.items()}


# ---------------------------------------------------------------- probe (host, scikit-learn)

def token_labels(label: np.ndarray, token_size: int, min_fraction: float = 0.25) -> np.ndarray:
    """Label ``int[gx, gy, gz]`` of each token of a label map ``int[X, Y, Z]``: its most frequent structure (label > 0)
    where that covers at least ``min_fraction`` of its voxels, else 0.

    A plain majority would call nearly every token background: organs are a few percent of a
    volume, and few fill most of a 16^3 or 32^3 token.
    """
    x, y, z = label.shape
    s = token_size
    blocks = label.reshape(x // s, s, y // s, s, z // s, s).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(x // s, y // s, z // s, -1)                  # [gx, gy, gz, s^3] voxel labels
    k = int(label.max()) + 1
    counts = (blocks[..., None] == np.arange(k)).mean(-2)                 # [gx, gy, gz, k] fractions
    if k == 1:
        return np.zeros(counts.shape[:3], np.int64)
    best = counts[..., 1:].argmax(-1) + 1
    return np.where(np.take_along_axis(counts, best[..., None], -1)[..., 0] >= min_fraction, best, 0)


def probe_case(image_path: str, label_path: str, data_cfg) -> tuple[np.ndarray, np.ndarray]:
    """A labelled volume as the training sees one: preset intensities, foreground box, centred ROI, resized.

    Returns ``image f32[X, Y, Z, 1]`` and ``label int[X, Y, Z]`` on ``data.roi_large``.
    """
    raw = io.open_raw(image_path)
    lab, _ = io.load_volume(label_path, dtype=np.float32)
    if lab.shape != raw.data.shape[:3]:
        raise io.DataError(label_path, f"label shape {lab.shape} differs from the image's {raw.data.shape[:3]}")
    preset = presets.get_preset(data_cfg.modality)
    phys = np.asarray(raw.data, np.float32) * np.float32(raw.slope) + np.float32(raw.inter)
    box = tuple(slice(0, n) for n in phys.shape)
    if preset.foreground is not None:
        box = presets.foreground_box(phys, preset.foreground) or box
    img, lab = phys[box], lab[box]
    roi = tuple(int(r) for r in data_cfg.roi_large)
    centre = tuple(slice((n - min(n, r)) // 2, (n - min(n, r)) // 2 + min(n, r)) for n, r in zip(img.shape, roi))
    img = presets.normalize_intensity(img[centre], data_cfg.modality, path=image_path)
    img = presets.pad_symmetric(img, roi) if preset.small == "pad" else img
    lab = presets.pad_symmetric(lab[centre], roi) if preset.small == "pad" else lab[centre]
    return presets.resize(img, roi)[..., None], np.rint(presets.resize(lab, roi, order=0)).astype(np.int32)


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict:
    """Logistic regression of token features ``[N, F]`` -> labels; token accuracy and per-class Dice on the test tokens.

    ``{}`` when the fitting tokens hold a single class.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:  # checked in prepare; kept for direct callers
        raise ImportError("the linear probe (eval.probe_datalist) needs scikit-learn: "
                          "pip install scikit-learn") from None
    if len(np.unique(train_y)) < 2:
        return {}  # one class among the fitting tokens (volumes too small for their structures): nothing to fit
    scaler = StandardScaler().fit(train_x)
    # balanced: the structures are a small share of the tokens, and an unweighted fit may ignore them
    clf = LogisticRegression(max_iter=1000, C=1.0, class_weight="balanced").fit(scaler.transform(train_x), train_y)
    pred = clf.predict(scaler.transform(test_x))
    out = {"acc": float(np.mean(pred == test_y))}
    dice = []
    for k in np.unique(np.concatenate([train_y, test_y])):
        if k == 0:
            continue  # background: its Dice is high whatever the features
        tp = np.sum((pred == k) & (test_y == k))
        denom = np.sum(pred == k) + np.sum(test_y == k)
        if denom:
            out[f"dice_{int(k)}"] = float(2 * tp / denom)
            dice.append(out[f"dice_{int(k)}"])
    out["dice"] = float(np.mean(dice)) if dice else 0.0
    return out


# ---------------------------------------------------------------- the evaluator

def encode_fn(encoder, dtype: str) -> Callable:
    """``encode(enc_params, f32[N, c, c, c, C]) -> 5 stage features f32[N, t, t, t, F]``, computed in ``dtype``."""
    dt = jnp.dtype(dtype)

    def encode(enc_params, x):
        return [f.astype(jnp.float32) for f in encoder.apply({"params": enc_params}, x.astype(dt))]

    return encode


class HeldOutEval:
    """Held-out correspondence (and optional probe) of a pretraining run, data-parallel over ``mesh``."""

    def __init__(self, config, encoder, mesh, init_params: Callable[[jax.Array], dict]):
        self.config, self.encoder, self.mesh = config, encoder, mesh
        self.init_params = init_params       # rng -> {"encoder", "heads"} of a fresh (random) model
        self.views: FixedViews | None = None
        self.probe_cases: list[tuple[np.ndarray, np.ndarray]] = []
        self.baselines: dict | None = None
        self._device_views = None
        self._fns: dict = {}
        self.pairs: dict = {}
        self._log: Callable[[str], None] = lambda _: None
        self.seconds: list[float] = []       # wall time of each evaluation (baselines excluded)
        self.baseline_seconds = 0.0

        self.encode = encode_fn(encoder, config.model.dtype)

    # ---- host: load once
    def load(self, val_paths: list[str], probe: list[tuple[str, str]], log: Callable[[str], None]) -> None:
        """Fixed views of the held-out ``val_paths`` and the probe's (image, label) cases, read once."""
        c = self.config
        self._log = log
        if val_paths:
            n = c.eval.num_volumes or len(val_paths)
            self.views = make_fixed_views(val_paths[:n], c.data, c.eval.seed, c.eval.views_per_volume)
            log(f"held-out evaluation: {len(val_paths[:n])} volumes x {c.eval.views_per_volume} fixed views "
                f"(eval.seed {c.eval.seed}), every {c.eval_every} steps; baselines: {c.eval.random_inits} random "
                f"inits, raw intensities pooled to {c.eval.raw_pool}^3 per token")
        if probe:
            n = c.eval.probe_volumes or len(probe)
            self.probe_cases = [probe_case(img, lab, c.data) for img, lab in probe[:n]]
            n_fit = self._probe_split()
            log(f"linear probe on {c.eval.probe_level} tokens: fit on {n_fit}, scored on "
                f"{len(self.probe_cases) - n_fit} labelled volumes")

    def _probe_split(self) -> int:
        n = len(self.probe_cases)
        return min(max(1, int(round(n * self.config.eval.probe_train_fraction))), n - 1)

    # ---- device functions (jit over the mesh, built once)
    def _kw(self):
        c = self.config
        return dict(ssl_cfg=c.ssl, crop_size=c.data.crop_size)

    def _scores_fn(self):
        """jit over the mesh: ``(params, views...) -> {level: (hits, pairs)}``, the model's levels and the raw ones."""
        if "scores" not in self._fns:
            c = self.config
            encode, kw = self.encode, self._kw()
            raw = (int(c.model.patch_size) * 16, int(c.eval.raw_pool))  # one token per 32 voxels at patch 2

            def per_device(params, image, affine, shift, weight):
                # this device's views: image f32[v, X, Y, Z, C], affine f32[v, 4], shift f32[v], weight f32[v]
                def one(args):
                    # the raw levels cost little next to the encoder: one compiled function instead of two
                    return view_scores(encode, params, *args, raw=raw, **kw)

                # one view at a time: the memory of one view's two encoder passes, whatever the count
                per_view = jax.lax.map(one, (image, affine, shift))              # {level: ([v], [v])}
                return {k: (jax.lax.psum(jnp.sum(h * weight), AXIS), jax.lax.psum(jnp.sum(p * weight), AXIS))
                        for k, (h, p) in per_view.items()}

            specs = (P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS))
            self._fns["scores"] = jax.jit(jax.shard_map(per_device, mesh=self.mesh, in_specs=specs, out_specs=P()))
        return self._fns["scores"]

    def _on_mesh(self):
        """The fixed views as global arrays split over the mesh, padded with weight-0 copies to a multiple of it."""
        if self._device_views is None:
            v = self.views
            n_dev = self.mesh.devices.size
            pad = (-len(v)) % n_dev
            idx = np.concatenate([np.arange(len(v)), np.zeros(pad, int)])
            weight = np.concatenate([np.ones(len(v)), np.zeros(pad)]).astype(np.float32)
            sharding = NamedSharding(self.mesh, P(AXIS))
            host = (v.image[idx], v.affine[idx], v.shift[idx], weight)
            # every process holds all views: each fills its own shards
            self._device_views = tuple(jax.make_array_from_callback(a.shape, sharding, lambda i, a=a: a[i])
                                       for a in host)
        return self._device_views

    def correspondence(self, params) -> dict:
        """``{level: accuracy}`` of ``params`` (replicated over the mesh) on the fixed views, raw levels included."""
        sums = jax.device_get(self._scores_fn()(params, *self._on_mesh()))
        self.pairs = {k: int(p) for k, (_, p) in sums.items()}   # the accuracies' denominators (their noise)
        return _accuracy(sums)

    def random_params(self, k: int) -> dict:
        """Random-init model ``k`` (keys apart from the training's), replicated over the mesh."""
        key = jax.random.fold_in(jax.random.PRNGKey(EVAL_STREAM), 1000 * int(self.config.eval.seed) + k)
        return jax.jit(self.init_params, out_shardings=NamedSharding(self.mesh, P()))(key)

    def compute_baselines(self, raw: dict | None = None) -> dict:
        """``random_corr_*`` (mean over random inits), ``raw_corr_*`` and the random-init probe's scores: once.

        ``raw``: raw-level accuracies already measured (they do not depend on the params).
        """
        if self.baselines is None:
            t0 = time.perf_counter()
            out, spread = {}, {}
            n_rand = self.config.eval.random_inits
            if self.views is not None:
                # one random model on the devices at a time (8 of them are 1 GB at paper size)
                accs = [self.correspondence(self.random_params(k)) for k in range(n_rand)]
                if raw is None:
                    raw = accs[0] if accs else self.correspondence(self.random_params(0))
                out.update({f"raw_corr_{k.removeprefix('raw_')}": v for k, v in raw.items() if k.startswith("raw_")})
                if accs:
                    out.update({f"random_corr_{k}": float(np.mean([a[k] for a in accs]))
                                for k in accs[0] if not k.startswith("raw_")})
                    spread = {k: (min(a[k] for a in accs), max(a[k] for a in accs))
                              for k in accs[0] if not k.startswith("raw_")}
            if self.probe_cases and n_rand:
                out.update({f"random_{k}": v for k, v in self.probe(self.random_params(0)).items()})
            self.baselines = out
            self.baseline_seconds = time.perf_counter() - t0
            self._log(f"held-out baselines computed once in {self.baseline_seconds:.1f} s: "
                      + ", ".join(f"{k}={v:.3f}" for k, v in out.items())
                      + (f"; random inits from {n_rand} draws, lowest-highest: "
                         + ", ".join(f"{k} {lo:.3f}-{hi:.3f}" for k, (lo, hi) in spread.items()) if spread else "")
                      + ("; ground-truth pairs per level: " + ", ".join(f"{k} {v}" for k, v in self.pairs.items())
                         if self.pairs else ""))
        return self.baselines

    # ---- probe
    def _features_fn(self):
        if "features" not in self._fns:
            encode, crop = self.encode, self.config.data.crop_size
            stage = {"last": -1, "finer": -2}[self.config.eval.probe_level]

            def per_device(params, image):
                # image f32[v, X, Y, Z, C] -> this device's src token grids f32[v, gx, gy, gz, F], gathered
                nx, ny = image.shape[1] // crop, image.shape[2] // crop

                def one(img):
                    return roi_tokens(encode(params["encoder"], _crops(img, crop))[stage], 1, nx, ny)[0]

                return jax.lax.all_gather(jax.lax.map(one, image), AXIS, tiled=True, to="invarying")

            self._fns["features"] = jax.jit(jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                                          out_specs=P()))
        return self._fns["features"]

    def probe(self, params) -> dict:
        """Probe of the ``eval.probe_level`` tokens of ``params``: ``{probe_acc, probe_dice, probe_dice_<k>}``"""
        images = np.stack([c[0] for c in self.probe_cases])
        n, n_dev = len(images), self.mesh.devices.size
        idx = np.concatenate([np.arange(n), np.zeros((-n) % n_dev, int)])
        x = jax.make_array_from_callback(images[idx].shape, NamedSharding(self.mesh, P(AXIS)),
                                         lambda i: images[idx][i])
        feats = np.asarray(jax.device_get(self._features_fn()(params, x)))[:n]          # [n, gx, gy, gz, F]
        ts = self.config.data.roi_large[0] // feats.shape[1]
        labels = np.stack([token_labels(c[1], ts, self.config.eval.probe_min_fraction)
                           for c in self.probe_cases])                                # [n, gx, gy, gz]
        k = self._probe_split()
        f, y = feats.reshape(n, -1, feats.shape[-1]), labels.reshape(n, -1)
        r = fit_probe(f[:k].reshape(-1, f.shape[-1]), y[:k].ravel(), f[k:].reshape(-1, f.shape[-1]), y[k:].ravel())
        return {f"probe_{key}": v for key, v in r.items()}

    # ---- what the task returns to the loop
    def evaluate(self, params) -> dict:
        """Pretrained scores (``corr_<level>``, ``probe_*``), the baselines, and ``seconds`` (this evaluation's)."""
        t0 = time.perf_counter()
        out, acc = {}, None
        if self.views is not None:
            acc = self.correspondence(params)
            out.update({f"corr_{k}": v for k, v in acc.items() if not k.startswith("raw_")})
        if self.probe_cases:
            out.update(self.probe(params))
        self.seconds.append(time.perf_counter() - t0)
        out.update(self.compute_baselines(raw=acc))
        out["seconds"] = self.seconds[-1]
        return out
