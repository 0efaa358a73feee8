"""Nothing a user makes is lost or silently wrong: predictions apart from annotations, one output per input,
a vectors file and its sidecar written as one, clear messages for disk and permission errors, readable
permissions (issue 17, items 1–4 and 8; the kill tests are in test_fault_injection.py)."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

import app.core.fileutil as fileutil
from app.cli import EXIT_FAILED_ITEMS, EXIT_OK, EXIT_USAGE, main
from app.core.batch import plan_outputs, predict_batch
from app.core.errors import CellPolError, OutputError
from app.core.jobs import run as run_job
from app.core.pairs import (
    PairSet,
    read_pairs,
    read_sidecar,
    read_vectors_content,
    sidecar_path,
    vectors_content,
    write_pairs,
)
from app.core.simulate import synthesize_dataset
from app.training import dataset

SHAPE = (8, 64, 64)
VOXEL = (1.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """Two simulated stacks with their ground truth beside them, as a user's annotated folder."""
    folder = tmp_path_factory.mktemp("stacks")
    synthesize_dataset(folder, 2, shape=SHAPE, voxel_size=VOXEL, seed=5)
    return folder


def annotated_copy(stacks, target: Path) -> Path:
    shutil.copytree(stacks, target)
    for csv_path in target.glob("*.vectors.csv"):  # hand-made annotations, as the app saves them
        pairs = read_pairs(csv_path)
        pairs.sources = np.array(["manual"] * len(pairs), dtype=object)
        write_pairs(csv_path, pairs)
    return target


