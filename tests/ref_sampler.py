#!/usr/bin/env python3
"""A numpy port of DiffuLLaMA's reference sampler (`generate_samples`, "origin" schedule), for
checking dlm's canvas loop step for step.

Driven by (1) a fake model whose logits are an exact integer formula of the canvas, identical in
Rust and here, and (2) the same random draws: dlm's seeded RNG (splitmix64 -> xoshiro256**) is
ported below, with the same streams: one per (seed, step, position) for token draws, one
sequential stream for commit decisions (masked positions in canvas order).

    python3 tests/ref_sampler.py JSON_ARGS   ->  prints JSON {"steps": [[canvas...]...], "final": [...]}
"""
import json
import sys

import numpy as np

M64 = (1 << 64) - 1


class Rng:
    def __init__(self, seed):
        x = seed & M64
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            s.append(z ^ (z >> 31))
        self.s = s

    @staticmethod
    def for_position(seed, step, pos):
        return Rng(seed ^ ((step * 0xA24BAED4963EE407) & M64) ^ ((pos * 0x9FB21C651E98DF25) & M64))

    def next_u64(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M64  # noqa: E731
        out = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return out

    def uniform(self):
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


def fake_logits(x, vocab):
    """Row i, token v: ((x[i]*31 + v*17 + i*7) % 97) / 97 * 4 - 2, in float32 like the Rust side."""
    i = np.arange(len(x))[:, None]
    v = np.arange(vocab)[None, :]
    k = (np.array(x)[:, None] * 31 + v * 17 + i * 7) % 97
    return (k.astype(np.float32) / np.float32(97.0) * np.float32(4.0) - np.float32(2.0)).astype(np.float32)


def sample_row(logits, temp, top_p, u):
    """sample(top_p(logits / temp)) with the uniform draw u (inverse CDF over tokens sorted by
    probability, descending, ties by id; the reference's top-p keeps the smallest such prefix
    whose mass reaches p)."""
    # float32 throughout, in the same order of operations as dlm (exp((x - max) / T), sequential
    # sums), so both sides see bit-identical probabilities.
    t = np.float32(temp)
    p = np.exp((logits.astype(np.float32) - logits.max()) / t).astype(np.float32)
    total32 = np.float32(0)
    for q in p:
        total32 = np.float32(total32 + q)
    p = (p / total32).astype(np.float32)
    order = sorted(range(len(p)), key=lambda j: (-p[j], j))
    if top_p < 1.0:
        mass, keep = np.float32(0), []
        for j in order:
            keep.append(j)
            mass = np.float32(mass + p[j])
            if mass >= np.float32(top_p):
                break
        order = keep
    total = sum(float(p[j]) for j in order)
    u *= total
    for j in order:
        u -= float(p[j])
        if u < 0:
            return j
    return order[-1]


def generate_samples(prefix, n_gen, steps, mask, vocab, temp, top_p, seed):
    x = list(prefix) + [mask] * n_gen
    masked = [False] * len(prefix) + [True] * n_gen
    commit_rng = Rng(seed)
    history = []
    committed = []  # positions committed at each step of history

    def x0_of(x, masked, step):
        logits = fake_logits(x, vocab)
        x0 = list(x)  # x0[~masked] = x[~masked]
        for p in range(len(x)):
            if masked[p]:  # shift: position p reads row p - 1
                x0[p] = sample_row(logits[p - 1], temp, top_p, Rng.for_position(seed, step, p).uniform())
        return x0

    x0 = x0_of(x, masked, 1)
    for t in range(steps - 1, 0, -1):
        pos = [p for p in range(len(x)) if masked[p]]
        if not pos:
            break
        commit = [p for p in pos if commit_rng.uniform() < 1.0 / (t + 1)]
        for p in commit:
            x[p] = x0[p]
            masked[p] = False
        history.append(list(x))
        committed.append(len(commit))
        if not any(masked):
            break
        x0 = x0_of(x, masked, steps - t + 1)
    else:
        # Last step (t = 0): every position still masked takes its prediction.
        committed.append(sum(masked))
        x = [x0[p] if masked[p] else x[p] for p in range(len(x))]
        history.append(list(x))
    return {"steps": history, "committed": committed, "final": x}


if __name__ == "__main__":
    a = json.loads(sys.argv[1])
    print(json.dumps(generate_samples(a["prefix"], a["n_gen"], a["steps"], a["mask"], a["vocab"],
                                      a["temp"], a["top_p"], a["seed"])))
