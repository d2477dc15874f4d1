#!/usr/bin/env python3
"""Train a small LLaMA-style SentencePiece model (BPE, byte fallback, identity normalization,
whitespace kept, dummy prefix) with PyPI `sentencepiece`, and record sentencepiece's own
encodings of a few texts as the reference for dlm's `tokenizer.model` path.

    python3 tests/make_spm.py OUT_DIR     -> OUT_DIR/tokenizer.model, OUT_DIR/spm_cases.json
"""
import codecs
import contextlib
import io
import json
import sys
from pathlib import Path

import sentencepiece as spm

out = Path(sys.argv[1])
variant = sys.argv[2] if len(sys.argv) > 2 else "llama"  # "unigram": a model dlm must refuse
out.mkdir(parents=True, exist_ok=True)
cases = json.loads((Path(__file__).resolve().parent / "data/llama-tokenizer/cases.json").read_text(encoding="utf-8"))
with contextlib.redirect_stdout(io.StringIO()):
    import this  # the Zen of Python: a fixed English text every Python has
zen = codecs.decode(this.s, "rot13")
corpus = out / "corpus.txt"
corpus.write_text("\n".join([zen] * 3 + [c["text"] for c in cases]), encoding="utf-8")
spm.SentencePieceTrainer.train(
    input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=600 if variant == "llama" else 500, model_type="bpe" if variant == "llama" else "unigram",
    byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
    add_dummy_prefix=True, split_digits=True, character_coverage=0.9995,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
)
corpus.unlink()
(out / "tokenizer.vocab").unlink()
sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
texts = ["Beautiful is better than ugly.", " Explicit  is\tbetter\n", "Ünïcödé 🦙 and 镇", "", "x",
         "Now is better than never.  Although never is often better than *right* now."] + [c["text"] for c in cases]
(out / "spm_cases.json").write_text(json.dumps(
    [{"text": t, "ids": [1] + sp.encode(t)} for t in texts], ensure_ascii=False), encoding="utf-8")
print(f"{out}/tokenizer.model: {sp.get_piece_size()} pieces, {len(texts)} cases")
