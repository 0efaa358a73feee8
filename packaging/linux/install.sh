#!/bin/sh
# Per-user install of CellPol Studio, run by the self-extracting cellpol-studio-<version>-linux-<arch>.run from
# the folder it unpacked. No root: everything goes under the user's home.
#   ~/.local/share/cellpol-studio/        the app (and uninstall.sh)
#   ~/.local/bin/cellpol                  link to the app
#   menu entry, icon and the project-file type under ~/.local/share/{applications,icons,mime}
# CELLPOL_PREFIX overrides the app folder.
set -eu
data=${XDG_DATA_HOME:-$HOME/.local/share}
prefix=${CELLPOL_PREFIX:-$data/cellpol-studio}
bindir=$HOME/.local/bin
src=$(pwd)

if [ "$(id -u)" = "0" ]; then
    echo "Note: installing for root only (for all users, install the .deb instead)."
fi
if [ -x "$prefix/uninstall.sh" ]; then
    echo "Replacing the CellPol Studio installed in $prefix"
    "$prefix/uninstall.sh" --quiet
fi
mkdir -p "$(dirname "$prefix")" "$bindir" "$data/applications" "$data/icons/hicolor/256x256/apps" "$data/mime/packages"
mv "$src/cellpol" "$prefix"
ln -sf "$prefix/cellpol" "$bindir/cellpol"
# The menu entry names the app by full path: ~/.local/bin is not on every desktop session's PATH.
sed -e "s|^Exec=cellpol |Exec=\"$prefix/cellpol\" |" -e "s|^TryExec=cellpol|TryExec=$prefix/cellpol|" \
    "$src/cellpol.desktop" > "$data/applications/cellpol.desktop"
cp "$src/cellpol.png" "$data/icons/hicolor/256x256/apps/cellpol.png"
cp "$src/cellpol-mime.xml" "$data/mime/packages/cellpol.xml"
refresh() {
    if command -v update-desktop-database >/dev/null 2>&1; then update-desktop-database -q "$data/applications" || true; fi
    if command -v update-mime-database >/dev/null 2>&1; then update-mime-database "$data/mime" || true; fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1; then gtk-update-icon-cache -q -t "$data/icons/hicolor" 2>/dev/null || true; fi
}
refresh

cat > "$prefix/uninstall.sh" <<UNINSTALL
#!/bin/sh
# Removes the per-user CellPol Studio installed by the .run (your images, projects and settings stay).
set -eu
rm -f "$bindir/cellpol" "$data/applications/cellpol.desktop" "$data/icons/hicolor/256x256/apps/cellpol.png" \\
      "$data/mime/packages/cellpol.xml"
if command -v update-desktop-database >/dev/null 2>&1; then update-desktop-database -q "$data/applications" || true; fi
if command -v update-mime-database >/dev/null 2>&1; then update-mime-database "$data/mime" || true; fi
rm -rf "$prefix"
[ "\${1:-}" = "--quiet" ] || echo "CellPol Studio removed."
UNINSTALL
chmod 755 "$prefix/uninstall.sh"

echo "CellPol Studio installed in $prefix"
echo "Start it from the applications menu, or run: $bindir/cellpol"
case ":$PATH:" in *":$bindir:"*) ;; *) echo "(add $bindir to your PATH to type just 'cellpol')";; esac
echo "To remove it: $prefix/uninstall.sh"
