"""Turn a downloaded dataset or folders of NIfTI files into a Decathlon datalist, or check one.

  python launch/make_datalist.py --from msd|nnunet|brats|btcv DIR --out list.json
  python launch/make_datalist.py --root DIR [--root DIR2] --out list.json [--min-side 64]
  python launch/make_datalist.py --check list.json [--out clean.json]
  python launch/make_datalist.py --root DIR --out list.json --cache-dir CACHE   # .nii.gz -> .nii once

--from reads an MSD task folder (dataset.json, imagesTr/, labelsTr/), an nnU-Net v2 raw
dataset (imagesTr/<case>_0000.nii.gz, one file per channel), BraTS case folders (2023
-t1n/-t1c/-t2w/-t2f/-seg or 2021 _t1/_t1ce/_t2/_flair/_seg; --channels, --target for
translation) or MONAI's BTCV dataset_0.json, pairs each case's channels and label and
takes the dataset's own validation split where it has one (BTCV; nnU-Net's
splits_final.json), else a seeded --val-fraction split. --root lists every NIfTI file
for pretraining.

Every file is read whole (the full gzip stream, CRC checked, and every voxel) in
--workers processes, and checked by the rules of the task (--task; the pretraining
reader applies the same ones): truncated or corrupt files, NaN/inf, constant volumes,
channel counts, image/label grids that differ, label values outside the declared set.
--headers-only keeps the fast path. Each unusable file is printed as ``SKIP path: reason``
(listing) or ``BAD path: reason`` (--check, and --from), then a summary. --check exits 1
when it finds problems; every bad input ends with one ``error:`` line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures.process import BrokenProcessPool

from s2dc_jax._cli import OneLineParser
from s2dc_jax.data import checks, datalist, layouts
from s2dc_jax.data.io import DataError


def _progress():
    """A callback printing a line to stderr every 5% of a long check (none for short ones)."""
    state = {"t0": time.perf_counter(), "bytes": 0, "bad": 0, "next": 0}

    def cb(result, done, total):
        state["bytes"] += sum(f.nbytes for f in result.facts.values())
        state["bad"] += 0 if result.ok else 1
        if total < 100 or done < state["next"]:
            return
        state["next"] = done + max(1, total // 20)
        dt = max(time.perf_counter() - state["t0"], 1e-9)
        print(f"  checked {done}/{total} entries, {state['bad']} bad, "
              f"{state['bytes'] / 1e6 / dt:.1f} MB/s", file=sys.stderr, flush=True)
    return cb


def _cache(out, cache_dir, absolute):
    splits = {}
    for s in datalist.SPLITS:
        try:
            splits[s] = datalist.cache_uncompressed(datalist.read_datalist(out, split=s), cache_dir)
        except DataError:  # a split the list does not have, or an empty one
            continue
    doc_extra = {k: v for k, v in datalist._load_doc(out).items() if k not in datalist.SPLITS}
    datalist.write_splits(out, splits, extra=doc_extra, absolute=absolute)
    print(f"uncompressed copies in {cache_dir}")


def main(argv=None, prog=None) -> int:
    """The make_datalist command (launch/make_datalist.py, s2dc-datalist); returns the exit status."""
    ap = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("what to list")
    src.add_argument("--from", dest="layout", nargs=2, metavar=("LAYOUT", "DIR"),
                     help=f"a downloaded dataset: LAYOUT is one of {', '.join(layouts.LAYOUTS)}")
    src.add_argument("--root", action="append", help="folder to scan recursively (repeatable)")
    src.add_argument("--check", metavar="LIST.json", nargs="+", help="check existing datalist(s)")
    ap.add_argument("--out", help="datalist JSON to write (with --check: the list without the bad files)")
    ap.add_argument("--headers-only", action="store_true",
                    help="read headers only: fast, but misses truncated/corrupt data, NaN and "
                         "constant volumes, and label values")
    ap.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)  # the default now
    ap.add_argument("--workers", type=int, default=None,
                    help="processes reading files (default: one per core, at most 8)")
    ap.add_argument("--task", choices=("auto",) + checks.TASKS, default=None,
                    help="rules to check by (default: pretrain for --root; for --check, from the "
                         "list's keys: label files -> segmentation, only images -> pretrain)")
    ap.add_argument("--min-side", type=int, default=None,
                    help="drop volumes whose shortest side is under this (default 16 when listing, "
                         "0 for --check; the paper used 64 for MRI)")
    ap.add_argument("--modality", choices=("ct", "mri", "pet"),
                    help="pretraining modality: also apply the reader's foreground rule (CT: some voxel "
                         "above -1000 HU; MRI: above 0)")
    ap.add_argument("--in-channels", type=int, help="--check: channels each entry must add up to")
    ap.add_argument("--val-fraction", type=float, default=None,
                    help="share of cases put in 'validation' when the dataset has no split of its "
                         "own (default 0.2 with --from, 0 with --root)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    ap.add_argument("--absolute", action="store_true", help="write absolute paths")
    ap.add_argument("--cache-dir", help="decompress .nii.gz once into this folder and list the copies")
    ap.add_argument("--data-root", help="base of relative paths for --check (default: JSON folder)")
    ap.add_argument("--split", default=None, help="--check only this split (default: all present)")
    br = ap.add_argument_group("--from brats / nnunet")
    br.add_argument("--channels", help="input channels in order: BraTS names (default t1,t1ce,t2,flair; "
                                       "2023 names t1n,t1c,t2w,t2f accepted), or nnU-Net channel "
                                       "names or indices (default: all)")
    br.add_argument("--target", help="BraTS translation target channel (e.g. t2): entries get "
                                     "'target' instead of 'label'")
    br.add_argument("--fold", type=int, default=0, help="nnU-Net splits_final.json fold")
    args = ap.parse_args(argv)
    verify = not args.headers_only
    try:
        if sum(bool(x) for x in (args.layout, args.root, args.check)) != 1:
            ap.error("give one of --from LAYOUT DIR, --root DIR or --check LIST.json")
        if args.check:
            if args.out:
                datalist.ensure_writable(args.out)
            rep = datalist.check_datalist(
                tuple(args.check), root=args.data_root, split=args.split, verify=verify,
                min_side=args.min_side or 0, workers=args.workers, task=args.task or "auto",
                modality=args.modality, in_channels=args.in_channels, progress=_progress())
            for path, reason in rep.problems:
                print(f"BAD {path}: {reason}")
            print(rep.rate())
            print(f"checked {', '.join(args.check)}: {rep.summary()}")
            if args.out:
                datalist.write_clean(rep, args.out, absolute=args.absolute)
                n_drop = sum(len(v) for v in rep.dropped.values())
                print(f"wrote {args.out}: {rep.cases_ok} entries, {n_drop} left out")
            return 1 if rep.problems else 0
        if not args.out:
            ap.error("give --out LIST.json")
        if args.layout:
            layout, root = args.layout
            chans = [c for c in args.channels.split(",") if c] if args.channels else None
            ds, rep = layouts.make_datalist_from(
                layout, root, args.out, val_fraction=0.2 if args.val_fraction is None else args.val_fraction,
                seed=args.seed, verify=verify, workers=args.workers, channels=chans,
                target=args.target, fold=args.fold, absolute=args.absolute, progress=_progress())
            lines = layouts.describe(ds, rep, args.out)
            print("\n".join(lines[:-1]))
            if args.cache_dir:
                _cache(args.out, args.cache_dir, args.absolute)
            print(lines[-1])
            return 0
        if args.task not in (None, "pretrain", "any"):
            ap.error("--root lists images only: --task pretrain (default) or any")
        min_side = 16 if args.min_side is None else args.min_side
        rep = datalist.make_datalist(args.root, args.out, min_side=min_side, verify=verify,
                                     workers=args.workers, val_fraction=args.val_fraction or 0.0,
                                     seed=args.seed, absolute=args.absolute,
                                     task=args.task or "pretrain", modality=args.modality,
                                     progress=_progress())
        for path, reason in rep.problems:
            print(f"SKIP {path}: {reason}")
        for line in layouts.ranges(rep):
            print(line)
        print(rep.rate())
        if args.cache_dir:
            _cache(args.out, args.cache_dir, args.absolute)
        print(f"wrote {args.out}: {rep.summary()}")
        return 0
    except (DataError, ValueError, OSError, BrokenProcessPool) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def script() -> None:
    """Entry point of the installed ``s2dc-datalist`` command."""
    sys.exit(main(prog="s2dc-datalist"))
