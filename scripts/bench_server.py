#!/usr/bin/env python3
"""dlm-server under concurrent load: latency (p50, p99) and throughput at 1, 2, 4, 8 and 16
clients, each client sending requests back to back. The peer is the same server at concurrency
1 in the same run (one request at a time: no batching), so the ratio is what continuous
batching buys on this machine. Every answer is checked against that sequential run's answer
for the same request (same settings and seed): batching must not change text.

Usage: python3 scripts/bench_server.py [--model GGUF] [--requests N] [--threads T]
Without --model it converts the trained tiny DiffuLLaMA (models/diffullama-tiny) to q4_0 with
the workspace's dlm-convert. Needs `cargo build --release --workspace` first. Prints a
markdown table (README: "dlm-server").
"""

import argparse
import concurrent.futures
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def workload(n):
    """n requests drawn from the held-out task problems, seeded: (body, expected answer)."""
    lines = open(os.path.join(ROOT, "models", "tasks", "test.jsonl"))
    # English sentences have many right answers; the other tasks one, so answers can be scored.
    problems = [p for p in map(json.loads, lines) if p["task"] != "english"]
    rng = random.Random(0)
    out = []
    for i in range(n):
        p = rng.choice(problems)
        body = {"prompt": p["prompt"], "max_tokens": p["n"], "seed": i, "temperature": 0.9 if i % 2 else 0}
        if p.get("suffix"):
            body["suffix"] = p["suffix"]
        out.append((body, p["answer"]))
    return out


def post(base, body):
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        resp = json.loads(r.read())
    return time.perf_counter() - t0, resp["choices"][0]["text"], resp["usage"]["completion_tokens"]


def run(base, requests, clients):
    """Every request once, `clients` at a time; returns (wall seconds, latencies, texts, tokens)."""
    texts, lat, tokens = [None] * len(requests), [None] * len(requests), [0] * len(requests)
    next_i = iter(range(len(requests)))
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            lat[i], texts[i], tokens[i] = post(base, requests[i][0])

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(client) for _ in range(clients)]:
            f.result()
    return time.perf_counter() - t0, lat, texts, sum(tokens)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--threads", default="2")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="dlm-bench-server-")
    model = args.model
    if not model:
        model = os.path.join(tmp, "tiny-q4_0.gguf")
        subprocess.run([os.path.join(BIN, "dlm-convert"), os.path.join(ROOT, "models", "diffullama-tiny"), "-o", model, "--type", "q4_0"],
                       check=True, capture_output=True)
    log = open(os.path.join(tmp, "server.log"), "w+")
    server = subprocess.Popen([os.path.join(BIN, "dlm-server"), "-m", model, "--port", "0", "-t", args.threads, "--backend", "cpu",
                               "-b", "16", "--max-queue", "256"], stderr=log, stdout=subprocess.DEVNULL)
    try:
        base = None
        for _ in range(600):
            log.seek(0)
            for line in log:
                if " on http://" in line:
                    base = "http://" + line.split(" on http://")[1].split()[0]
            if base:
                break
            time.sleep(0.1)
        assert base, "dlm-server did not start"
        requests = workload(args.requests)
        run(base, requests[:4], 1)  # warm-up: graphs built, pages touched
        rows, ref = [], None
        for c in (1, 2, 4, 8, 16):
            wall, lat, texts, toks = run(base, requests, c)
            if ref is None:
                ref = texts
            differ = sum(a != b for a, b in zip(texts, ref))
            right = sum(t.strip() == r[1].strip() for t, r in zip(texts, requests)) / len(requests)
            rows.append((c, wall, lat, toks, differ, right))
        base_rps = len(requests) / rows[0][1]
        print(f"dlm-server, {os.path.basename(model)}, {len(requests)} requests (held-out task problems, half greedy, half at temperature 0.9; server defaults otherwise), -t {args.threads}")
        print("| clients | requests/s | tokens/s | p50 latency ms | p99 latency ms | throughput vs 1 client | exact-match accuracy | answers differing from 1 client |")
        print("|---|---|---|---|---|---|---|---|")
        for c, wall, lat, toks, differ, right in rows:
            rps = len(requests) / wall
            print(f"| {c} | {rps:.1f} | {toks / wall:.1f} | {pct(lat, 0.5) * 1e3:.0f} | {pct(lat, 0.99) * 1e3:.0f} | {rps / base_rps:.2f} | {right:.1%} | {differ} |")
        if any(r[4] for r in rows):
            sys.exit("batching changed some answers")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
