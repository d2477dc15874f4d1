#!/usr/bin/env python3
"""The fast regime at the lengths users run: accuracy, passes and speed of each fast setting on
the long-answer DiffuLLaMA (models/diffullama-long) at answer regions of 64/128/256/512 tokens,
beside dlm's exact setting and llama.cpp's own diffusion loop (the peer), in the same run.

Converts the model to f32 (target/long/), splits models/tasks/long.jsonl by region, and runs
dlm-eval for every setting and region on `--limit` problems per task (the exact setting at 512
tokens is 512 passes of a 1000-token canvas per problem: minutes each on 2 cores, so the
default limits shrink with the length). Greedy tokens throughout. Writes models/eval-long.json
and prints the Markdown table for README.md / models/MODEL.md.

    cargo build --release --workspace && python3 train/sweep_long.py [--regions 64,128] [--limit N]
"""
import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
OUT = ROOT / "target" / "long"
PROBLEMS = ROOT / "models" / "tasks" / "long.jsonl"
TASKS = ["copy", "reverse", "sum", "story", "infill"]
# Problems per task at each region when --limit is not given.
LIMITS = {64: 20, 128: 12, 256: 6, 512: 3}

GREEDY = ["--temp", "0"]
EXACT = ["--unmask", "confidence", "--steps-frac", "1"]
SETTINGS = [
    ("exact: confidence, one step per token", EXACT),
    ("exact, blocks of 32", EXACT + ["--block-length", "32"]),
    ("confidence, steps x0.5, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.5", "--block-length", "32"]),
    ("confidence, steps x0.25, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.25", "--block-length", "32"]),
] + [
    (f"threshold {t}, blocks of 32", ["--unmask", "threshold", "--threshold", str(t), "--steps-frac", "1", "--block-length", "32"])
    for t in (0.7, 0.8, 0.9, 0.95)
] + [
    (f"threshold 0.9, blocks of {b}", ["--unmask", "threshold", "--threshold", "0.9", "--steps-frac", "1", "--block-length", str(b)])
    for b in (16, 64)
] + [
    (f"threshold 0.9, blocks of 32, {c} cache", ["--unmask", "threshold", "--threshold", "0.9", "--steps-frac", "1", "--block-length", "32", "--cache", c])
    for c in ("prefix", "dual")
]
# The peer re-decodes every position each step (no cache): its exact setting and fewer steps.
PEER = [
    ("llama.cpp loop: exact, blocks of 32", EXACT + ["--block-length", "32"]),
    ("llama.cpp loop: steps x0.5, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.5", "--block-length", "32"]),
    ("llama.cpp loop: steps x0.25, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.25", "--block-length", "32"]),
]


def convert(folder, kind):
    out = OUT / f"{folder.name}-{kind}.gguf"
    if not out.exists():
        subprocess.run([str(BIN / "dlm-convert"), str(folder), "-o", str(out), "--type", kind, "-q"], check=True)
    return out


def split(region):
    """The held-out problems of one region, in a file of their own."""
    out = OUT / f"long-{region}.jsonl"
    lines = [l for l in PROBLEMS.read_text().splitlines() if json.loads(l)["n"] == region]
    out.write_text("\n".join(lines) + "\n")
    return out


def evaluate(model, problems, args, limit, peer=False):
    cmd = [str(BIN / "dlm-eval"), "-m", str(model), "--problems", str(problems), "--seed", "1", "--backend", "cpu",
           "--limit", str(limit)] + GREEDY + args + (["--peer", "llamacpp"] if peer else [])
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def passes(r):
    return sum(v["steps_mean"] * v["problems"] for v in r["tasks"].values()) / r["problems"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", default="64,128,256,512")
    ap.add_argument("--limit", type=int, default=None, help="problems per task at every region")
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    model = convert(ROOT / "models" / "diffullama-long", "f32")
    rows = []
    for region in [int(x) for x in a.regions.split(",")]:
        probs, limit = split(region), a.limit or LIMITS[region]
        for name, args in SETTINGS + ([] if a.no_peer else PEER):
            r = evaluate(model, probs, args, limit, peer=name.startswith("llama.cpp"))
            r.update(name=name, region=region, passes=passes(r))
            rows.append(r)
            print(f"{region:4} {name:45} {100 * r['overall']:5.1f} %  {r['passes']:6.1f} passes  "
                  f"{r['tokens_per_second']:8.1f} tok/s", flush=True)
    (ROOT / "models" / "eval-long.json").write_text(json.dumps(rows, indent=1) + "\n")
    print_table(rows)


def print_table(rows):
    print("\n| region | setting | " + " | ".join(TASKS) + " | all | passes | tokens/s | vs dlm exact | vs llama.cpp exact |")
    print("|" + "---|" * (len(TASKS) + 8))
    for r in rows:
        same = [x for x in rows if x["region"] == r["region"]]
        exact = next(x for x in same if x["name"].startswith("exact: confidence"))
        peer = next((x for x in same if x["name"] == "llama.cpp loop: exact, blocks of 32"), None)
        cells = " | ".join(f"{100 * r['tasks'][t]['accuracy']:.0f}" for t in TASKS if t in r["tasks"])
        vs_peer = f"{r['tokens_per_second'] / peer['tokens_per_second']:.2f}x" if peer else "-"
        print(f"| {r['region']} | {r['name']} | {cells} | **{100 * r['overall']:.1f}** | {r['passes']:.1f} | "
              f"{r['tokens_per_second']:.1f} | {r['tokens_per_second'] / exact['tokens_per_second']:.2f}x | {vs_peer} |")


if __name__ == "__main__":
    main()
