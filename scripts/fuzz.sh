#!/usr/bin/env bash
# Fuzz for N seconds per target (default 60): gguf_reader (the GGUF reader and the tokenizer built
# from what it parses) and load_path (reader → architecture → hyper-parameters → tensor
# validation → tokenizer, nothing computed). Uses cargo-fuzz (libFuzzer + AddressSanitizer);
# installs it if missing. RUSTC_BOOTSTRAP lets the stable toolchain accept the sanitizer flags.
# Fails, printing the report, if a crash is found.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz@0.13.2
python3 fuzz/seed.py >/dev/null
for target in gguf_reader load_path; do
  log="$(mktemp)"
  status=0
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- \
    -max_total_time="$secs" -max_len=8192 -rss_limit_mb=4096) >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "fuzz: $target FAILED (exit $status); the crashing input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^Done [0-9]+ runs" "$log" || true
  echo "fuzz: $target ran ${secs}s with no crash"
done
