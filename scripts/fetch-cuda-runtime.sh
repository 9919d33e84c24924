#!/usr/bin/env bash
# Fetches NVIDIA's CUDA runtime wheel (headers + libcudart.so.12) into .cache/cuda-runtime/ and
# prints that directory. The headers are NVIDIA's and are never committed; cuda-gen and tests read
# them from here. Quiet and quick when already present.
set -euo pipefail

VERSION=12.9.79
PKG="nvidia-cuda-runtime-cu12==${VERSION}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cache/cuda-runtime"
STAMP="$DEST/.version"

die() { echo "fetch-cuda-runtime: $*" >&2; exit 1; }

if [[ -f "$DEST/include/cuda.h" && -f "$DEST/include/cudaTypedefs.h" && -f "$DEST/lib/libcudart.so.12" \
      && "$(cat "$STAMP" 2>/dev/null)" == "$VERSION" ]]; then
    echo "$DEST"
    exit 0
fi

PY="$(command -v python3 || command -v python || true)"
[[ -n "$PY" ]] || die "python3 is needed (pip downloads the wheel, zipfile unpacks it)"
"$PY" -m pip --version >/dev/null 2>&1 || die "pip is not available for $PY"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# The wheel is manylinux x86-64 only; name the platform so this also works from other hosts.
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --python-version 3 --implementation py \
    --dest "$TMP/wheel" "$PKG" >&2 \
    || die "could not download $PKG (no network or no index access?)"

WHEEL="$(ls "$TMP"/wheel/nvidia_cuda_runtime_cu12-"$VERSION"-*.whl 2>/dev/null | head -n1)"
[[ -n "$WHEEL" ]] || die "pip did not produce a $PKG wheel"
"$PY" -m zipfile -e "$WHEEL" "$TMP/x" || die "could not unpack $WHEEL"

SRC="$TMP/x/nvidia/cuda_runtime"
[[ -f "$SRC/include/cuda.h" && -f "$SRC/lib/libcudart.so.12" ]] || die "unexpected wheel layout in $WHEEL"

# Swap the whole directory in at once so an interrupted run never leaves a half-filled cache.
mkdir -p "$ROOT/.cache"
STAGE="$ROOT/.cache/.cuda-runtime.$$"
rm -rf "$STAGE"
mkdir -p "$STAGE"
cp -R "$SRC/include" "$SRC/lib" "$STAGE/"
echo "$VERSION" > "$STAGE/.version"
rm -rf "$DEST"
mv "$STAGE" "$DEST"
echo "$DEST"
