#!/usr/bin/env bash
# README's test command: builds the workspace once (the interposer, the simulated GPU, the
# probe workload and the binary are all artifacts the end-to-end tests run) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# NVIDIA's genuine CUDA runtime, for the test of the runtime's interception path.
bash scripts/fetch-cuda-runtime.sh >/dev/null
# promtool, for the check of the node agent's /metrics; that check is skipped without it.
bash scripts/fetch-promtool.sh >/dev/null || echo "promtool unavailable: its /metrics check will be skipped" >&2
# nvitop and gpustat at pinned versions, for the test of real monitoring tools; skipped without.
bash scripts/fetch-py-clients.sh >/dev/null || echo "nvitop/gpustat unavailable: their test will be skipped" >&2
# Formatting is part of the build's contract: a diff fails here, before anything compiles.
cargo fmt --all --check
# --all-targets: the tests are built with the same features as the binaries they run, so
# `cargo test` below compiles nothing again.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"
