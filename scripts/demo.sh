#!/usr/bin/env bash
# The main job on a small model: set up, build, make a 2-layer random-weight DiffuLLaMA
# checkpoint in the real Hugging Face layout (bf16, two shards, the real LLaMA tokenizer),
# convert it to Q4_0 GGUF, show what the file holds, and generate from it with dlm-run.
# (Random weights: the text is gibberish; the point is the whole path working.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace
out="${DLM_DEMO_DIR:-target/demo}"
python3 tests/make_checkpoint.py "$out/diffullama-tiny-hf"
target/release/dlm-convert "$out/diffullama-tiny-hf" -o "$out/diffullama-tiny-q4_0.gguf" --type q4_0
python3 - "$out/diffullama-tiny-q4_0.gguf" <<'PY'
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
for k in ["general.architecture", "general.name", "llama.block_count", "llama.embedding_length",
          "llama.attention.causal", "tokenizer.ggml.mask_token_id", "diffusion.shift_logits"]:
    print(f"{k:32} {r.fields[k].contents()}")
for t in r.tensors[:4]:
    print(f"{t.name:32} {t.tensor_type.name:6} {[int(d) for d in t.shape]}")
print(f"... {len(r.tensors)} tensors in {sys.argv[1]}")
PY
target/release/dlm-run -m "$out/diffullama-tiny-q4_0.gguf" -p "Today is a wonderful day," -n 32 --steps 16 --seed 42
