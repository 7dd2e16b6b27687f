"""What every command-line entry point shares: config files by path or name, one line per mistake, quiet libraries."""
from __future__ import annotations

import argparse
import ast
import importlib.util
import logging as pylogging
import os
import site
import sys
from pathlib import Path

import ml_collections
from absl import logging


def fail(script: str, msg: str) -> None:
    """One line on stderr and exit status 2: the end of every user mistake."""
    print(f"{script}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    sys.exit(2)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes end like the training commands': one line (the usage is --help's) and exit 2."""

    def error(self, message):
        fail(self.prog, f"{message} (see --help)")


class _QuietLibraries(pylogging.Filter):
    """Drops library warnings a user cannot act on (Orbax's notes on every restore), keeps errors."""

    def filter(self, record):
        return record.levelno >= pylogging.ERROR or "orbax" not in record.pathname


def quiet_libraries() -> None:
    """Entry points call this once: INFO chatter off, Orbax's routine warnings dropped."""
    logging.set_verbosity(logging.WARNING)
    for handler in (logging.get_absl_handler(), *pylogging.getLogger().handlers):
        handler.addFilter(_QuietLibraries())
    pylogging.getLogger("absl").addFilter(_QuietLibraries())


def parse_with_help(flag_values, argv):
    """``flag_values(argv)``, where --help (which absl ends with status 1) ends with status 0."""
    try:
        return flag_values(argv)
    except SystemExit as e:
        if e.code and any(a in ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml") for a in argv[1:]):
            sys.exit(0)
        raise


def default_cache_dir() -> str:
    """``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/s2dc_jax/xla`` (``~/.cache/s2dc_jax/xla``)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "s2dc_jax" / "xla")


def use_compilation_cache(folder: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``folder`` (None: :func:`default_cache_dir`; "": off).

    A compiled program is saved there under a hash of the program, the JAX/XLA versions and
    the devices, so a run of an already-compiled config (a resume, the run after
    ``--dry_run``) loads its step instead of compiling it. Returns the folder in use, or None.
    A folder given explicitly that cannot be written is a user error (PermissionError); the
    default one is then just not used.
    """
    import jax

    explicit = folder is not None
    folder = default_cache_dir() if folder is None else folder
    if not folder:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = Path(folder).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        if explicit:
            raise PermissionError(f"--compilation_cache: cannot write to {path} ({e.strerror}); "
                                  f"give another folder, or '' for no cache") from None
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)


# Where config names are looked up: the checkout's configs/ (pip install -e .), else the copy
# that a wheel install puts under <prefix>/share/s2dc_jax/configs (pyproject's data-files):
# the environment's prefix, or the user's base for `pip install --user`.
CONFIG_DIRS = (Path(__file__).resolve().parents[1] / "configs", Path(sys.prefix) / "share" / "s2dc_jax" / "configs",
               Path(site.getuserbase()) / "share" / "s2dc_jax" / "configs")


def config_dir() -> Path:
    """The first of :data:`CONFIG_DIRS` that holds the shipped configs."""
    return next((d for d in CONFIG_DIRS if (d / "demo.py").is_file()), CONFIG_DIRS[0])


def resolve_config(value: str) -> str:
    """``--config`` value -> a file: a path as given, else a name in configs/ (``mri6k``, ``finetune/btcv``, ``btcv``)."""
    path, colon, variant = value.partition(":")
    if os.path.isfile(path):
        return value
    name = path.removesuffix(".py")
    name = name[len("configs/"):] if name.startswith("configs/") else name
    root = config_dir()
    for candidate in (root / f"{name}.py", root / "finetune" / f"{name}.py"):
        if candidate.is_file():
            return str(candidate) + colon + variant
    known = sorted(p.stem for p in root.glob("*.py")) + sorted(
        f"finetune/{p.stem}" for p in root.glob("finetune/*.py"))
    raise FileNotFoundError(f"--config: no config file {path!r} (give a path, or a name: {', '.join(known)})")


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """``configs/x.py[:variant]`` -> its ``get_config(variant)``, then ``KEY=VALUE`` overrides.

    For scripts and tests outside absl (``launch/benchmark.py``); values are Python literals.
    """
    path, _, arg = resolve_config(spec).partition(":")
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
