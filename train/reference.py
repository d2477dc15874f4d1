#!/usr/bin/env python3
"""The independent reference: a Hugging Face checkpoint folder run in PyTorch on held-out problems.

Runs the DiffuLLaMA authors' `generate_samples` (the `origin` rule: every still-masked position is
committed with probability 1/(t+1) at step t) or a confidence rule (the k most probable positions
per step, k from the same linear schedule as dlm's), or, with --causal, plain left-to-right greedy
decoding of an autoregressive model. It shares no code with the Rust runtime: weights come from
the bf16 safetensors, not from a GGUF. Prints one JSON object: accuracy per task and overall.

One addition to the authors' rule, which dlm makes too (`--no-eos-fill` turns it off here): once
an EOS is committed in the answer region, every masked position after it becomes EOS (the answer
has ended), so later steps neither predict nor commit there.

    python3 train/reference.py models/diffullama-tiny models/tasks/test.jsonl --rule confidence
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tasks  # noqa: E402
import train  # noqa: E402


def load(folder):
    cfg = json.loads((folder / "config.json").read_text())

    class A:
        hidden, layers, heads, ffn = (cfg["hidden_size"], cfg["num_hidden_layers"],
                                      cfg["num_attention_heads"], cfg["intermediate_size"])
    c = train.Config(A)
    c.eps, c.theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    w = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    m = train.Tiny(c, cfg["vocab_size"], torch.Generator().manual_seed(0))  # every row: no zero rows assumed
    with torch.no_grad():
        m.emb.copy_(w["model.embed_tokens.weight"])
        for i, l in enumerate(m.layers):
            p = f"model.layers.{i}."
            for dst, src in [("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
                             ("wq", "self_attn.q_proj"), ("wk", "self_attn.k_proj"), ("wv", "self_attn.v_proj"),
                             ("wo", "self_attn.o_proj"), ("w_gate", "mlp.gate_proj"), ("w_up", "mlp.up_proj"),
                             ("w_down", "mlp.down_proj")]:
                getattr(l, dst).copy_(w[p + src + ".weight"])
        m.norm.copy_(w["model.norm.weight"])
    m.eval()
    return m, cfg


def sample(logp, temp, top_p, gen):
    """Token and its probability per row: greedy at temp 0, else temperature then top-p."""
    if temp <= 0:
        p = logp.softmax(-1)
        conf, tok = p.max(-1)
        return tok, conf
    p = (logp / temp).softmax(-1)
    sp, si = p.sort(-1, descending=True)
    keep = (sp.cumsum(-1) - sp) < top_p  # the smallest prefix reaching top_p
    sp = torch.where(keep, sp, torch.zeros_like(sp))
    j = torch.multinomial(sp / sp.sum(-1, keepdim=True), 1, generator=gen)
    tok = si.gather(-1, j)[:, 0]
    return tok, p.gather(-1, tok[:, None])[:, 0]


@torch.no_grad()
def diffusion(m, x, lo, hi, steps, rule, temp, top_p, mask, gen, eos=None):
    """Fill x[lo:hi] (all mask tokens); x is a 1-D tensor with BOS first. Shifted logits."""
    T = x.shape[0]
    full = torch.ones(1, 1, T, T, dtype=torch.bool)
    masked = torch.zeros(T, dtype=torch.bool)
    masked[lo:hi] = True
    x = x.clone()

    def predict():
        logp = m.log_probs(m.hidden(x[None], full)[0])
        tok, conf = sample(logp[:-1], temp, top_p, gen)  # row p-1 predicts position p
        return torch.cat([x[:1], tok]), torch.cat([torch.ones(1), conf])

    def eos_fill():
        if eos is None:
            return
        done = (~masked[lo:hi]) & (x[lo:hi] == eos)
        if done.any():
            e = lo + int(done.nonzero()[0])
            after = masked.clone()
            after[:e + 1] = False
            after[hi:] = False
            x[after] = eos
            masked[after] = False

    if rule == "origin":
        # generate_samples: one pass, then for t = steps-1 .. 1 commit with probability 1/(t+1)
        # and predict again; what is still masked after the loop takes the last prediction.
        x0, _ = predict()
        for t in range(steps - 1, 0, -1):
            commit = masked & (torch.rand(T, generator=gen) < 1.0 / (t + 1))
            x[commit] = x0[commit]
            masked &= ~commit
            eos_fill()
            x0, _ = predict()
        x[masked] = x0[masked]
        return x
    for step in range(steps):
        remaining = int(masked.sum())
        if remaining == 0:
            break
        k = min(remaining, max(1, math.ceil(remaining / max(1, steps - step))))
        x0, conf = predict()
        conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
        order = sorted(range(T), key=lambda i: (-float(conf[i]), i))[:k]
        for i in order:
            x[i] = x0[i]
            masked[i] = False
        eos_fill()
    return x


@torch.no_grad()
def left_to_right(m, prefix, n):
    x = list(prefix)
    for _ in range(n):
        t = torch.tensor([x])
        logp = m.log_probs(m.hidden(t, train.causal(len(x))[None, None])[0, -1])
        x.append(int(logp.argmax()))
    return x[len(prefix):]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="Hugging Face folder (config.json, model.safetensors)")
    ap.add_argument("problems", type=Path, help="test.jsonl from train.py")
    ap.add_argument("--rule", choices=["origin", "confidence"], default="origin")
    ap.add_argument("--steps-frac", type=float, default=1.0, help="steps = ceil(answer region x this)")
    ap.add_argument("--temp", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--causal", action="store_true", help="autoregressive model: greedy left to right")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, help="at most this many problems per task")
    ap.add_argument("--no-eos-fill", action="store_true", help="the authors' rule exactly: no EOS fill")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(a.seed)
    m, cfg = load(a.model)
    tok = Tokenizer.from_file(str(a.model / "tokenizer.json"))
    mask, eos = cfg.get("mask_token_id", train.MASK), cfg["eos_token_id"]
    right, total = {}, {}
    for line in a.problems.read_text().splitlines():
        p = json.loads(line)
        task = p["task"]
        p.setdefault("suffix", "")
        if a.limit is not None and total.get(task, 0) >= a.limit:
            continue
        prefix, ans, suf = tasks.encode_problem(tok, task, p["prompt"], p["answer"], p["suffix"])
        n = p["n"]
        if a.causal:
            out = left_to_right(m, prefix, n)
        else:
            x = torch.tensor(prefix + [mask] * n + suf)
            steps = max(1, math.ceil(n * a.steps_frac))
            out = diffusion(m, x, len(prefix), len(prefix) + n, steps, a.rule, a.temp, a.top_p, mask, gen,
                            None if a.no_eos_fill else eos)
            out = out[len(prefix):len(prefix) + n].tolist()
        out = out[:out.index(eos)] if eos in out else out
        ok = tasks.correct(task, p["prompt"], p["answer"], p["suffix"], tok.decode(out))
        right[task] = right.get(task, 0) + ok
        total[task] = total.get(task, 0) + 1
    acc = {t: right[t] / total[t] for t in total}
    print(json.dumps({"model": str(a.model), "rule": "causal" if a.causal else a.rule, "steps_frac": a.steps_frac,
                      "temp": a.temp, "top_p": a.top_p, "seed": a.seed, "accuracy": acc,
                      "overall": sum(right.values()) / sum(total.values()), "problems": sum(total.values())}))


if __name__ == "__main__":
    main()
