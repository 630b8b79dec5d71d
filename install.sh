#!/usr/bin/env bash
# Installs pbx_zrtp on a Debian machine into ./.venv.
#   bash install.sh          runtime (with the Asterisk and FreeSWITCH clients)
#   bash install.sh --dev    also the test tools, the postgres extra, and the system packages
#                            the tests use (postgresql: tests start their own throwaway server;
#                            clang + its libFuzzer runtime: the native worker's fuzz target;
#                            debhelper, dh-virtualenv, lintian: tests/test_debian.py builds the .deb)
# The native fast path (pbx_zrtp/relay/_fastpath.c) is compiled by the pip install below:
# run this again after changing it.
#   extras for production: .venv/bin/python -m pip install -e ".[postgres]" (shared cache)
set -euo pipefail
cd "$(dirname "$0")"
dev=0
[ "${1:-}" = "--dev" ] && dev=1

pkgs=(python3 python3-venv python3-dev build-essential pkg-config libsrtp2-dev)
[ "$dev" = 1 ] && pkgs+=(libbzrtp-dev libsqlite3-dev postgresql iproute2 nftables clang libclang-rt-14-dev
                          debhelper dh-virtualenv lintian)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="asterisk,freeswitch"
[ "$dev" = 1 ] && extras="$extras,postgres,dev"
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "pbx_zrtp installed in $(pwd)/.venv"
