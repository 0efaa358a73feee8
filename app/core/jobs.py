"""Plumbing shared by long jobs: progress callbacks and cancel tokens.

Jobs are plain functions or generators. They take ``progress(done, total, message)`` and a
:class:`CancelToken`; the CLI drives them with a progress bar, the UI through one worker helper.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from app.core.errors import CancelledError

ProgressCallback = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str = "") -> None:
    """A progress callback that does nothing."""


class CancelToken:
    """Thread-safe flag a job polls between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("Cancelled by the user.")


def check_cancel(token: Optional[CancelToken]) -> None:
    """Raise :class:`CancelledError` if ``token`` was cancelled (``None`` never cancels)."""
    if token is not None:
        token.raise_if_cancelled()
