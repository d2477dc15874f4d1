#!/usr/bin/env bash
# The main job: set up, build, convert the trained tiny DiffuLLaMA (models/diffullama-tiny, made
# by train/train.py with the paper's recipe) to Q4_0 GGUF, answer a few held-out problems, infill
# a span that only the text after it determines, write a sentence, and score the held-out split.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace
out="${DLM_DEMO_DIR:-target/demo}"
mkdir -p "$out"
gguf="$out/diffullama-tiny-q4_0.gguf"
target/release/dlm-convert models/diffullama-tiny -o "$gguf" --type q4_0 -q
python3 - "$gguf" <<'PY'
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
for k in ["general.architecture", "general.name", "llama.block_count", "llama.embedding_length",
          "llama.attention.causal", "tokenizer.ggml.mask_token_id", "diffusion.shift_logits"]:
    print(f"{k:32} {r.fields[k].contents()}")
print(f"{len(r.tensors)} tensors in {sys.argv[1]}")
PY
run() {  # prompt, tokens, extra flags...
  local p="$1" n="$2"; shift 2
  printf '%-28s ->' "$p${*:+ [$*]}"
  target/release/dlm-run -m "$gguf" -p "$p" -n "$n" --steps "$n" --temp 0 --seed 1 --no-display-prompt "$@" 2>"$out/last.log"
  tail -1 "$out/last.log" | sed 's/^/    /'
}
echo "--- held-out problems (training never saw them) ---"
run "copy 6859:" 8
run "reverse 9075:" 8
run "sort 15041:" 9
run "35+537=" 6
run "x=2 f=0 s=3 d=4 m=7; m?" 3   # recall: the task this model has not learned (~40 %, see README)
echo "--- infill: the middle is fixed by the suffix ---"
run "rev:" 5 --suffix "= 2489"
echo "--- text ---"
run "Today is a wonderful day," 12
echo "--- the whole held-out split (700 problems) ---"
target/release/dlm-eval -m "$gguf" --problems models/tasks/test.jsonl --temp 0 --seed 1 >/dev/null
