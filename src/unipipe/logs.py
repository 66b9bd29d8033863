"""Logging set-up for workflow scripts; the library itself installs no handlers."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from unipipe.errors import UnipipeError

__all__ = ["setup_logging", "stage_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(
    log_path: str | os.PathLike[str] | None = None, level: int = logging.INFO
) -> None:
    """Send log records to the rule's log file (and stderr when no file is given)."""
    handlers: list[logging.Handler] = []
    if log_path:
        os.makedirs(os.path.dirname(os.fspath(log_path)) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, format=_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)


@contextlib.contextmanager
def stage_logging(log_path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Log to the rule's log file; turn a UnipipeError into one clear line and exit code 1.

    Unexpected exceptions keep their traceback, in the log file and on stderr.
    """
    setup_logging(log_path)
    log = logging.getLogger("unipipe")
    try:
        yield
    except UnipipeError as err:
        log.error("%s", err)
        sys.exit(f"unipipe: {err}")
    except Exception:
        log.exception("stage failed")
        raise
