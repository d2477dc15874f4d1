#!/usr/bin/env python3
"""Write a DiffuLLaMA GGUF the way llama.cpp's converter does, with PyPI `gguf` alone:
`llama` metadata without any diffusion key (no mask id, no shift, no attention.causal), the
tokenizer as llama.cpp's SentencePiece arrays (taken from llama.cpp's ggml-vocab-llama-spm.gguf,
so no embedded tokenizer.json), Q/K permuted, 2-D weights quantized by `gguf.quants`.

    python3 tests/pygguf_llama.py HF_DIR OUT.gguf {q8_0|q4_0}
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_gguf import load_source, permute  # noqa: E402

hf, out, kind = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[kind]
cfg = json.loads((hf / "config.json").read_text())
vocab = gguf.GGUFReader(Path(__file__).resolve().parent / "data/llama-spm/ggml-vocab-llama-spm.gguf")

w = gguf.GGUFWriter(out, "llama")
w.add_name("DiffuLLaMA-tiny")
w.add_context_length(cfg["max_position_embeddings"])
w.add_embedding_length(cfg["hidden_size"])
w.add_block_count(cfg["num_hidden_layers"])
w.add_feed_forward_length(cfg["intermediate_size"])
w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
w.add_head_count(cfg["num_attention_heads"])
w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
w.add_file_type(7 if kind == "q8_0" else 2)
w.add_tokenizer_model("llama")
w.add_token_list(vocab.fields["tokenizer.ggml.tokens"].contents())
w.add_token_scores(vocab.fields["tokenizer.ggml.scores"].contents())
w.add_token_types(vocab.fields["tokenizer.ggml.token_type"].contents())
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)

src = load_source(hf)
nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
leaf = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
for i in range(cfg["num_hidden_layers"]):
    for a, b in leaf.items():
        names[f"model.layers.{i}.{a}.weight"] = f"blk.{i}.{b}.weight"
for hf_name, name in names.items():
    a = src[hf_name].astype(np.float32)
    if ".attn_q." in name:
        a = permute(a, nh)
    elif ".attn_k." in name:
        a = permute(a, nkv)
    if a.ndim == 1:
        w.add_tensor(name, a)
    else:
        q = gguf.quants.quantize(a, qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
