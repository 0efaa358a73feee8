"""The application's log file: where the tracebacks of unexpected errors go (never into a dialog).

One rotating file, ``cellpol.log`` (about 1 MB, three older files kept), in the user's log folder
(:func:`platformdirs.user_log_dir`, e.g. ``~/.local/state/CellPolStudio/log`` on Linux,
``%LOCALAPPDATA%\\CellPolStudio\\Logs`` on Windows); the environment variable ``CELLPOL_LOG_DIR`` chooses
another folder (tests, portable installs). Help ▸ Show log opens it.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import traceback
from pathlib import Path
from typing import Optional

import platformdirs

#: The environment variable that overrides the log folder.
LOG_DIR_VARIABLE = "CELLPOL_LOG_DIR"
LOG_NAME = "cellpol.log"
MAX_BYTES = 1_000_000
BACKUP_COUNT = 3

_logger = logging.getLogger("cellpol.app")
_handler: Optional[logging.handlers.RotatingFileHandler] = None


def log_dir() -> Path:
    """The folder of the log file (``CELLPOL_LOG_DIR`` if set, else the user's log folder)."""
    override = os.environ.get(LOG_DIR_VARIABLE)
    if override:
        return Path(override)
    return Path(platformdirs.user_log_dir("CellPolStudio", appauthor=False))


def log_path() -> Path:
    """The current log file (it need not exist yet)."""
    return log_dir() / LOG_NAME


def logger() -> logging.Logger:
    """The application's logger, writing to :func:`log_path` (re-pointed if the folder changed)."""
    global _handler
    path = log_path()
    if _handler is None or Path(_handler.baseFilename) != path.resolve():
        if _handler is not None:
            _logger.removeHandler(_handler)
            _handler.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        # delay=True: the file is created by the first record, so merely starting the app writes nothing.
        _handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT,
                                                        encoding="utf-8", delay=True)
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        _logger.addHandler(_handler)
        _logger.setLevel(logging.INFO)
    return _logger


def log_exception(exc: BaseException, context: str = "") -> Path:
    """Write ``exc`` with its traceback to the log; returns the log file's path.

    Parameters
    ----------
    exc : BaseException
        An exception that was caught (its ``__traceback__`` says where it was raised).
    context : str
        What was running (a job's title).
    """
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log = logger()
    log.error("Unexpected error%s\n%s", f" in {context!r}" if context else "", details.rstrip())
    for handler in log.handlers:
        handler.flush()
    return log_path()
