#!/usr/bin/env python3
"""Reference forward pass of a (Diffu)LLaMA checkpoint in numpy, float64, written from the
Hugging Face `LlamaForCausalLM` semantics and independent of dlm: unpermuted HF weights,
rotate-half RoPE, RMSNorm, SwiGLU, grouped KV heads, and attention that is bidirectional
(DiffuLLaMA) unless --causal. Biases on the Q/K/V and output projections are added where the
weights have them (Qwen2's semantics: Dream); LLaDA's graph is LLaMA's (its OLMo-style names are
mapped to LLaMA's); GPT-2 (DiffuGPT) has its own forward pass with Conv1D weights.

    python3 tests/ref_forward.py HF_DIR --tokens 1,450,11148 --out logits.npy [--causal] [--gguf FILE]
    python3 tests/ref_forward.py --gguf FILE --tokens ... --out logits.npy [--causal]   (config from FILE)

Writes float32 logits of shape [n_tokens, vocab] (row i is the model's output at position i).
With --gguf, the weights are instead FILE's, dequantized by PyPI `gguf` and mapped back to the
Hugging Face layout (Q/K rows un-permuted): this isolates a runtime's arithmetic from the loss
of quantization itself.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_gguf import load_source  # noqa: E402  (the independent safetensors reader)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta):
    # x: [n, heads, hd]; HF: cos/sin of cat(freqs, freqs), rotate_half(x) = cat(-x2, x1)
    hd = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    freqs = np.outer(pos, inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + np.concatenate([-x2, x1], axis=-1) * sin


def forward(cfg, w, tokens, causal=False):
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd, eps, theta = h // nh, cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    n = len(tokens)
    W = {k: v.astype(np.float64) for k, v in w.items()}
    pos = np.arange(n, dtype=np.float64)
    x = W["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        # Qwen2 (Dream) adds biases to the projections; LLaMA has none.
        proj = lambda m: a @ W[p + m + ".weight"].T + W.get(p + m + ".bias", 0.0)  # noqa: E731
        q = proj("self_attn.q_proj").reshape(n, nh, hd)
        k = proj("self_attn.k_proj").reshape(n, nkv, hd)
        v = proj("self_attn.v_proj").reshape(n, nkv, hd)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        k = np.repeat(k, nh // nkv, axis=1)
        v = np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        if causal:
            s = s + np.triu(np.full((n, n), -np.inf), 1)[None]
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, nh * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T + W.get(p + "self_attn.o_proj.bias", 0.0)
        a = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = a @ W[p + "mlp.gate_proj.weight"].T
        u = a @ W[p + "mlp.up_proj.weight"].T
        x = x + (g / (1.0 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return x @ head.T


def layer_norm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * x * (1.0 + 0.044715 * x * x)))


def gelu_ggml(x):
    """ggml's CPU GELU: a table of f16 outputs indexed by the f16-rounded input, computed in f32
    (exact below -10 and above 10)."""
    h = x.astype(np.float16).astype(np.float32)
    g = (0.5 * h * (1.0 + np.tanh(np.float32(0.7978845608028654) * h * (1.0 + np.float32(0.044715) * h * h)))).astype(np.float16)
    return np.where(x <= -10.0, 0.0, np.where(x >= 10.0, x, g.astype(np.float64)))


def forward_gpt2(W, nh, eps, tokens, causal=False, ggml_gelu=False):
    """GPT-2 (Hugging Face `GPT2LMHeadModel` semantics: learned positions, LayerNorm with bias,
    fused c_attn split into q|k|v, Conv1D projections y = x @ W + b with W stored [in, out], GELU
    tanh approximation, head tied to wte) on weights named as Hugging Face names them (without
    the `transformer.` prefix). `ggml_gelu` swaps in ggml's f16 GELU table."""
    W = {k: v.astype(np.float64) for k, v in W.items()}
    n, e = len(tokens), W["wte.weight"].shape[1]
    hd = e // nh
    x = W["wte.weight"][tokens] + W["wpe.weight"][np.arange(n)]
    i = 0
    while f"h.{i}.attn.c_attn.weight" in W:
        p = f"h.{i}."
        a = layer_norm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        qkv = a @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]
        q, k, v = (qkv[:, j * e:(j + 1) * e].reshape(n, nh, hd) for j in range(3))
        sc = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        if causal:
            sc = sc + np.triu(np.full((n, n), -np.inf), 1)[None]
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", sc, v).reshape(n, e)
        x = x + o @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        a = layer_norm(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        u = a @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"]
        u = gelu_ggml(u) if ggml_gelu else gelu_tanh(u)
        x = x + u @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
        i += 1
    x = layer_norm(x, W["ln_f.weight"], W["ln_f.bias"], eps)
    return x @ W.get("lm_head.weight", W["wte.weight"]).T


def gpt2_from_gguf(path):
    """A `gpt2` GGUF's dequantized weights under GPT-2's Hugging Face names and layout (the
    Conv1D weights transposed back to [in, out]); returns (weights, heads, eps)."""
    import gguf
    r = gguf.GGUFReader(path)
    f = lambda k: r.fields[f"gpt2.{k}"].contents()  # noqa: E731
    leaf = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
            "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
    W = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        a = a.reshape([int(d) for d in reversed(t.shape)])
        parts = t.name.split(".")
        if parts[0] == "blk":
            name = f"h.{parts[1]}.{leaf[parts[2]]}.{parts[3]}"
            if parts[3] == "weight" and a.ndim == 2:
                a = a.T
        else:
            name = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight",
                    "output_norm.weight": "ln_f.weight", "output_norm.bias": "ln_f.bias",
                    "output.weight": "lm_head.weight"}[t.name]
        W[name] = a
    return W, f("attention.head_count"), f("attention.layer_norm_epsilon")


