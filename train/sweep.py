#!/usr/bin/env python3
"""Accuracy and speed of every fast mode and quantization of the trained tiny DiffuLLaMA.

Converts models/diffullama-tiny (and the stage-1 models/llama-tiny-ar, kept causal) with
dlm-convert into target/tiny/, then runs dlm-eval on the held-out split for each setting:
every unmasking rule at steps = answer region, 1/2 and 1/4 of it; thresholds 0.5-0.95; blocks
with --cache none|prefix|dual; every quantization; cpu and wgpu; and the same loop driven by
llama.cpp's own llama_decode (the peer) at equal settings. Greedy tokens (--temp 0) unless a row
says otherwise. Writes models/eval.json and prints the Markdown tables for README.md/MODEL.md.

    cargo build --release --workspace && python3 train/sweep.py [--quick]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
OUT = ROOT / "target" / "tiny"
PROBLEMS = ROOT / "models" / "tasks" / "test.jsonl"
QUANTS = ["f32", "f16", "q8_0", "q6_k", "q4_k_m", "q4_0"]
TASKS = ["copy", "reverse", "sort", "add", "recall", "infill", "english"]


def convert(folder, kind, causal=False):
    out = OUT / f"{folder.name}-{kind}.gguf"
    if not out.exists():
        cmd = [BIN / "dlm-convert", folder, "-o", out, "--type", kind, "-q"] + (["--causal"] if causal else [])
        subprocess.run([str(c) for c in cmd], check=True, stderr=subprocess.DEVNULL)
    return out


def evaluate(model, args, limit=None, backend="cpu"):
    cmd = [BIN / "dlm-eval", "-m", model, "--problems", PROBLEMS, "--seed", "1", "--backend", backend] + args
    if limit:
        cmd += ["--limit", str(limit)]
    r = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def reference(folder, args, limit=None):
    cmd = [sys.executable, ROOT / "train" / "reference.py", folder, PROBLEMS] + args
    if limit:
        cmd += ["--limit", str(limit)]
    r = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def pct(x):
    return f"{100 * x:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30 problems per task (a smoke run)")
    ap.add_argument("--peer-limit", type=int, default=15, help="problems per task for the llama.cpp peer rows")
    ap.add_argument("--wgpu-limit", type=int, default=10, help="problems per task on wgpu (lavapipe is slow)")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    limit = 30 if a.quick else None
    dlm = ROOT / "models" / "diffullama-tiny"
    ar = ROOT / "models" / "llama-tiny-ar"
    gg = {k: convert(dlm, k) for k in QUANTS}
    results = {"modes": [], "quants": [], "backends": [], "ar_vs_dlm": [], "reference": []}
    greedy = ["--temp", "0"]

    # Fast modes on f32 (the model as trained), each beside the peer at the same settings.
    modes = []
    for rule in ["origin", "confidence", "margin", "entropy"]:
        for frac in [1, 0.5, 0.25]:
            modes.append((f"{rule}, steps x{frac}", ["--unmask", rule, "--steps-frac", str(frac)]))
    for th in [0.5, 0.7, 0.8, 0.9, 0.95]:
        modes.append((f"threshold {th}", ["--unmask", "threshold", "--threshold", str(th)]))
    for cache in ["none", "prefix", "dual"]:
        modes.append((f"confidence, block 4, cache {cache}", ["--unmask", "confidence", "--block-length", "4", "--cache", cache]))
        modes.append((f"threshold 0.9, block 4, cache {cache}",
                      ["--unmask", "threshold", "--threshold", "0.9", "--block-length", "4", "--cache", cache]))
    for rule in ["origin", "confidence", "threshold"]:
        modes.append((f"{rule}, temp 0.9 top-p 0.9 (paper's sampling)", ["--unmask", rule, "--temp", "0.9", "--top-p", "0.9"]))
    for name, args in modes:
        args = (greedy if "--temp" not in args else []) + args
        r = evaluate(gg["f32"], args, limit)
        # The peer has no cache: it runs the same rule and blocks, re-decoding everything.
        peer_args = list(args)
        if "--cache" in peer_args:
            peer_args[peer_args.index("--cache") + 1] = "none"
        mine = evaluate(gg["f32"], args, a.peer_limit)  # dlm on the peer's subset, same run
        peer = evaluate(gg["f32"], peer_args + ["--peer", "llamacpp"], a.peer_limit)
        r["name"], r["peer_tokens_per_second"] = name, peer["tokens_per_second"]
        r["subset_tokens_per_second"] = mine["tokens_per_second"]
        results["modes"].append(r)
        print(f"{name:45} {pct(r['overall']):>5} %  {r['tokens_per_second']:8.0f} tok/s  "
              f"peer {peer['tokens_per_second']:6.0f} tok/s  x{mine['tokens_per_second'] / peer['tokens_per_second']:.2f}",
              flush=True)

    # Quantizations at the exact setting and at the default fast setting.
    for k in QUANTS:
        for name, args in [("exact", ["--unmask", "confidence"]),
                           ("threshold 0.9", ["--unmask", "threshold", "--threshold", "0.9"])]:
            r = evaluate(gg[k], greedy + args, limit)
            r["quant"], r["name"], r["bytes"] = k, name, gg[k].stat().st_size
            results["quants"].append(r)
            print(f"{k:8} {name:15} {pct(r['overall']):>5} %  {r['tokens_per_second']:8.0f} tok/s", flush=True)

    # Backends.
    for k in ["f32", "q4_0"]:
        for backend in ["cpu", "wgpu"]:
            r = evaluate(gg[k], greedy + ["--unmask", "confidence"], a.wgpu_limit, backend)
            r["quant"] = k
            results["backends"].append(r)
            print(f"{k:8} {backend:5} {pct(r['overall']):>5} %  {r['tokens_per_second']:8.1f} tok/s", flush=True)

    # Stage 1 (autoregressive, left to right) against the adapted model.
    ar_g = convert(ar, "f32", causal=True)
    r_ar = evaluate(ar_g, greedy + ["--unmask", "confidence", "--block-length", "1"], limit)
    r_dlm = evaluate(gg["f32"], greedy + ["--unmask", "confidence"], limit)
    results["ar_vs_dlm"] = [dict(r_ar, name="stage 1: autoregressive, left to right"),
                            dict(r_dlm, name="stage 2: diffusion, confidence")]

    # The independent PyTorch reference on the bf16 checkpoint.
    for rule in ["confidence", "origin"]:
        ref = reference(dlm, ["--rule", rule, "--temp", "0"], limit)
        mine = evaluate(gg["f32"], greedy + ["--unmask", rule], limit)
        results["reference"].append({"rule": rule, "pytorch": ref, "dlm": mine})
        print(f"reference {rule}: pytorch {pct(ref['overall'])} %, dlm f32 {pct(mine['overall'])} %", flush=True)
    ref_ar = reference(ar, ["--causal"], limit)
    results["reference"].append({"rule": "causal", "pytorch": ref_ar, "dlm": r_ar})

    (ROOT / "models" / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    print_tables(results)


def cells(r):
    """The per-task accuracies of one result, then its overall accuracy in bold."""
    return " | ".join(pct(r["tasks"][k]["accuracy"]) for k in TASKS) + f" | **{pct(r['overall'])}**"


def print_tables(res):
    head = "| setting | " + " | ".join(TASKS) + " | all | steps | tokens/s | vs llama.cpp loop |"
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    for r in res["modes"]:
        t = r["tasks"]
        steps = sum(v["steps_mean"] * v["problems"] for v in t.values()) / r["problems"]
        ratio = r["subset_tokens_per_second"] / r["peer_tokens_per_second"]
        print(f"| {r['name']} | {cells(r)} | {steps:.1f} | {r['tokens_per_second']:.0f} | {ratio:.2f}x |")
    print("\n| type | size MB | setting | " + " | ".join(TASKS) + " | all | tokens/s |")
    print("|" + "---|" * (len(TASKS) + 5))
    for r in res["quants"]:
        print(f"| {r['quant']} | {r['bytes'] / 1e6:.1f} | {r['name']} | {cells(r)} | {r['tokens_per_second']:.0f} |")
    print("\n| model | " + " | ".join(TASKS) + " | all |")
    print("|" + "---|" * (len(TASKS) + 2))
    for r in res["ar_vs_dlm"]:
        print(f"| {r['name']} | {cells(r)} |")
    print("\n| check | PyTorch (bf16 checkpoint) | dlm f32 GGUF |")
    print("|---|---|---|")
    for r in res["reference"]:
        print(f"| {r['rule']} | {pct(r['pytorch']['overall'])} % | {pct(r['dlm']['overall'])} % |")
    print("\n| backend | type | all | tokens/s |")
    print("|---|---|---|---|")
    for r in res["backends"]:
        print(f"| {r['backend']} | {r['quant']} | {pct(r['overall'])} % | {r['tokens_per_second']:.1f} |")


if __name__ == "__main__":
    main()
