#!/usr/bin/env python3
"""The quantization table of README.md ("Scoring"): every type of the trained tiny DiffuLLaMA
scored by `dlm-score` against the f32 file, the table llama-perplexity users know.

  size, bits/weight      from the GGUF (PyPI `gguf`): tensor bytes * 8 / weights
  KL, same top-1, Δ      `dlm-score perplexity --kl-divergence` against the f32 base, on the
                         held-out problems as text (models/tasks/test.txt, one window per line)
  multiple choice        `dlm-score choice` on models/tasks/choice.jsonl (700 items, 4 choices)

    cargo build --release -p dlm-convert && cargo build --release --bins
    python3 train/score_sweep.py [--levels 8] [--kl-levels 4]     # ~20 min on 2 cores

Writes models/score.json and prints the Markdown table.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPES = ["f32", "f16", "q8_0", "q6_k", "q4_k_m", "q4_0"]
BIN = ROOT / "target/release"


def run(args):
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"{args}: {r.stderr}")
    return r.stdout


def score(args):
    return json.loads(run([str(BIN / "dlm-score")] + args + ["--json", "--backend", "cpu"]))


def bits(path):
    import gguf
    r = gguf.GGUFReader(path)
    return sum(int(t.n_bytes) for t in r.tensors) * 8 / sum(int(t.n_elements) for t in r.tensors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", type=int, default=8, help="masking levels for multiple choice")
    ap.add_argument("--kl-levels", type=int, default=4, help="masking levels for the KL pass")
    ap.add_argument("--out", type=Path, default=ROOT / "models/score.json")
    args = ap.parse_args()
    tiny = ROOT / "target/tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    files = {}
    for t in TYPES:
        f = tiny / f"diffullama-tiny-{t}.gguf"
        if not f.exists():
            run([str(BIN / "dlm-convert"), str(ROOT / "models/diffullama-tiny"), "-o", str(f), "--type", t])
        files[t] = f
    base = tiny / "base.kld"
    text = ROOT / "models/tasks/test.txt"
    saved = score(["perplexity", "-m", str(files["f32"]), "-f", str(text), "--per-line", "--levels", str(args.kl_levels), "--kl-divergence-base", str(base)])
    print(f"base: PPL bound {saved['ppl_bound']:.1f}, score {saved['score']:.4f}, {saved['windows']} windows", file=sys.stderr)
    rows = []
    for t in TYPES:
        k = score(["perplexity", "-m", str(files[t]), "--kl-divergence-base", str(base), "--kl-divergence"])["kld"]
        c = score(["choice", "-m", str(files[t]), "--items", str(ROOT / "models/tasks/choice.jsonl"), "--levels", str(args.levels)])
        row = {"type": t, "mb": files[t].stat().st_size / 1e6, "bits_per_weight": bits(files[t]), "kld": k, "choice": c}
        print(f"{t}: KL {k['mean_kld']:.3e}, MC {c['accuracy']:.4f}, {c['cost']['seconds']:.0f} s", file=sys.stderr)
        rows.append(row)
    base.unlink()
    args.out.write_text(json.dumps({"levels": args.levels, "kl_levels": args.kl_levels, "base_windows": saved["windows"], "rows": rows}, indent=1) + "\n")
    print("| type | size MB | bits/weight | mean KL vs f32 | same top-1 % | Δ score | multiple choice % |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        k, c = r["kld"], r["choice"]
        kl = "0" if k["mean_kld"] == 0 else (f"{k['mean_kld']:.2e} ± {k['mean_kld_se']:.0e}" if k["mean_kld"] < 1e-3 else f"{k['mean_kld']:.4f} ± {k['mean_kld_se']:.4f}")
        delta = k["score"] - k["score_base"]
        print(f"| {r['type']} | {r['mb']:.1f} | {r['bits_per_weight']:.2f} | {kl} | {100 * k['same_top1']:.2f} ± {100 * k['same_top1_se']:.2f} | {delta:+.4f} ± {k['score_delta_se']:.4f} | {100 * c['accuracy']:.1f} ± {100 * c['accuracy_se']:.1f} |")


if __name__ == "__main__":
    main()
