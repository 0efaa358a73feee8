"""Kills at write steps (issue 17, items 3 and 9): predict, train, Vox2Vox training and the autosave.

Each job runs in a child process that kills itself just before or just after one of its file commits
(tests/faultkill.py). After every kill: each vectors file present parses and agrees with its sidecar, no
model or checkpoint is half written, and running the same command again finishes with the result of a run
that was never killed. Predict and the autosave are killed at every step; the training jobs, whose runs
take seconds, at a few steps drawn at random (fixed seed) from all of theirs.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import faultkill
from app.core.annotation import Autosaver, AnnotationModel, load_autosave
from app.core.fileutil import is_stale_temporary
from app.core.modelfile import load_model
from app.core.pairs import read_pairs, sidecar_path, vectors_stem
from app.core.simulate import synthesize_dataset

CLI = "app.cli:main"
VOXEL = (1.0, 0.5, 0.5)
CLEAN = dict(dim_fraction=0.0, vessels_per_10000um2=0.0, dirt_per_10000um2=0.0, fragments_per_cell=0.0)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stacks")
    synthesize_dataset(folder, 2, shape=(8, 128, 128), voxel_size=VOXEL, seed=3, **CLEAN)
    return folder


def assert_whole(folder: Path) -> None:
    """Every vectors CSV in ``folder`` (recursively) parses and agrees with its sidecar; no sidecar has lost
    its CSV for good (a sidecar alone is the first write of a CSV that never came, harmless and rewritten)."""
    for path in sorted(folder.rglob("*.csv")):
        stem, kind = vectors_stem(path.name)
        if stem is None:
            continue
        pairs = read_pairs(path)
        assert pairs.meta.get("integrity") == "ok", path
        assert pairs.meta.get("n_pairs") == len(pairs), path
        assert sidecar_path(path).is_file(), path
    for path in sorted(folder.rglob("*.json")):
        json.loads(path.read_text())  # every JSON file present is whole


def without_time(side: dict) -> dict:
    return {k: v for k, v in side.items() if k not in ("written", "previous", "integrity")}


def summary_rows(path: Path) -> list[tuple]:
    with open(path) as handle:
        return [(r["image"], r["output"], r["vectors"]) for r in csv.DictReader(handle)]


def no_stray_temporaries(folder: Path) -> None:
    stray = [p for p in folder.rglob("*.tmp") if is_stale_temporary(p)]
    assert not stray, stray


# ------------------------------------------------------------------------------------------
# predict: every kill point
# ------------------------------------------------------------------------------------------
def test_predict_killed_at_every_write_step_resumes_to_the_same_outputs(stacks, tmp_path):
    def argv(out):
        return ["predict", str(stacks), "--out", str(out), "--method", "classic"]

    reference = tmp_path / "reference"
    n = faultkill.count_commits(CLI, argv(reference), tmp_path)
    assert n == 6  # per image: sidecar, CSV, summary
    expected = {p.name: p.read_bytes() for p in reference.glob("*.pred.vectors.csv")}
    expected_sides = {p.name: without_time(json.loads(p.read_text())) for p in reference.glob("*.pred.vectors.json")}
    for point in faultkill.kill_points(n):
        out = tmp_path / point.replace(":", "_")
        killed = faultkill.run(CLI, argv(out), kill_at=point)
        assert killed.returncode == faultkill.KILLED, (point, killed.stderr[-1000:])
        assert_whole(out)
        rerun = faultkill.run(CLI, argv(out))
        assert rerun.returncode == 0, (point, rerun.stderr[-2000:])
        assert {p.name: p.read_bytes() for p in out.glob("*.pred.vectors.csv")} == expected, point
        sides = {p.name: without_time(json.loads(p.read_text())) for p in out.glob("*.pred.vectors.json")}
        assert sides == expected_sides, point
        assert summary_rows(out / "predict_summary.csv") == [
            (image, str(out / Path(output).name), vectors)
            for image, output, vectors in summary_rows(reference / "predict_summary.csv")]
        no_stray_temporaries(out)


# ------------------------------------------------------------------------------------------
# the autosave: every kill point of a scripted editing session
# ------------------------------------------------------------------------------------------
def test_autosave_killed_at_every_write_step_recovers_a_state_the_user_had(tmp_path):
    states = faultkill.session_states()
    n = faultkill.count_commits("faultkill:autosave_session", [tmp_path / "count"], tmp_path)
    assert n == 2 * (len(states) - 1)  # sidecar and CSV per edit
    for point in faultkill.kill_points(n):
        folder = tmp_path / point.replace(":", "_")
        folder.mkdir()
        killed = faultkill.run("faultkill:autosave_session", [folder], kill_at=point)
        assert killed.returncode == faultkill.KILLED, killed.stderr[-1000:]
        path = folder / faultkill.AUTOSAVE_NAME
        k, when = int(point.split(":")[0]), point.split(":")[1]
        done = k - 1 if when == "before" else k  # commits that happened
        edit = done // 2  # the last edit whose CSV was committed (sidecar first, then CSV)
        if edit == 0:
            assert not path.exists(), point
        else:
            assert_whole(folder)
            pairs, pending = load_autosave(path)
            # The last edit written whole, pending nucleus included, never a mix of two. (When the sidecar of
            # the next edit is in and that edit left the CSV as it was, as placing a nucleus does, the pair
            # already is the next state, whole.)
            recovered = faultkill.state_of(pairs, pending)
            assert recovered == states[edit] or (done % 2 == 1 and recovered == states[edit + 1]), point
        # The next session's autosaver removes what the killed one left half done.
        Autosaver(AnnotationModel(voxel_size=VOXEL), folder / "other.vectors.autosave.csv")
        no_stray_temporaries(folder)
        assert not list(folder.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------
# training: a few random kill points each
# ------------------------------------------------------------------------------------------
def _model_weights(json_path: Path) -> dict[str, torch.Tensor]:
    return dict(load_model(json_path, torch.device("cpu"))[0].state_dict())


def _generator_weights(json_path: Path) -> dict[str, torch.Tensor]:
    from app.training.vox2vox import load_generator

    return dict(load_generator(json_path)[0].state_dict())


def _check_training_kills(tmp_path, argv, model_name, weights, picks, seed):
    """Kill at every step from the last checkpoint on (where the model files are derived from it) and at
    ``picks`` steps drawn before it; each time, the rerun must end with the uninterrupted run's weights."""
    reference = tmp_path / "reference"
    reference.mkdir()
    commits = faultkill.list_commits(CLI, argv(reference), tmp_path)
    n = len(commits)
    expected = weights(reference / f"{model_name}.json")
    last_checkpoint = max(k for k, path in enumerate(commits, 1) if path.endswith("last.ckpt.safetensors"))
    points = faultkill.kill_points(n)
    late = [p for p in points if int(p.split(":")[0]) >= last_checkpoint]
    early = [p for p in points if int(p.split(":")[0]) < last_checkpoint]
    points = random.Random(seed).sample(early, picks) + late
    for point in points:
        out = tmp_path / point.replace(":", "_")
        out.mkdir()
        killed = faultkill.run(CLI, argv(out), kill_at=point)
        assert killed.returncode == faultkill.KILLED, (point, killed.stderr[-1500:])
        assert_whole(out)
        if point != f"{n}:after":  # killed after its last write, the run was complete: a rerun says it exists
            rerun = faultkill.run(CLI, argv(out))
            assert rerun.returncode == 0, (point, rerun.stderr[-2000:])
        resumed = weights(out / f"{model_name}.json")
        assert resumed.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=f"{point}: {name}")
        no_stray_temporaries(out)
    return n, points


def test_training_killed_at_random_write_steps_resumes_to_the_same_weights(stacks, tmp_path):
    def argv(out):
        return ["train", "--images", str(stacks), "--out", str(out / "model"), "--steps", "8", "--epoch-steps", "4",
                "--init", "none", "--model-voxel-size", "2", "1", "1", "--base-filters", "4", "--device", "cpu",
                "--calibrate", "never"]

    n, points = _check_training_kills(tmp_path, argv, "model", _model_weights, picks=3, seed=17)
    assert n >= 8, n


def test_vox2vox_training_killed_at_random_write_steps_resumes_to_the_same_weights(stacks, tmp_path):
    def argv(out):
        return ["vox2vox", "train", "--images", str(stacks), "--out", str(out / "g"), "--steps", "8",
                "--eval-every", "4", "--patch", "8", "64", "64", "--device", "cpu", "--base-filters", "4",
                "--levels", "3"]

    n, points = _check_training_kills(tmp_path, argv, "g", _generator_weights, picks=2, seed=23)
    assert n >= 4, n
