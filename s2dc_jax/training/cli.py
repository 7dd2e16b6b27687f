"""The body of the training entry points (launch/pretrain.py, launch/finetune.py and its aliases).

Flags: ``--config`` (an ml_collections config file[:variant] with ``--config.X=V``
overrides), ``--workdir``, and the multi-host flags. User mistakes end in one line on
stderr and exit status 2; a preempted run (SIGTERM, Ctrl-C) saves, says so and exits with
128 + the signal number (143, 130), so a scheduler does not take it for a finished job.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import signal
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """``configs/x.py[:variant]`` -> its ``get_config(variant)``, then ``KEY=VALUE`` overrides.

    For scripts and tests outside absl (``launch/benchmark.py``); values are Python literals.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_s2dc_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    c = module.get_config(arg or None)
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            if not isinstance(node, ml_collections.ConfigDict) or p not in node:
                raise ValueError(f"config has no field {key!r}")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"config has no field {key!r}")
        node[leaf] = tuple(parsed) if isinstance(parsed, list) else parsed
    return c


def _task(kind: str, config):
    if kind == "pretrain":
        from s2dc_jax.tasks.pretrain import PretrainTask
        return PretrainTask(config)
    from s2dc_jax.tasks.finetune import FinetuneTask
    return FinetuneTask(config)


def main(kind: str, script: str, example: str, expect_task: str | None = None) -> None:
    """Define the flags and run ``kind`` ('pretrain' or 'finetune') through the training loop."""
    config_flags.DEFINE_config_file("config", None, f"Config file, e.g. {example}[:tiny].", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints/, log.txt, config.json, TensorBoard events "
                                         "(and best/, predictions/ for fine-tuning).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several hosts.")
    flags.DEFINE_integer("num_processes", None, "Number of processes (hosts), with --coordinator_address.")
    flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator_address.")
    flags.mark_flags_as_required(["config", "workdir"])

    def fail(msg: str) -> None:
        print(f"{script}: error: {msg}", file=sys.stderr)
        sys.exit(2)

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
        config = flags.FLAGS.config
        if expect_task is not None and config.get("task") != expect_task:
            fail(f"the config is for task {config.get('task', 'pretrain')!r}, this script runs {expect_task!r} "
                 f"(launch/finetune.py takes the task from the config)")
        from s2dc_jax.data.io import DataError
        from s2dc_jax.data.pipeline import BadRecordError
        from s2dc_jax.training import loop

        f = flags.FLAGS
        loop.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
        try:
            result = loop.run(_task(kind, config), f.workdir)
        except (*USER_ERRORS, DataError, BadRecordError, loop.TrainingError) as e:
            fail(str(e))
        except KeyboardInterrupt:
            print(f"{script}: interrupted again: stopped without saving", file=sys.stderr)
            sys.exit(128 + signal.SIGINT)
        if result["preempted"]:
            sys.exit(128 + signal.Signals[result["preempted"]].value)

    app.run(run)
