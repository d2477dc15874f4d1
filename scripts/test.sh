#!/usr/bin/env bash
# The test command: setup, then every test of the workspace (release profile: ggml builds once).
# FUZZ_SECONDS=N additionally runs the GGUF reader fuzz target for N seconds (needs cargo-fuzz).
# Ends with one line totalling every cargo test binary: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
log="$(mktemp)"
status=0
cargo test --release --workspace 2>&1 | tee "$log" || status=$?
if [ "${FUZZ_SECONDS:-0}" -gt 0 ] && [ "$status" -eq 0 ]; then
  bash scripts/fuzz.sh "$FUZZ_SECONDS" || status=$?
fi
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
