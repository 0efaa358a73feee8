#!/bin/bash
# Wrap the PyInstaller bundle (dist/cellpol) in a self-extracting per-user installer (no root):
# dist/cellpol-studio-<version>-linux-<arch>.run, made with makeself (Debian package `makeself`).
# Users run `sh cellpol-studio-….run`; it unpacks to a temporary folder and runs install.sh from there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bundle=${1:-$root/dist/cellpol}
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/app/__init__.py")
out="$root/dist/cellpol-studio-${version}-linux-$(uname -m).run"
test -x "$bundle/cellpol" || { echo "no bundle at $bundle: run make package-bundle first" >&2; exit 1; }
if ! command -v makeself >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq makeself >/dev/null
fi
command -v makeself >/dev/null || { echo "makeself is missing: apt-get install makeself" >&2; exit 1; }

stage=$(mktemp -d "$root/dist/run-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"   # mktemp makes it 0700; it becomes the package's / (and the .run's folder)
cp -a "$bundle" "$stage/cellpol"
install -m 755 "$here/install.sh" "$stage/install.sh"
install -m 644 "$here/cellpol.desktop" "$here/cellpol-mime.xml" "$root/packaging/icons/cellpol.png" "$stage/"
# gzip: every Linux has it to unpack (a zstd .run would not unpack on a system without zstd).
makeself --gzip --complevel 6 --nox11 --tar-quietly "$stage" "$out" "CellPol Studio $version" ./install.sh
ls -l "$out"
