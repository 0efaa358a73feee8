"""Screenshots of the window at work, for the README: after "Predict this image", after a folder batch, while
reviewing a project's predictions, evaluating two prediction sets, and the statistics of a project by group.

    xvfb-run -a -s "-screen 0 1280x1024x24" python docs/make_screenshots.py [--out docs]

Simulated data only (made here: 3 small stacks, one of them deliberately broken for the batch; a project of
two stacks; three stacks with ground truth, predicted by the starter model and by the classic method).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def settle(app, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()


def wait_for(app, handle, timeout: float = 300) -> None:
    end = time.perf_counter() + timeout
    while handle is not None and handle.running and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"))
    args = parser.parse_args()
    from PySide6 import QtCore, QtWidgets

    from app.core.simulate import synthesize_dataset
    from app.ui.main_window import MainWindow
    from app.ui.screenshot import save_screenshot

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        synthesize_dataset(scratch / "stacks", 3, shape=(24, 256, 256), voxel_size=(1.0, 0.4, 0.4), preset="retina",
                           seed=3)
        for side in (scratch / "stacks").glob("synth_0000.vectors.*"):
            side.unlink()  # the first image is unannotated, as a user's new image is
        (scratch / "stacks" / "synth_0002.tif").write_bytes(b"not a TIFF: a broken file in the folder")
        settings = QtCore.QSettings(str(scratch / "settings.ini"), QtCore.QSettings.Format.IniFormat)
        window = MainWindow(settings=settings, enable_3d=True)
        window.document.interactive = False
        window.ask_on_close = False
        window.resize(1280, 900)
        window.show()
        window.open_path(scratch / "stacks" / "synth_0000.tif")
        panel = window.show_predict_panel()
        settle(app)
        panel.predict_image()
        wait_for(app, panel.handle)
        settle(app, 1.0)
        print(save_screenshot(window, out / "screenshot_predict_image.png"))
        panel.predict_folder(scratch / "stacks", scratch / "predictions")
        wait_for(app, panel.handle)
        settle(app, 1.0)
        print(save_screenshot(window, out / "screenshot_predict_folder.png"))

        # --- a project: predict it, then review the first image's predictions, least confident first
        from app.core.project import Project

        project = Project.create(scratch / "project", name="Retina study")
        for name in ("synth_0000.tif", "synth_0001.tif"):
            shutil.copy(scratch / "stacks" / name, project.folder("images") / name)
        window.open_path(project.root)
        panel.predict_project()
        wait_for(app, panel.handle)
        window.open_project_image(project.images()[0])
        review = window.show_review_panel()
        review.start()
        review.accept()
        review.accept()
        review.reject()
        settle(app, 1.0)
        print(save_screenshot(window, out / "screenshot_review.png"))

        # --- evaluate two prediction sets against ground truth: the starter model and the classic method
        from app.core.batch import predict_batch
        from app.core.classic import predict_classic
        from app.core.imageio import find_images
        from app.core.jobs import run

        synthesize_dataset(scratch / "truth", 3, shape=(24, 256, 256), voxel_size=(1.0, 0.4, 0.4), preset="retina",
                           seed=11)
        images = find_images([scratch / "truth"])
        run(predict_batch(images, scratch / "classic", predict_classic))
        panel.predict_folder(scratch / "truth", scratch / "starter")
        wait_for(app, panel.handle)
        evaluate = window.show_evaluate_panel()
        evaluate.set_ground_truth(scratch / "truth")
        evaluate.set_images_folder(scratch / "truth")
        evaluate.add_prediction_set(scratch / "starter", "starter model")
        evaluate.add_prediction_set(scratch / "classic", "classic (Otsu)")
        evaluate.evaluate()
        wait_for(app, evaluate.handle)
        settle(app, 1.0)
        # the Evaluate panel opens as a window of its own (no VTK in it: a plain grab shows it all)
        target = out / "screenshot_evaluate.png"
        window.evaluate_dock.grab().save(str(target))
        print(target)

        # --- statistics of a project by group: flow (cells polarised along +x) against static (no preference)
        stats = Project.create(scratch / "stats", name="Flow study")
        for condition, polarity in (("flow", {"polarity_direction": (0, 0, 1), "polarity_concentration": 3.0}),
                                    ("static", {"polarity_concentration": 0.0})):
            made = scratch / f"made_{condition}"
            synthesize_dataset(made, 3, shape=(16, 192, 192), voxel_size=(1.0, 0.4, 0.4), preset="retina",
                               seed=21 if condition == "flow" else 22, **polarity)
            for k, image in enumerate(sorted(made.glob("synth_*.tif"))):
                target_image = stats.folder("images") / f"{condition}_{k}.tif"
                shutil.copy(image, target_image)
                for suffix in (".csv", ".json"):  # the simulator's vectors stand for the user's annotations
                    source = image.with_name(image.name.replace(".tif", f".vectors{suffix}"))
                    shutil.copy(source, stats.vectors_path(target_image).with_suffix(suffix))
                stats.set_group(target_image, condition)
        window.open_path(stats.root)
        window.open_project_image(stats.images()[0])
        statistics = window.show_stats_panel()
        statistics.set_scope("project")
        statistics.set_reference("axis", (1, 0, 0))
        settle(app, 6.0)
        target = out / "screenshot_stats.png"
        window.stats_dock.grab().save(str(target))
        print(target)
        window.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