def fingerprint(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def two_pairs(source: str = "manual", **kwargs) -> PairSet:
    return PairSet([[1, 2, 3], [2, 20, 30]], [[1, 4, 3], [2, 22, 33]], voxel_size=VOXEL, sources=source, **kwargs)


# ------------------------------------------------------------------------------------------
# 1. Predictions never overwrite annotations
# ------------------------------------------------------------------------------------------
def test_predicting_into_the_annotated_folder_leaves_the_annotations_alone(stacks, tmp_path, capsys):
    folder = annotated_copy(stacks, tmp_path / "my_stacks")
    annotations = {p.name: p.read_bytes() for p in folder.glob("*.vectors.*")}
    for extra in ([], ["--overwrite"]):
        assert main(["predict", str(folder), "--out", str(folder), "--method", "classic", *extra]) == EXIT_OK
    assert {p.name: p.read_bytes() for p in folder.glob("synth_000?.vectors.*")} == annotations
    predictions = sorted(folder.glob("*.pred.vectors.csv"))
    assert [p.name for p in predictions] == ["synth_0000.pred.vectors.csv", "synth_0001.pred.vectors.csv"]
    assert read_vectors_content(predictions[0]) == "prediction"
    assert read_sidecar(predictions[0])["content"] == "prediction"
    # Training still finds exactly the annotations beside the images (the predictions are no orphans).
    files = dataset.match_files(folder)
    assert [f.vectors.name for f in files] == ["synth_0000.vectors.csv", "synth_0001.vectors.csv"]


def test_a_file_holding_annotations_is_never_written_over(stacks, tmp_path, capsys):
    folder = annotated_copy(stacks, tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    # Someone saved their annotations under the prediction name: overwriting is refused, even when asked for.
    shutil.copy(folder / "synth_0000.vectors.csv", out / "synth_0000.pred.vectors.csv")
    shutil.copy(folder / "synth_0000.vectors.json", out / "synth_0000.pred.vectors.json")
    before = fingerprint(out)
    image = folder / "synth_0000.tif"
    assert main(["predict", str(image), "--out", str(out), "--method", "classic", "--overwrite"]) == EXIT_FAILED_ITEMS
    assert "holds annotations" in capsys.readouterr().err
    after = fingerprint(out)
    assert {k: after[k] for k in before} == before


def test_old_predictions_are_still_read_as_predictions_and_never_trained_on(stacks, tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(stacks / "synth_0000.tif", folder)
    # A prediction as version ≤ 0.x wrote it: the annotations' name, a sidecar without "content".
    old = two_pairs("predicted", meta={"method": "classic", "image": "synth_0000.tif"})
    write_pairs(folder / "synth_0000.vectors.csv", old)
    side = json.loads(sidecar_path(folder / "synth_0000.vectors.csv").read_text())
    for key in ("content", "csv_sha256"):
        side.pop(key)
    sidecar_path(folder / "synth_0000.vectors.csv").write_text(json.dumps(side))
    assert read_vectors_content(folder / "synth_0000.vectors.csv") == "prediction"
    with pytest.raises(CellPolError, match="holds predictions of a model, not annotations"):
        dataset.load_annotated(dataset.match_files(folder)[0])
    assert vectors_content({}, ["manual", "predicted"]) == "annotation"
    assert vectors_content({"autosave": True}, ["manual"]) == "autosave"
    assert vectors_content({}, []) == "unknown"


# ------------------------------------------------------------------------------------------
# 2. One output per input, and a resume that checks which image an output came from
# ------------------------------------------------------------------------------------------
def test_outputs_are_unique_per_input_by_a_stable_rule(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    images = [a / "x.tif", b / "x.tif", a / "x.ome.tif", a / "x.TIF", a / "y.tif", a / "x.tif"]
    plan = plan_outputs(images, tmp_path / "p")
    names = [out.name for _, out in plan]
    assert len(plan) == 5  # the same file twice is predicted once
    assert len({n.lower() for n in names}) == 5
    assert names[4] == "y.pred.vectors.csv"  # no clash, no change
    assert names[2] == "x.ome.tif.pred.vectors.csv"  # told apart by the whole file name
    assert plan_outputs(images, tmp_path / "p") == plan  # stable
    assert plan_outputs([a / "x.tif", a / "x.ome.tif"], tmp_path / "p")[1][1].name == "x.ome.tif.pred.vectors.csv"


def two_images_named_x(stacks, tmp_path):
    """Two different images, both named x.tif, in folders a/ and b/."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(stacks / "synth_0000.tif", a / "x.tif")
    shutil.copy(stacks / "synth_0001.tif", b / "x.tif")
    return a, b


def test_two_images_with_one_name_get_two_outputs_with_their_own_vectors(stacks, tmp_path, capsys):
    a, b = two_images_named_x(stacks, tmp_path)
    out = tmp_path / "p"
    assert main(["predict", str(a / "x.tif"), str(b / "x.tif"), "--out", str(out), "--method", "classic"]) == EXIT_OK
    outputs = sorted(out.glob("*.pred.vectors.csv"))
    assert len(outputs) == 2
    recorded = {read_pairs(p).meta["image"] for p in outputs}
    assert recorded == {str((a / "x.tif").resolve()), str((b / "x.tif").resolve())}
    with open(out / "predict_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        assert int(row["vectors"]) == len(read_pairs(row["output"]))
        assert read_pairs(row["output"]).meta["image"] == str(Path(row["image"]).resolve())


def test_resume_compares_the_image_recorded_in_the_sidecar(stacks, tmp_path, capsys):
    a, b = two_images_named_x(stacks, tmp_path)
    out = tmp_path / "p"
    assert main(["predict", str(a / "x.tif"), "--out", str(out), "--method", "classic"]) == EXIT_OK
    first = (out / "x.pred.vectors.csv").read_bytes()
    # Another image of the same name into the same folder: not "skipped" with the first image's vectors.
    assert main(["predict", str(b / "x.tif"), "--out", str(out), "--method", "classic"]) == EXIT_FAILED_ITEMS
    assert f"was predicted from {(a / 'x.tif').resolve()}" in capsys.readouterr().err
    assert (out / "x.pred.vectors.csv").read_bytes() == first
    # The same image again: skipped (resumed).
    assert main(["predict", str(a / "x.tif"), "--out", str(out), "--method", "classic"]) == EXIT_OK
    assert "1 skipped" in capsys.readouterr().out
    # The image changed since (another size): recomputed only when asked.
    shutil.copy(stacks / "synth_0001.tif", a / "x.tif")
    with open(a / "x.tif", "ab") as handle:
        handle.write(b"\0" * 16)
    assert main(["predict", str(a / "x.tif"), "--out", str(out), "--method", "classic"]) == EXIT_FAILED_ITEMS
    assert "earlier version" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# 3. A vectors file is its CSV and its sidecar together
# ------------------------------------------------------------------------------------------
def test_the_sidecar_records_the_hash_of_its_csv(tmp_path):
    path = write_pairs(tmp_path / "a.vectors.csv", two_pairs())
    assert read_sidecar(path)["integrity"] == "ok"
    path.write_text(path.read_text().replace("20", "21"))  # edited by hand after writing
    assert read_sidecar(path)["integrity"] == "edited"
    assert read_pairs(path).voxel_size == VOXEL  # still read, with its sidecar


def test_a_kill_between_sidecar_and_csv_leaves_the_old_pair_whole(tmp_path, monkeypatch):
    path = write_pairs(tmp_path / "a.vectors.autosave.csv", two_pairs(), provenance={"pending_nucleus": None},
                       content="autosave")
    old_csv = path.read_bytes()
    import app.core.pairs as pairs_module

    def killed(*args, **kwargs):  # the process dies after the new sidecar, before the new CSV
        raise KeyboardInterrupt

    monkeypatch.setattr(pairs_module, "atomic_write_text", killed)
    newer = two_pairs().subset(np.array([0]))
    with pytest.raises(KeyboardInterrupt):
        write_pairs(path, newer, provenance={"pending_nucleus": [5.0, 5.0, 5.0]}, content="autosave")
    monkeypatch.undo()
    assert path.read_bytes() == old_csv
    assert json.loads(sidecar_path(path).read_text())["pending_nucleus"] == [5.0, 5.0, 5.0]  # the new sidecar
    recovered = read_pairs(path)
    assert len(recovered) == 2 and recovered.meta["pending_nucleus"] is None  # ... but the old one is used
    assert recovered.meta["integrity"] == "ok"
    # The next write starts from the consistent old pair.
    write_pairs(path, newer, provenance={"pending_nucleus": None}, content="autosave")
    assert len(read_pairs(path)) == 1 and read_sidecar(path)["integrity"] == "ok"


def test_stray_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = tmp_path / f".a.vectors.csv.{fileutil._HOST_TAG}-999999999.abc123.tmp"
    alive = tmp_path / f".b.vectors.csv.{fileutil._HOST_TAG}-{os.getpid()}.abc123.tmp"
    foreign = tmp_path / ".c.vectors.csv.000000-1.abc123.tmp"
    unrelated = tmp_path / ".notes.tmp"
    for p in (dead, alive, foreign, unrelated):
        p.write_text("x")
    assert fileutil.clean_stale_temporaries(tmp_path) == [dead]
    old = 3 * 24 * 3600
    os.utime(foreign, (foreign.stat().st_atime - old, foreign.stat().st_mtime - old))
    assert fileutil.clean_stale_temporaries(tmp_path) == [foreign]
    assert alive.exists() and unrelated.exists()


# ------------------------------------------------------------------------------------------
# 4. Disk and permission errors are one clear message
# ------------------------------------------------------------------------------------------
def _fail_commits(monkeypatch, code: int, after: int = 0):
    """Make every ``os.replace`` after the first ``after`` fail with ``code`` (as a full disk would)."""
    real = os.replace
    calls = [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] > after:
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst)

    monkeypatch.setattr(fileutil.os, "replace", replace)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only")])
def test_write_errors_are_one_clear_message(tmp_path, monkeypatch, code, words):
    _fail_commits(monkeypatch, code)
    with pytest.raises(OutputError, match=words) as caught:
        write_pairs(tmp_path / "a.vectors.csv", two_pairs())
    assert isinstance(caught.value, OSError) and caught.value.errno == code
    assert not list(tmp_path.glob(".*.tmp"))


def test_full_disk_stops_the_batch_and_keeps_the_summary_of_the_images_done(stacks, tmp_path, monkeypatch, capsys):
    images = sorted(stacks.glob("*.tif"))
    out = tmp_path / "p"
    # Image 1: sidecar, CSV, summary = 3 commits; then the disk is full.
    _fail_commits(monkeypatch, errno.ENOSPC, after=3)
    status = main(["predict", *map(str, images), "--out", str(out), "--method", "classic"])
    assert status == EXIT_USAGE
    err = capsys.readouterr().err
    assert "the disk is full" in err and "Traceback" not in err
    with open(out / "predict_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(Path(r["image"]).name, r["status"]) for r in rows] == [("synth_0000.tif", "ok")]
    assert not list(out.glob(".*.tmp"))


def test_read_only_or_misplaced_outputs_are_one_clear_message(stacks, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    image = str(sorted(stacks.glob("*.tif"))[0])
    legacy = tmp_path / "legacy.csv"
    legacy.write_text("10,12,14,13,2,3\n")
    preds = tmp_path / "preds"
    preds.mkdir()
    for gt in stacks.glob("*.vectors.*"):
        shutil.copy(gt, preds / gt.name)
    cases = [
        (["predict", image, "--out", str(a_file), "--method", "classic"], "is a file, not a folder"),
        (["synth", "--out", str(a_file), "--n", "1", "--shape", "4", "32", "32"], "a file"),
        (["synth", "--out", str(a_file / "sub"), "--n", "1", "--shape", "4", "32", "32"], "a file"),
        (["import-legacy", str(legacy), "--out", str(tmp_path)], "a folder of that name is in the way"),
        (["import-legacy", str(legacy), "--out", str(a_file / "x.vectors.csv")], "a file"),
        (["train", "--images", str(stacks), "--out", str(a_file / "model"), "--steps", "1", "--init", "none"],
         "is a file, not a folder"),
        (["vox2vox", "train", "--images", str(stacks), "--out", str(a_file / "g"), "--steps", "1"],
         "is a file, not a folder"),
        (["evaluate", "--gt", str(stacks), "--pred", str(preds), "--out", str(a_file)], "a file"),
    ]
    for argv, words in cases:
        assert main(argv) == EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (argv, err)
    # A folder nobody may write in (root ignores permissions, so the refusal is simulated where it is made).
    real_mkstemp = fileutil.tempfile.mkstemp

    def forbidden(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(fileutil.tempfile, "mkstemp", forbidden)
    for argv in (["predict", image, "--out", str(tmp_path / "locked"), "--method", "classic"],
                 ["synth", "--out", str(tmp_path / "locked"), "--n", "1", "--shape", "4", "32", "32"],
                 ["import-legacy", str(legacy), "--out", str(tmp_path / "locked" / "x.vectors.csv")],
                 ["train", "--images", str(stacks), "--out", str(tmp_path / "locked" / "m"), "--init", "none"]):
        assert main(argv) == EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert "permission denied" in err and "Traceback" not in err, (argv, err)


# ------------------------------------------------------------------------------------------
# 8. Files others can read
# ------------------------------------------------------------------------------------------
def test_outputs_follow_the_umask_and_temporaries_stay_private(tmp_path, monkeypatch):
    previous = os.umask(0o022)
    try:
        path = write_pairs(tmp_path / "a.vectors.csv", two_pairs())
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE(sidecar_path(path).stat().st_mode) == 0o644
        os.umask(0o077)
        private = write_pairs(tmp_path / "b.vectors.csv", two_pairs())
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        os.chmod(path, 0o664)  # a replaced file keeps the permissions it was given
        write_pairs(path, two_pairs())
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
    finally:
        os.umask(previous)
    real_chmod = os.chmod
    modes_while_written = []

    def chmod(target, mode):  # called once the temporary is complete, just before it is renamed
        modes_while_written.append(stat.S_IMODE(os.stat(target).st_mode))
        real_chmod(target, mode)

    monkeypatch.setattr(fileutil.os, "chmod", chmod)
    write_pairs(tmp_path / "c.vectors.csv", two_pairs())
    assert modes_while_written == [0o600, 0o600]  # sidecar and CSV: private until complete


def test_predict_batch_output_is_readable_by_the_group(stacks, tmp_path):
    previous = os.umask(0o002)
    try:
        from app.core.classic import predict_classic

        records = run_job(predict_batch(sorted(stacks.glob("*.tif"))[:1], tmp_path / "p", predict_classic))
    finally:
        os.umask(previous)
    assert records[0].status == "ok"
    for path in (records[0].output, sidecar_path(records[0].output), tmp_path / "p" / "predict_summary.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path


# ------------------------------------------------------------------------------------------
# 6 and 7: implausible vectors files (the image readers' cases are in test_implausible_input.py)
# ------------------------------------------------------------------------------------------
def test_a_one_based_legacy_file_holding_a_zero_is_questioned(tmp_path, capsys):
    from app.core.pairs import read_legacy_csv

    legacy = tmp_path / "Crop1.csv"
    legacy.write_text("10,12,14,13,2,3\n10,12,14,13,0,3\n")
    with pytest.raises(CellPolError, match=r"line 2: ZN = 0.*probably 0-based"):
        read_legacy_csv(legacy, one_based=True)
    assert read_legacy_csv(legacy, one_based=False).nuclei[1, 0] == 0  # as 0-based it is fine
    assert main(["import-legacy", str(legacy), "--out", str(tmp_path / "c.vectors.csv")]) == EXIT_USAGE
    assert "--zero-based" in capsys.readouterr().err
    assert main(["import-legacy", str(legacy), "--out", str(tmp_path / "c.vectors.csv"), "--zero-based"]) == EXIT_OK


def test_an_id_too_large_for_the_file_format_is_one_clear_message(tmp_path):
    path = tmp_path / "a.vectors.csv"
    path.write_text("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z,id\n1,2,3,4,5,6,12345678901234567890\n")
    with pytest.raises(CellPolError, match=r"line 2: id must be a whole number between"):
        read_pairs(path)
    path.write_text("nucleus_x,nucleus_y,nucleus_z,golgi_x,golgi_y,golgi_z,id\n1,2,3,4,5,6,9007199254740992\n")
    assert read_pairs(path).ids[0] == 2**53


def test_the_command_line_prints_implausible_input_warnings_as_one_line(tmp_path, capsys):
    import tifffile

    path = tmp_path / "coarse.tif"
    tifffile.imwrite(path, np.zeros((3, 2, 8, 8), np.uint8), imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZCYX", "spacing": 60, "unit": "um"})
    assert main(["info", str(path)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "cellpol: warning: " in err and "z step of 60 µm" in err and "Warning:" not in err


def test_a_kill_while_rewriting_a_file_of_an_older_version_leaves_it_whole(tmp_path, monkeypatch):
    path = write_pairs(tmp_path / "a.vectors.csv", two_pairs(), provenance={"note": "old"})
    side = json.loads(sidecar_path(path).read_text())
    del side["csv_sha256"], side["content"]  # as versions before hashes wrote it
    sidecar_path(path).write_text(json.dumps(side))
    import app.core.pairs as pairs_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pairs_module, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        write_pairs(path, two_pairs().subset(np.array([0])), provenance={"note": "new"})
    monkeypatch.undo()
    recovered = read_pairs(path)
    assert len(recovered) == 2 and recovered.meta["note"] == "old" and recovered.meta["integrity"] == "ok"
