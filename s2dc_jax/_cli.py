"""What every command-line entry point shares: one line per user mistake, quiet libraries."""
from __future__ import annotations

import logging as pylogging
import sys

from absl import logging


def fail(script: str, msg: str) -> None:
    """One line on stderr and exit status 2: the end of every user mistake."""
    print(f"{script}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    sys.exit(2)


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
