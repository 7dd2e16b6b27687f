"""Export weights to PyTorch/MONAI key names (see --help).

    python launch/export_torch.py --checkpoint=runs/mri6k --out=encoder.pt
    python launch/export_torch.py --checkpoint=runs/btcv/best --out=model.safetensors --what=swinunetr
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.interop.cli import main  # noqa: E402

if __name__ == "__main__":
    main("export_torch.py")
