#!/usr/bin/env bash
# Builds the Debian package from this tree: dist/pbx-zrtp_VERSION_ARCH.deb, checked
# with lintian (any error fails the build).
#   bash debian/build-deb.sh [OUTDIR]
# Installs the build dependencies it lacks (debian/control: debhelper, dh-virtualenv,
# python3-dev, libsrtp2-dev, ...; with sudo when not root) and lintian. Needs the
# network: dh-virtualenv installs the Python dependencies from PyPI.
# The tree is copied first (git's tracked and unignored files, uncommitted changes
# included), so nothing is written here but OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)"
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' pbx_zrtp/__init__.py)"
changelog="$(dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)"
if [ "$version" != "$changelog" ]; then
    echo "debian/changelog says $changelog, pbx_zrtp/__init__.py says $version" >&2
    exit 1
fi

sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
if ! command -v lintian >/dev/null || ! dpkg-checkbuilddeps >/dev/null 2>&1; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get build-dep -y -qq ./
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq lintian
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
src="$work/pbx-zrtp-$version"
mkdir "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -xf - -C "$src"
else  # an unpacked sdist
    tar --exclude=./.venv --exclude=./build --exclude=./dist -cf - . | tar -xf - -C "$src"
fi

(cd "$src" && dpkg-buildpackage -us -uc -b)
deb="$(ls "$work"/pbx-zrtp_"$version"_*.deb)"
lintian --fail-on error "$deb"
mv "$deb" "$out/"
echo "$out/$(basename "$deb")"
