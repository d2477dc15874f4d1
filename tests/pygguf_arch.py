#!/usr/bin/env python3
"""Write a small random-weight GGUF of a LLaMA-family diffusion architecture the way llama.cpp's
converter lays it out, with PyPI `gguf` alone (independent of dlm's writer):

    python3 tests/pygguf_arch.py {llada|dream|gpt2} OUT.gguf [--type f32|f16|q8_0|q4_0] [--no-diffusion-keys]
        [--drop TENSOR] [--seed N]

- `llada`: LLaMA's tensors (`attn_q/k/v/output`, `ffn_gate/up/down`, RMS norms), no biases;
  llama.cpp's LLaDA converter writes `tokenizer.ggml.mask_token_id` and
  `diffusion.shift_logits = false`.
- `dream`: Qwen2's: the same plus `attn_q/k/v.bias` (f32); `diffusion.shift_logits = true` and
  the mask id. Its Q/K rows stay in Hugging Face's order (NEOX RoPE), as llama.cpp's Qwen2
  converter leaves them.
- `gpt2` (DiffuGPT): llama.cpp's `gpt2` layout: `token_embd`, `position_embd`, per block
  `attn_norm.{weight,bias}`, fused `attn_qkv.{weight,bias}`, `attn_output.{weight,bias}`,
  `ffn_norm.{weight,bias}`, `ffn_up/ffn_down.{weight,bias}`, then `output_norm.{weight,bias}`,
  the LM head tied to `token_embd` (no `output.weight`); `diffusion.shift_logits = true`.

The vocabulary is llama.cpp's LLaMA SentencePiece one (32000 tokens, tests/data/llama-spm), so
the mask id is a token of that vocabulary (31999), not the families' own 126336 / 151666.
--no-diffusion-keys leaves the mask id and the shift out (a file that relies on the family's
defaults). Shapes: 2 layers, hidden 128, 4 heads (2 KV heads), FFN 320, context 256.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import gguf

ap = argparse.ArgumentParser()
ap.add_argument("arch", choices=["llada", "dream", "gpt2"])
ap.add_argument("out")
ap.add_argument("--type", default="f32", choices=["f32", "f16", "q8_0", "q4_0"])
ap.add_argument("--no-diffusion-keys", action="store_true")
ap.add_argument("--drop", action="append", default=[], help="leave this tensor out (a broken file)")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()

n_embd, n_head, n_kv, n_ff, n_layer, n_ctx = 128, 4, 2, 320, 2, 256
hd = n_embd // n_head
vocab = gguf.GGUFReader(Path(__file__).resolve().parent / "data/llama-spm/ggml-vocab-llama-spm.gguf")
tokens = vocab.fields["tokenizer.ggml.tokens"].contents()
n_vocab = len(tokens)
rng = np.random.default_rng(args.seed)
qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[args.type]
ftype = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}[args.type]

w = gguf.GGUFWriter(args.out, args.arch)
w.add_name(f"{args.arch}-tiny-random")
w.add_context_length(n_ctx)
w.add_embedding_length(n_embd)
w.add_block_count(n_layer)
w.add_feed_forward_length(4 * n_embd if args.arch == "gpt2" else n_ff)
if args.arch != "gpt2":
    w.add_rope_dimension_count(hd)
w.add_head_count(n_head)
if args.arch == "gpt2":
    n_ff = 4 * n_embd
    w.add_layer_norm_eps(1e-5)
else:
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-6 if args.arch == "dream" else 1e-5)
    w.add_rope_freq_base(1000000.0 if args.arch == "dream" else 500000.0)
w.add_file_type(ftype)
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores(vocab.fields["tokenizer.ggml.scores"].contents())
w.add_token_types(vocab.fields["tokenizer.ggml.token_type"].contents())
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
if not args.no_diffusion_keys:
    w.add_mask_token_id(n_vocab - 1)
    w.add_diffusion_shift_logits(args.arch != "llada")


def tensor(name, shape, scale, matrix):
    if name in args.drop:
        return
    a = (rng.standard_normal(shape) * scale).astype(np.float32)
    if name.endswith("norm.weight"):
        a = (1.0 + a).astype(np.float32)
    if matrix and qtype != gguf.GGMLQuantizationType.F32:
        w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    else:
        w.add_tensor(name, a)


# numpy shapes are [rows, columns]: ggml's [ne0 = columns, ne1 = rows] reversed.
tensor("token_embd.weight", (n_vocab, n_embd), 0.5, True)
if args.arch == "gpt2":
    ff = 4 * n_embd
    tensor("position_embd.weight", (n_ctx, n_embd), 0.5, True)
    for i in range(n_layer):
        b = f"blk.{i}."
        for norm in ("attn_norm", "ffn_norm"):
            tensor(b + norm + ".weight", (n_embd,), 0.1, False)
            tensor(b + norm + ".bias", (n_embd,), 0.1, False)
        tensor(b + "attn_qkv.weight", (3 * n_embd, n_embd), n_embd ** -0.5, True)
        tensor(b + "attn_qkv.bias", (3 * n_embd,), 0.5, False)
        tensor(b + "attn_output.weight", (n_embd, n_embd), n_embd ** -0.5, True)
        tensor(b + "attn_output.bias", (n_embd,), 0.1, False)
        tensor(b + "ffn_up.weight", (ff, n_embd), n_embd ** -0.5, True)
        tensor(b + "ffn_up.bias", (ff,), 0.1, False)
        tensor(b + "ffn_down.weight", (n_embd, ff), ff ** -0.5, True)
        tensor(b + "ffn_down.bias", (n_embd,), 0.1, False)
    tensor("output_norm.weight", (n_embd,), 0.1, False)
    tensor("output_norm.bias", (n_embd,), 0.1, False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{args.out}: {args.arch}, {args.type}", file=sys.stderr)
    sys.exit(0)
for i in range(n_layer):
    b = f"blk.{i}."
    tensor(b + "attn_norm.weight", (n_embd,), 0.1, False)
    tensor(b + "attn_q.weight", (n_head * hd, n_embd), n_embd ** -0.5, True)
    tensor(b + "attn_k.weight", (n_kv * hd, n_embd), n_embd ** -0.5, True)
    tensor(b + "attn_v.weight", (n_kv * hd, n_embd), n_embd ** -0.5, True)
    if args.arch == "dream":
        tensor(b + "attn_q.bias", (n_head * hd,), 0.5, False)
        tensor(b + "attn_k.bias", (n_kv * hd,), 0.5, False)
        tensor(b + "attn_v.bias", (n_kv * hd,), 0.5, False)
    tensor(b + "attn_output.weight", (n_embd, n_head * hd), (n_head * hd) ** -0.5, True)
    tensor(b + "ffn_norm.weight", (n_embd,), 0.1, False)
    tensor(b + "ffn_gate.weight", (n_ff, n_embd), n_embd ** -0.5, True)
    tensor(b + "ffn_up.weight", (n_ff, n_embd), n_embd ** -0.5, True)
    tensor(b + "ffn_down.weight", (n_embd, n_ff), n_ff ** -0.5, True)
tensor("output_norm.weight", (n_embd,), 0.1, False)
tensor("output.weight", (n_vocab, n_embd), n_embd ** -0.5, True)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"{args.out}: {args.arch}, {args.type}", file=sys.stderr)
