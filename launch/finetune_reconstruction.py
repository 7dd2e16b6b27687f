"""Fine-tuning for reconstruction: launch/finetune.py, checking that the config is a reconstruction config.

    python launch/finetune_reconstruction.py --config=configs/finetune/udpet.py --workdir=runs/udpet

Kept so that older commands work; see launch/finetune.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.training import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("finetune", "finetune_reconstruction.py", "configs/finetune/udpet.py", expect_task="reconstruction",
             doc=cli.FINETUNE_DOC)
