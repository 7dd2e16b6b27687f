"""Turn a downloaded dataset or folders of NIfTI files into a datalist, or check one (see --help).

    python launch/make_datalist.py --from msd|nnunet|brats|btcv DIR --out list.json
    python launch/make_datalist.py --root DIR --out list.json [--min-side 64]
    python launch/make_datalist.py --check list.json [--out clean.json]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.data.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="make_datalist.py"))
