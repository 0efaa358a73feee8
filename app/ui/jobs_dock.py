"""The Jobs dock: every job the window started, running and finished, with its progress and its messages.

One row per :class:`~app.ui.workers.JobHandle`: title and status, a progress bar (``done`` / ``total`` of its
progress events; a training job's steps), the time it has worked and the time it will likely still take,
Cancel, Pause/Resume where the job can pause, and a small log of its notes and warnings. How a job ends is
said once: a :class:`~app.core.errors.CellPolError` (something the user can fix) as one message box; any other
exception (a bug) as a message too, with its traceback written to the log file (:mod:`app.ui.applog`).
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

from PySide6 import QtCore, QtWidgets

from app.core.errors import CellPolError
from app.core.jobs import JobWarning, Note
from app.ui.applog import log_exception
from app.ui.workers import JobHandle

STATUS_TEXT = {"running": "running", "paused": "paused", "done": "done", "failed": "failed",
               "cancelled": "cancelled"}


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``2 h 07 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class JobRow(QtWidgets.QFrame):
    """One job's row in the dock."""

    def __init__(self, handle: JobHandle, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__(parent)
        self.handle = handle
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.title_label = QtWidgets.QLabel(f"<b>{handle.title}</b>")
        self.status_label = QtWidgets.QLabel()
        self.time_label = QtWidgets.QLabel()
        self.time_label.setStyleSheet("color: #777;")
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 0)  # busy until the first progress event says how much there is
        self.progress.setTextVisible(True)
        self.message_label = QtWidgets.QLabel()
        self.message_label.setStyleSheet("color: #777;")
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._cancel)
        self.pause_button = QtWidgets.QPushButton("Pause")
        self.pause_button.setVisible(handle.can_pause)
        self.pause_button.clicked.connect(self._toggle_pause)
        self.log = QtWidgets.QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumHeight(64)
        self.log.setMaximumBlockCount(500)
        self.log.hide()  # shown with the first note or warning

        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.title_label, 1)
        top.addWidget(self.status_label)
        middle = QtWidgets.QHBoxLayout()
        middle.addWidget(self.progress, 1)
        middle.addWidget(self.pause_button)
        middle.addWidget(self.cancel_button)
        bottom = QtWidgets.QHBoxLayout()
        bottom.addWidget(self.message_label, 1)
        bottom.addWidget(self.time_label)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addLayout(middle)
        layout.addLayout(bottom)
        layout.addWidget(self.log)

        handle.event.connect(self._on_event)
        handle.ended.connect(self.refresh)
        self.refresh()

    @property
    def messages(self) -> list[str]:
        """The lines of the row's log (notes and warnings)."""
        text = self.log.toPlainText()
        return text.splitlines() if text else []

    def _cancel(self) -> None:
        self.handle.cancel()
        self.cancel_button.setEnabled(False)
        self.status_label.setText("cancelling…")

    def _toggle_pause(self) -> None:
        if self.handle.status == "paused":
            self.handle.resume()
        else:
            self.handle.pause()
        self.refresh()

    def _on_event(self, event) -> None:
        if isinstance(event, (Note, JobWarning)):
            self.log.show()
            self.log.appendPlainText(("⚠ " if isinstance(event, JobWarning) else "") + event.message)
        elif getattr(event, "message", ""):
            self.message_label.setText(event.message)
        self.refresh()

    def refresh(self) -> None:
        """Bring progress, times, status and buttons up to date with the handle."""
        handle = self.handle
        progress = handle.last_progress
        if handle.status == "done":
            self.progress.setRange(0, 100)
            self.progress.setValue(100)
        elif progress is not None and progress.total:
            self.progress.setRange(0, 100)
            self.progress.setValue(int(round(100 * min(progress.done, progress.total) / progress.total)))
            self.progress.setFormat(f"%p %  ({progress.done} / {progress.total})")
        elif not handle.running:
            self.progress.setRange(0, 100)  # stop the busy animation of a job that never said how far it got
        times = format_seconds(handle.elapsed())
        remaining = handle.remaining()
        if remaining is not None:
            times += f" · about {format_seconds(remaining)} left"
        self.time_label.setText(times)
        status = STATUS_TEXT.get(handle.status, handle.status)
        if handle.status == "running" and handle.cancel_token.cancelled:
            status = "cancelling…"
        self.status_label.setText(status)
        self.cancel_button.setVisible(handle.running)
        self.pause_button.setVisible(handle.can_pause and handle.running)
        self.pause_button.setText("Resume" if handle.status == "paused" else "Pause")
        if handle.status == "failed" and handle.error is not None:
            self.message_label.setText(str(handle.error) or type(handle.error).__name__)


