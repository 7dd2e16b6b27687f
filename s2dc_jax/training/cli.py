"""The body of the training entry points (launch/pretrain.py, launch/finetune.py and its aliases).

Flags: ``--config`` (an ml_collections config file[:variant] with ``--config.X=V``
overrides), ``--workdir``, and the multi-host flags. User mistakes end in one line on
stderr and exit status 2; a preempted run (SIGTERM, Ctrl-C) saves, says so and exits with
128 + the signal number (143, 130), so a scheduler does not take it for a finished job.
"""
from __future__ import annotations

import difflib
import re
import signal
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from s2dc_jax._cli import fail, load_config, parse_with_help, quiet_libraries, resolve_config, use_compilation_cache

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


def _task(kind: str, config, explicit, workdir=None):
    if kind == "pretrain":
        from s2dc_jax.tasks.pretrain import PretrainTask
        return PretrainTask(config)
    from s2dc_jax.tasks.finetune import FinetuneTask
    return FinetuneTask(config, explicit=explicit, workdir=workdir)


def explicit_fields(argv) -> set[str]:
    """Config keys set on the command line: ``--config.model.window_size=4`` -> ``model.window_size``."""
    return {a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")}


def _config_keys(tree, prefix="") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _config_keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [f"{prefix}{k}"]
    return out


def _bad_override(config_value: str, argv) -> str | None:
    """The first ``--config.KEY=`` of argv that the config does not have, with the closest names."""
    try:
        keys = _config_keys(load_config(config_value))
    except Exception:  # noqa: BLE001  the config itself is broken: reported elsewhere
        return None
    for key in explicit_fields(argv):
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=2, cutoff=0.6)
            if not close:  # the right name in another block: match the last component
                leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
                close = [leaf[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaf), n=2)]
            hint = f"; did you mean {' or '.join('--config.' + c for c in close)}?" if close else ""
            return f"--config.{key}: the config has no field {key!r}{hint} (fields: docs/config.md)"
    return None


def parse_flags(script: str, argv: list[str]) -> list[str]:
    """absl flag parsing where every mistake (config file, variant, field, value) is one line and exit 2."""
    argv = list(argv)
    config_value = None
    try:
        for i, a in enumerate(argv):
            if a.startswith("--config="):
                argv[i] = "--config=" + resolve_config(a[len("--config="):])
                config_value = argv[i][len("--config="):]
        return parse_with_help(flags.FLAGS, argv)
    except FileNotFoundError as e:
        fail(script, str(e))
    except Exception as e:  # noqa: BLE001  absl wraps some config errors, raises others as they are
        msg = (_bad_override(config_value, argv) if config_value else None) or _one_line(e)
        fail(script, msg)


