"""Pictures of what a pretraining run learned (issue 17): matched tokens, similarity maps, PCA colours.

Everything drawn comes from `pretrain_eval.analyse_view`, the function the held-out
evaluation sums, on the same fixed views; the accuracy in a title is counted from the lines
it draws. matplotlib is an optional extra (``pip install -e ".[viz]"``); only the object API
and the Agg canvas are used, so no display and no pyplot state.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from s2dc_jax.tasks import pretrain_eval

MISSING = 'matplotlib is not installed: pip install -e ".[viz]" (or pip install matplotlib)'
LABELS = {"head": "patch-head tokens", "last": "encoder last-stage tokens", "finer": "encoder stage before last",
          "raw_last": "raw intensities (last-stage grid)", "raw_finer": "raw intensities (finer grid)"}


def have_matplotlib() -> bool:
    """Whether the optional matplotlib is importable."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


class Analyser:
    """``analyser(params, image, affine, shift)``: numpy `pretrain_eval.analyse_view`, jit'd once, one device."""

    def __init__(self, config, encoder):
        c = config
        self.mode = getattr(c.ssl, "correspondence", "inplane")
        encode = pretrain_eval.encode_fn(encoder, c.model.dtype)
        raw = (int(c.model.patch_size) * 16, int(c.get("eval", {}).get("raw_pool", 4)))

        def fn(params, image, affine, shift):
            r = pretrain_eval.analyse_view(encode, params, image, affine, shift, ssl_cfg=c.ssl,
                                           crop_size=c.data.crop_size, raw=raw)
            # token sizes are Python ints: recomputed on the host from the grids' shapes
            return {k: v if k == "views" else {n: a for n, a in v.items() if n != "token_size"} for k, v in r.items()}

        self._fn = jax.jit(fn)

    def __call__(self, params, image, affine, shift) -> dict:
        """Numpy ``{level: {...}, "views": (src, aug), "mode"}`` of one fixed view ``image f32[X, Y, Z, 1]``."""
        device = jax.devices()[0]
        if any(isinstance(x, jax.Array) for x in jax.tree.leaves(params)):
            params = jax.tree.map(lambda a: a.addressable_data(0), params)   # one device, not the whole mesh
            device = next(iter(jax.tree.leaves(params)[0].devices()))
        args = jax.device_put((np.asarray(image, np.float32), np.asarray(affine, np.float32),
                               np.asarray(shift, np.float32)), device)
        result = jax.tree.map(np.asarray, jax.device_get(self._fn(params, *args)))
        x = np.asarray(image).shape[0]
        for v in result.values():
            if isinstance(v, dict):
                v["token_size"] = x // v["src"].shape[0]
        result["mode"] = self.mode
        return result


# ---------------------------------------------------------------- geometry of tokens in a picture

def _token_xyz(m: np.ndarray, s: int, grid: tuple[int, int, int], mode: str) -> tuple[np.ndarray, ...]:
    """Grid coords ``(ix, iy, iz)`` of token ``m`` of problem ``s`` (problems.py order)."""
    gx, gy, gz = grid
    if mode == "inplane":
        return m // gy, m % gy, np.full_like(m, s)
    ixy, iz = m // gz, m % gz
    return ixy // gy, ixy % gy, iz


def _centre(i: np.ndarray, ts: int) -> np.ndarray:
    return (i + 0.5) * ts - 0.5  # voxel-centre coordinate of a token centre


def _slab_tokens(level: dict, slab: int, mode: str) -> tuple[int, np.ndarray]:
    """(problem index, src token ids) of the tokens of z-slab ``slab``."""
    gx, gy, gz = level["src"].shape[:3]
    if mode == "inplane":
        return slab, np.arange(gx * gy)
    m = np.arange(gx * gy * gz)
    return 0, m[m % gz == slab]


def level_accuracy(level: dict) -> tuple[int, int]:
    """(right, pairs): src tokens whose top-1 match is their ground-truth partner, of those that have one."""
    has = np.asarray(level["has_gt"])
    return int(np.sum(np.asarray(level["right"]) & has)), int(np.sum(has))


def _slice(view: np.ndarray, z: int) -> np.ndarray:
    return np.asarray(view[:, :, z, 0])                                # [X, Y]


