"""Cluster batches (app.core.cluster): ``cellpol predict/synth --workers N`` and ``--scheduler ADDRESS``.

One 2-worker LocalCluster (processes) serves the module: the tests reach it by its scheduler address, as a
campus cluster would be reached. The ``--workers`` path (a local cluster the job starts and closes) runs in
the synth test and the cancel test.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from app.cli import EXIT_FAILED_ITEMS, EXIT_OK, EXIT_USAGE, main
from app.core import cluster as cluster_module
from app.core.batch import PredictorSpec, ReadOptions, predict_batch
from app.core.cluster import ClusterOptions, _run_tasks, _Task, predict_batch_cluster, start_local_cluster
from app.core.errors import CancelledError
from app.core.jobs import CancelToken, ItemDone, Note
from app.core.jobs import run as run_job
from app.core.simulate import synthesize_dataset

distributed = pytest.importorskip("distributed")

VOXEL = (1.0, 0.5, 0.5)
STARTER = PredictorSpec("cellpol", (), "cpu")


@pytest.fixture(scope="module")
def client():
    cluster = start_local_cluster(2)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four small stacks and a truncated TIFF, in one folder."""
    folder = tmp_path_factory.mktemp("images")
    synthesize_dataset(folder, 4, shape=(12, 96, 96), voxel_size=VOXEL, seed=8)
    good = sorted(folder.glob("*.tif"))
    (folder / "corrupt.tif").write_bytes(good[0].read_bytes()[:1500])
    return folder


def rows(summary: Path) -> list[dict]:
    with open(summary, newline="") as handle:
        return list(csv.DictReader(handle))


def sidecar_without_time(csv_path: Path) -> dict:
    data = json.loads(csv_path.with_name(csv_path.name.replace(".csv", ".json")).read_text())
    data.pop("written")  # when it was written
    data.pop("timings_s", None)  # how long each stage took
    return data