def _one_line(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    text = str(e).strip() or type(e).__name__
    if "Traceback (most recent call last)" in text:  # ml_collections puts the config file's traceback in
        last = re.findall(r"^(\w+(?:Error|Exception)): (.+)$", text, flags=re.M)
        if last:
            return f"--config: {last[-1][1]}"
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text = f"{text}: {str(cause).strip()}"
    return " ".join(text.split())


def main(kind: str, script: str, example: str, expect_task: str | None = None, doc: str = "") -> None:
    """Define the flags and run ``kind`` ('pretrain' or 'finetune') through the training loop."""
    config_flags.DEFINE_config_file("config", None, f"Config file or name, e.g. {example}[:tiny] (fields and "
                                    "defaults: docs/config.md); override any field with --config.FIELD=VALUE.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints/, log.txt, config.json, TensorBoard events "
                                         "(and best/, predictions/ for fine-tuning).")
    flags.DEFINE_bool("print_config", False, "Print the resolved config and exit.")
    flags.DEFINE_bool("dry_run", False, "Check the config and every datalist entry's header, compile and time one "
                                        "step, print the per-device batch and memory estimate, and exit.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several hosts.")
    flags.DEFINE_integer("num_processes", None, "Number of processes (hosts), with --coordinator_address.")
    flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator_address.")
    flags.DEFINE_string("compilation_cache", None, "Folder of XLA's persistent compilation cache: a run of a config "
                                                   "compiled before (a resume, the run after --dry_run) loads its "
                                                   "step instead of compiling it. Default: $JAX_COMPILATION_CACHE_DIR, "
                                                   "else ~/.cache/s2dc_jax/xla; '' turns it off.")
    for name in ("config", "workdir", "print_config", "dry_run", "coordinator_address", "num_processes", "process_id",
                 "compilation_cache"):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])  # listed by --help
    if doc:
        sys.modules["__main__"].__doc__ = doc  # --help's text, also for the installed s2dc-* commands

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        quiet_libraries()
        f = flags.FLAGS
        config = f.config
        if config is None:
            fail(script, "--config is required (a file such as configs/mri6k.py, or a name such as mri6k)")
        if expect_task is not None and config.get("task") != expect_task:
            fail(script, f"the config is for task {config.get('task', 'pretrain')!r}, this script runs "
                         f"{expect_task!r} (launch/finetune.py takes the task from the config)")
        from s2dc_jax.data.io import DataError
        from s2dc_jax.data.pipeline import BadRecordError
        from s2dc_jax.training import loop

        try:
            use_compilation_cache(f.compilation_cache)
            task = _task(kind, config, explicit_fields(sys.argv), f.workdir)
            if f.print_config:
                print(task.config)
                return
            if not f.workdir:
                fail(script, "--workdir is required (the run folder; re-running on it resumes)")
            loop.maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
            if f.dry_run:
                ok = loop.dry_run(task, f.workdir)
                print("dry run: OK" if ok else "dry run: the data has problems (above)")
                sys.exit(0 if ok else 2)
            result = loop.run(task, f.workdir)
        except (*USER_ERRORS, DataError, BadRecordError, loop.TrainingError) as e:
            fail(script, str(e))
        except KeyboardInterrupt:
            print(f"{script}: interrupted again: stopped without saving", file=sys.stderr)
            sys.exit(128 + signal.SIGINT)
        if result["preempted"]:
            sys.exit(128 + signal.Signals[result["preempted"]].value)

    app.run(run, flags_parser=lambda argv: parse_flags(script, argv))


PRETRAIN_DOC = """S2DC pretraining.

    s2dc-pretrain --config=mri6k --workdir=runs/mri6k [--config.batch_size=4 ...]
    python launch/pretrain.py --config=configs/mri6k.py --workdir=runs/mri6k

--config takes a file or a preset name (ct1k, ct10k, mri6k, pet3k, demo; ':tiny' shrinks any
preset); every field and its default is in docs/config.md. Re-running the same command on
the same workdir resumes from its latest checkpoint. SIGTERM or Ctrl-C saves a checkpoint
and exits with status 143 / 130 (a second Ctrl-C stops at once). Several hosts: pass
--coordinator_address/--num_processes/--process_id, or run under SLURM / Open MPI, where
JAX reads the cluster from the environment.
"""

FINETUNE_DOC = r"""Fine-tuning: segmentation, classification, translation or reconstruction (the config's task).

    s2dc-finetune --config=btcv --workdir=runs/btcv --config.data.datalist=list.json \
        [--config.init.checkpoint=runs/ct1k] [--config.X=V ...]
    python launch/finetune.py --config=configs/finetune/btcv.py --workdir=runs/btcv ...

--config takes a file or a dataset name (btcv, msd_liver, msd_lung, msd_spleen, brats21,
autopet, cc_ccii, adni, brats23_t1_t2, brats23_t1_t1ce, udpet; ':tiny' for a smoke run);
fields and defaults: docs/config.md. --config.init.checkpoint=DIR starts from a pretraining
run (its architecture comes with it), --config.init.torch=FILE from MONAI-layout weights;
--config.init.skip='("regex",)' leaves parameters whose flax path matches fresh. Re-running
resumes; WORKDIR/best keeps the best checkpoint and WORKDIR/predictions its predictions.
SIGTERM or Ctrl-C saves and exits with status 143 / 130. Several hosts: as for pretraining.
"""


def pretrain_script() -> None:
    """Entry point of the installed ``s2dc-pretrain`` command."""
    main("pretrain", "s2dc-pretrain", "mri6k", doc=PRETRAIN_DOC)


def finetune_script() -> None:
    """Entry point of the installed ``s2dc-finetune`` command."""
    main("finetune", "s2dc-finetune", "btcv", doc=FINETUNE_DOC)
