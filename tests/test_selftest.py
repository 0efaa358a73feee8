"""`cellpol --selftest` (what the installers' tests run on a clean machine), from source: it passes on a working
installation and fails, saying why, when the starter model is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=300)


def test_selftest_passes_from_source():
    result = run("import sys; from app.cli import main; sys.exit(main(['--selftest']))")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CellPol Studio ") and lines[-1].startswith("PASS")
    assert any(line.startswith("ok: demo predicted:") for line in lines)


def test_selftest_fails_with_the_reason_without_a_starter_model(tmp_path):
    code = (
        "import sys, app.core.inference as inference\n"
        f"inference.models_dir = lambda: __import__('pathlib').Path({str(tmp_path)!r})\n"
        "from app.cli import main\n"
        "sys.exit(main(['--selftest']))\n"
    )
    result = run(code)
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "FAIL: no starter model is installed (resources/models)"
