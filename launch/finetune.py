"""Fine-tuning: segmentation, classification, translation or reconstruction (the config's `task`).

    python launch/finetune.py --config=configs/finetune/btcv.py --workdir=runs/btcv \
        --config.data.datalist=list.json [--config.init.checkpoint=runs/ct1k] [--config.X=V ...]

Initialise from a pretraining workdir with --config.init.checkpoint=DIR, or from MONAI
weights with --config.init.torch=FILE.pt|.safetensors; --config.init.skip='("regex",)'
leaves parameters whose flax path matches at their fresh values. Re-running resumes
from the latest checkpoint; the best one (by validation score) is kept in WORKDIR/best
and its predictions are written to WORKDIR/predictions. SIGTERM or Ctrl-C saves and
exits with status 143 / 130. Several hosts: as for launch/pretrain.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.training import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("finetune", "finetune.py", "configs/finetune/btcv.py", doc=cli.FINETUNE_DOC)
