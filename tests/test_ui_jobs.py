"""The Jobs dock and its worker helper: progress, cancel, pause, how failures are reported; action ids;
the device line."""

from __future__ import annotations

import threading

import pytest
from PySide6 import QtCore

from app.core.errors import CellPolError
from app.core.jobs import JobWarning, Note, Progress, Result, check_cancel
from app.training.jobcontrol import TrainEvent
from app.ui.actions import ACTIONS
from app.ui.main_window import MainWindow


@pytest.fixture
def log_folder(tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    monkeypatch.setenv("CELLPOL_LOG_DIR", str(folder))
    return folder


@pytest.fixture
def window(qtbot, tmp_path, log_folder):
    QtCore.QStandardPaths.setTestModeEnabled(True)
    settings = QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, enable_3d=False)
    window.document.interactive = False
    window.ask_on_close = False
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    yield window
    for handle in window.jobs_dock.running():  # never leave a worker waiting on a gate
        handle.cancel()
    window.release()


@pytest.fixture
def messages(window, monkeypatch):
    shown = []
    monkeypatch.setattr(window.jobs_dock, "show_message",
                        lambda title, text, critical=False: shown.append((title, text, critical)))
    return shown


def gated_job(gate: threading.Event, steps: int = 4, pause_points: bool = False):
    """Yields one progress, then waits for ``gate`` before each further step (cancel and pause are polled)."""
    def factory(cancel, pause):
        for step in range(steps):
            check_cancel(cancel)
            if pause_points:
                pause.wait(cancel)
            yield Progress(step + 1, steps, f"step {step + 1}")
            if step == 0:
                while not gate.wait(0.01):
                    check_cancel(cancel)
        yield Result("finished")
        return "finished"
    return factory


def test_a_job_reports_progress_messages_and_its_result(qtbot, window, messages):
    def factory(cancel, pause):
        yield Note("using the CPU")
        for k in range(3):
            yield Progress(k + 1, 3, f"image {k + 1}")
        yield JobWarning("skipped empty.tif")
        yield Result(42)
        return 42

    assert window.jobs_dock.isHidden()
    events = []
    handle = window.start_job("Count", factory)
    handle.event.connect(events.append)
    with qtbot.waitSignal(handle.succeeded, timeout=4000) as result:
        pass
    qtbot.waitUntil(lambda: handle.status == "done" and not window.jobs_dock.running(), timeout=2000)
    assert result.args == [42] and handle.result == 42
    assert window.jobs_dock.isVisible()
    row = window.jobs_dock.row(handle)
    assert row.progress.value() == 100 and row.status_label.text() == "done"
    assert handle.last_progress.done == handle.last_progress.total == 3
    assert row.messages == ["using the CPU", "⚠ skipped empty.tif"]
    assert not row.cancel_button.isVisible() and not row.pause_button.isVisible()
    assert messages == []


def test_the_result_is_the_last_result_event_when_the_generator_returns_nothing(qtbot, window):
    def factory(cancel, pause):
        yield Result("value")

    handle = window.start_job("Result only", factory)
    with qtbot.waitSignal(handle.succeeded, timeout=4000) as result:
        pass
    assert result.args == ["value"]


class _Cycle:
    """Cyclic garbage that records which thread collected it."""

    collected_on: list = []

    def __init__(self):
        self.me = self

    def __del__(self):
        _Cycle.collected_on.append(threading.get_ident())


def test_garbage_made_by_a_job_is_collected_on_the_gui_thread(qtbot, window):
    """A collection started in a worker thread can deadlock on dead Qt objects; the app collects on the GUI
    thread only (MainThreadCollector), so the job's thousands of cycles die there, none in the worker."""
    import gc

    _Cycle.collected_on = []
    worker_thread = []

    def factory(cancel, pause):
        worker_thread.append(threading.get_ident())
        for _ in range(20):  # far past Python's automatic threshold (700 allocations)
            for _ in range(1000):
                _Cycle()
            yield Progress(1, 2, "making garbage")
        return "done"

    assert not gc.isenabled()  # the test fixture installs the app's collector, as run_app does
    handle = window.start_job("Garbage", factory)
    with qtbot.waitSignal(handle.succeeded, timeout=10000):
        pass
    qtbot.waitUntil(lambda: len(_Cycle.collected_on) >= 20000, timeout=5000)
    assert worker_thread and worker_thread[0] != threading.get_ident()
    assert set(_Cycle.collected_on) == {threading.get_ident()}


def test_the_collector_gives_collection_back_when_stopped(qapp):
    """Outside the window (and between Qt tests) Python collects as usual again: stop() restores it."""
    import gc

    from app.ui.workers import install_main_thread_collector

    assert gc.isenabled()  # no qtbot here, so no collector installed by the test fixture
    collector = install_main_thread_collector(qapp)
    assert not gc.isenabled() and install_main_thread_collector(qapp) is collector  # one per application
    collector.stop()
    assert gc.isenabled()
    assert install_main_thread_collector(qapp) is not collector  # a stopped one is not handed out again
    install_main_thread_collector(qapp).stop()
    assert gc.isenabled()


def test_cancel_mid_job_ends_cancelled_not_failed(qtbot, window, messages):
    gate = threading.Event()
    handle = window.start_job("Long", gated_job(gate))
    failed = []
    handle.failed.connect(failed.append)
    row = window.jobs_dock.row(handle)
    qtbot.waitUntil(lambda: handle.last_progress is not None, timeout=3000)
    assert 0 < row.progress.value() < 100
    with qtbot.waitSignals([handle.cancelled, handle.ended], order="strict", timeout=3000):
        row.cancel_button.click()
    assert handle.status == "cancelled" and failed == [] and messages == []
    assert row.status_label.text() == "cancelled"


