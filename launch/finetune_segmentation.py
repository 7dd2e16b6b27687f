"""Fine-tuning for segmentation: launch/finetune.py, checking that the config is a segmentation config.

    python launch/finetune_segmentation.py --config=configs/finetune/btcv.py --workdir=runs/btcv

Kept so that older commands work; see launch/finetune.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.training import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("finetune", "finetune_segmentation.py", "configs/finetune/btcv.py", expect_task="segmentation",
             doc=cli.FINETUNE_DOC)
