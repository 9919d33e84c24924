#!/usr/bin/env bash
# Puts promtool (Prometheus' own exposition checker) at .cache/promtool/promtool and prints its
# path, for the test that runs `promtool check metrics` on the node agent's /metrics. Taken from
# Debian's `prometheus` package without installing it (no service, no dependencies): only the
# one binary is kept. Uses a promtool already on PATH. Quiet and quick when already present;
# exits non-zero when none can be had (that test then says it skipped the check).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cache/promtool"

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
if [[ -x "$DEST/promtool" ]]; then
    echo "$DEST/promtool"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "fetch-promtool: no apt-get" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
if ! apt-get download prometheus >/dev/null 2>&1; then
    # The package lists may be missing or stale on a fresh machine.
    if [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq >/dev/null 2>&1 || true
    fi
    apt-get download prometheus >/dev/null 2>&1 \
        || { echo "fetch-promtool: could not download Debian's prometheus package" >&2; exit 1; }
fi
dpkg-deb -x prometheus_*.deb x
[[ -x x/usr/bin/promtool ]] || { echo "fetch-promtool: no usr/bin/promtool in the package" >&2; exit 1; }
mkdir -p "$DEST"
cp x/usr/bin/promtool "$DEST/promtool.tmp"
mv "$DEST/promtool.tmp" "$DEST/promtool"
echo "$DEST/promtool"
