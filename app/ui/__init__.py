"""Desktop user interface (PySide6, VTK, pyqtgraph). Imports core/training; nothing imports ui.

Workaround for a PySide6 6.12 reference-count bug
-------------------------------------------------
``SignalInstance.emit()`` returns ``True`` *without* taking a reference to it, so every signal emitted
from Python (ours, pyqtgraph's on every mouse move, superqt's) takes one reference away from ``True``::

    class O(QObject): s = Signal()
    o = O(); before = sys.getrefcount(True)
    for _ in range(100): o.s.emit()
    sys.getrefcount(True) - before      # -100 with PySide6 6.12.0 on CPython 3.11

On CPython ≥ 3.12 ``True`` is immortal and nothing happens. On 3.11 its count (a few thousand) reaches
zero after a few thousand emits and the interpreter aborts ("Fatal Python error: bool_dealloc"),
in a session after a minute of mouse movement, or at the end of a test run. The singletons are never
freed anyway, so we give them a reference count no session can exhaust (what 3.12 does for all of them).
"""

from __future__ import annotations

import ctypes
import sys


def _protect_singletons() -> None:
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return
    for singleton in (True, False, None):
        # ob_refcnt is the first field of every CPython object.
        ctypes.c_ssize_t.from_address(id(singleton)).value += 1 << 40


_protect_singletons()