def serial_reference(images: Path, out: Path) -> None:
    """The serial batch with the starter model, torch on one thread like each worker (``--worker-threads 1``):
    the convolutions' kernels may split their sums by thread count on some CPUs, so equal thread counts are what
    makes byte-equal CSVs the right expectation on any CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor, provenance = STARTER.build()
        run_job(predict_batch(sorted(images.glob("*.tif")), out, predictor, ReadOptions(), provenance))
    finally:
        torch.set_num_threads(threads)


def test_predict_on_a_cluster_writes_the_serial_csvs_and_a_corrupt_image_fails_alone(client, images, tmp_path,
                                                                                      capsys):
    serial = tmp_path / "serial"
    serial_reference(images, serial)
    out = tmp_path / "cluster"
    status = main(["predict", str(images), "--out", str(out), "--device", "cpu", "--scheduler",
                   client.scheduler.address, "--worker-threads", "1"])
    assert status == EXIT_FAILED_ITEMS
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # The corrupt image was tried once more, then reported; the four others were written.
    assert err.count("trying it once more") == 1 and "corrupt.tif: failed" in err
    assert "FAILED" in err and "(failed on all 2 attempts)" in err
    summary = rows(out / "predict_summary.csv")
    assert [(Path(r["image"]).name, r["status"]) for r in summary] == \
        [(Path(r["image"]).name, r["status"]) for r in rows(serial / "predict_summary.csv")]
    assert [r["status"] for r in summary] == ["failed", "ok", "ok", "ok", "ok"]
    assert "damaged or truncated" in summary[0]["error"] and "2 attempts" in summary[0]["error"]
    written = sorted(p.name for p in out.glob("*.pred.vectors.csv"))
    assert written == sorted(p.name for p in serial.glob("*.pred.vectors.csv")) and len(written) == 4
    assert sum(int(r["vectors"]) for r in summary) > 0  # a comparison of empty files would prove little
    for name in written:
        assert (out / name).read_text() == (serial / name).read_text(), name
        assert sidecar_without_time(out / name) == sidecar_without_time(serial / name), name


def test_each_worker_builds_the_model_once(client, images, tmp_path):
    good = sorted(images.glob("synth_*.tif"))
    records = run_job(predict_batch_cluster(good, tmp_path / "p", STARTER,
                                            ClusterOptions(scheduler=client.scheduler.address, torch_threads=1)))
    assert [r.status for r in records] == ["ok"] * 4 and all(r.attempts == 1 for r in records)
    cached = client.run(_cached_specs)
    assert all(specs in ([], [repr(STARTER)]) for specs in cached.values()), cached
    assert any(cached.values())


def _cached_specs() -> list[str]:
    from app.core.cluster import _PREDICTORS

    return [repr(spec) for spec in _PREDICTORS]


def test_resume_skips_the_outputs_already_written(client, images, tmp_path):
    good = sorted(images.glob("synth_*.tif"))
    out = tmp_path / "p"
    options = ClusterOptions(scheduler=client.scheduler.address, torch_threads=1)
    run_job(predict_batch_cluster(good, out, STARTER, options))
    kept = out / "synth_0001.pred.vectors.csv"
    kept_before = kept.stat().st_mtime_ns
    (out / "synth_0002.pred.vectors.csv").unlink()
    events = []
    records = run_job(predict_batch_cluster(good, out, STARTER, options), events.append)
    assert [r.status for r in records] == ["skipped", "skipped", "ok", "skipped"]
    assert kept.stat().st_mtime_ns == kept_before
    # The outputs already there are settled before any task is sent: they come first.
    assert [Path(e.item.image).name for e in events if isinstance(e, ItemDone)][-1] == "synth_0002.tif"
    # Everything done: no cluster is even contacted.
    events.clear()
    records = run_job(predict_batch_cluster(good, out, STARTER, ClusterOptions(scheduler="tcp://127.0.0.1:1")),
                      events.append)
    assert [r.status for r in records] == ["skipped"] * 4 and not any(isinstance(e, Note) for e in events)


def _flaky(counter: str, attempt: int = 1) -> int:
    """Fails on its first call for ``counter``, succeeds after; each call adds a line to the counter file."""
    path = Path(counter)
    with open(path, "a") as handle:
        handle.write(f"attempt {attempt}\n")
    if len(path.read_text().splitlines()) == 1:
        raise OSError("a transient failure")
    return attempt


def test_a_failed_task_is_tried_once_more_and_then_reported(client, tmp_path):
    flaky, broken = tmp_path / "flaky.log", tmp_path / "broken.log"
    tasks = [_Task(_flaky, (str(flaky),), "flaky"), _Task(_always_fails, (str(broken),), "broken")]
    seen = list(_run_tasks(client, tasks, None, retries=1, failed=lambda value: False))
    outcomes = {tasks[o.index].label: o for o in seen if not isinstance(o, Note)}
    assert outcomes["flaky"].value == 2 and outcomes["flaky"].error is None and outcomes["flaky"].attempts == 2
    assert outcomes["broken"].value is None and "always" in outcomes["broken"].error
    assert outcomes["broken"].attempts == 2
    assert flaky.read_text().splitlines() == ["attempt 1", "attempt 2"]
    assert broken.read_text().splitlines() == ["attempt 1", "attempt 2"]  # once more, not more
    assert sum(isinstance(o, Note) for o in seen) == 2


def _always_fails(counter: str, attempt: int = 1) -> None:
    with open(counter, "a") as handle:
        handle.write(f"attempt {attempt}\n")
    raise RuntimeError("fails always")


def _slow(counter: str, attempt: int = 1) -> None:
    with open(counter, "a") as handle:
        handle.write("started\n")
    time.sleep(1.0)


def test_cancel_cancels_the_tasks_not_started_and_closes_the_local_cluster(client, images, tmp_path, monkeypatch):
    counter = tmp_path / "started.log"
    cancel = CancelToken()
    tasks = [_Task(_slow, (str(counter),), f"slow{k}") for k in range(8)]
    with pytest.raises(CancelledError):
        for outcome in _run_tasks(client, tasks, cancel, retries=1, failed=lambda value: False):
            cancel.cancel()
    time.sleep(1.5)  # the tasks running when it was cancelled end; no other starts
    assert len(counter.read_text().splitlines()) <= 4

    started = []

    class Recorded(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(distributed, "LocalCluster", Recorded)
    cancel = CancelToken()
    seen = []

    def on_event(event):
        seen.append(event)
        if isinstance(event, ItemDone):
            cancel.cancel()

    good = sorted(images.glob("synth_*.tif"))
    with pytest.raises(CancelledError):
        run_job(predict_batch_cluster(good, tmp_path / "p", STARTER, ClusterOptions(workers=1), cancel=cancel),
                on_event)
    assert sum(isinstance(e, ItemDone) for e in seen) == 1
    assert len(started) == 1 and started[0].status.name == "closed"
    assert len(list((tmp_path / "p").glob("*.pred.vectors.csv"))) < len(good)


def test_synth_with_workers_writes_the_serial_files(tmp_path, capsys):
    argv = ["synth", "--n", "3", "--shape", "6", "48", "48", "--seed", "4", "--vary-samples"]
    assert main([*argv, "--out", str(tmp_path / "serial")]) == EXIT_OK
    assert main([*argv, "--out", str(tmp_path / "cluster"), "--workers", "2"]) == EXIT_OK
    assert "Local Dask cluster: 2 worker process(es)" in capsys.readouterr().err
    serial = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert serial == sorted(p.name for p in (tmp_path / "cluster").iterdir()) and len(serial) == 9
    for name in serial:
        a, b = tmp_path / "serial" / name, tmp_path / "cluster" / name
        if name.endswith(".json"):
            assert sidecar_without_time(a.with_name(name.replace(".json", ".csv"))) == \
                sidecar_without_time(b.with_name(name.replace(".json", ".csv"))), name
        else:
            assert a.read_bytes() == b.read_bytes(), name


def test_cluster_options_that_cannot_work_are_one_clear_message(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT_S", 2)
    image = str(sorted(images.glob("synth_*.tif"))[0])
    cases = [
        (["predict", image, "--out", str(tmp_path / "a"), "--method", "classic", "--scheduler", "tcp://127.0.0.1:1"],
         "Cannot reach the Dask scheduler at tcp://127.0.0.1:1"),
        (["predict", image, "--out", str(tmp_path / "b"), "--method", "classic", "--workers", "0"],
         "must be at least 1, got 0. (command line: --workers N)"),
        (["synth", "--out", str(tmp_path / "c"), "--n", "1", "--worker-threads", "2"], "--worker-threads needs"),
    ]
    for argv, words in cases:
        assert main(argv) == EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (argv, err)
    with pytest.raises(SystemExit):  # one place or the other
        main(["predict", image, "--out", "o", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
