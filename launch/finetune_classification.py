"""Fine-tuning for classification: launch/finetune.py, checking that the config is a classification config.

    python launch/finetune_classification.py --config=configs/finetune/cc_ccii.py --workdir=runs/cc_ccii

Kept so that older commands work; see launch/finetune.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.training import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("finetune", "finetune_classification.py", "configs/finetune/cc_ccii.py", expect_task="classification",
             doc=cli.FINETUNE_DOC)
