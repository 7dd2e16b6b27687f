"""Benchmarks, one subcommand each.

  python launch/benchmark.py data [--shape 512 512 300] [--roi 384 384 96] [--repeats 3] [--workdir /tmp/s2dc_bench]
  python launch/benchmark.py pretrain --config configs/ct1k.py [--set model.crop_group=1 ...] [--steps 5]
      [--frameworks jax loop torch] [--baseline model.remat_policy=none ...] [--peak-tflops T] [--profile 2]
  python launch/benchmark.py memory --config configs/ct1k.py [--set model.dtype=bfloat16] [--parts] [--buffers 10]

``data``: host CPU-seconds per volume from a CT-like NIfTI (.nii.gz and .nii) to the
resized large ROI, measured in this one process with time.process_time.
``pretrain``: step time, volumes per second and peak memory of the JAX pretraining step, of
the same step inside the real training loop, and of a PyTorch + MONAI step of the same
shapes and losses, side by side on this machine.
``memory``: XLA's memory and FLOP analysis of the compiled (not run) pretraining step for one
device at the config's shapes, on the backend at hand; no accelerator needed.
Add a subcommand by writing ``add_<name>(subparsers)`` that sets ``func``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s2dc_jax._cli import OneLineParser  # noqa: E402


def _data(args) -> int:
    from s2dc_jax.data import benchmark
    workdir = args.workdir or tempfile.mkdtemp(prefix="s2dc_bench_")
    res = benchmark.run(workdir, shape=tuple(args.shape), roi=tuple(args.roi),
                        modality=args.modality, repeats=args.repeats, keep=args.keep)
    print(json.dumps(res, indent=1))
    return 0


def add_data(sub) -> None:
    """The `data` subcommand: host cost per pretraining volume."""
    p = sub.add_parser("data", help="host CPU-seconds per volume, file -> large ROI")
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="volume size")
    p.add_argument("--roi", type=int, nargs=3, default=[384, 384, 96], help="large ROI")
    p.add_argument("--modality", default="ct", choices=["ct", "mri", "pet"])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per file format")
    p.add_argument("--workdir", help="where the test files go (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the written files")
    p.set_defaults(func=_data)


def _pretrain(args) -> int:
    from s2dc_jax.bench import pretrain as bench
    from s2dc_jax.tasks.pretrain_config import validate
    from s2dc_jax.training.cli import load_config

    if args.profile < 0:
        raise ValueError(f"--profile {args.profile}: give the number of steps to profile (0 = none)")
    if args.profile and "jax" not in args.frameworks and not args.baseline:
        raise ValueError("--profile profiles the bare JAX step: add jax to --frameworks")
    config = load_config(args.config, args.set)
    validate(config, device_count=1)
    baseline = None
    if args.baseline:
        baseline = load_config(args.config, args.set + args.baseline)
        validate(baseline, device_count=1)
    results = bench.compare(config, steps=args.steps, warmup=args.warmup, frameworks=args.frameworks,
                            baseline=baseline, baseline_label=" ".join(args.baseline), peak=args.peak_tflops,
                            profile=args.profile)
    print(bench.format_table(results))
    for r in results:
        if r.get("profile"):
            from s2dc_jax.bench.profile import format_table

            print(f"\nwhere the time of {r['framework']} goes, {args.profile} steps under the JAX profiler:")
            print(format_table(r["profile"], r["step_s"], r.get("peak_tflops")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "overrides": args.set, "baseline": args.baseline,
                       "results": results}, f, indent=1)
    return 0


def _config_flags(p, example: str) -> None:
    """--config and --set, the same for every subcommand that takes a pretraining config."""
    p.add_argument("--config", required=True, help="config file[:variant], e.g. configs/ct1k.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"config override, repeatable, e.g. --set {example}")


def add_pretrain(sub) -> None:
    """The `pretrain` subcommand: the JAX step against a PyTorch + MONAI step."""
    p = sub.add_parser("pretrain", help="pretraining step time and memory, JAX vs PyTorch + MONAI")
    _config_flags(p, "model.crop_group=1")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (compilation)")
    p.add_argument("--frameworks", nargs="+", default=["jax", "loop", "torch"], choices=["jax", "loop", "torch"],
                   help="jax: the bare compiled step; loop: the same step in the real training loop "
                        "(phantoms, grain, logging); torch: a PyTorch + MONAI step of the same math")
    p.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                   help="also time the bare JAX step with these overrides on top of --set, in the same run "
                        "(repeatable), e.g. the step before crop grouping: --baseline model.crop_group=16 "
                        "--baseline model.remat_policy=none")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for the MFU column "
                   "(default: known GPUs by name, s2dc_jax/bench/pretrain.py PEAK_TFLOPS; e.g. 0.157 for 2 cores)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also run N steps of each bare JAX step under the JAX profiler and print its time and "
                        "FLOPs by part (patch embedding, attention per stage, ..., backward of each, optimiser)")
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(func=_pretrain)


def _memory(args) -> int:
    from s2dc_jax._cli import load_config
    from s2dc_jax.bench import memory
    from s2dc_jax.tasks.pretrain_config import validate

    config = load_config(args.config, args.set)
    validate(config, device_count=1)
    if config.batch_size % args.per_device_batch:
        raise ValueError(f"--per-device-batch {args.per_device_batch} does not divide config.batch_size "
                         f"{config.batch_size}")
    res = memory.analyse(config, args.per_device_batch)
    label = " ".join([args.config, *args.set])
    print(f"{res['backend']} backend, XLA memory analysis of the compiled step, one device of "
          f"{config.batch_size // args.per_device_batch} for global batch {config.batch_size}:")
    print(memory.TABLE_HEAD)
    print(memory.format_report(label, res))
    print(f"FLOPs: {res['model_flops'] / 1e12:.3f} TFLOP per device per step (model, without recomputation); "
          f"the compiled step's own count {res['flops'] / 1e12:.3f} TFLOP counts each loop body once")
    if args.parts:
        print("\nthe step's pieces compiled alone (peak GiB):")
        for name, m in memory.parts(config, args.per_device_batch):
            print(f"  {name}: {m['peak'] / memory.GIB:.2f} (temporaries {m['temp'] / memory.GIB:.2f})")
    if args.buffers:
        print(f"\n{args.buffers} largest values in the optimised module (not all alive at once):")
        for size, name in memory.largest_values(res["compiled"], args.buffers):
            print(f"  {size / 2**20:10.1f} MiB  {name}")
    if args.json:
        out = {k: v for k, v in res.items() if k != "compiled"}
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "overrides": args.set, **out}, f, indent=1)
    return 0


def add_memory(sub) -> None:
    """The `memory` subcommand: XLA's estimate of the pretraining step's device memory and FLOPs."""
    p = sub.add_parser("memory", help="compile the pretraining step (no run): memory and FLOPs per device")
    _config_flags(p, "model.dtype=bfloat16")
    p.add_argument("--per-device-batch", type=int, default=1, help="volumes per device (default 1)")
    p.add_argument("--parts", action="store_true", help="also compile the student, teacher and heads alone")
    p.add_argument("--buffers", type=int, default=0, metavar="K", help="list the K largest values of the module")
    p.add_argument("--json", help="also write the numbers here")
    p.set_defaults(func=_memory)


SUBCOMMANDS = [add_data, add_pretrain, add_memory]


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