def test_pause_and_resume_a_pausable_job(qtbot, window):
    gate = threading.Event()
    handle = window.start_job("Training", gated_job(gate, pause_points=True), can_pause=True)
    row = window.jobs_dock.row(handle)
    assert row.pause_button.isVisible()
    qtbot.waitUntil(lambda: handle.last_progress is not None, timeout=3000)
    row.pause_button.click()
    assert handle.status == "paused" and row.pause_button.text() == "Resume"
    gate.set()
    qtbot.wait(300)  # the job stops at its next pause point and stays there
    assert handle.status == "paused" and handle.last_progress.done == 1
    row.pause_button.click()
    assert handle.status == "running" and row.pause_button.text() == "Pause"
    qtbot.waitUntil(lambda: handle.status == "done", timeout=3000)
    assert handle.result == "finished" and row.progress.value() == 100


def test_a_job_that_cannot_pause_ignores_pause(qtbot, window):
    gate = threading.Event()
    handle = window.start_job("Predict", gated_job(gate))
    assert not window.jobs_dock.row(handle).pause_button.isVisible()
    handle.pause()
    assert handle.status == "running"
    gate.set()
    qtbot.waitUntil(lambda: handle.status == "done", timeout=3000)


def test_training_events_drive_the_progress_bar(qtbot, window):
    def factory(cancel, pause):
        for step in range(1, 5):
            yield TrainEvent("step", step, 8, {"loss": 1.0 / step}, 1e-3, 0.1 * step)
        return "model.json"

    handle = window.start_job("Train", factory, can_pause=True)
    events = []
    handle.event.connect(events.append)
    qtbot.waitUntil(lambda: handle.status == "done", timeout=3000)
    assert (handle.last_progress.done, handle.last_progress.total) == (4, 8)
    assert handle.result == "model.json"


def test_a_user_error_is_one_message_and_not_logged(qtbot, window, messages, log_folder):
    def factory(cancel, pause):
        yield Progress(0, 1)
        raise CellPolError("The image has no Golgi channel; choose the channels first.")

    handle = window.start_job("Predict", factory)
    with qtbot.waitSignal(handle.failed, timeout=3000) as failure:
        pass
    qtbot.waitUntil(lambda: not handle.running, timeout=1000)
    assert isinstance(failure.args[0], CellPolError)
    assert len(messages) == 1
    title, text, critical = messages[0]
    assert text == "The image has no Golgi channel; choose the channels first." and not critical
    assert not (log_folder / "cellpol.log").exists()
    assert handle.status == "failed"


def test_an_unexpected_error_is_a_message_and_a_traceback_in_the_log(qtbot, window, messages, log_folder):
    def exploding_helper():
        raise RuntimeError("CUDA out of memory (simulated)")  # superqt swallows RuntimeError without help

    def factory(cancel, pause):
        yield Progress(0, 1)
        exploding_helper()

    handle = window.start_job("Predict", factory)
    with qtbot.waitSignal(handle.ended, timeout=3000):
        pass
    assert handle.status == "failed" and isinstance(handle.error, RuntimeError)
    assert len(messages) == 1 and messages[0][2] and "cellpol.log" in messages[0][1]
    log = (log_folder / "cellpol.log").read_text(encoding="utf-8")
    assert "Traceback" in log and "exploding_helper" in log and "CUDA out of memory (simulated)" in log
    assert "'Predict'" in log


def test_every_action_has_a_unique_stable_id(window):
    ids = [action.objectName() for action in window.actions.values()]
    assert all(i.startswith("cellpol.") and i.count(".") == 2 for i in ids), ids
    assert len(set(ids)) == len(ids) == len(ACTIONS)
    assert window.actions["open"].objectName() == "cellpol.file.open"
    assert window.actions["undo"].objectName() == "cellpol.edit.undo"
    assert window.actions["show_log"].objectName() == "cellpol.help.show_log"
    assert window.findChild(type(window.actions["open"]), "cellpol.file.open") is window.actions["open"]


def test_the_shortcuts_dialog_shows_the_ids(qtbot, window):
    dialog = window.show_shortcuts()
    qtbot.addWidget(dialog)
    table = dialog.table
    assert table.columnCount() == 4 and table.horizontalHeaderItem(3).text() == "Id"
    ids = {table.item(r, 3).text() for r in range(table.rowCount())}
    assert "cellpol.edit.undo" in ids and "cellpol.view.mip" in ids


def test_show_log_opens_the_log_folder(window, monkeypatch, log_folder):
    opened = []
    monkeypatch.setattr("PySide6.QtGui.QDesktopServices.openUrl", lambda url: opened.append(url) or True)
    window.actions["show_log"].trigger()
    assert [url.toLocalFile() for url in opened] == [str(log_folder)]


def test_device_choice_and_its_description(window):
    from app.core.device import describe_device

    text = describe_device("cpu")
    assert text.startswith("CPU, ") and " threads, bf16 " in text
    assert window.set_device("cpu") and window.device == "cpu"
    assert window.status_bar.device_label.text() == text
    window._fill_device_menu()
    names = [action.objectName() for action in window.device_menu.actions()]
    assert "cellpol.tools.device.auto" in names and "cellpol.tools.device.cpu" in names
    checked = [action.objectName() for action in window.device_menu.actions() if action.isChecked()]
    assert checked == ["cellpol.tools.device.cpu"]
