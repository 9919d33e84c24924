#!/usr/bin/env bash
# Prints, one per line and sorted, the driver function names NVIDIA's libcudart.so.12 carries that
# are cuGetProcAddress names in crates/cuda-abi/src/generated.rs: what the runtime can ask the
# driver (or gpuslice's interposer) for. A reference list for tests, not an exact call trace.
#
#   scripts/cudart-requested-symbols.sh [--exported] [path/to/libcudart.so.12]
#
# --exported lists instead the runtime's strings that are exported driver symbols (DRIVER_SYMBOLS,
# e.g. cuMemAlloc_v2, cuMemcpy_ptds): the exact names it can resolve with dlsym.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GENERATED="$ROOT/crates/cuda-abi/src/generated.rs"
MODE=names
if [[ "${1:-}" == "--exported" ]]; then
    MODE=exported
    shift
fi
LIB="${1:-}"
if [[ -z "$LIB" ]]; then
    LIB="$("$ROOT/scripts/fetch-cuda-runtime.sh")/lib/libcudart.so.12"
fi
[[ -f "$LIB" ]] || { echo "cudart-requested-symbols: no such file: $LIB" >&2; exit 1; }
command -v strings >/dev/null || { echo "cudart-requested-symbols: strings (binutils) is needed" >&2; exit 1; }

if [[ "$MODE" == names ]]; then
    # PROC_TABLE rows look like `    ("cuMemAlloc", &[d("cuMemAlloc", 2000), ...]),`.
    known() { sed -nE 's/^    \("(cu[A-Za-z0-9_]+)", &\[.*/\1/p' "$GENERATED"; }
else
    # DRIVER_SYMBOLS rows look like `    "cuMemAlloc_v2",`.
    known() { sed -nE 's/^    "(cu[A-Za-z0-9_]+)",$/\1/p' "$GENERATED"; }
fi

comm -12 \
    <(strings -a "$LIB" | grep -E '^cu[A-Z][A-Za-z0-9_]*$' | LC_ALL=C sort -u) \
    <(known | LC_ALL=C sort -u)
