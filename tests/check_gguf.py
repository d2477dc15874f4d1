#!/usr/bin/env python3
"""Check a GGUF written by dlm-convert against its Hugging Face source, independently of dlm.

Reads the GGUF with PyPI's `gguf` package (GGUFReader + gguf.quants.dequantize) and the
checkpoint with a small safetensors reader written here, then checks: metadata against
config.json / tokenizer.json, every tensor's name, shape and type against llama.cpp's policy
(re-implemented here), the Q/K RoPE permutation, and that dequantized weights match the source
within each type's error bound. Exits non-zero with the failures listed.

    python3 tests/check_gguf.py HF_DIR FILE.gguf TYPE [--mask-id N] [--same-metadata SRC.gguf]

--same-metadata: FILE was re-quantized from SRC; every metadata key of SRC must be in FILE with
the same type and value (but general.file_type), and FILE must have no other key.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf

# Relative RMS error bounds (measured on the random test weights, with margin), and the lower
# bounds that prove a quantized type really was quantized.
# Measured on Gaussian weights: Q8_0 0.45%, Q6_K 1.8%, Q5_0 3.9%, Q4_K 7.2%, Q4_0 8.4%.
MAX_REL_ERR = {"F32": 0.0, "BF16": 0.0, "F16": 5e-4, "Q8_0": 0.007, "Q6_K": 0.022,
               "Q5_K": 0.045, "Q5_1": 0.05, "Q5_0": 0.05, "Q4_K": 0.085, "Q4_0": 0.10}
FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q6_k": 18}
BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q4_0": 32, "Q5_0": 32, "Q5_1": 32, "Q4_K": 256, "Q5_K": 256,
         "Q6_K": 256}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def read_safetensors(path: Path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            dt = info["dtype"]
            if dt == "BF16":
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            elif dt == "F16":
                arr = np.frombuffer(raw, "<f2").astype(np.float32)
            else:
                arr = np.frombuffer(raw, "<f4").astype(np.float32)
            out[name] = arr.reshape(info["shape"])
    return out


def load_source(d: Path) -> dict:
    idx = d / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    w = {}
    for f in files:
        w.update(read_safetensors(d / f))
    return w


def permute(w, n_head):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def expected_type(kind, name, layer, n_layer, ndim, row, tied=False):
    if ndim == 1 or name == "position_embd.weight":  # learned positions stay f32, as in llama.cpp
        return "F32"
    t = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q6_k": "Q6_K", "q4_0": "Q4_0", "q4_k_m": "Q4_K"}[kind]
    # llama.cpp's quantizer: without output.weight the embedding is the head and typed as one.
    if kind in ("q4_0", "q4_k_m") and (name == "output.weight" or (tied and name == "token_embd.weight")):
        t = "Q6_K"
    if kind == "q4_k_m" and (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")) and use_more_bits(layer, n_layer):
        t = "Q6_K"
    if kind == "q4_k_m" and name.endswith("attn_qkv.weight"):  # llama.cpp: a fused Q/K/V gets Q5_K
        t = "Q5_K"
    while row % BLOCK[t]:
        t = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}.get(t, "F16")
    return t


def field(r, key):
    f = r.fields.get(key)
    if f is None:
        return None
    return f.contents()


def main():
    hf, path, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    mask_id = int(sys.argv[sys.argv.index("--mask-id") + 1]) if "--mask-id" in sys.argv else 811
    cfg = json.loads((hf / "config.json").read_text())
    tok = json.loads((hf / "tokenizer.json").read_text(encoding="utf-8"))
    r = gguf.GGUFReader(path)

    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv, nl = cfg.get("num_key_value_heads", nh), cfg["num_hidden_layers"]
    expect_kv = {
        "general.architecture": "llama",
        "general.file_type": FILE_TYPE[kind],
        "general.quantization_version": 2,
        "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": h,
        "llama.block_count": nl,
        "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.rope.dimension_count": h // nh,
        "llama.attention.head_count": nh,
        "llama.attention.head_count_kv": nkv,
        "llama.vocab_size": cfg["vocab_size"],
        "llama.attention.causal": False,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.mask_token_id": mask_id,
        "diffusion.shift_logits": True,
    }
    for k, v in expect_kv.items():
        check(field(r, k) == v, f"metadata {k}: {field(r, k)!r}, expected {v!r}")
    check(abs(field(r, "llama.attention.layer_norm_rms_epsilon") - cfg["rms_norm_eps"]) < 1e-9, "rms eps")
    check(field(r, "llama.rope.freq_base") == cfg.get("rope_theta", 10000.0), "rope theta")

    tokens = field(r, "tokenizer.ggml.tokens")
    vocab = tok["model"]["vocab"]
    check(len(tokens) == cfg["vocab_size"], f"{len(tokens)} tokens")
    check(all(vocab.get(t) == i for i, t in enumerate(tokens[3:], 3)), "token order differs from tokenizer.json")
    types = field(r, "tokenizer.ggml.token_type")
    check(types[0] == 2 and types[1] == 3 and types[2] == 3, f"special token types {types[:3]}")
    check(all(types[i] == 6 for i in range(3, 259)) and types[259] == 1, "byte token types")
    # Scores re-derived from merge ranks: a piece first made by merge r scores -r.
    scores = np.array(field(r, "tokenizer.ggml.scores"))
    merges = tok["model"]["merges"]
    first = {}
    for rank, m in enumerate(merges):
        first.setdefault("".join(m) if isinstance(m, list) else m.replace(" ", ""), rank)
    want = np.array([-first[t] if types[i] == 1 and t in first else (0.0 if types[i] != 1 else np.nan)
                     for i, t in enumerate(tokens)])
    merged = ~np.isnan(want)
    check(np.array_equal(scores[merged], want[merged]), "scores differ from -(first merge rank)")
    check(np.all(scores[~merged] < -len(merges) + 1), "pieces no merge makes should score below every merge")
    check(json.loads(field(r, "tokenizer.huggingface.json")) == tok, "embedded tokenizer.json differs")

    src = load_source(hf)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    leaf = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(nl):
        for a, b in leaf.items():
            names[f"model.layers.{i}.{a}.weight"] = f"blk.{i}.{b}.weight"
    if cfg.get("tie_word_embeddings") and "lm_head.weight" not in src:
        del names["lm_head.weight"]

    tensors = {t.name: t for t in r.tensors}
    check(len(tensors) == len(names), f"{len(tensors)} tensors, expected {len(names)}")
    worst = {}
    for hf_name, name in names.items():
        t = tensors.get(name)
        if t is None:
            failures.append(f"missing tensor {name}")
            continue
        w = src[hf_name]
        check(list(t.shape) == list(reversed(w.shape)), f"{name}: shape {list(t.shape)} vs source {list(w.shape)}")
        layer = int(name.split(".")[1]) if name.startswith("blk.") else None
        want = expected_type(kind, name, layer, nl, w.ndim, w.shape[-1], "lm_head.weight" not in names)
        check(t.tensor_type.name == want, f"{name}: type {t.tensor_type.name}, expected {want}")
        if ".attn_q." in name:
            w = permute(w, nh)
        elif ".attn_k." in name:
            w = permute(w, nkv)
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape).astype(np.float32)
        rel = float(np.sqrt(np.mean((got - w) ** 2)) / np.sqrt(np.mean(w ** 2)))
        tn = t.tensor_type.name
        worst[tn] = max(worst.get(tn, 0.0), rel)
        check(rel <= MAX_REL_ERR[tn], f"{name} ({tn}): relative error {rel:.2e} > {MAX_REL_ERR[tn]}")
        if tn.startswith("Q"):
            check(rel > 0, f"{name} ({tn}): exact match is impossible for a lossy type")
        if ".attn_q." in name and nh > 1:
            # The permutation must matter: the unpermuted source must NOT match.
            raw = src[hf_name]
            rel_raw = float(np.sqrt(np.mean((got - raw) ** 2)) / np.sqrt(np.mean(raw ** 2)))
            check(rel_raw > 0.5, f"{name}: matches the unpermuted weights too ({rel_raw:.2e})")

    if "--same-metadata" in sys.argv:
        src_r = gguf.GGUFReader(sys.argv[sys.argv.index("--same-metadata") + 1])
        skip = {"general.file_type"}
        keys = [k for k in src_r.fields if not k.startswith("GGUF.") and k not in skip]
        for k in keys:
            a, b = src_r.fields[k], r.fields.get(k)
            if b is None:
                failures.append(f"metadata {k} of the source is missing")
                continue
            check(a.types == b.types, f"metadata {k}: type {b.types}, source {a.types}")
            check(a.contents() == b.contents(), f"metadata {k}: value differs from the source")
        extra = [k for k in r.fields if not k.startswith("GGUF.") and k not in skip and k not in src_r.fields]
        check(not extra, f"metadata keys the source does not have: {extra}")
        print(f"{len(keys)} metadata keys as in the source")

    summary = ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items()))
    if failures:
        print(f"{path}: {len(failures)} failures", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        sys.exit(1)
    print(f"{path.name}: {len(tensors)} tensors ok; worst relative error per type: {summary}")


if __name__ == "__main__":
    main()