def _gray(ax, img: np.ndarray, vmin, vmax):
    ax.imshow(img.T, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _range(result):
    """A display window for the tissue: the 2-98th percentiles of the src voxels above the background."""
    src = np.asarray(result["views"][0])[..., 0]
    floor = np.percentile(src, 2)
    body = src[src > floor + 1e-3 * max(float(np.ptp(src)), 1e-6)]
    lo, hi = np.percentile(body if body.size > 100 else src, [2, 98])
    return float(lo), float(max(hi, lo + 1e-6))


def _default_slab(level: dict) -> int:
    return level["src"].shape[2] // 2


# ---------------------------------------------------------------- figures

def correspondence_figure(result: dict, levels=("head", "last"), slab: int | None = None):
    """Matched token pairs on one slice of each view, green right / red wrong; accuracy in each title.

    Returns ``(figure, {level: (right, pairs)})``: the counts are those of the whole view (every
    slice), the lines those of the drawn slab.
    """
    levels = [lv for lv in levels if lv in result]
    mode = result["mode"]
    src, aug = (np.asarray(v) for v in result["views"])
    x, y = src.shape[:2]
    gap = max(x // 16, 2)
    vmin, vmax = _range(result)
    fig = _figure(7.5, 3.9 * len(levels))
    counts = {}
    for row, name in enumerate(levels):
        lv = result[name]
        ts = lv["token_size"]
        grid = lv["src"].shape[:3]
        sl = _default_slab(lv) if slab is None else min(slab, grid[2] - 1)
        z = sl * ts + ts // 2
        both = np.concatenate([_slice(src, z), np.full((gap, y), vmin), _slice(aug, z)], axis=0)
        ax = fig.add_subplot(len(levels), 1, row + 1)
        _gray(ax, both, vmin, vmax)
        s, ms = _slab_tokens(lv, sl, mode)
        best, right, has = (np.asarray(lv[k])[s] for k in ("best", "right", "has_gt"))
        for m in ms[has[ms]]:
            ix, iy, _ = _token_xyz(np.asarray(m), s, grid, mode)
            jx, jy, _ = _token_xyz(np.asarray(best[m]), s, grid, mode)
            colour = "#2ecc40" if right[m] else "#ff4136"
            ax.plot([_centre(ix, ts), _centre(jx, ts) + x + gap], [_centre(iy, ts), _centre(jy, ts)],
                    color=colour, lw=0.9, alpha=0.85)
            ax.plot([_centre(ix, ts)], [_centre(iy, ts)], "o", color=colour, ms=2.5)
        hits, pairs = level_accuracy(lv)
        counts[name] = (hits, pairs)
        acc = hits / max(pairs, 1)
        ax.set_title(f"{LABELS.get(name, name)}: {hits}/{pairs} ground-truth pairs matched, accuracy {acc:.3f}\n"
                     f"src (left) | aug_full (right), slice z={z}; green right, red wrong", fontsize=8.5)
    fig.tight_layout()
    return fig, counts


def similarity_figure(result: dict, levels=("head", "last", "finer"), voxel: tuple[int, int, int] | None = None):
    """Cosine of one src token against every aug token of its matching problem, per level, over the aug slice.

    ``voxel`` (x, y, z) picks the src token that contains it (default: the ROI centre); a star
    marks its ground-truth partner, a circle its top-1 match.
    """
    levels = [lv for lv in levels if lv in result]
    mode = result["mode"]
    src, aug = (np.asarray(v) for v in result["views"])
    x, y, zs = src.shape[:3]
    voxel = voxel or (x // 2, y // 2, zs // 2)
    vmin, vmax = _range(result)
    fig = _figure(3.2 * (len(levels) + 1), 3.6)
    ax0 = fig.add_subplot(1, len(levels) + 1, 1)
    _gray(ax0, _slice(src, voxel[2]), vmin, vmax)
    ax0.plot([voxel[0]], [voxel[1]], "+", color="yellow", ms=12, mew=2)
    ax0.set_title(f"src, z={voxel[2]}: chosen token at\nvoxel ({voxel[0]}, {voxel[1]}, {voxel[2]})", fontsize=8.5)
    for col, name in enumerate(levels):
        lv = result[name]
        ts = lv["token_size"]
        gx, gy, gz = lv["src"].shape[:3]
        ix, iy, iz = (min(v // ts, g - 1) for v, g in zip(voxel, (gx, gy, gz)))
        if mode == "inplane":
            s, m, aug_ids = iz, ix * gy + iy, np.arange(gx * gy)
        else:
            s, m, aug_ids = 0, (ix * gy + iy) * gz + iz, None
        cos = np.asarray(lv["cos"])[s, m]                                 # [N]
        if mode == "inplane":
            cmap_grid = cos.reshape(gx, gy)
            z_show = iz * ts + ts // 2
        else:
            cmap_grid = cos.reshape(gx, gy, gz)[:, :, iz]
            z_show = iz * ts + ts // 2
        del aug_ids
        ax = fig.add_subplot(1, len(levels) + 1, col + 2)
        _gray(ax, _slice(aug, z_show), vmin, vmax)
        up = np.kron(cmap_grid, np.ones((ts, ts)))
        im = ax.imshow(up.T, origin="lower", cmap="magma", alpha=0.6, vmin=-1, vmax=1, interpolation="nearest")
        gt_row = np.asarray(lv["gt"])[s, m]
        best = int(np.asarray(lv["best"])[s, m])
        for j, marker in ((np.flatnonzero(gt_row > 0.5), "*"), (np.asarray([best]), "o")):
            if j.size:
                jx, jy, _ = _token_xyz(j, s, (gx, gy, gz), mode)
                ax.plot(_centre(jx, ts), _centre(jy, ts), marker, color="cyan" if marker == "*" else "lime",
                        ms=11 if marker == "*" else 8, mfc="none" if marker == "o" else "cyan", mew=1.5)
        right = bool(gt_row[best] > 0.5)
        state = "no ground-truth partner" if not gt_row.any() else ("top-1 right" if right else "top-1 wrong")
        ax.set_title(f"{LABELS.get(name, name)}\naug_full cosine, z={z_show}: {state}", fontsize=8.5)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return fig


def pca_colours(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top 3 principal components of both views' tokens ``f32[..., F]`` as RGB in [0, 1] (one basis for both)."""
    fa, fb = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    both = np.concatenate([fa, fb]).astype(np.float64)
    both = both - both.mean(0)
    _, _, vt = np.linalg.svd(both, full_matrices=False)
    k = min(3, vt.shape[0])
    proj = both @ vt[:k].T                                                 # [Na + Nb, k]
    proj = np.pad(proj, ((0, 0), (0, 3 - k)))
    lo, hi = np.percentile(proj, 2, axis=0), np.percentile(proj, 98, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
    return rgb[:len(fa)].reshape(a.shape[:-1] + (3,)), rgb[len(fa):].reshape(b.shape[:-1] + (3,))


def pca_figure(result: dict, level: str = "finer", slabs: int = 3):
    """PCA of the level's token features (3 components as RGB) over a few slices of each view."""
    lv = result[level]
    ts = lv["token_size"]
    src, aug = (np.asarray(v) for v in result["views"])
    rgb = pca_colours(np.asarray(lv["src"]), np.asarray(lv["aug"]))        # 2 x [gx, gy, gz, 3]
    gz = lv["src"].shape[2]
    picks = sorted(set(np.linspace(0, gz - 1, min(slabs, gz)).round().astype(int).tolist()))
    vmin, vmax = _range(result)
    fig = _figure(2.6 * len(picks) * 2, 3.0)
    col = 0
    for name, view, colours in (("src", src, rgb[0]), ("aug_full", aug, rgb[1])):
        for sl in picks:
            col += 1
            ax = fig.add_subplot(1, 2 * len(picks), col)
            z = sl * ts + ts // 2
            _gray(ax, _slice(view, z), vmin, vmax)
            up = np.kron(colours[:, :, sl], np.ones((ts, ts, 1)))           # [X, Y, 3]
            ax.imshow(np.transpose(up, (1, 0, 2)), origin="lower", alpha=0.6, interpolation="nearest")
            ax.set_title(f"{name}, z={z}", fontsize=8.5)
    fig.suptitle(f"PCA of {LABELS.get(level, level)} (3 components as RGB, one basis for both views)", fontsize=9)
    fig.tight_layout()
    return fig


def to_array(fig) -> np.ndarray:
    """A figure as ``uint8[H, W, 3]`` (for TensorBoard)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


LEVELS = ("head", "last", "finer")


def write_pngs(result: dict, out_dir, voxel=None, levels=LEVELS, dpi: int = 100) -> dict:
    """``correspondence.png``, ``similarity.png``, ``pca.png`` and ``summary.json`` (the accuracies) in ``out_dir``."""
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or not levels:
        raise ValueError(f"--levels: each must be one of {LEVELS}, got {tuple(levels)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, counts = correspondence_figure(result, levels=tuple(levels))
    paths = {"correspondence": out / "correspondence.png", "similarity": out / "similarity.png",
             "pca": out / "pca.png", "summary": out / "summary.json"}
    fig.savefig(paths["correspondence"], dpi=dpi)
    similarity_figure(result, levels=tuple(levels), voxel=voxel).savefig(paths["similarity"], dpi=dpi)
    pca_figure(result, level="finer" if "finer" in levels else levels[-1]).savefig(paths["pca"], dpi=dpi)
    # the drawn levels' counts are the figure's; the others (and the raw baselines) the same count, undrawn
    rest = {k: level_accuracy(result[k]) for k in (*LEVELS, "raw_last", "raw_finer") if k in result and k not in counts}
    summary = {name: {"right": h, "pairs": p, "accuracy": h / max(p, 1)} for name, (h, p) in {**counts, **rest}.items()}
    paths["summary"].write_text(json.dumps(summary, indent=1))
    return paths


def run_config_of(checkpoint, step: int | None = None):
    """The ConfigDict of the pretraining run that ``checkpoint`` (a workdir or step folder) belongs to."""
    import ml_collections

    from s2dc_jax.interop.workdir import resolve, run_config

    resolve(checkpoint, step)  # FileNotFoundError naming a missing path or step first
    cfg = run_config(checkpoint)
    if cfg is None:
        raise FileNotFoundError(f"{checkpoint}: no config.json in the workdir (it names the model and preset)")
    return ml_collections.ConfigDict(cfg)


def load_params(checkpoint, step: int | None = None) -> tuple[dict, int]:
    """The ``{"encoder", "heads"}`` params (numpy) of a pretraining checkpoint and its step."""
    from s2dc_jax.interop import workdir

    params, step = workdir.load_params(checkpoint, step)
    if workdir.params_kind(params) != "pretrain":
        raise ValueError(f"{checkpoint}: not a pretraining checkpoint (its params hold no encoder + heads)")
    return params, step


def run_visualize(checkpoint, out, *, step=None, image=None, datalist=None, split="", index=0, view=0, seed=None,
                  voxel=None, levels=LEVELS, dpi: int = 100) -> dict:
    """What launch/visualize.py does: the PNGs of one fixed view of a volume; returns their paths and ``accuracy``."""
    from s2dc_jax.data.datalist import read_datalist
    from s2dc_jax.tasks.base import build_encoder

    if not levels or any(lv not in LEVELS for lv in levels):
        raise ValueError(f"--levels: each must be one of {LEVELS}, got {tuple(levels)}")
    config = run_config_of(checkpoint, step)
    if datalist:
        recs = read_datalist(datalist, split=pretrain_eval.resolve_split(datalist, split))
        if not 0 <= index < len(recs):
            raise ValueError(f"--index={index}: {datalist} has {len(recs)} entries in that list")
        image = recs[index]["image"]
    if seed is None:
        seed = int(config.get("eval", {}).get("seed", 0))
    # The volume before the weights: a bad file fails in a second, not after the restore.
    img, affine, shift = pretrain_eval.fixed_view(image, index, view, config.data, seed)
    params, _ = load_params(checkpoint, step)
    result = Analyser(config, build_encoder(config.model))(params, img[..., None], affine, shift)
    paths = write_pngs(result, out, voxel=voxel, levels=levels, dpi=dpi)
    paths["accuracy"] = json.loads(paths["summary"].read_text())
    return paths
