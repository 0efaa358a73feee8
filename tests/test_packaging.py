"""The packaging files agree with the app (no build: make package is too slow for make test).

The bundle's data files exist and land where the app looks for them when frozen; the menu entry, the MIME type and
the Windows installer name the right program and project file; the frozen entry calls freeze_support.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"


def _bundle_files():
    spec = importlib.util.spec_from_file_location("bundle_files", PACKAGING / "bundle_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bf = _bundle_files()


def test_spec_uses_bundle_files_windowed_and_no_strip():
    spec = (PACKAGING / "cellpol.spec").read_text()
    assert "bf.datas()" in spec and "bf.prune(a.binaries)" in spec and "bf.prune(a.datas)" in spec
    assert "excludes=bf.EXCLUDES" in spec
    assert "console=False" in spec  # windowed
    assert "strip=True" not in spec and "--strip" not in spec.replace("Do not use a global\n# --strip", "")
    assert 'app" / "__main__.py' in spec


def test_bundle_data_files_are_the_shipped_models_and_icon():
    datas = bf.datas()
    for source, _ in datas:
        assert Path(source).is_file(), source
    by_dest = {}
    for source, dest in datas:
        by_dest.setdefault(dest, set()).add(Path(source).name)
    models = ROOT / "resources" / "models"
    shipped = {p.name for p in models.glob("*.json")}
    assert shipped, "no starter model in resources/models"
    for name in shipped:
        assert name in by_dest["resources/models"]
        assert Path(name).with_suffix(".safetensors").name in by_dest["resources/models"], name
    assert "cellpol.png" in by_dest["resources/icons"]
    for icon in ("cellpol.png", "cellpol.ico", "cellpol.icns"):
        assert (bf.ICON_DIR / icon).is_file(), icon


def test_prune_keeps_what_the_app_needs():
    for dest, _ in [(f"{d}/{Path(s).name}", s) for s, d in bf.datas()]:
        assert not bf.dropped(dest), dest
    for needed in ("PySide6/Qt/plugins/platforms/libqxcb.so", "PySide6/Qt/plugins/platforms/libqoffscreen.so",
                   "PySide6/Qt/plugins/platforms/qwindows.dll", "torch/lib/libtorch_cpu.so",
                   "vtkmodules/libvtkRenderingOpenGL2.so", "imagecodecs/_jpeg8.abi3.so"):
        assert not bf.dropped(needed), needed
    assert bf.dropped("torch/include/ATen/ATen.h")
    assert bf.dropped("matplotlib/mpl-data/sample_data/goes_r.json")
    toc = [("torch/include/x.h", "/s/x.h", "DATA"), ("resources/models/a.json", "/s/a.json", "DATA")]
    assert bf.prune(toc) == [toc[1]]


def test_models_found_in_a_simulated_frozen_layout(tmp_path):
    """Lay out the app as PyInstaller does (modules under sys._MEIPASS/app, the spec's data files at their bundle
    folders) and look the starter models up from there, with the source tree out of reach."""
    meipass = tmp_path / "dist" / "cellpol" / "_internal"
    shutil.copytree(ROOT / "app", meipass / "app", ignore=shutil.ignore_patterns("__pycache__"))
    for source, dest in bf.datas():
        (meipass / dest).mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, meipass / dest)
    probe = textwrap.dedent(f"""
        import sys
        sys.frozen = True
        sys._MEIPASS = {str(meipass)!r}
        sys.path.insert(0, sys._MEIPASS)
        import app
        assert app.__file__.startswith(sys._MEIPASS), app.__file__
        from app.ui import demo
        from app.core.inference import find_starter_model, models_dir, starter_models
        print(models_dir())
        print(find_starter_model())
        print(sorted(starter_models()))
        print(len(demo._shipped_models()))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["QT_QPA_PLATFORM"] = "offscreen"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    folder, starter, dims, n_demo = out.stdout.split("\n")[:4]
    assert Path(folder) == meipass / "resources" / "models"
    assert Path(starter).parent == meipass / "resources" / "models"
    assert dims == "[2, 3]"
    assert int(n_demo) == len(list((ROOT / "resources" / "models").glob("*.json")))


