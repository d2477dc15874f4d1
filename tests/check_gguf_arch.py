#!/usr/bin/env python3
"""Check a GGUF that dlm-convert wrote from a LLaDA, Dream or DiffuGPT (GPT-2) checkpoint against
its Hugging Face source, independently of dlm (PyPI `gguf` reads the file; the checkpoint is read
by tests/check_gguf.py's own safetensors reader).

    python3 tests/check_gguf_arch.py HF_DIR FILE.gguf TYPE

Checks what llama.cpp's converter would write for that family:
- metadata: `general.architecture`, the `{arch}.*` hyper-parameters under the family's config
  names, non-causal attention, the mask id (config.json's `mask_token_id`, else DiffuGPT's
  10541), `diffusion.shift_logits` (false for LLaDA only), BOS added for LLaDA only;
- the byte-level tokenizer: `tokenizer.ggml.model = gpt2`, `pre = gpt-2`, tokens in id order
  padded with `[PAD{i}]` (type UNUSED) up to the embedding's rows, special tokens CONTROL, the
  merges in rank order;
- every tensor: name, shape and type (llama.cpp's policy, with a tied embedding typed as the
  head and position tables kept f32), and the dequantized values against the source after the
  family's transform (LLaDA's Q/K RoPE permutation; GPT-2's Conv1D transpose; none for Dream).
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_gguf import FILE_TYPE, MAX_REL_ERR, expected_type, field, load_source, permute  # noqa: E402

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def main():
    hf, path, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    cfg = json.loads((hf / "config.json").read_text())
    arch = {"LLaDAModelLM": "llada", "DreamModel": "dream", "GPT2LMHeadModel": "gpt2"}[cfg["architectures"][0]]
    r = gguf.GGUFReader(path)
    src = load_source(hf)

    # name -> (source name, transform): LLaDA's OLMo names, Qwen2's, GPT-2's Conv1D.
    names = {}
    if arch == "gpt2":
        e, nh, nl, v = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["vocab_size"]
        nkv, f, ctx = nh, cfg.get("n_inner") or 4 * e, cfg["n_positions"]
        p = "transformer." if "transformer.wte.weight" in src else ""
        names["token_embd.weight"] = (p + "wte.weight", None)
        names["position_embd.weight"] = (p + "wpe.weight", None)
        for i in range(nl):
            for gg, hh in [("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
                           ("ffn_norm", "ln_2"), ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj")]:
                for kind_ in ("weight", "bias"):
                    t = "T" if kind_ == "weight" and "norm" not in gg else None
                    names[f"blk.{i}.{gg}.{kind_}"] = (f"{p}h.{i}.{hh}.{kind_}", t)
        names["output_norm.weight"] = (p + "ln_f.weight", None)
        names["output_norm.bias"] = (p + "ln_f.bias", None)
        expect_kv = {"gpt2.embedding_length": e, "gpt2.block_count": nl, "gpt2.feed_forward_length": f,
                     "gpt2.attention.head_count": nh, "gpt2.context_length": ctx}
        eps_key, eps = "gpt2.attention.layer_norm_epsilon", cfg.get("layer_norm_epsilon", 1e-5)
    else:
        llada = arch == "llada"
        g = (lambda *ks: next(cfg[k] for k in ks if cfg.get(k) is not None))
        e = g("d_model", "hidden_size") if llada else cfg["hidden_size"]
        nh = g("n_heads", "num_attention_heads") if llada else cfg["num_attention_heads"]
        nkv = g("n_kv_heads", "n_heads") if llada else cfg.get("num_key_value_heads", nh)
        nl = g("n_layers") if llada else cfg["num_hidden_layers"]
        f = g("mlp_hidden_size") if llada else cfg["intermediate_size"]
        ctx = g("max_sequence_length") if llada else cfg["max_position_embeddings"]
        v = cfg["vocab_size"]
        if llada:
            base, leaves = "model.transformer.blocks.", ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm",
                                                         "ff_proj", "up_proj", "ff_out"]
            names["token_embd.weight"] = ("model.transformer.wte.weight", None)
            names["output_norm.weight"] = ("model.transformer.ln_f.weight", None)
            names["output.weight"] = ("model.transformer.ff_out.weight", None)
        else:
            base, leaves = "model.layers.", ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                                             "mlp.down_proj"]
            names["token_embd.weight"] = ("model.embed_tokens.weight", None)
            names["output_norm.weight"] = ("model.norm.weight", None)
            names["output.weight"] = ("lm_head.weight", None)
        ggs = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
        for i in range(nl):
            for gg, hh in zip(ggs, leaves):
                perm = {"attn_q": nh, "attn_k": nkv}.get(gg) if llada else None
                names[f"blk.{i}.{gg}.weight"] = (f"{base}{i}.{hh}.weight", perm)
                if not llada and gg in ("attn_q", "attn_k", "attn_v"):
                    names[f"blk.{i}.{gg}.bias"] = (f"{base}{i}.{hh}.bias", None)
        expect_kv = {f"{arch}.embedding_length": e, f"{arch}.block_count": nl, f"{arch}.feed_forward_length": f,
                     f"{arch}.attention.head_count": nh, f"{arch}.attention.head_count_kv": nkv,
                     f"{arch}.context_length": ctx, f"{arch}.rope.dimension_count": e // nh, f"{arch}.vocab_size": v}
        eps_key, eps = f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"]
        check(field(r, f"{arch}.rope.freq_base") == cfg["rope_theta"], "rope theta")

    expect_kv.update({
        "general.architecture": arch,
        "general.file_type": FILE_TYPE[kind],
        f"{arch}.attention.causal": False,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.mask_token_id": cfg.get("mask_token_id", 10541),
        "diffusion.shift_logits": arch != "llada",
        "tokenizer.ggml.add_bos_token": arch == "llada",
        "tokenizer.ggml.eos_token_id": 50256,
    })
    for k, want in expect_kv.items():
        check(field(r, k) == want, f"metadata {k}: {field(r, k)!r}, expected {want!r}")
    check(abs(field(r, eps_key) - eps) < 1e-9, f"{eps_key}: {field(r, eps_key)} vs {eps}")

    # The tokenizer: tokenizer.json if present, else GPT-2's vocab.json + merges.txt.
    if (hf / "tokenizer.json").exists():
        tok = json.loads((hf / "tokenizer.json").read_text(encoding="utf-8"))
        vocab, merges = dict(tok["model"]["vocab"]), tok["model"]["merges"]
        special = {a["id"] for a in tok["added_tokens"] if a["special"]}
        for a in tok["added_tokens"]:
            vocab[a["content"]] = a["id"]
    else:
        vocab = json.loads((hf / "vocab.json").read_text(encoding="utf-8"))
        merges = [m for m in (hf / "merges.txt").read_text(encoding="utf-8").split("\n")[1:] if m]
        special = {vocab["<|endoftext|>"]}
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    by_id = {i: t for t, i in vocab.items()}
    want_tokens = [by_id.get(i, f"[PAD{i}]") for i in range(v)]
    want_types = [5 if i not in by_id else 3 if i in special else 1 for i in range(v)]
    check(field(r, "tokenizer.ggml.tokens") == want_tokens, "tokens differ from the tokenizer's, padded with [PAD{i}]")
    check(field(r, "tokenizer.ggml.token_type") == want_types, "token types (CONTROL specials, UNUSED pads, NORMAL)")
    check(field(r, "tokenizer.ggml.merges") == merges, "merges differ from the tokenizer's, in rank order")
    check("tokenizer.ggml.scores" not in r.fields, "a byte-level vocabulary has no scores")

    tied = "output.weight" not in {t.name for t in r.tensors}
    if arch == "gpt2":
        check(tied, "GPT-2 ties its head: no output.weight")
    tensors = {t.name: t for t in r.tensors}
    check(set(tensors) == set(names), f"tensors {sorted(set(tensors) ^ set(names))} differ")
    worst = {}
    for name, (hf_name, transform) in names.items():
        t = tensors.get(name)
        if t is None:
            continue
        w = src[hf_name]
        if transform == "T":
            w = w.T
        elif transform:
            w = permute(w, transform)
        check(list(t.shape) == list(reversed(w.shape)), f"{name}: shape {list(t.shape)} vs source {list(w.shape)}")
        layer = int(name.split(".")[1]) if name.startswith("blk.") else None
        want = expected_type(kind, name, layer, nl, w.ndim, w.shape[-1], tied)
        check(t.tensor_type.name == want, f"{name}: type {t.tensor_type.name}, expected {want}")
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape).astype(np.float32)
        rel = float(np.sqrt(np.mean((got - w) ** 2)) / max(np.sqrt(np.mean(w ** 2)), 1e-30))
        tn = t.tensor_type.name
        worst[tn] = max(worst.get(tn, 0.0), rel)
        check(rel <= MAX_REL_ERR[tn], f"{name} ({tn}): relative error {rel:.2e} > {MAX_REL_ERR[tn]}")
    if failures:
        print(f"{path}: {len(failures)} failures", file=sys.stderr)
        for f_ in failures:
            print("  " + f_, file=sys.stderr)
        sys.exit(1)
    summary = ", ".join(f"{k} {x:.2e}" for k, x in sorted(worst.items()))
    print(f"{path.name}: {arch}, {len(tensors)} tensors ok; worst relative error per type: {summary}")


if __name__ == "__main__":
    main()
