#!/usr/bin/env python3
"""The fast regime at the lengths users run: accuracy, passes and speed of each fast setting on
the long-answer DiffuLLaMA (models/diffullama-long) at answer regions of 64/128/256/512 tokens,
beside dlm's exact setting and llama.cpp's own diffusion loop (the peer), in the same run.

Converts the model (q8_0 unless --type; target/long/), splits models/tasks/long.jsonl by region, and runs
dlm-eval for every setting and region on `--limit` problems per task (the exact setting at 512
tokens is 512 passes of a 1000-token canvas per problem: minutes each on 2 cores, so the
default limits shrink with the length). Greedy tokens throughout. Writes --out
(models/eval-long.json) after every row and prints the Markdown table for README.md /
models/MODEL-long.md.

    cargo build --release --workspace && python3 train/sweep_long.py [--regions 64,128] [--limit N]

Rows are kept by (region, setting): a run replaces the rows it measures and keeps the others, so
`--missing` can fill in the settings a region lacks, and `--only` can re-measure a few. Ratios
are best read between rows of one run (this machine's speed drifts between runs). `--model DIR
--out FILE` evaluates another checkpoint (a candidate retrain) without touching the committed
table.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"
OUT = ROOT / "target" / "long"
PROBLEMS = ROOT / "models" / "tasks" / "long.jsonl"
TASKS = ["count", "step", "story", "infill"]
# Problems per task at each region when --limit is not given.
LIMITS = {64: 10, 128: 8, 256: 4, 512: 2}

GREEDY = ["--temp", "0"]
# From -n 64 on, DiffuLLaMA's defaults decode in blocks of 32 (dlm-run --info): "one block" rows
# say so with a block as long as the region (REGION is replaced by it).
ONE_BLOCK = ["--block-length", "REGION"]
EXACT = ["--unmask", "confidence", "--steps-frac", "1"]
THR = lambda t, b: ["--unmask", "threshold", "--threshold", str(t), "--steps-frac", "1", "--block-length", str(b)]
FAST = THR(0.9, 32)  # Fast-dLLM's setting: threshold 0.9 in blocks of 32
SETTINGS = [
    ("exact: confidence, one step per token", EXACT + ONE_BLOCK),
    ("exact, blocks of 32", EXACT + ["--block-length", "32"]),
    ("confidence, steps x0.5, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.5", "--block-length", "32"]),
    ("confidence, steps x0.25, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.25", "--block-length", "32"]),
] + [
    (f"threshold {t}, blocks of 32", THR(t, 32)) for t in (0.7, 0.8, 0.9, 0.95)
] + [
    (f"threshold 0.9, blocks of {b}", THR(0.9, b)) for b in (16, 64)
] + [
    (f"threshold 0.9, blocks of 32, {c} cache", FAST + ["--cache", c]) for c in ("prefix", "dual")
] + [
    ("threshold 0.9, blocks of 32, dual cache, --prune-eos", FAST + ["--cache", "dual", "--prune-eos"]),
    ("threshold 0.9, blocks of 32, dual cache, --prune-eos --mask-window 32",
     FAST + ["--cache", "dual", "--prune-eos", "--mask-window", "32"]),
    ("threshold 0.9, blocks of 32, --prune-eos --mask-window 32", FAST + ["--prune-eos", "--mask-window", "32"]),
    ("defaults (no flags but greedy)", []),
    ("short-answer defaults: threshold 0.5, 64 steps, one block", ["--unmask", "threshold", "--threshold", "0.5", "--steps", "64"] + ONE_BLOCK),
]
# Settings whose answers are compared with the same setting without its cache (how often the
# cache's approximation changes an answer).
CACHED = {"threshold 0.9, blocks of 32, prefix cache": "threshold 0.9, blocks of 32",
          "threshold 0.9, blocks of 32, dual cache": "threshold 0.9, blocks of 32"}
# The rows --headline-only keeps (name prefixes).
HEADLINE = ["exact", "threshold 0.9, blocks of 32", "defaults", "llama.cpp loop"]
# The peer re-decodes every position each step (no cache): its exact setting and fewer steps,
# so that its own best setting of equal accuracy is in the table too.
PEER = [
    ("llama.cpp loop: exact, blocks of 32", EXACT + ["--block-length", "32"]),
    ("llama.cpp loop: steps x0.5, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.5", "--block-length", "32"]),
    ("llama.cpp loop: steps x0.25, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.25", "--block-length", "32"]),
    ("llama.cpp loop: steps x0.125, blocks of 32", ["--unmask", "confidence", "--steps-frac", "0.125", "--block-length", "32"]),
]


def convert(folder, kind):
    """The GGUF of `folder`, converted on every run (a fraction of a second for these models), so
    that it can never be a stale file of other weights."""
    if not (folder / "config.json").is_file():
        sys.exit(f"sweep_long: --model {folder}: expected a Hugging Face folder with config.json")
    out = OUT / f"model-{kind}.gguf"
    out.unlink(missing_ok=True)
    subprocess.run([str(BIN / "dlm-convert"), str(folder), "-o", str(out), "--type", kind, "-q"], check=True)
    return out


def split(region):
    """The held-out problems of one region, in a file of their own."""
    out = OUT / f"long-{region}.jsonl"
    lines = [l for l in PROBLEMS.read_text().splitlines() if json.loads(l)["n"] == region]
    out.write_text("\n".join(lines) + "\n")
    return out


def evaluate(model, problems, region, args, limit, peer=False):
    """dlm-eval's summary, with "outputs": every problem's answer text by line."""
    per = OUT / "per-problem.jsonl"
    per.unlink(missing_ok=True)
    cmd = [str(BIN / "dlm-eval"), "-m", str(model), "--problems", str(problems), "--seed", "1", "--backend", "cpu",
           "-t", "2", "--limit", str(limit), "--per-problem", str(per)] + GREEDY + args + (["--peer", "llamacpp"] if peer else [])
    cmd = [str(region) if x == "REGION" else x for x in cmd]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["outputs"] = {str(j["line"]): j["output"] for j in map(json.loads, per.read_text().splitlines())}
    return out


def passes(r):
    return sum(v["steps_mean"] * v["problems"] for v in r["tasks"].values()) / r["problems"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", default="64,128,256,512")
    ap.add_argument("--limit", type=int, default=None, help="problems per task at every region")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--headline-only", default="", metavar="REGIONS",
                    help="at these regions (e.g. 256,512) run only the rows the headline needs: dlm exact, the "
                         "Fast-dLLM settings with and without caches and pruning, the defaults, and the peer")
    ap.add_argument("--type", default="q8_0", help="the weights' type in the GGUF both sides run (default q8_0)")
    ap.add_argument("--table", action="store_true", help="print the table of --out and stop")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX",
                    help="run only the settings whose names start with PREFIX (repeat for more; names hold "
                         "commas, so one PREFIX is one argument)")
    ap.add_argument("--missing", action="store_true",
                    help="run only the settings that --out has no row for at the region")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "diffullama-long",
                    help="the Hugging Face folder to evaluate (default models/diffullama-long)")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "eval-long.json",
                    help="the rows file to merge into (default models/eval-long.json)")
    a = ap.parse_args()
    default_model = a.model.resolve() == (ROOT / "models" / "diffullama-long").resolve()
    default_out = a.out.resolve() == (ROOT / "models" / "eval-long.json").resolve()
    if not default_model and default_out:
        sys.exit("sweep_long: --model without --out would mix another checkpoint's rows into models/eval-long.json")
    if (a.table or a.missing) and not a.out.is_file():
        sys.exit(f"sweep_long: --out {a.out}: no such rows file (--table and --missing read it)")
    old = json.loads(a.out.read_text()) if a.out.exists() else []
    if a.table:
        return print_table(old)
    names = [n for n, _ in SETTINGS + PEER]
    for p in a.only:
        if not any(n.startswith(p) for n in names):
            sys.exit(f"sweep_long: --only {p!r}: no setting's name starts with it")
    OUT.mkdir(parents=True, exist_ok=True)
    model = convert(a.model, a.type)
    only = a.only
    have = {(r["region"], r["name"]) for r in old}
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())  # which run measured a row
    rows = []
    for region in [int(x) for x in a.regions.split(",")]:
        probs, limit = split(region), a.limit or LIMITS[region]
        short = str(region) in a.headline_only.split(",")
        for name, args in SETTINGS + ([] if a.no_peer else PEER):
            if short and not any(name.startswith(h) for h in HEADLINE):
                continue
            if (only and not any(name.startswith(p) for p in only)) or (a.missing and (region, name) in have):
                continue
            r = evaluate(model, probs, region, args, limit, peer=name.startswith("llama.cpp"))
            r.update(name=name, region=region, passes=passes(r), run=started)
            if name in CACHED:  # the share of answers the cache changed (its base from this run if it ran)
                base = next((x for x in rows + old if x["region"] == region and x["name"] == CACHED[name]), None)
                common = [k for k in r["outputs"] if base is not None and k in base["outputs"]]
                if common:  # the same problems only (another --limit answers other lines)
                    r["changed"] = sum(base["outputs"][k] != r["outputs"][k] for k in common) / len(common)
                    r["changed_against_run"] = base.get("run")
            rows.append(r)
            print(f"{region:4} {name:45} {100 * r['overall']:5.1f} %  {r['passes']:6.1f} passes  "
                  f"{r['tokens_per_second']:8.1f} tok/s", flush=True)
            save(a.out, old, rows)  # after every row: a failure later keeps what was measured
    if not rows:
        print("sweep_long: nothing to run (every selected setting has a row)", file=sys.stderr)
    print_table(save(a.out, old, rows))


def save(path, old, rows):
    """`old` with the rows of `rows` replaced or added, by (region, setting), in table order."""
    run = {(r["region"], r["name"]) for r in rows}
    order = {name: i for i, (name, _) in enumerate(SETTINGS + PEER)}
    merged = sorted([r for r in old if (r["region"], r["name"]) not in run] + rows,
                    key=lambda r: (r["region"], order.get(r["name"], len(order))))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    tmp.replace(path)
    return merged


def print_table(rows):
    """One Markdown table. "vs llama.cpp best" divides by the peer's fastest setting whose accuracy
    is at least this row's less one point (its own best setting of equal accuracy); "changed" is
    the share of answers a cache changed against the same setting without it. A ratio between rows
    of different runs (the "run" field) is marked with a dagger: it carries the machine's drift
    between the runs."""
    print("\n| region | setting | " + " | ".join(TASKS) + " | all | passes | tokens/s | vs dlm exact "
          "| vs llama.cpp exact | vs llama.cpp best | changed |")
    print("|" + "---|" * (len(TASKS) + 9))
    for r in rows:
        same = [x for x in rows if x["region"] == r["region"]]
        exact = next((x for x in same if x["name"].startswith("exact: confidence")), None)
        peers = [x for x in same if x["name"].startswith("llama.cpp")]
        peer = next((x for x in peers if x["name"] == "llama.cpp loop: exact, blocks of 32"), None)
        equal = [x for x in peers if x["overall"] >= r["overall"] - 0.01]
        best = max(equal, key=lambda x: x["tokens_per_second"]) if equal else None
        cells = " | ".join(f"{100 * r['tasks'][t]['accuracy']:.0f}" if t in r["tasks"] else "-" for t in TASKS)
        ratio = lambda x: (f"{r['tokens_per_second'] / x['tokens_per_second']:.2f}x"
                           + ("†" if x.get("run") != r.get("run") else "")) if x else "-"
        changed = f"{100 * r['changed']:.0f} %" if "changed" in r else ""
        print(f"| {r['region']} | {r['name']} | {cells} | **{100 * r['overall']:.1f}** | {r['passes']:.1f} | "
              f"{r['tokens_per_second']:.1f} | {ratio(exact)} | {ratio(peer)} | {ratio(best)} | {changed} |")
    # The headline: at each region, the fastest dlm setting within one point of dlm's more
    # accurate exact setting (one block, or blocks of 32: at length the blocks can be the better
    # one), against both exact settings and the peer's fastest setting of equal accuracy.
    for region in sorted({r["region"] for r in rows}):
        same = [x for x in rows if x["region"] == region]
        exacts = [x for x in same if x["name"].startswith("exact")]
        if not exacts:
            print(f"headline {region}: no exact row to compare with")
            continue
        ref = max(x["overall"] for x in exacts)
        ok = [x for x in same if not x["name"].startswith("llama.cpp") and x["overall"] >= ref - 0.01]
        top = max(ok, key=lambda x: x["tokens_per_second"])
        peers = [x for x in same if x["name"].startswith("llama.cpp") and x["overall"] >= top["overall"] - 0.01]
        best = max(peers, key=lambda x: x["tokens_per_second"]) if peers else None
        mark = lambda x: "\u2020" if x.get("run") != top.get("run") else ""
        vs = f"{top['tokens_per_second'] / best['tokens_per_second']:.2f}x{mark(best)} the llama.cpp loop at {best['name'][16:]}" \
            if best else ("no llama.cpp setting reaches its accuracy" if any(
                x["name"].startswith("llama.cpp") for x in same) else "no llama.cpp row")
        against = ", ".join(f"{top['tokens_per_second'] / x['tokens_per_second']:.2f}x{mark(x)} dlm {x['name']} "
                            f"({100 * x['overall']:.1f} %)" for x in exacts)
        print(f"headline {region}: {top['name']} ({100 * top['overall']:.1f} %): {against}; {vs}")

if __name__ == "__main__":
    main()
