"""Step time, volumes per second and peak memory of the pretraining step, JAX vs PyTorch + MONAI.

Each framework runs in its own child process (clean peak-memory figures) on the same
config, the same random batches and the same device kind; the parent prints both and the
ratio. ``loop`` runs the same JAX step inside the real training loop (``training.loop.run``:
phantom NIfTI files through the grain pipeline, batches copied while the step runs, metrics
fetched on log steps only, progress bar, final checkpoint), so its time against ``jax`` is
the loop's overhead per step. A ``baseline`` (config overrides, e.g. the old step's
``model.crop_group`` and ``model.remat_policy``) adds the bare JAX step of that config to the same run,
so old and new are timed side by side. The JAX rows give achieved FLOP/s from XLA's cost
analysis of the step (the model's FLOPs, recomputation not counted) and, where the device's
peak is known or given, the MFU. Used by ``launch/benchmark.py pretrain``.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _batches(config, n, seed=0):
    from s2dc_jax.data.view_params import sample_view_params

    rng = np.random.default_rng(seed)
    x, y, z = config.data.roi_large
    crops = (x // config.data.crop_size) * (y // config.data.crop_size)
    out = []
    for _ in range(n):
        views = [sample_view_params(rng, crops) for _ in range(config.batch_size)]
        b = {k: np.stack([v[k] for v in views]) for k in views[0]}
        b["image"] = rng.uniform(0, 1, (config.batch_size, x, y, z, 1)).astype(np.float32)
        out.append(b)
    return out


# Dense peak FLOP/s per device (spec sheets), by compute dtype: what MFU is measured against.
# float32 on these GPUs is TF32 tensor-core math (XLA's default matmul precision).
# The first name found in the device kind wins: more specific names first.
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 494.5},
    "H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "H100": {"bfloat16": 989.0, "float32": 494.5},   # SXM
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "L40S": {"bfloat16": 362.0, "float32": 183.0},
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The table's peak for ``device_kind`` (matched by name) in ``dtype``; None when unknown."""
    for name, by_dtype in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return by_dtype.get(dtype)
    return None


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_jax(config, steps: int, warmup: int, profile: int = 0) -> dict:
    """Median seconds per step of the jit'd shard_map step on all local devices.

    ``profile``: after the timed steps, run this many more under the JAX profiler and add
    ``"profile"``, the step's time and FLOPs by part (bench/profile.py).
    """
    import jax

    from s2dc_jax.tasks.pretrain import PretrainTask
    from s2dc_jax.training.loop import compile_step, create_state
    from s2dc_jax.training.mesh import batch_sharding, make_mesh, to_global

    mesh = make_mesh(config.get("num_devices", 0))
    n_dev = mesh.devices.size
    task = PretrainTask(config)
    state = create_state(task, mesh)
    step = compile_step(task, mesh)
    batches = [to_global(b, batch_sharding(mesh)) for b in _batches(config, 2)]
    t_compile = time.perf_counter()
    for i in range(warmup):
        state, m = step(state, batches[i % 2])
        jax.block_until_ready(m)
    t_compile = time.perf_counter() - t_compile
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batches[i % 2])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform == "gpu" else None
    peak = stats["peak_bytes_in_use"] if stats else _peak_rss_bytes()
    out = {"framework": "jax", "device": f"{n_dev} x {dev.device_kind}",
           "device_kind": dev.device_kind, "step_s": float(np.median(times)), "warmup_s": t_compile,
           "peak_bytes": int(peak), "peak_kind": "device" if stats else "host RSS", "loss": float(m["loss"]),
           "flops_per_device": _step_flops(config, n_dev)}
    if profile:
        from s2dc_jax.bench.profile import profile_table

        compiled = step.lower(state, batches[0]).compile()  # the executable the steps ran (jit's cache)
        holder = {"state": state}

        def one_step():
            holder["state"], metrics = compiled(holder["state"], batches[0])
            jax.block_until_ready(metrics)

        out["profile"] = profile_table(compiled, one_step, steps=profile)
    return out


