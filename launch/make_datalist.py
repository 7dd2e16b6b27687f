"""Turn folders of NIfTI files into a Decathlon datalist, or check an existing one.

  python launch/make_datalist.py --root DIR [--root DIR2] --out list.json [--min-side 64]
  python launch/make_datalist.py --check list.json [--data-root DIR]
  python launch/make_datalist.py --root DIR --out list.json --cache-dir CACHE   # .nii.gz -> .nii once

Listing reads headers only (add --verify to decode every voxel); --check reads every file.
Each unusable file is printed as ``SKIP path: reason`` (listing) or ``BAD path: reason``
(--check), then a one-line summary. Exit status 1 when --check finds problems.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s2dc_jax.data import datalist  # noqa: E402
from s2dc_jax.data.io import DataError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", action="append", help="folder to scan recursively (repeatable)")
    ap.add_argument("--out", help="datalist JSON to write")
    ap.add_argument("--min-side", type=int, default=None,
                    help="drop volumes whose shortest side is under this (default 16 when listing, "
                         "0 for --check; the paper used 64 for MRI)")
    ap.add_argument("--verify", action="store_true", help="read every voxel while listing (slow)")
    ap.add_argument("--val-fraction", type=float, default=0.0, help="share put in 'validation'")
    ap.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    ap.add_argument("--absolute", action="store_true", help="write absolute paths")
    ap.add_argument("--workers", type=int, default=1, help="processes reading files")
    ap.add_argument("--cache-dir", help="decompress .nii.gz once into this folder and list the copies")
    ap.add_argument("--check", metavar="LIST.json", nargs="+", help="validate existing datalist(s)")
    ap.add_argument("--data-root", help="base of relative paths for --check (default: JSON folder)")
    ap.add_argument("--split", default="training", help="split to check")
    ap.add_argument("--headers-only", action="store_true", help="--check reads headers only")
    args = ap.parse_args(argv)
    try:
        if args.check:
            rep = datalist.check_datalist(tuple(args.check), root=args.data_root, split=args.split,
                                          verify=not args.headers_only, min_side=args.min_side or 0,
                                          workers=args.workers)
            for path, reason in rep.problems:
                print(f"BAD {path}: {reason}")
            print(f"checked {', '.join(args.check)}: {rep.summary()}")
            return 1 if rep.problems else 0
        if not args.root or not args.out:
            ap.error("give --root DIR and --out LIST.json, or --check LIST.json")
        min_side = 16 if args.min_side is None else args.min_side
        rep = datalist.make_datalist(args.root, args.out, min_side=min_side, verify=args.verify,
                                     workers=args.workers, val_fraction=args.val_fraction,
                                     seed=args.seed, absolute=args.absolute)
        for path, reason in rep.problems:
            print(f"SKIP {path}: {reason}")
        if args.cache_dir:
            recs = datalist.read_datalist(args.out)
            try:
                val = datalist.read_datalist(args.out, split="validation")
            except DataError:  # no validation split was asked for
                val = []
            datalist.write_datalist(datalist.cache_uncompressed(recs, args.cache_dir), args.out,
                                    validation=datalist.cache_uncompressed(val, args.cache_dir),
                                    absolute=args.absolute)
            print(f"uncompressed copies in {args.cache_dir}")
        print(f"wrote {args.out}: {rep.summary()}")
        return 0
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
