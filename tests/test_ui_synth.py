"""The Synthesis panel, driven through its real widgets and the real job runner (app.ui.workers.start_job): the
simulator writes volumes with their vectors into the project's synthetic/ folder, which are listed and open on a
double-click; Vox2Vox trains on the project's annotated images with live curves, pauses, continues, is cancelled,
resumes from its checkpoint in a new panel, and generates volumes that are listed too; the "Use in training" tick
persists and is what training_folders() returns; what the user must fix is one line in the status label.

Tiny sizes keep it to seconds: simulated 8×48×48 volumes; Vox2Vox on three 16×64×64 images at 1×0.5×0.5 µm,
patch 16×64×64, width 8, 5 steps.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
from PySide6 import QtCore  # noqa: E402

from app.core.project import Project  # noqa: E402
from app.core.simulate import PRESETS, synthesize_dataset  # noqa: E402
from app.ui.synth_panel import (  # noqa: E402
    NO_PROJECT,
    RUN_FILE,
    SynthPanel,
    checkpoint_step,
    generator_paths,
)
from app.ui.workers import start_job  # noqa: E402

Qt = QtCore.Qt
JOB_TIMEOUT_MS = 60_000


@pytest.fixture
def windows(qtbot):
    """``windows(project)``: a :class:`Window`; its jobs are stopped after the test, passed or failed."""
    made: list[Window] = []
    yield lambda project: made.append(Window(project)) or made[-1]
    for window in made:
        window.stop_jobs(qtbot)


@pytest.fixture
def project(tmp_path):
    return Project.create(tmp_path / "proj", name="synth test")


@pytest.fixture
def annotated(project):
    """The project with three annotated 16×64×64 images (simulated, their vectors moved to annotations/)."""
    images = project.folder("images")
    synthesize_dataset(images, 3, shape=(16, 64, 64), voxel_size=(1.0, 0.5, 0.5), seed=11)
    for path in list(images.glob("*.vectors.*")):
        shutil.move(str(path), project.folder("annotations") / path.name)
    return project


class Window:
    """What the window gives the panel: start_job (the real one, counting the jobs) and open_image (recorded)."""

    def __init__(self, project):
        self.project = project
        self.started: list[str] = []
        self.opened: list = []
        self.handles: list = []

    def start_job(self, title, factory, can_pause=False):
        self.started.append(title)
        self.handles.append(start_job(title, factory, can_pause=can_pause))
        return self.handles[-1]

    def stop_jobs(self, qtbot):
        """Cancel what a failed test left running (a paused job would wait for ever)."""
        for handle in self.handles:
            handle.cancel()
        qtbot.waitUntil(lambda: not any(h.running for h in self.handles), timeout=JOB_TIMEOUT_MS)

    def panel(self, qtbot) -> SynthPanel:
        panel = SynthPanel(self.start_job, lambda: self.project, self.opened.append)
        qtbot.addWidget(panel)
        panel.resize(1100, 800)
        panel.show()
        qtbot.waitExposed(panel)
        return panel


def wait_idle(qtbot, panel):
    qtbot.waitUntil(lambda: not panel.sim_busy and not panel.vox_busy, timeout=JOB_TIMEOUT_MS)


def children(item):
    return [item.child(k) for k in range(item.childCount())]


def double_click(qtbot, tree, item):
    if item.parent() is not None:
        item.parent().setExpanded(True)
    tree.scrollToItem(item)
    centre = tree.visualItemRect(item).center()
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=centre)  # a view takes a double-click after
    qtbot.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=centre)  # a press, as a user's hand gives


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def simulate(qtbot, panel, name="", count=2):
    panel.count_spin.setValue(count)
    for spin, value in zip(panel.shape_spins, (8, 48, 48)):
        spin.setValue(value)
    for spin, value in zip(panel.voxel_spins, (1.0, 0.5, 0.5)):
        spin.setValue(value)
    panel.sim_name.setText(name)
    qtbot.mouseClick(panel.sim_button, Qt.MouseButton.LeftButton)
    handle = panel.sim_handle
    assert handle is not None
    wait_idle(qtbot, panel)
    return handle


# --- the simulator ------------------------------------------------------------------------------------------
def test_simulator_writes_volumes_with_vectors_lists_and_opens_them(qtbot, windows, project):
    window = windows(project)
    panel = window.panel(qtbot)
    assert panel.objectName() == "cellpol.synth" and panel.findChild(type(panel.sim_button), "cellpol.synth.generate")
    panel.preset_combo.setCurrentIndex(panel.preset_combo.findData("widefield"))
    assert [s.value() for s in panel.voxel_spins] == pytest.approx(PRESETS["widefield"].voxel_size, abs=1e-3)
    panel.sim_seed.setValue(3)
    panel.vary_check.setChecked(True)
    assert not panel.concentration_spin.isEnabled()
    panel.polarity_combo.setCurrentIndex(1)
    assert panel.concentration_spin.isEnabled()
    panel.concentration_spin.setValue(10.0)

    handle = simulate(qtbot, panel)
    assert handle.status == "done", handle.error
    run = project.root / "synthetic" / "simulated-1"
    item = panel.run_item("simulated-1")
    assert item is not None and item.text(1) == "simulator"
    volumes = children(item)
    assert [v.text(0) for v in volumes] == ["synth_0000.tif", "synth_0001.tif"]
    for volume in volumes:
        stem = volume.text(0)[:-4]
        assert volume.text(2) == "8×48×48"
        assert volume.text(3) == str(len(csv_rows(run / f"{stem}.vectors.csv")))
        sidecar = json.loads((run / f"{stem}.vectors.json").read_text())
        config = sidecar["config"]
        assert config["preset"] == "widefield" and config["voxel_size"] == pytest.approx([1.0, 0.5, 0.5])
        assert config["polarity_direction"] == pytest.approx([0.0, 0.0, 1.0])
        assert config["polarity_concentration"] == pytest.approx(10.0) and sidecar["dataset_seed"] == 3
    assert json.loads((run / RUN_FILE).read_text())["kind"] == "simulator"
    assert "2 volume(s)" in panel.status.text()

    double_click(qtbot, panel.tree, volumes[1])
    assert window.opened == [run / "synth_0001.tif"]

    # the same name again: refused with one line, no job
    panel.sim_name.setText("simulated-1")
    assert panel.simulate() is None
    assert "already holds volumes" in panel.status.text() and len(window.started) == 1
    # an empty name takes the next free one
    simulate(qtbot, panel, count=1)
    assert [v.text(0) for v in children(panel.run_item("simulated-2"))] == ["synth_0000.tif"]


def test_use_in_training_tick_persists_and_gives_the_training_folders(qtbot, windows, project):
    window = windows(project)
    panel = window.panel(qtbot)
    simulate(qtbot, panel, "a", count=1)
    simulate(qtbot, panel, "b", count=1)
    (project.root / "synthetic" / "empty").mkdir()
    panel.refresh_runs()
    assert panel.training_folders() == []
    with qtbot.waitSignal(panel.training_folders_changed) as changed:
        panel.run_item("b").setCheckState(4, Qt.CheckState.Checked)  # what clicking the box does
    run_b = project.root / "synthetic" / "b"
    assert changed.args == [[run_b]]
    assert json.loads((run_b / RUN_FILE).read_text())["use_in_training"] is True
    assert json.loads((project.root / "synthetic" / "a" / RUN_FILE).read_text())["use_in_training"] is False
    panel.set_use_in_training("empty", True)  # ticked, but without volumes: nothing to train on
    assert panel.training_folders() == [run_b]

    again = window.panel(qtbot)  # a new panel reads the choice from the run folders
    assert again.run_item("b").checkState(4) == Qt.CheckState.Checked
    assert again.run_item("a").checkState(4) == Qt.CheckState.Unchecked
    assert again.training_folders() == [run_b]
    again.set_use_in_training("b", False)
    assert again.training_folders() == [] and panel.training_folders() == []


# --- what the user must fix ---------------------------------------------------------------------------------
def test_no_project_and_no_annotations_say_so_in_one_line(qtbot, windows, project):
    window = windows(None)
    panel = window.panel(qtbot)
    assert panel.simulate() is None and panel.status.text() == NO_PROJECT
    assert panel.train() is None and panel.status.text() == NO_PROJECT
    assert panel.generate() is None and panel.training_folders() == []

    synthesize_dataset(project.folder("images"), 1, shape=(8, 48, 48), voxel_size=(1.0, 0.5, 0.5))
    for path in project.folder("images").glob("*.vectors.*"):
        path.unlink()  # an image, but nothing annotated
    window.project = project
    panel.refresh()
    assert panel.train() is None
    text = panel.status.text()
    assert "annotated images" in text and "annotate at least one image" in text and "\n" not in text
    assert panel.generate() is None and "Train a Vox2Vox generator first" in panel.status.text()
    assert window.started == [] and not generator_paths(project)["model"].parent.exists()


# --- Vox2Vox ------------------------------------------------------------------------------------------------
def set_tiny_training(panel):
    panel.steps_spin.setValue(5)
    panel.eval_spin.setValue(2)
    panel.batch_spin.setValue(1)
    panel.filters_spin.setValue(8)
    for spin, value in zip(panel.patch_spins, (16, 64, 64)):
        spin.setValue(value)


def curve_steps(curve):
    x, _y = curve.getData()
    return [] if x is None else [int(v) for v in x]


def test_vox2vox_trains_with_live_curves_pauses_cancels_resumes_and_generates(qtbot, windows, annotated):
    project = annotated
    window = windows(project)
    panel = window.panel(qtbot)
    assert not panel.resume_button.isEnabled() and not panel.gen_button.isEnabled()
    set_tiny_training(panel)
    seen: list = []

    def on_event(event):
        seen.append(event)
        if getattr(event, "kind", "") == "step" and event.step == 1:
            qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)  # pause after the first step

    qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
    handle = panel.vox_handle
    assert handle is not None and handle.can_pause and not panel.train_button.isEnabled()
    handle.event.connect(on_event)
    qtbot.waitUntil(lambda: any(getattr(e, "kind", "") == "paused" for e in seen), timeout=JOB_TIMEOUT_MS)
    assert handle.status == "paused" and panel.pause_button.text() == "Continue"
    assert "Paused at step" in panel.status.text()
    paused_at = curve_steps(panel.loss_curves["g_total"])
    assert paused_at and paused_at[0] == 1 and paused_at[-1] < 5  # the curve updated, step by step
    qtbot.wait(600)
    assert curve_steps(panel.loss_curves["g_total"]) == paused_at  # paused means no steps

    def cancel_on_next_step(event):
        if getattr(event, "kind", "") == "step" and event.step > paused_at[-1] and handle.status == "running":
            qtbot.mouseClick(panel.vox_cancel, Qt.MouseButton.LeftButton)

    handle.event.connect(cancel_on_next_step)
    qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)  # continue
    wait_idle(qtbot, panel)
    assert handle.status == "cancelled", handle.error
    paths = generator_paths(project)
    saved = checkpoint_step(paths["checkpoints"])
    # the checkpoint of the last step before the cancel, or of the last evaluation when it came during one
    assert saved is not None and 1 <= saved[0] < 5 and saved[1] == 5
    assert not paths["model"].exists() and "checkpoint is kept" in panel.status.text()
    assert panel.resume_button.isEnabled() and f"step {saved[0]} of 5" in panel.generator_label.text()

    # the panel is closed; a new one offers the checkpoint, shows the curve so far and resumes it
    panel.close()
    panel = window.panel(qtbot)
    assert panel.resume_button.isEnabled() and f"step {saved[0]} of 5" in panel.generator_label.text()
    assert curve_steps(panel.loss_curves["g_total"]) == list(range(1, saved[0] + 1))
    messages: list[str] = []
    qtbot.mouseClick(panel.resume_button, Qt.MouseButton.LeftButton)
    panel.vox_handle.event.connect(lambda event: messages.append(getattr(event, "message", "")))
    resumed = panel.vox_handle
    wait_idle(qtbot, panel)
    assert resumed.status == "done", resumed.error
    assert any(f"Resuming from the checkpoint at step {saved[0]}" in m for m in messages)
    assert paths["model"].is_file() and "Generator: models/vox2vox/generator.json (SSIM" in panel.generator_label.text()
    assert curve_steps(panel.loss_curves["g_total"]) == [1, 2, 3, 4, 5]
    assert curve_steps(panel.loss_curves["d"]) == [1, 2, 3, 4, 5]
    assert curve_steps(panel.ssim_curves["ssim"]) == [2, 4, 5]
    assert not panel.resume_button.isEnabled() and panel.gen_button.isEnabled()

    # generate two volumes from the 5-step generator: listed, opened
    panel.gen_count.setValue(2)
    qtbot.mouseClick(panel.gen_button, Qt.MouseButton.LeftButton)
    generation = panel.vox_handle
    wait_idle(qtbot, panel)
    assert generation.status == "done", generation.error
    item = panel.run_item("vox2vox-1")
    assert item is not None and item.text(1) == "Vox2Vox"
    volumes = children(item)
    assert [v.text(0) for v in volumes] == ["gen_0000.tif", "gen_0001.tif"]
    run = project.root / "synthetic" / "vox2vox-1"
    for volume in volumes:
        assert volume.text(2) == "16×64×64"
        assert volume.text(3) == str(len(csv_rows(run / f"{volume.text(0)[:-4]}.vectors.csv")))
    double_click(qtbot, panel.tree, volumes[0])
    assert window.opened == [run / "gen_0000.tif"]

    # a shape the generator cannot make: the job fails, its reason in the status line
    for spin, value in zip(panel.gen_shape, (10, 64, 64)):
        spin.setValue(value)
    failing = panel.generate()
    wait_idle(qtbot, panel)
    assert failing.status == "failed" and "multiple of" in panel.status.text()


def test_in_the_window_a_run_ticked_for_training_is_mixed_in_by_the_train_panel(qtbot, tmp_path, window):
    """Analysis ▸ Synthesize: a simulated run ticked "Use in training" becomes the Train panel's synthetic folder,
    with mixing ticked (the "one tick" of the issue), and a volume is compared side by side with the open image."""
    project = Project.create(tmp_path / "study")
    assert window.open_path(project.root)
    window.actions["synthesize"].trigger()
    panel = window.synth_panel
    assert window.synth_dock.isVisible() and panel.objectName() == "cellpol.synth"
    simulate(qtbot, panel, name="sim")
    assert (project.folder("synthetic") / "sim").is_dir()
    train = window.show_train_panel()
    assert not train.synthetic.isChecked()
    panel.set_use_in_training("sim", True)
    assert train.synthetic.isChecked()
    assert Path(train.synthetic_dir.text()) == project.folder("synthetic") / "sim"

    # beside a real image: the selected volume and the open image side by side, at one scale (µm)
    assert panel.compare_selected() is None  # nothing selected yet
    synthesize_dataset(tmp_path / "real", 1, shape=(12, 96, 80), voxel_size=(1.0, 0.25, 0.25), seed=9)
    assert window.open_path(tmp_path / "real" / "synth_0000.tif")
    panel.tree.setCurrentItem(panel.run_item("sim"))
    compare = panel.compare_selected()
    assert compare is not None and compare.objectName() == "cellpol.compare" and compare.isVisible()
    synthetic_pane, real_pane = compare.panes
    assert real_pane.volume.spatial_shape == (12, 96, 80) and synthetic_pane.volume.spatial_shape == (8, 48, 48)
    assert real_pane.image.image.shape[:2] == (96, 80)  # the maximum projection, as RGB
    shown = real_pane.image.mapRectToParent(real_pane.image.boundingRect())
    assert (shown.width(), shown.height()) == pytest.approx((80 * 0.25, 96 * 0.25))  # in µm
    compare.mip.setChecked(False)
    compare.depth.setValue(100)
    assert compare.depth.isEnabled()
    compare.close()