def test_desktop_entry_and_mime_type_name_the_app_and_the_project_file():
    from app.core.project import PROJECT_FILE

    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(PACKAGING / "linux" / "cellpol.desktop")
    desktop = entry["Desktop Entry"]
    assert desktop["Exec"].split()[0] == bf.APP_NAME and "%f" in desktop["Exec"]
    assert desktop["Exec"].split()[1] == "gui"  # the subcommand that opens files in the window
    assert desktop["Icon"] == "cellpol" and (bf.ICON_DIR / "cellpol.png").is_file()
    assert desktop["Name"] == bf.DISPLAY_NAME
    assert bf.MIME_TYPE in desktop["MimeType"].split(";")
    mime = (PACKAGING / "linux" / "cellpol-mime.xml").read_text()
    assert f'type="{bf.MIME_TYPE}"' in mime
    assert f'pattern="{PROJECT_FILE}"' in mime and bf.PROJECT_FILE == PROJECT_FILE
    # the .deb and the .run install them under these names, which the clean-root test checks
    deb = (PACKAGING / "linux" / "build_deb.sh").read_text()
    assert "/usr/share/applications/cellpol.desktop" in deb and "/usr/share/mime/packages/cellpol.xml" in deb
    assert "ln -s /opt/cellpol-studio/cellpol" in deb
    run = (PACKAGING / "linux" / "install.sh").read_text()
    assert 's|^Exec=cellpol |Exec=\\"$prefix/cellpol\\" |' in run  # the desktop entry's Exec must start like that


def test_inno_setup_script_names_the_bundle_and_the_project_type():
    iss = (PACKAGING / "windows" / "cellpol.iss").read_text()
    assert re.search(r'#define AppExe "cellpol\.exe"', iss)
    assert 'Source: "..\\..\\dist\\cellpol\\*"' in iss  # COLLECT(name="cellpol")
    assert "{group}\\{#AppName}" in iss and "{uninstallexe}" in iss
    assert "SetupIconFile=..\\icons\\cellpol.ico" in iss
    assert "OpenWithProgids" in iss and "Directory\\shell" in iss and bf.PROJECT_FILE in iss
    assert '""{app}\\{#AppExe}"" gui ""%1""' in iss


def test_frozen_entry_calls_freeze_support_before_main():
    tree = ast.parse((ROOT / "app" / "__main__.py").read_text())
    guard = next(n for n in tree.body if isinstance(n, ast.If))
    calls = [ast.unparse(n) for n in ast.walk(guard) if isinstance(n, ast.Call)]
    assert calls.index("multiprocessing.freeze_support()") < calls.index("main()")


def test_make_test_does_not_build_the_package():
    makefile = (ROOT / "Makefile").read_text()
    test_rule = re.search(r"^test:(.*)$", makefile, re.M).group(1)
    assert "package" not in test_rule
    assert re.search(r"^package: package-bundle", makefile, re.M)


@pytest.mark.parametrize("script", ["linux/build_deb.sh", "linux/build_run.sh", "linux/install.sh",
                                    "linux/postinst", "linux/postrm", "macos/build_dmg.sh", "test_clean_root.sh"])
def test_shell_scripts_parse(script):
    shell = "bash" if script.endswith((".sh",)) and "install.sh" not in script else "sh"
    out = subprocess.run([shell, "-n", str(PACKAGING / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_selected_strip_spares_openblas():
    import fnmatch

    assert "torch/lib/libtorch_cpu.so" in bf.STRIP
    for blas in ("numpy.libs/libscipy_openblas64_-ff651d7f.so", "scipy.libs/libscipy_openblas-68440149.so"):
        assert not any(fnmatch.fnmatchcase(blas, pattern) for pattern in bf.STRIP), blas


def test_the_window_icon_is_found_from_the_source_tree():
    from app.ui.main_window import app_icon_path

    icon = app_icon_path()
    assert icon is not None and icon.name == "cellpol.png" and icon.stat().st_size > 1000