def _step_flops(config, n_devices: int) -> float:
    """The model's FLOPs of one step on one device (XLA cost analysis of the ungrouped step, not run)."""
    from s2dc_jax.bench.memory import model_flops, per_device_config

    return model_flops(per_device_config(config, config.batch_size // n_devices))


def time_loop(config, steps: int, warmup: int) -> dict:
    """Seconds per step of ``training.loop.run`` on phantoms: the mean over the steps after the first.

    The loop logs the first step on its own (it holds the compilation), so one log line at the
    last step covers the timed steps: metrics reach the host once, as on a log step of a real run.
    ``warmup`` is reported but the loop always times from its second step.
    """
    import tempfile

    import jax

    from s2dc_jax.tasks.pretrain import PretrainTask
    from s2dc_jax.training import loop

    config = config.copy_and_resolve_references()
    # Logs at step 1 (the compile), at steps + 1 (the timed steps 2..steps+1) and at the last step,
    # which also saves the checkpoint: the timed window holds no checkpoint save.
    config.total_steps = steps + 2
    config.log_every = steps + 1
    config.checkpoint_every = steps + 3
    config.eval_every = config.image_every = 0
    config.data.datalist = ""
    config.data.phantoms = max(int(config.data.phantoms), config.batch_size)
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        loop.run(PretrainTask(config), workdir)
        total = time.perf_counter() - t0
        logged = [json.loads(line.split(" ", 4)[4]) for line in (Path(workdir) / "log.txt").read_text().splitlines()
                  if line.split(" ")[2:4] == ["step", str(steps + 1)]]
    step_s = logged[0]["train/step_seconds"]
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform == "gpu" else None
    peak = stats["peak_bytes_in_use"] if stats else _peak_rss_bytes()
    n_dev = int(config.get("num_devices", 0)) or jax.device_count()
    return {"framework": "jax loop", "device": f"{n_dev} x {dev.device_kind}",
            "device_kind": dev.device_kind, "step_s": step_s, "warmup_s": total - steps * step_s,
            "peak_bytes": int(peak), "peak_kind": "device" if stats else "host RSS",
            "loss": logged[0]["train/loss"], "flops_per_device": _step_flops(config, n_dev)}


def time_torch(config, steps: int, warmup: int) -> dict:
    """Median seconds per step of the PyTorch + MONAI step on one device."""
    import torch

    from s2dc_jax.bench.torch_step import TorchS2DC

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = TorchS2DC(config, dev)
    batches = _batches(config, 2)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for i in range(warmup):
        loss = model.step(batches[i % 2])
        sync()
    t_warm = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = model.step(batches[i % 2])
        sync()
        times.append(time.perf_counter() - t0)
    gpu = dev == "cuda"
    peak = torch.cuda.max_memory_allocated() if gpu else _peak_rss_bytes()
    name = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
    return {"framework": "torch+monai", "device": name, "step_s": float(np.median(times)),
            "warmup_s": t_warm, "peak_bytes": int(peak), "peak_kind": "device" if gpu else "host RSS",
            "loss": float(loss)}


def child(framework: str, config_json: str, steps: int, warmup: int, profile: int = 0) -> None:
    """Entry of one child process: time one framework, print one JSON line."""
    import ml_collections

    config = ml_collections.ConfigDict(json.loads(config_json))
    for k in ("depths", "num_heads"):
        config.model[k] = tuple(config.model[k])
    config.data.roi_large = tuple(config.data.roi_large)
    if framework == "jax":
        res = time_jax(config, steps, warmup, profile)
    else:
        res = {"loop": time_loop, "torch": time_torch}[framework](config, steps, warmup)
    print("RESULT " + json.dumps(res), flush=True)


def compare(config, steps: int = 5, warmup: int = 2, frameworks=("jax", "loop", "torch"),
            baseline=None, baseline_label: str = "baseline", peak: float | None = None,
            profile: int = 0) -> list[dict]:
    """Run each framework in a child process on ``config``; return their result dicts.

    ``baseline``: a second config whose bare JAX step runs first, labelled ``jax (baseline_label)``.
    ``peak``: the device's peak TFLOP/s for the MFU (default: :data:`PEAK_TFLOPS` by device name).
    ``profile``: profile this many steps of each bare JAX step (``result["profile"]``).
    """
    runs = [(fw, config, None) for fw in frameworks]
    if baseline is not None:  # last: an old step that does not fit (out of memory) costs no other row
        runs.append(("jax", baseline, f"jax ({baseline_label})"))
    results = []
    for fw, cfg, label in runs:
        code = ("import sys; from s2dc_jax.bench.pretrain import child; "
                "child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))")
        proc = subprocess.run([sys.executable, "-c", code, fw, cfg.to_json(), str(steps), str(warmup), str(profile)],
                              capture_output=True, text=True, env=os.environ.copy())
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
            print(f"{label or fw} failed (exit {proc.returncode}); its last lines:\n{proc.stderr[-3000:]}",
                  file=sys.stderr)
            results.append({"framework": label or fw, "failed": f"exit {proc.returncode}: {tail[0][:200]}"})
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        r["framework"] = label or r["framework"]
        r["volumes_per_s"] = cfg.batch_size / r["step_s"]
        if r.get("flops_per_device"):
            r["tflops_per_s"] = r["flops_per_device"] / r["step_s"] / 1e12
            p = peak or peak_tflops(r.get("device_kind", ""), cfg.model.dtype)
            r["mfu"] = r["tflops_per_s"] / p if p else None
            r["peak_tflops"] = p
        results.append(r)
    return results


def format_table(results: list[dict]) -> str:
    rows = ["| framework | device | step (s) | volumes/s | TFLOP/s (MFU) | peak memory (GiB) | first steps (s) |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        if "failed" in r:
            rows.append(f"| {r['framework']} | failed: {r['failed']} | | | | | |")
            continue
        rate = ""
        if r.get("tflops_per_s"):
            rate = f"{r['tflops_per_s']:.3g}" + (f" ({r['mfu']:.1%})" if r.get("mfu") else "")
        rows.append(f"| {r['framework']} | {r['device']} | {r['step_s']:.3f} | {r['volumes_per_s']:.2f} | {rate} | "
                    f"{r['peak_bytes'] / 2**30:.2f} ({r['peak_kind']}) | {r['warmup_s']:.1f} |")
    by = {r["framework"]: r for r in results if "failed" not in r}
    for r in by.values():
        if r["framework"].startswith("jax (") and "jax" in by:
            rows.append(f"\nThe step is {r['step_s'] / by['jax']['step_s']:.2f}x the speed of {r['framework']}.")
    if "jax" in by and "jax loop" in by:
        over = by["jax loop"]["step_s"] - by["jax"]["step_s"]
        rows.append(f"\nThe training loop adds {over * 1e3:+.0f} ms per step to the bare step "
                    f"({over / by['jax']['step_s']:+.1%}).")
    if "jax" in by and "torch+monai" in by:
        rows.append(f"\nJAX step is {by['torch+monai']['step_s'] / by['jax']['step_s']:.2f}x "
                    f"the speed of the PyTorch + MONAI step.")
    return "\n".join(rows)
