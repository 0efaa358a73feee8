"""A small harness that kills a CellPol process at a chosen write step (used by tests/test_fault_injection.py).

Every file the app writes is committed by one ``os.replace`` (:func:`app.core.fileutil.atomic_path`). The
child process counts those calls and kills itself with ``os._exit`` (no ``finally``, no flushing: as a
``kill -9`` would) just before or just after the N-th one. "Before" leaves the finished temporary file
uncommitted (also what a kill while writing it leaves); "after" leaves that file committed and the next
one not begun. Killing at every step of a run therefore covers every state a kill can leave behind.

Run as ``python tests/faultkill.py MODULE:FUNCTION [ARGS...]``; the function gets ``ARGS`` as a list
(``app.cli:main`` is the command line). Environment:

``CELLPOL_KILL_AT``   ``N:before`` or ``N:after`` (1-based); unset: never kill
``CELLPOL_COUNT_TO``  a file to write the committed paths to (one a line) at a normal exit
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

KILLED = 86  # the exit status of a child killed by the harness
HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def _install(kill_at: Optional[str], count_to: Optional[str]) -> None:
    import atexit

    target, when = (int(kill_at.split(":")[0]), kill_at.split(":")[1]) if kill_at else (0, "")
    real_replace = os.replace
    calls = [0]

    committed: list[str] = []

    def replace(src, dst, *args, **kwargs):
        calls[0] += 1
        committed.append(os.fspath(dst))
        if calls[0] == target and when == "before":
            os._exit(KILLED)
        result = real_replace(src, dst, *args, **kwargs)
        if calls[0] == target and when == "after":
            os._exit(KILLED)
        return result

    os.replace = replace
    if count_to:
        atexit.register(lambda: Path(count_to).write_text("\n".join(committed)))


def run(entry: str, args: Sequence[str], kill_at: Optional[str] = None, count_to: Optional[Path] = None,
        cwd: Optional[Path] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``entry`` (``MODULE:FUNCTION``) with ``args`` in a child process, killed at ``kill_at``."""
    env = {k: v for k, v in os.environ.items() if k not in ("CELLPOL_KILL_AT", "CELLPOL_COUNT_TO")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    if kill_at:
        env["CELLPOL_KILL_AT"] = kill_at
    if count_to is not None:
        env["CELLPOL_COUNT_TO"] = str(count_to)
    return subprocess.run([sys.executable, str(HERE), entry, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def list_commits(entry: str, args: Sequence[str], scratch: Path, cwd: Optional[Path] = None) -> list[str]:
    """Run once without a kill; the files it committed (one per ``os.replace`` call), in order."""
    counter = scratch / "commits.txt"
    done = run(entry, args, count_to=counter, cwd=cwd)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return counter.read_text().splitlines()


def count_commits(entry: str, args: Sequence[str], scratch: Path, cwd: Optional[Path] = None) -> int:
    """Run once without a kill; the number of commits (``os.replace`` calls) it made."""
    return len(list_commits(entry, args, scratch, cwd))


def kill_points(n_commits: int) -> list[str]:
    """Every kill point of a run that makes ``n_commits`` commits."""
    return [f"{k}:{when}" for k in range(1, n_commits + 1) for when in ("before", "after")]


# ------------------------------------------------------------------------------------------
# An annotation session for the autosave: a fixed sequence of edits, each one autosaved
# ------------------------------------------------------------------------------------------
AUTOSAVE_NAME = "cells.vectors.autosave.csv"


def annotation_edits(model) -> None:
    """The edits of the scripted session: pairs placed, a half-placed nucleus, a move, a removal, an undo."""
    model.place((2, 10, 10))
    model.place((2, 12, 14))
    model.place((3, 30, 30))
    model.place((3, 33, 31))
    model.move_point(0, "golgi", (2, 13, 15))
    model.remove_pairs([1])
    model.undo()
    model.place((4, 40, 40))
    model.place((4, 42, 44))
    model.place((1, 5, 50))


def session_states() -> list[tuple]:
    """The state (pairs, pending nucleus) after every edit of :func:`annotation_edits`, the start included."""
    from app.core.annotation import AnnotationModel

    model = AnnotationModel(voxel_size=(1.0, 0.5, 0.5))
    states = [state_of(model.to_pairset(), model.pending_nucleus)]
    model.edited.connect(lambda: states.append(state_of(model.to_pairset(), model.pending_nucleus)))
    annotation_edits(model)
    return states


def state_of(pairs, pending) -> tuple:
    rows = tuple(sorted((int(i), tuple(n.round(4)), tuple(g.round(4)))
                        for i, n, g in zip(pairs.ids, pairs.nuclei, pairs.golgi)))
    return rows, (tuple(round(float(v), 4) for v in pending) if pending is not None else None)


def autosave_session(args: Sequence[str]) -> int:
    """Child entry: annotate with an :class:`~app.core.annotation.Autosaver` writing into ``args[0]``."""
    from app.core.annotation import AnnotationModel, Autosaver

    model = AnnotationModel(voxel_size=(1.0, 0.5, 0.5))
    Autosaver(model, Path(args[0]) / AUTOSAVE_NAME, provenance=lambda: {"image": "cells.tif"})
    annotation_edits(model)
    return 0


if __name__ == "__main__":
    _install(os.environ.get("CELLPOL_KILL_AT"), os.environ.get("CELLPOL_COUNT_TO"))
    module_name, function_name = sys.argv[1].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    status = function(sys.argv[2:])
    sys.exit(status if isinstance(status, int) else 0)
