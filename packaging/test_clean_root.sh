#!/bin/bash
# Install the .deb and the per-user .run into a clean Debian 12 root that has no Python, run `cellpol --selftest`
# there under Xvfb (and off-screen), uninstall, and check nothing is left: the test that a double click works on
# a machine that never saw the project.
#
#   sudo packaging/test_clean_root.sh [DEB] [RUN]      (defaults: the newest dist/cellpol-studio*.deb / *.run)
#
# Needs: root, debootstrap, chroot, and a Debian mirror (apt's default, or MIRROR=URL). The clean root is a
# `debootstrap --variant=minbase bookworm` with only xvfb and xauth added (the test's own tools); the .deb's
# Depends pull the rest. BASE_TAR=FILE caches that root as a tarball (made on first use, reused after), so a
# rerun needs the mirror only for the .deb's dependencies. KEEP=1 keeps the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(realpath "${1:-$(ls -t dist/cellpol-studio_*.deb | head -1)}")
run=$(realpath "${2:-$(ls -t dist/cellpol-studio-*.run | head -1)}")
[ "$(id -u)" = 0 ] || { echo "needs root (debootstrap, chroot)" >&2; exit 2; }

work=$(mktemp -d /var/tmp/cellpol-clean-root.XXXXXX)
root=$work/root
mounted=()
cleanup() {
    for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
step() { echo; echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
present() { [ -e "$1" ] || [ -L "$1" ]; }   # /usr/bin/cellpol is an absolute symlink: dangling seen from outside
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
as_user() { chroot --userspec=tester:tester "$root" env -i PATH=/usr/bin:/bin HOME=/home/tester LANG=C.UTF-8 USER=tester "$@"; }

step "clean Debian 12 root in $root"
mkdir -p "$root"
if [ -n "${BASE_TAR:-}" ] && [ -f "$BASE_TAR" ]; then
    tar -xf "$BASE_TAR" -C "$root"
else
    debootstrap --variant=minbase --include=xvfb,xauth bookworm "$root" ${MIRROR:-}
    if [ -n "${BASE_TAR:-}" ]; then tar -cf "$BASE_TAR" -C "$root" .; fi
fi
for m in proc dev dev/pts; do
    case $m in proc) mount -t proc proc "$root/proc";; *) mount --bind "/$m" "$root/$m";; esac
    mounted+=("$root/$m")
done
mount -t tmpfs tmpfs "$root/dev/shm" 2>/dev/null && mounted+=("$root/dev/shm") || true
mount -t tmpfs tmpfs "$root/tmp"; mounted+=("$root/tmp")
cp /etc/resolv.conf "$root/etc/resolv.conf"
in_root sh -c 'for p in python python3 /usr/bin/python3*; do command -v "$p" && exit 1; done; exit 0' \
    || fail "the clean root has a Python"
in_root useradd -m tester
echo "no Python in the root: ok"

step ".deb: apt-get install ./$(basename "$deb")"
cp "$deb" "$root/tmp/"
in_root apt-get update -qq
start=$(date +%s)
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "/tmp/$(basename "$deb")" >"$work/apt.log" 2>&1 \
    || { tail -30 "$work/apt.log"; fail "apt-get install of the .deb"; }
echo "installed in $(( $(date +%s) - start )) s"
for f in /usr/bin/cellpol /opt/cellpol-studio/cellpol /usr/share/applications/cellpol.desktop \
         /usr/share/icons/hicolor/256x256/apps/cellpol.png /usr/share/mime/packages/cellpol.xml; do
    present "$root$f" || fail "missing after install: $f"
done
if [ -f "$root/usr/share/mime/globs2" ]; then
    grep -q 'application/x-cellpol-project:cellpol-project.json' "$root/usr/share/mime/globs2" \
        || fail "the project file type is not in the MIME database"
    echo "MIME database knows cellpol-project.json: ok"
fi
in_root sh -c 'command -v python3' && fail "installing the .deb pulled in a Python"
step ".deb: cellpol --selftest as a user, under Xvfb"
as_user xvfb-run -a cellpol --selftest || fail ".deb selftest under Xvfb"
step ".deb: cellpol --selftest as a user, off-screen (no DISPLAY)"
as_user cellpol --selftest || fail ".deb selftest off-screen"
step ".deb: apt-get purge"
in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq cellpol-studio >>"$work/apt.log" 2>&1 \
    || fail "apt-get purge"
for f in /usr/bin/cellpol /opt/cellpol-studio /usr/share/applications/cellpol.desktop \
         /usr/share/icons/hicolor/256x256/apps/cellpol.png /usr/share/mime/packages/cellpol.xml; do
    present "$root$f" && fail "left after purge: $f"
done
if [ -f "$root/usr/share/mime/globs2" ] && grep -q cellpol "$root/usr/share/mime/globs2"; then
    fail "the MIME database still has the project type after purge"
fi
echo "clean uninstall: ok"

step ".run: per-user install (no root) of $(basename "$run")"
cp "$run" "$root/home/tester/"
in_root chown tester:tester "/home/tester/$(basename "$run")"
as_user sh "/home/tester/$(basename "$run")" || fail ".run install"
h=$root/home/tester
for f in .local/bin/cellpol .local/share/cellpol-studio/cellpol .local/share/cellpol-studio/uninstall.sh \
         .local/share/applications/cellpol.desktop .local/share/mime/packages/cellpol.xml; do
    present "$h/$f" || fail "missing after the .run: ~/$f"
done
grep -q '^Exec="/home/tester/.local/share/cellpol-studio/cellpol" gui %f' "$h/.local/share/applications/cellpol.desktop" \
    || fail "the .run's menu entry does not name the installed app"
step ".run: cellpol --selftest under Xvfb"
as_user xvfb-run -a /home/tester/.local/bin/cellpol --selftest || fail ".run selftest under Xvfb"
step ".run: uninstall"
as_user /home/tester/.local/share/cellpol-studio/uninstall.sh || fail ".run uninstall"
left=$(cd "$h" && find .local -path '*cellpol*' | head -5)
[ -z "$left" ] || fail "left after the .run's uninstall: $left"
echo "clean uninstall: ok"

echo; echo "PASS: .deb and .run installed, self-tested and removed in a clean Debian 12 root"
