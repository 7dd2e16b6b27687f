"""Host cost of one pretraining volume: CPU-seconds from file to the resized large ROI.

Measured in one process with ``time.process_time`` (user + system CPU of this process,
so memory-map page faults count) for the same CT-like volume stored as ``.nii.gz`` and
as uncompressed ``.nii``.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from s2dc_jax.data import io, phantoms, presets


def machine() -> str:
    """CPU model and core count, for the record."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPU cores"


def ct_volume(shape=(512, 512, 300), seed: int = 0) -> np.ndarray:
    """A CT-like int16 volume (HU) of ``shape``: a phantom drawn at a quarter size, up-sampled, plus noise."""
    rng = np.random.default_rng(seed)
    small = tuple(max(8, s // 4) for s in shape)
    ph = phantoms.make_phantom(rng, small, "ct", cls=1)["image"]
    big = presets.resize(ph, shape)
    # Noise at full resolution keeps gzip from compressing unrealistically well.
    noise = rng.integers(-12, 13, size=shape, dtype=np.int16)
    return (np.rint(big).astype(np.int16) + noise)


def time_volume(path, *, modality: str, roi, repeats: int, seed: int = 0) -> dict:
    """CPU and wall seconds per volume (mean of ``repeats``) for file -> ROI, plus the read share."""
    cpu, wall, read = [], [], []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        t0, w0 = time.process_time(), time.perf_counter()
        raw = io.open_raw(path)
        data = raw.data  # .nii: a memory map; .nii.gz: the whole stream decoded here
        t1 = time.process_time()
        out = presets.pretrain_volume(data, rng, modality=modality, roi=roi, slope=raw.slope,
                                      inter=raw.inter, path=str(path))
        cpu.append(time.process_time() - t0)
        wall.append(time.perf_counter() - w0)
        read.append(t1 - t0)
        assert out.shape == tuple(roi) and out.dtype == np.float32
        del raw, data, out
    return {"cpu_s": float(np.mean(cpu)), "cpu_s_min": float(np.min(cpu)),
            "wall_s": float(np.mean(wall)), "open_cpu_s": float(np.mean(read))}


def run(workdir, *, shape=(512, 512, 300), roi=(384, 384, 96), modality: str = "ct",
        repeats: int = 3, keep: bool = False, log=print) -> dict:
    """Write the volume as .nii.gz and .nii under ``workdir`` and time both; returns the figures."""
    os.makedirs(workdir, exist_ok=True)
    vol = ct_volume(shape)
    results = {"machine": machine(),
               "shape": tuple(shape), "roi": tuple(roi), "modality": modality}
    paths = {}
    for ext in (".nii", ".nii.gz"):
        p = os.path.join(workdir, f"bench_ct{ext}")
        t = time.perf_counter()
        io.save_volume(p, vol, spacing=(0.8, 0.8, 1.5), orientation="LPS", dtype=np.int16)
        log(f"wrote {p} ({os.path.getsize(p) / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f}s")
        paths[ext] = p
    del vol
    for ext, p in paths.items():
        r = time_volume(p, modality=modality, roi=roi, repeats=repeats)
        results[ext] = r
        log(f"{ext:8s} {r['cpu_s']:.3f} CPU-s/volume (min {r['cpu_s_min']:.3f}, open/decode "
            f"{r['open_cpu_s']:.3f}), wall {r['wall_s']:.3f}s, {shape} -> ROI {tuple(roi)}")
    if not keep:
        for p in paths.values():
            os.remove(p)
    return results