def llada_as_llama(cfg, w):
    """LLaDA's OLMo-style config and tensor names as LLaMA's (the same computation)."""
    g = lambda *ks, d=None: next((cfg[k] for k in ks if cfg.get(k) is not None), d)  # noqa: E731
    c = {"hidden_size": g("d_model", "hidden_size"), "num_attention_heads": g("n_heads", "num_attention_heads"),
         "num_key_value_heads": g("n_kv_heads", "num_key_value_heads", "n_heads"),
         "num_hidden_layers": g("n_layers", "num_hidden_layers"), "rms_norm_eps": g("rms_norm_eps", d=1e-5),
         "rope_theta": g("rope_theta", d=10000.0)}
    leaf = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
            "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
            "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
    out = {}
    for k, v in w.items():
        if k.startswith("model.transformer.blocks."):
            i, rest = k[len("model.transformer.blocks."):].split(".", 1)
            l, kind = rest.rsplit(".", 1)
            out[f"model.layers.{i}.{leaf[l]}.{kind}"] = v
        else:
            out[{"model.transformer.wte.weight": "model.embed_tokens.weight",
                 "model.transformer.ln_f.weight": "model.norm.weight",
                 "model.transformer.ff_out.weight": "lm_head.weight"}[k]] = v
    return c, out


def config_from_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)
    a = r.fields["general.architecture"].contents()
    f = lambda k, d=None: r.fields[f"{a}.{k}"].contents() if f"{a}.{k}" in r.fields else d  # noqa: E731
    return {"hidden_size": f("embedding_length"), "num_attention_heads": f("attention.head_count"),
            "num_key_value_heads": f("attention.head_count_kv", f("attention.head_count")),
            "num_hidden_layers": f("block_count"), "rms_norm_eps": f("attention.layer_norm_rms_epsilon"),
            "rope_theta": f("rope.freq_base", 10000.0), "architecture": a}


def load_gguf_as_hf(path, cfg):
    import gguf
    r = gguf.GGUFReader(path)
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    # llama.cpp permutes LLaMA's and LLaDA's Q/K rows for its adjacent-pair (NORM) RoPE; Qwen2's
    # (Dream's) stay in Hugging Face's order, which NEOX RoPE rotates as rotate_half does.
    permuted = cfg.get("architecture", "llama") in ("llama", "llada")
    leaf = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    w = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        a = a.reshape([int(d) for d in reversed(t.shape)])
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            name = f"model.layers.{parts[1]}.{leaf[parts[2]]}.{parts[3]}"
            heads = {"attn_q": nh, "attn_k": nkv}.get(parts[2]) if permuted else None
            if heads and a.ndim == 2:  # undo reshape(h, 2, d/2, c).swapaxes(1, 2)
                a = a.reshape(heads, a.shape[0] // heads // 2, 2, a.shape[1]).swapaxes(1, 2).reshape(a.shape)
            elif heads:  # a bias: the same permutation of its rows
                a = a.reshape(heads, a.shape[0] // heads // 2, 2).swapaxes(1, 2).reshape(a.shape)
        w[name] = a
    return w


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf", type=Path, nargs="?", help="HF checkpoint folder (config.json; weights unless --gguf)")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--gguf", type=Path, help="use this GGUF's dequantized weights")
    ap.add_argument("--ggml-gelu", action="store_true", help="GPT-2: ggml's f16 GELU table instead of the exact tanh form")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    cfg = json.loads((args.hf / "config.json").read_text()) if args.hf else config_from_gguf(args.gguf)
    arch = cfg.get("architecture") or {"GPT2LMHeadModel": "gpt2", "LLaDAModelLM": "llada", "DreamModel": "dream"}.get(
        (cfg.get("architectures") or [""])[0], "llama")
    if arch == "gpt2":
        if args.gguf:
            W, nh, eps = gpt2_from_gguf(args.gguf)
        else:
            src = load_source(args.hf)
            # Checkpoints name tensors with or without `transformer.`; the mask buffers are not weights.
            W = {k.removeprefix("transformer."): v for k, v in src.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
            nh, eps = cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5)
            if cfg.get("tie_word_embeddings", True):
                W.pop("lm_head.weight", None)
        logits = forward_gpt2(W, nh, eps, tokens, args.causal, args.ggml_gelu)
    else:
        weights = None if args.gguf else load_source(args.hf)
        if arch == "llada" and args.hf:
            cfg, weights = llada_as_llama(cfg, weights or {})
        cfg["architecture"] = arch
        if args.gguf:
            weights = load_gguf_as_hf(args.gguf, cfg)
        logits = forward(cfg, weights, tokens, args.causal)
    np.save(args.out, logits.astype(np.float32))


if __name__ == "__main__":
    main()