class JobsDock(QtWidgets.QDockWidget):
    """Every job of the window (newest first), and the one message each failure deserves.

    Attributes
    ----------
    rows : list of JobRow
        Oldest first.
    interactive : bool
        False (scripted runs): failures are printed to stderr instead of waiting in a message box.
    use_device : callable or None
        ``use_device(device) -> bool`` (the window's device setter). With it, a job that ran out of GPU memory
        (a :class:`CellPolError` whose ``settings`` ask for the CPU) and that can be run again
        (:attr:`JobHandle.retry`) is offered to run again on the CPU, in the same message.
    """

    def __init__(self, parent: Optional[QtWidgets.QWidget] = None) -> None:
        super().__init__("Jobs", parent)
        self.setObjectName("cellpol.jobs")
        self.rows: list[JobRow] = []
        self.interactive = True
        self.use_device: Optional[Callable[[str], bool]] = None
        container = QtWidgets.QWidget()
        self._list = QtWidgets.QVBoxLayout(container)
        self._list.setContentsMargins(4, 4, 4, 4)
        self._list.addStretch(1)
        self.empty_label = QtWidgets.QLabel("No jobs yet.")
        self.empty_label.setStyleSheet("color: #777;")
        self._list.insertWidget(0, self.empty_label)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(container)
        self.clear_button = QtWidgets.QPushButton("Clear finished")
        self.clear_button.clicked.connect(self.clear_finished)
        outer = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(outer)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.clear_button, 0, QtCore.Qt.AlignmentFlag.AlignRight)
        self.setWidget(outer)
        # Elapsed and remaining times move on between events too.
        self._clock = QtCore.QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._tick)

    def add(self, handle: JobHandle) -> JobRow:
        """Show ``handle`` (at the top) and report how it ends."""
        row = JobRow(handle)
        self.rows.append(row)
        self.empty_label.hide()
        self._list.insertWidget(0, row)
        handle.failed.connect(lambda exc, h=handle: self.report_failure(h, exc))
        handle.ended.connect(self._tick)
        self._clock.start()
        return row

    def row(self, handle: JobHandle) -> Optional[JobRow]:
        return next((row for row in self.rows if row.handle is handle), None)

    def running(self) -> list[JobHandle]:
        return [row.handle for row in self.rows if row.handle.running]

    def clear_finished(self) -> None:
        for row in [row for row in self.rows if not row.handle.running]:
            self.rows.remove(row)
            row.setParent(None)
            row.deleteLater()
        self.empty_label.setVisible(not self.rows)

    def _tick(self) -> None:
        for row in self.rows:
            if row.handle.running or row.handle.finished_at is not None:
                row.refresh()
        if not self.running():
            self._clock.stop()

    # --- failures -------------------------------------------------------------------------------
    def report_failure(self, handle: JobHandle, exc: BaseException) -> None:
        """One message: the user's error as it is; a bug briefly, with its traceback written to the log."""
        if isinstance(exc, CellPolError):
            device = exc.settings.get("device")
            if device and self.use_device is not None and handle.retry is not None:
                if self.ask(f"{handle.title} failed", f"{exc}\n\nRun it again on the {device.upper()}?"):
                    if self.use_device(device):
                        handle.after_end(handle.retry)  # the panel starts it again once this run has ended
                return
            self.show_message(f"{handle.title} failed", str(exc), critical=False)
            return
        path = log_exception(exc, context=handle.title)
        self.show_message(
            f"{handle.title} failed",
            f"An unexpected error stopped “{handle.title}”: {type(exc).__name__}: {exc}\n\n"
            f"This is a bug in CellPol Studio. The details were written to {path} "
            "(Help ▸ Show log); please include that file when you report it.", critical=True)

    def ask(self, title: str, text: str) -> bool:
        """A yes/no question about a failed job (tests replace this method); ``False`` when not interactive."""
        if not self.interactive:
            print(f"cellpol: {title}: {text}", file=sys.stderr)
            return False
        answer = QtWidgets.QMessageBox.question(self.window(), title, text)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def show_message(self, title: str, text: str, critical: bool = False) -> None:
        """The message box of a failed job (tests replace this method)."""
        if not self.interactive:
            print(f"cellpol: {title}: {text}", file=sys.stderr)
            return
        box = QtWidgets.QMessageBox.critical if critical else QtWidgets.QMessageBox.warning
        box(self.window(), title, text)
