"""The shared body of the four launch/finetune_<task>.py scripts (flags, errors as one line, summary)."""
from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_RUNNERS = {
    "segmentation": "s2dc_jax.tasks.segmentation",
    "classification": "s2dc_jax.tasks.classification",
    "translation": "s2dc_jax.tasks.regression",
    "reconstruction": "s2dc_jax.tasks.regression",
}


def main(task: str, script: str, example: str) -> None:
    """Defines --config/--workdir, runs the task's fine-tuning and exits non-zero with one line on bad input."""
    config_flags.DEFINE_config_file("config", None, f"Config file, e.g. {example}[:tiny].", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints, best/, predictions/, log.txt, config.json.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several hosts.")
    flags.DEFINE_integer("num_processes", None, "Number of processes (hosts), with --coordinator_address.")
    flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator_address.")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
        import importlib

        config = flags.FLAGS.config
        if config.task != task:
            print(f"{script}: error: the config is for task {config.task!r}, this script runs {task!r}",
                  file=sys.stderr)
            sys.exit(2)
        from s2dc_jax.data.io import DataError
        from s2dc_jax.training.loop import maybe_initialize_distributed

        f = flags.FLAGS
        maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
        module = importlib.import_module(_RUNNERS[task])
        try:
            result = module.run(config, flags.FLAGS.workdir)
        except (ValueError, FileNotFoundError, DataError) as e:
            print(f"{script}: error: {e}", file=sys.stderr)
            sys.exit(2)
        if jax.process_index() != 0:
            return
        for step, m in result["history"]:
            print(f"eval step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))
        if "best" in result:
            print(f"best (step {result['best_step']}): " + ", ".join(f"{k}={v:.4g}" for k, v in result["best"].items()))

    app.run(run)
