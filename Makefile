# CellPol Studio: two commands do all set-up on a fresh Debian machine.
#   make run   - create .venv if missing, install, open the app on a demo volume
#   make test  - create .venv if missing, install dev extras, run the whole suite under Xvfb
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# Debian packages Qt (xcb) and VTK need under Xvfb (see platform notes §2).
DEB_PKGS := libglib2.0-0 libdbus-1-3 libxkbcommon0 libfontconfig1 libgl1 libegl1 \
	xvfb xauth libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
	libxcb-render-util0 libxcb-render0 libxcb-shape0 libxcb-util1 libxcb-xkb1 libxcursor1 libosmesa6

XVFB := xvfb-run -a -s "-screen 0 1280x1024x24"

.PHONY: run test venv sysdeps clean bench package package-bundle package-deb package-run package-test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Installs the Debian packages only when some are missing and we are root; otherwise says what is missing.
sysdeps:
	@missing=""; for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "Note: missing Debian packages (install them as root):$$missing"; fi; \
	fi

run: $(STAMP) sysdeps
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then $(PY) -m app --demo; \
	else echo "No display found: starting the app on a virtual screen (Xvfb)."; $(XVFB) $(PY) -m app --demo; fi

test: $(STAMP) sysdeps
	@if command -v xvfb-run >/dev/null; then env -u QT_QPA_PLATFORM $(XVFB) $(PY) -m pytest $(PYTEST_ARGS); \
	else QT_QPA_PLATFORM=offscreen $(PY) -m pytest $(PYTEST_ARGS); fi

bench: $(STAMP)
	$(PY) benchmarks/synth_speed.py

# make package: the one-folder PyInstaller bundle (dist/cellpol), and on Linux the .deb and the per-user .run
# (packaging/README.md). Slow (minutes): never part of make test. make package-test installs both into a clean
# Debian 12 root and runs --selftest there (root, debootstrap, a Debian mirror).
package: package-bundle
	@if [ "$$(uname -s)" = Linux ]; then bash packaging/linux/build_deb.sh && bash packaging/linux/build_run.sh; fi

package-bundle: $(STAMP)
	$(PY) -m pip install --quiet -e '.[package]'
	$(PY) -m PyInstaller --noconfirm packaging/cellpol.spec

package-deb:
	bash packaging/linux/build_deb.sh

package-run:
	bash packaging/linux/build_run.sh

package-test:
	bash packaging/test_clean_root.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
