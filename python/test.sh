#!/usr/bin/env bash
# Builds the `dlm` wheel with maturin and tests it in a fresh virtual environment (pytest),
# against the binaries of the same build (DLM_BIN, default target/release: build them first).
# PyPI: maturin, numpy, pytest, lm_eval (its core only: no torch), into the throw-away
# environment only.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd .. && pwd)"
export DLM_BIN="${DLM_BIN:-$root/target/release}"
for b in dlm-run dlm-score dlm-convert; do
  [ -x "$DLM_BIN/$b" ] || { echo "error: $DLM_BIN/$b is missing: cargo build --release --workspace first" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "maturin>=1.7,<2" numpy pytest "lm_eval==0.4.13"
# The wheel builds in the workspace's target/ (ggml and dlm are not compiled again).
"$work/venv/bin/maturin" build --release --quiet --out "$work/dist" 2>&1 | grep -v "^📦\|^🔗\|^🐍\|^📡" || true
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/dlm-*.whl
cd "$work" && "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$root/python/tests" "$@"
