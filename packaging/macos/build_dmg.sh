#!/bin/bash
# macOS: turn "dist/CellPol Studio.app" (made by `python -m PyInstaller packaging/cellpol.spec`, whose BUNDLE step
# runs on macOS) into dist/cellpol-studio-<version>-macos-<arch>.dmg, signing and notarising when the secrets are
# set. Run from the repository root on a Mac (CI: .github/workflows/installers.yml, macos-14 = arm64).
#   MACOS_SIGN_IDENTITY   "Developer ID Application: …" in the keychain: sign the .app and the .dmg
#   APPLE_ID, APPLE_TEAM_ID, APPLE_APP_PASSWORD: notarise the .dmg and staple the ticket (needs the identity)
# Without them the .app keeps PyInstaller's ad-hoc signature: it runs after right-click > Open.
set -euo pipefail
app="dist/CellPol Studio.app"
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' app/__init__.py)
dmg="dist/cellpol-studio-${version}-macos-$(uname -m).dmg"
[ -d "$app" ] || { echo "no $app: run python -m PyInstaller --noconfirm packaging/cellpol.spec first" >&2; exit 1; }

if [ -n "${MACOS_SIGN_IDENTITY:-}" ]; then
    codesign --force --deep --options runtime --timestamp \
        --entitlements packaging/macos/entitlements.plist --sign "$MACOS_SIGN_IDENTITY" "$app"
    codesign --verify --deep --strict "$app"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -R "$app" "$stage/"
ln -s /Applications "$stage/Applications"
rm -f "$dmg"
hdiutil create -volname "CellPol Studio" -srcfolder "$stage" -ov -format UDZO "$dmg"

if [ -n "${MACOS_SIGN_IDENTITY:-}" ]; then
    codesign --force --timestamp --sign "$MACOS_SIGN_IDENTITY" "$dmg"
    if [ -n "${APPLE_ID:-}" ] && [ -n "${APPLE_TEAM_ID:-}" ] && [ -n "${APPLE_APP_PASSWORD:-}" ]; then
        xcrun notarytool submit "$dmg" --apple-id "$APPLE_ID" --team-id "$APPLE_TEAM_ID" \
            --password "$APPLE_APP_PASSWORD" --wait
        xcrun stapler staple "$dmg"
    fi
fi
ls -l "$dmg"
