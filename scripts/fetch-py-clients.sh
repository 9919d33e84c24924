#!/usr/bin/env bash
# Installs the monitoring tools users point at a GPU (nvitop, gpustat, and NVIDIA's NVML binding
# they both load, nvidia-ml-py), at pinned versions from the package registry, into a virtual
# environment at .cache/py-clients, and prints its bin directory. The tests of real clients run
# them against the simulated GPU, directly and under `gpuslice run`. Quiet and quick when
# already installed; exits non-zero when they cannot be had (those tests then say they skipped).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.cache/py-clients"
PINS=(nvitop==1.4.2 gpustat==1.1.1 nvidia-ml-py==12.570.172 psutil==7.2.2 blessed==1.52.0 wcwidth==0.9.4 jinxed==2.1.0)
STAMP="$DEST/.pins"

if [[ -x "$DEST/bin/gpustat" && -x "$DEST/bin/nvitop" && "$(cat "$STAMP" 2>/dev/null)" == "${PINS[*]}" ]]; then
    echo "$DEST/bin"
    exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "fetch-py-clients: no python3" >&2; exit 1; }
rm -rf "$DEST"
python3 -m venv "$DEST" >&2
"$DEST/bin/pip" install --quiet --disable-pip-version-check --prefer-binary "${PINS[@]}" >&2
echo "${PINS[*]}" > "$STAMP"
echo "$DEST/bin"
