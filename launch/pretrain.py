"""S2DC pretraining.

    python launch/pretrain.py --config=configs/mri6k.py --workdir=runs/mri6k [--config.batch_size=4 ...]

Re-running the same command on the same workdir resumes from its latest checkpoint.
Several hosts: pass --coordinator_address/--num_processes/--process_id, or run under
SLURM / Open MPI, where JAX reads the cluster from the environment.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mri6k.py[:tiny].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, config.json.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several hosts.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts), with --coordinator_address.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator_address.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    from s2dc_jax.training import loop

    loop.maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
    try:
        metrics = loop.run(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, loop.TrainingError) as e:
        print(f"pretrain.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    if metrics:
        print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    app.run(main)
