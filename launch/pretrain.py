"""S2DC pretraining.

    python launch/pretrain.py --config=configs/mri6k.py --workdir=runs/mri6k [--config.batch_size=4 ...]

Re-running the same command on the same workdir resumes from its latest checkpoint.
SIGTERM or Ctrl-C saves a checkpoint and exits with status 143 / 130 (a second Ctrl-C
stops at once). Several hosts: pass --coordinator_address/--num_processes/--process_id,
or run under SLURM / Open MPI, where JAX reads the cluster from the environment.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from s2dc_jax.training import cli  # noqa: E402

if __name__ == "__main__":
    cli.main("pretrain", "pretrain.py", "configs/mri6k.py", doc=cli.PRETRAIN_DOC)
