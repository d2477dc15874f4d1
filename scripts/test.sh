#!/usr/bin/env bash
# The test command: setup, then every test of the workspace (release profile: ggml builds once).
# FUZZ_SECONDS=N additionally runs the GGUF reader fuzz target for N seconds (needs cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release --workspace
if [ "${FUZZ_SECONDS:-0}" -gt 0 ]; then
  bash scripts/fuzz.sh "$FUZZ_SECONDS"
fi
