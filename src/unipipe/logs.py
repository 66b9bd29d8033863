"""Logging set-up for workflow scripts; the library itself installs no handlers."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_path: str | os.PathLike[str] | None = None, level: int = logging.INFO) -> None:
    """Send log records to the rule's log file (and stderr when no file is given)."""
    handlers: list[logging.Handler] = []
    if log_path:
        os.makedirs(os.path.dirname(os.fspath(log_path)) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, format=_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)
