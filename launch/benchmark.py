"""Benchmarks, one subcommand each.

  python launch/benchmark.py data [--shape 512 512 300] [--roi 384 384 96] [--repeats 3] [--workdir /tmp/s2dc_bench]
  python launch/benchmark.py pretrain --config configs/ct1k.py [--set model.remat=True ...] [--steps 5]

``data``: host CPU-seconds per volume from a CT-like NIfTI (.nii.gz and .nii) to the
resized large ROI, measured in this one process with time.process_time.
``pretrain``: step time, volumes per second and peak memory of the JAX pretraining step
and of a PyTorch + MONAI step of the same shapes and losses, side by side on this machine.
Add a subcommand by writing ``add_<name>(subparsers)`` that sets ``func``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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

    config = load_config(args.config, args.set)
    validate(config, device_count=1)
    results = bench.compare(config, steps=args.steps, warmup=args.warmup, frameworks=args.frameworks)
    print(bench.format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "overrides": args.set, "results": results}, f, indent=1)
    return 0


def add_pretrain(sub) -> None:
    """The `pretrain` subcommand: the JAX step against a PyTorch + MONAI step."""
    p = sub.add_parser("pretrain", help="pretraining step time and memory, JAX vs PyTorch + MONAI")
    p.add_argument("--config", required=True, help="config file[:variant], e.g. configs/ct1k.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. --set model.remat=True")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (compilation)")
    p.add_argument("--frameworks", nargs="+", default=["jax", "torch"], choices=["jax", "torch"])
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(func=_pretrain)


SUBCOMMANDS = [add_data, add_pretrain]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
