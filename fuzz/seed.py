#!/usr/bin/env python3
"""Write small seed GGUFs for the gguf_reader fuzz target into fuzz/corpus/gguf_reader/.

Seeds come from PyPI gguf's writer (independent of ours): every value type, f32/f16/Q8_0
tensors, and a tiny SentencePiece-style vocabulary so the tokenizer rebuild path is reached.
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

w = gguf.GGUFWriter(out / "vocab.gguf", "llama")
toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(4)] + ["▁", "a", "b", "ab", "▁a", "▁ab", "ти"]
w.add_tokenizer_model("llama")
w.add_token_list(toks)
w.add_token_scores([0.0] * 7 + [-1.0, -2.0, -3.0, -0.5, -0.7, -0.1, -4.0])
w.add_token_types([2, 3, 3, 6, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1])
w.add_bos_token_id(1)
w.add_eos_token_id(2)
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
print(f"seeds in {out}: {sorted(p.name for p in out.iterdir())}")
