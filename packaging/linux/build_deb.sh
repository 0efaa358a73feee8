#!/bin/bash
# Wrap the PyInstaller bundle (dist/cellpol) in a .deb: dist/cellpol-studio_<version>_amd64.deb.
#   /opt/cellpol-studio/            the bundle
#   /usr/bin/cellpol                symlink to /opt/cellpol-studio/cellpol
#   /usr/share/applications/cellpol.desktop, /usr/share/icons/hicolor/256x256/apps/cellpol.png
#   /usr/share/mime/packages/cellpol.xml   (application/x-cellpol-project, glob cellpol-project.json)
# Run from the repository root after the bundle is built (make package does both).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bundle=${1:-$root/dist/cellpol}
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/app/__init__.py")
arch=$(dpkg --print-architecture)
out="$root/dist/cellpol-studio_${version}_${arch}.deb"
test -x "$bundle/cellpol" || { echo "no bundle at $bundle: run make package-bundle first" >&2; exit 1; }

stage=$(mktemp -d "$root/dist/deb-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"   # mktemp makes it 0700; it becomes the package's / (and the .run's folder)
install -d "$stage/DEBIAN" "$stage/opt" "$stage/usr/bin" "$stage/usr/share/applications" \
    "$stage/usr/share/icons/hicolor/256x256/apps" "$stage/usr/share/mime/packages"
cp -a "$bundle" "$stage/opt/cellpol-studio"
ln -s /opt/cellpol-studio/cellpol "$stage/usr/bin/cellpol"
install -m 644 "$here/cellpol.desktop" "$stage/usr/share/applications/cellpol.desktop"
install -m 644 "$root/packaging/icons/cellpol.png" "$stage/usr/share/icons/hicolor/256x256/apps/cellpol.png"
install -m 644 "$here/cellpol-mime.xml" "$stage/usr/share/mime/packages/cellpol.xml"
install -m 755 "$here/postinst" "$here/postrm" "$stage/DEBIAN/"
size_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: cellpol-studio
Version: $version
Section: science
Priority: optional
Architecture: $arch
Installed-Size: $size_kb
Depends: libc6 (>= 2.34), libgl1, libegl1, libglx-mesa0 | libglx-vendor, libegl-mesa0 | libegl-vendor, libxcb1, libx11-xcb1, libxkbcommon0, libfontconfig1, libfreetype6, libdbus-1-3
Recommends: libgl1-mesa-dri, libxcursor1, fonts-dejavu-core, desktop-file-utils, shared-mime-info
Maintainer: CellPol Studio maintainers <maintainers@cellpol.invalid>
Description: CellPol Studio: nucleus-to-Golgi cell polarity in 3D microscopy
 Desktop app and command line (cellpol) to find nucleus and Golgi pairs in 3D
 microscopy stacks, review them and measure cell polarity. Self-contained:
 brings its own Python, Qt, VTK and PyTorch (CPU) in /opt/cellpol-studio.
CONTROL
# zstd: read by dpkg on Debian >= 12 and Ubuntu >= 21.10 (the bundle needs glibc >= 2.34 anyway).
dpkg-deb --build -Zzstd -z10 --root-owner-group "$stage" "$out"
ls -l "$out"
