"""A tiny Qt-free signal, so core models can notify their views without importing Qt.

:class:`Signal` is what :class:`app.core.annotation.AnnotationModel` and :class:`app.core.autosave.Autosaver`
announce their changes with; the UI relays them to Qt signals (:mod:`app.ui.state`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional


class Signal:
    """A list of callbacks: ``connect(fn)``, ``disconnect(fn)``, ``emit(*args)`` (no Qt needed).

    Callbacks run synchronously in connection order. A callback that raises propagates to the caller
    of ``emit``: the model's state is already consistent when signals are emitted.
    """

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``slot`` on every :meth:`emit` (once, however often it is connected); returns ``slot``."""
        if slot not in self._slots:
            self._slots.append(slot)
        return slot

    def disconnect(self, slot: Optional[Callable[..., Any]] = None) -> None:
        """Remove ``slot`` (or every slot when ``None``); removing an unknown slot is a no-op."""
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        """Call every connected slot with ``args``."""
        for slot in list(self._slots):
            slot(*args)

    def __len__(self) -> int:
        return len(self._slots)
