"""Fine-tuning for classification.

    python launch/finetune_classification.py --config=configs/finetune/cc_ccii.py --workdir=runs/cc_ccii [--config.X=V ...]

Initialise from a pretraining workdir with --config.init.checkpoint=DIR, or from MONAI
weights with --config.init.torch=FILE.pt|.safetensors; --config.init.skip='("regex",)'
leaves matching parameters at their fresh values. Re-running resumes from the latest
checkpoint; the best one (by validation score) is kept in WORKDIR/best and used for
the predictions written to WORKDIR/predictions.
Several hosts: pass --coordinator_address/--num_processes/--process_id, or run under
SLURM / Open MPI, as for launch/pretrain.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.tasks import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("classification", "finetune_classification.py", "configs/finetune/cc_ccii.py")
