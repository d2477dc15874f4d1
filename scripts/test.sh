#!/usr/bin/env bash
# The test command: setup, then every test of the workspace (release profile: ggml builds once),
# then the Python package's (python/test.sh).
# FUZZ_SECONDS=N additionally runs the GGUF reader fuzz target for N seconds (needs cargo-fuzz).
# Ends with one line totalling every cargo test binary: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
log="$(mktemp)"
status=0
cargo test --release --workspace 2>&1 | tee "$log" || status=$?
# The Python package: its wheel built by maturin from the same target/, tested in a fresh venv.
if [ "$status" -eq 0 ]; then
  bash python/test.sh 2>&1 | tee -a "$log" || status=$?
fi
if [ "${FUZZ_SECONDS:-0}" -gt 0 ] && [ "$status" -eq 0 ]; then
  bash scripts/fuzz.sh "$FUZZ_SECONDS" || status=$?
fi
awk '/^test result:/ { p += $4; f += $6 }
     !/^test result:/ && / in [0-9.]+s$/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
