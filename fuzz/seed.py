#!/usr/bin/env python3
"""Write small seed GGUFs for the fuzz targets into fuzz/corpus/{gguf_reader,load_path}/.

Seeds come from PyPI gguf's writer (independent of ours): every value type, f32/f16/Q8_0
tensors, and a tiny SentencePiece-style vocabulary so the tokenizer rebuild path is reached.
The load path starts from whole (tiny, 1-layer) LLaMA models that pass every check, so mutations
reach the hyper-parameter and tensor validation, not only the container parser.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import gguf

here = Path(__file__).resolve().parent
out = here / "corpus" / "gguf_reader"
out.mkdir(parents=True, exist_ok=True)

subprocess.run([sys.executable, str(here.parent / "tests" / "pygguf_write.py"), str(out / "values.gguf")], check=True)

toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(4)] + ["▁", "a", "b", "ab", "▁a", "▁ab", "ти"]


def add_vocab(w):
    """A tiny SentencePiece-style vocabulary: control, byte and normal tokens with scores."""
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * 7 + [-1.0, -2.0, -3.0, -0.5, -0.7, -0.1, -4.0])
    w.add_token_types([2, 3, 3, 6, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


w = gguf.GGUFWriter(out / "vocab.gguf", "llama")
add_vocab(w)
w.add_array("nested", [[1, 2], [3]])
w.add_tensor("t", np.arange(64, dtype=np.float32).reshape(2, 32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

w = gguf.GGUFWriter(out / "empty.gguf", "llama")
w.write_header_to_file()
w.write_kv_data_to_file()
w.close()


def tiny_llama(path, n_embd=8, n_head=2, n_head_kv=2, n_ff=16, tied=False, f16=False, causal=False):
    """A complete 1-layer LLaMA in llama.cpp's layout, with our diffusion keys and a vocabulary."""
    rng = np.random.default_rng(0)
    dt = np.float16 if f16 else np.float32
    n_vocab = len(toks)
    hd = n_embd // n_head
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_rope_dimension_count(hd)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_causal_attention(causal)
    add_vocab(w)
    w.add_mask_token_id(13)
    w.add_bool("diffusion.shift_logits", True)
    m = lambda *shape: rng.standard_normal(shape).astype(dt)
    w.add_tensor("token_embd.weight", m(n_vocab, n_embd))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.attn_q.weight", m(n_head * hd, n_embd))
    w.add_tensor("blk.0.attn_k.weight", m(n_head_kv * hd, n_embd))
    w.add_tensor("blk.0.attn_v.weight", m(n_head_kv * hd, n_embd))
    w.add_tensor("blk.0.attn_output.weight", m(n_embd, n_head * hd))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", m(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_up.weight", m(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_down.weight", m(n_embd, n_ff))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    if not tied:
        w.add_tensor("output.weight", m(n_vocab, n_embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


load = here / "corpus" / "load_path"
load.mkdir(parents=True, exist_ok=True)
tiny_llama(load / "llama.gguf")
tiny_llama(load / "llama-gqa-tied.gguf", n_head=4, n_head_kv=2, tied=True)
tiny_llama(load / "llama-f16-causal.gguf", f16=True, causal=True)
seeds = ["values.gguf", "vocab.gguf", "empty.gguf"]
for name in seeds:
    (load / name).write_bytes((out / name).read_bytes())

print(f"seeds in {out}: {seeds}; in {load}: {seeds + ['llama.gguf', 'llama-gqa-tied.gguf', 'llama-f16-causal.gguf']}")
