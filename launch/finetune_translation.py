"""Fine-tuning for translation: launch/finetune.py, checking that the config is a translation config.

    python launch/finetune_translation.py --config=configs/finetune/brats23_t1_t2.py --workdir=runs/brats23_t1_t2

Kept so that older commands work; see launch/finetune.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.training import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("finetune", "finetune_translation.py", "configs/finetune/brats23_t1_t2.py", expect_task="translation",
             doc=cli.FINETUNE_DOC)
