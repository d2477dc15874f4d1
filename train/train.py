#!/usr/bin/env python3
"""Train the tiny DiffuLLaMA by the paper's recipe, on CPU, reproducibly from a seed.

Stage 1 pre-trains a small autoregressive LLaMA (Hugging Face `LlamaForCausalLM` semantics:
RMSNorm, rotate-half RoPE, SwiGLU, tied embeddings) with the real 32000-token LLaMA-2 tokenizer on
the corpus of `tasks.py`. Stage 2 adapts it into a masked diffusion LM as DiffuLLaMA was adapted
from LLaMA-2 ("Scaling Diffusion Language Models via Adaptation from Autoregressive Models"):
  - attention-mask annealing: each causal-masked pair (i < j) is opened with probability r, and r
    rises linearly from 0 to 1 over the first `--anneal` steps; after that attention is fully
    bidirectional;
  - logits stay shifted: the row at position i predicts the token at position i + 1;
  - the mask token is id 811; a sequence's answer region (for English, sometimes the whole text) is
    masked token by token with probability t ~ U(eps, 1), and the loss is the cross-entropy on the
    masked positions weighted by 1/t.

The LM head is tied to the embedding. Rows of tokens the corpus never uses are zero and stay zero:
their logit is 0 for every input, so the full 32000-way soft-max is exactly the soft-max over the
used rows plus (32000 - n_used) logits of 0, and the loss below is the exact full-vocabulary
cross-entropy of the exported model at a fraction of the cost.

    python3 train/train.py [--out models] [--seed 0] [--ar-steps N] [--dlm-steps N] [--threads 2]

Writes models/llama-tiny-ar/ and models/diffullama-tiny/ (config.json, tokenizer.json,
tokenizer_config.json, model.safetensors in bf16), models/tasks/test.jsonl (the held-out split)
and models/train-log.json (losses, accuracies, wall time, tokens seen).
"""
import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import tasks  # noqa: E402
import tasks_long  # noqa: E402
from make_checkpoint import write_safetensors  # noqa: E402

TOKENIZER = HERE.parent / "tests" / "data" / "llama-tokenizer"
VOCAB, BOS, EOS, MASK = 32000, 1, 2, 811
BLOCK = 32  # dlm's block length for long answers (LONG_BLOCK in src/model/diffusion.rs)
WEIGHTS = {"copy": 1.0, "reverse": 1.5, "sort": 1.5, "add": 3.0, "recall": 1.0, "infill": 1.5, "english": 1.0}


class Suite:
    """What one model is trained on: the short tasks (`tasks.py`, a fixed region per task) or the
    long ones (`tasks_long.py`, regions of 64-512 tokens, batches of one region each)."""

    def __init__(self, name, fill=tasks_long.FILL):
        self.name, self.long = name, name == "long"
        self.fill = fill  # long suite: the answer's share of its region in training draws
        self.mod = tasks_long if self.long else tasks
        self.weights = tasks_long.WEIGHTS if self.long else WEIGHTS
        self.ar, self.dlm = ("llama-long-ar", "diffullama-long") if self.long else ("llama-tiny-ar", "diffullama-tiny")
        self.test_file = "long.jsonl" if self.long else "test.jsonl"
        self.log_file = "train-long-log.json" if self.long else "train-log.json"
        # Positions: the short layouts fit 128; the longest long layout (a 512-token region
        # between a prompt and a suffix of at most about 20 tokens each) fits 640.
        self.n_ctx = 640 if self.long else 128

    def regions(self, task):
        return tasks_long.REGIONS if self.long else [tasks.REGION[task]]

    def draw(self, task, rng, split, region=None):
        """(prompt, answer, suffix, region)."""
        if self.long:
            region = region or rng.choice(tasks_long.REGIONS)
            fill = self.fill if split == "train" else tasks_long.FILL
            return (*tasks_long.draw(task, rng, split, region, fill), region)
        return (*tasks.draw(task, rng, split), tasks.REGION[task])

    def make(self, task, rng, region):
        return (*tasks_long.make(task, rng, region), region) if self.long else (*tasks.make(task, rng), region)

    def encode(self, tok, task, p, a, s, region):
        if self.long:
            return tasks_long.encode_problem(tok, task, p, a, s, region)
        return tasks.encode_problem(tok, task, p, a, s)


class Config:
    def __init__(self, a):
        self.d, self.n_layer, self.n_head, self.ffn = a.hidden, a.layers, a.heads, a.ffn
        self.hd = self.d // self.n_head
        self.eps, self.theta = 1e-5, 10000.0


class Tiny(torch.nn.Module):
    """LLaMA with the embedding restricted to the used rows (the rest are zero)."""

    def __init__(self, c, n_used, gen):
        super().__init__()
        self.c = c
        p = lambda *s, std=0.02: torch.nn.Parameter(torch.randn(*s, generator=gen) * std)
        ones = lambda n: torch.nn.Parameter(torch.ones(n))
        out_std = 0.02 / math.sqrt(2 * c.n_layer)
        self.emb = p(n_used, c.d)
        self.layers = torch.nn.ModuleList()
        for _ in range(c.n_layer):
            l = torch.nn.Module()
            l.attn_norm, l.ffn_norm = ones(c.d), ones(c.d)
            l.wq, l.wk, l.wv = p(c.d, c.d), p(c.d, c.d), p(c.d, c.d)
            l.wo = p(c.d, c.d, std=out_std)
            l.w_gate, l.w_up = p(c.ffn, c.d), p(c.ffn, c.d)
            l.w_down = p(c.d, c.ffn, std=out_std)
            self.layers.append(l)
        self.norm = ones(c.d)

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c.eps) * w

    def rope(self, T):
        c = self.c
        inv = 1.0 / (c.theta ** (torch.arange(0, c.hd, 2, dtype=torch.float32) / c.hd))
        f = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        e = torch.cat([f, f], -1)
        return e.cos(), e.sin()

    @staticmethod
    def rot(x, cos, sin):
        h = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    def hidden(self, idx, attn):
        """idx [B, T] (rows of self.emb), attn [B or 1, 1, T, T] bool (True: may attend) -> [B, T, d]."""
        c = self.c
        B, T = idx.shape
        x = self.emb[idx]
        cos, sin = self.rope(T)
        for l in self.layers:
            h = self.rms(x, l.attn_norm)
            q = (h @ l.wq.T).view(B, T, c.n_head, c.hd).transpose(1, 2)
            k = (h @ l.wk.T).view(B, T, c.n_head, c.hd).transpose(1, 2)
            v = (h @ l.wv.T).view(B, T, c.n_head, c.hd).transpose(1, 2)
            q, k = self.rot(q, cos, sin), self.rot(k, cos, sin)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn)
            x = x + o.transpose(1, 2).reshape(B, T, c.d) @ l.wo.T
            h = self.rms(x, l.ffn_norm)
            x = x + (F.silu(h @ l.w_gate.T) * (h @ l.w_up.T)) @ l.w_down.T
        return self.rms(x, self.norm)

    def log_probs(self, h):
        """Full-vocabulary log-probabilities of the used tokens: [.., n_used]."""
        z = h @ self.emb.T
        n_unused = VOCAB - self.emb.shape[0]
        lse = torch.logsumexp(z, -1, keepdim=True)
        if n_unused > 0:
            lse = torch.logaddexp(lse, torch.tensor(math.log(n_unused)))
        return z - lse


class Corpus:
    """Encoded problems by task and split, drawn from one seeded RNG."""

    def __init__(self, tok, seed, suite):
        self.tok, self.rng, self.suite = tok, random.Random(seed), suite
        self.regions_open = len(tasks_long.REGIONS)  # long suite: how many of REGIONS batches draw
        # The used vocabulary: every token any problem of the grammar can produce (drawn widely,
        # both splits), plus BOS, EOS and the mask. Sorted, so it is the same on every run.
        used = {BOS, EOS, MASK}
        cov = random.Random(12345)
        for task in suite.mod.TASKS:
            for region in suite.regions(task):
                for _ in range(4000 if not suite.long else 300):
                    pre, ans, suf = suite.encode(tok, task, *suite.make(task, cov, region))
                    used.update(pre + ans + suf)
                    assert len(pre) + len(ans) + len(suf) <= suite.n_ctx, (task, region)
        self.used = sorted(used)
        self.sub = {t: i for i, t in enumerate(self.used)}

    def sample(self, split="train", region=None):
        names = list(self.suite.weights)
        task = self.rng.choices(names, weights=[self.suite.weights[n] for n in names])[0]
        p, a, s, region = self.suite.draw(task, self.rng, split, region)
        pre, ans, suf = self.suite.encode(self.tok, task, p, a, s, region)
        return task, pre, ans, suf

    def batch(self, n):
        """Sub-vocabulary ids [B, T] padded at the end, key-valid [B, T], maskable [B, T].
        Short suite: `n` problems. Long suite: one region for the whole batch, and about `n`
        tokens (so a batch of 64-token regions has eight times the problems of one of 512)."""
        if self.suite.long:
            region = self.rng.choice(tasks_long.REGIONS[:self.regions_open])
            seqs = [self.sample(region=region) for _ in range(max(1, round(n / (region + 32))))]
        else:
            seqs = [self.sample() for _ in range(n)]
        B, T = len(seqs), max(len(p) + len(a) + len(s) for _, p, a, s in seqs)
        idx = torch.zeros(B, T, dtype=torch.long)
        valid = torch.zeros(B, T, dtype=torch.bool)
        maskable = torch.zeros(B, T, dtype=torch.bool)
        for i, (task, p, a, s) in enumerate(seqs):
            ids = p + a + s
            idx[i, :len(ids)] = torch.tensor([self.sub[t] for t in ids])
            valid[i, :len(ids)] = True
            if task == "english" and self.rng.random() < 0.5:
                maskable[i, 1:len(p) + len(a)] = True  # unconditional text: all but BOS
            else:
                maskable[i, len(p):len(p) + len(a)] = True
        return idx, valid, maskable


def causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def ar_loss(model, idx, valid):
    T = idx.shape[1]
    attn = causal(T)[None, None] & valid[:, None, None, :]
    h = model.hidden(idx, attn)[:, :-1]
    tgt, m = idx[:, 1:], valid[:, 1:]
    lp = model.log_probs(h[m])
    return -lp.gather(1, tgt[m][:, None]).mean(), int(m.sum())


def block_masks(maskable, t, share, gen, block=BLOCK):
    """For a `share` of the sequences, mask as semi-autoregressive decoding in blocks of `block`
    leaves the canvas: the answer region before a block boundary is clean, the block after it is
    masked with probability t, and everything later in the region is masked. Returns which
    sequences were drawn [B], their masks [B, T], and which positions are in the all-masked
    future [B, T] (masked, and not scored), which of those are dropped from the canvas [B, T] (a
    random tail of the future: where the canvas ends says nothing of where the answer ends, so
    only the prompt and the text before can), and how many times the block the region is [B] (1
    for the sequences not drawn)."""
    B, T = maskable.shape
    drawn = torch.rand(B, generator=gen) < share
    out = torch.zeros(B, T, dtype=torch.bool)
    future = torch.zeros(B, T, dtype=torch.bool)
    drop = torch.zeros(B, T, dtype=torch.bool)
    scale = torch.ones(B)
    coin = torch.rand(B, T, generator=gen) < t
    pick = torch.rand(B, generator=gen)
    keep = torch.rand(B, generator=gen)
    for i in range(B):
        cols = maskable[i].nonzero()[:, 0]
        if not drawn[i] or len(cols) == 0:
            continue
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        c = lo + block * int(pick[i] * ((hi - lo + block - 1) // block))
        e = min(c + block, hi)
        out[i, c:e] = coin[i, c:e]
        out[i, e:hi] = True
        future[i, e:hi] = True
        drop[i, e + int(keep[i] * (hi - e + 1)):hi] = True
        scale[i] = (hi - lo) / (e - c)
    return drawn, out, future, drop, scale


def dlm_loss(model, idx, valid, maskable, ratio, gen, eps=1e-3, block_share=0.0):
    B, T = idx.shape
    t = eps + (1 - eps) * torch.rand(B, 1, generator=gen)
    masked = maskable & (torch.rand(B, T, generator=gen) < t)
    scored, weight = masked, 1.0 / t
    if block_share > 0:
        drawn, bm, future, drop, scale = block_masks(maskable, t, block_share, gen)
        valid = valid & ~drop
        masked = torch.where(drawn[:, None], bm, masked)
        # Only the block is scored: block decoding commits nothing beyond it, and the masks after
        # it are context there (the uniform draws train predictions from far away). Scaled to the
        # region, so that a sequence weighs the same whichever way it was masked.
        scored = masked & ~future
        weight = weight * scale[:, None]
    masked[:, 0] = False
    scored = scored & masked
    x = torch.where(masked, torch.full_like(idx, MASK_SUB), idx)
    # Annealed attention: causal, plus each future key opened with probability `ratio`.
    opened = torch.rand(T, T, generator=gen) < ratio
    attn = (causal(T) | opened)[None, None] & valid[:, None, None, :]
    h = model.hidden(x, attn)
    # Shifted logits: the prediction for position p is row p - 1.
    rows = scored[:, 1:]
    lp = model.log_probs(h[:, :-1][rows])
    ce = -lp.gather(1, idx[:, 1:][rows][:, None])[:, 0]
    w = weight.expand(B, T - 1)[rows]
    return (ce * w).sum() / maskable.sum().clamp(min=1), int(valid.sum())


@torch.no_grad()
def evaluate(model, corpus, problems, diffusion):
    """Greedy exact match per task, quick, for the training log. Short suite: diffusion decodes
    by confidence one position per step; the AR model decodes left to right. Long suite:
    diffusion decodes as dlm does by default for long answers (blocks of 32, each pass commits the
    positions whose probability is at least 0.9, and at least the most confident one); the AR model
    is scored teacher-forced (every answer token the arg-max after the true prefix: the same as
    greedy decoding for exact answers; for a story, the reference story)."""
    model.eval()
    acc, tok_acc = {}, {}
    long, passes = corpus.suite.long, 0
    for task, items in problems.items():
        ok, right, total = 0, 0, 0
        for p, a, s, region in items:
            pre, ans, suf = corpus.suite.encode(corpus.tok, task, p, a, s, region)
            n = len(ans)
            if diffusion:
                x = [corpus.sub[t] for t in pre] + [MASK_SUB] * n + [corpus.sub[t] for t in suf]
                x = torch.tensor([x])
                T = x.shape[1]
                full = torch.ones(1, 1, T, T, dtype=torch.bool)
                if long:  # dlm's long-answer default: blocks of 32, commit what has p >= 0.9
                    for b in range(len(pre), len(pre) + n, BLOCK):
                        inb = torch.zeros(T, dtype=torch.bool)
                        inb[b:min(b + BLOCK, len(pre) + n)] = True
                        for _ in range(BLOCK):  # each pass commits at least one position
                            if not bool(((x[0] == MASK_SUB) & inb).any()):
                                break
                            lp = model.log_probs(model.hidden(x, full)[0, :-1])
                            lp[:, MASK_SUB] = -math.inf  # a committed position must leave the mask
                            conf, tok = lp.max(-1)
                            cand = (x[0, 1:] == MASK_SUB) & inb[1:]
                            conf = torch.where(cand, conf, torch.tensor(-1e9))
                            pick = cand & (conf >= math.log(0.9))
                            pick[int(conf.argmax())] = True
                            x[0, 1:] = torch.where(pick, tok, x[0, 1:])
                            passes += 1
                for _ in range(0 if long else n):
                    lp = model.log_probs(model.hidden(x, full)[0, :-1])
                    conf, tok = lp.max(-1)
                    cand = (x[0, 1:] == MASK_SUB)
                    conf = torch.where(cand, conf, torch.tensor(-1e9))
                    j = int(conf.argmax())
                    x[0, j + 1] = tok[j]
                out = x[0, len(pre):len(pre) + n].tolist()
            elif long:
                xt = torch.tensor([[corpus.sub[t] for t in pre + ans]])
                lp = model.log_probs(model.hidden(xt, causal(xt.shape[1])[None, None])[0, len(pre) - 1:-1])
                out = lp.argmax(-1).tolist()
            else:
                x = [corpus.sub[t] for t in pre]
                for _ in range(n):
                    xt = torch.tensor([x])
                    lp = model.log_probs(model.hidden(xt, causal(len(x))[None, None])[0, -1])
                    x.append(int(lp.argmax()))
                out = x[len(pre):]
            want = [corpus.sub[t] for t in ans]
            right += sum(int(o == w) for o, w in zip(out, want))
            total += len(want)
            ids = [corpus.used[i] for i in out]
            ids = ids[:ids.index(EOS)] if EOS in ids else ids
            ok += corpus.suite.mod.correct(task, p, a, s, corpus.tok.decode(ids))
        acc[task] = ok / len(items)
        tok_acc[task] = right / max(1, total)
    model.train()
    return acc, tok_acc, passes / max(1, sum(len(v) for v in problems.values()))


def schedule(step, total, lr, warmup, done_by_time=0.0):
    """Linear warm-up, then cosine to 10 %; `done_by_time` (0-1) moves the cosine on when a time
    budget is further along than the step count."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = max((step - warmup) / max(1, total - warmup), done_by_time)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def log_eval(name, step, model, corpus, problems, diffusion, log, hist, t0, seen):
    acc, tok_acc, passes = evaluate(model, corpus, problems, diffusion)
    print(f"{name} step {step} held-out greedy exact match: " + " ".join(f"{k} {v:.2f}" for k, v in acc.items())
          + " | answer tokens right: " + " ".join(f"{k} {v:.2f}" for k, v in tok_acc.items())
          + (f" | {passes:.1f} passes per answer" if passes else ""), flush=True)
    log.append({"stage": name, "step": step, "loss": float(np.mean(hist[-50:])), "acc": acc, "token_acc": tok_acc,
                "seconds": time.time() - t0, "tokens": seen, **({"passes": passes} if passes else {})})


def train_stage(name, model, corpus, steps, lr, batch, loss_fn, log, eval_every, problems, diffusion, minutes=None, curriculum=0.0):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    t0, seen, hist = time.time(), 0, []
    t_eval, ended_by_time = 0.0, False  # evaluation time does not count against the budget
    for step in range(steps):
        by_time = (time.time() - t0 - t_eval) / (60 * minutes) if minutes else 0.0
        if by_time >= 1.0:
            print(f"{name}: time budget of {minutes} min used up after {step} steps", flush=True)
            steps, ended_by_time = step, True
            break
        for g in opt.param_groups:
            g["lr"] = schedule(step, steps, lr, min(200, steps // 10 + 1), by_time)
        if curriculum > 0:  # long suite: the longest region allowed grows over the first part
            done = max(step / steps, by_time)
            corpus.regions_open = 1 + min(3, int(4 * done / curriculum))
        idx, valid, maskable = corpus.batch(batch)
        loss, n = loss_fn(model, idx, valid, maskable, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += int(valid.sum())
        hist.append(loss.item())
        if (step + 1) % 50 == 0 or step == 0:
            el = time.time() - t0
            print(f"{name} step {step + 1}/{steps} loss {np.mean(hist[-50:]):.4f} "
                  f"{el:.0f} s ({el / (step + 1):.2f} s/step), {seen} tokens", flush=True)
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            te = time.time()
            log_eval(name, step + 1, model, corpus, problems, diffusion, log, hist, t0, seen)
            t_eval += time.time() - te
    if eval_every and ended_by_time and steps % eval_every != 0:  # the final accuracy
        log_eval(name, steps, model, corpus, problems, diffusion, log, hist, t0, seen)
    return {"steps": steps, "seconds": time.time() - t0, "tokens": seen, "final_loss": float(np.mean(hist[-100:]))}


def export(model, corpus, c, out, name, diffusion):
    """A Hugging Face folder: config.json, tokenizer files, model.safetensors (bf16, tied head)."""
    out.mkdir(parents=True, exist_ok=True)
    used = torch.tensor(corpus.used)
    emb = torch.zeros(VOCAB, c.d)
    emb[used] = model.emb.detach()
    w = {"model.embed_tokens.weight": emb}
    for i, l in enumerate(model.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = l.attn_norm
        w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"] = l.wq, l.wk
        w[p + "self_attn.v_proj.weight"], w[p + "self_attn.o_proj.weight"] = l.wv, l.wo
        w[p + "post_attention_layernorm.weight"] = l.ffn_norm
        w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = l.w_gate, l.w_up
        w[p + "mlp.down_proj.weight"] = l.w_down
    w["model.norm.weight"] = model.norm
    w = {k: v.detach().float().numpy() for k, v in w.items()}
    write_safetensors(out / "model.safetensors", w, "bf16")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c.d, "intermediate_size": c.ffn, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_key_value_heads": c.n_head, "hidden_act": "silu",
        "max_position_embeddings": corpus.suite.n_ctx, "rms_norm_eps": c.eps, "rope_theta": c.theta, "rope_scaling": None,
        "vocab_size": VOCAB, "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": 0,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "_name_or_path": name,
    }
    if diffusion:
        config["mask_token_id"] = MASK
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(TOKENIZER / "tokenizer.json", out / "tokenizer.json")
    shutil.copy(TOKENIZER / "tokenizer_config.json", out / "tokenizer_config.json")


def write_test_split(corpus, path, per_task, seed):
    """`per_task` held-out problems per task (long suite: per task and region)."""
    suite = corpus.suite
    rng = random.Random(seed + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = set()
    with open(path, "w") as f:
        for task in suite.mod.TASKS:
            for region in suite.regions(task):
                n = 0
                while n < per_task:
                    p, a, s, region = suite.draw(task, rng, "test", region if suite.long else None)
                    if (task, p, s) in seen and task not in ("english", "story"):
                        continue
                    seen.add((task, p, s))
                    item = {"task": task, "prompt": p, "answer": a, "suffix": s, "n": region}
                    if task == "english":  # any sentence of the grammar is right
                        item["pattern"] = tasks.ENGLISH_RE.pattern
                    if task == "story":  # any story of the grammar, one name throughout
                        item["pattern"] = tasks_long.story_pattern(p)
                    f.write(json.dumps(item) + "\n")
                    n += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE.parent / "models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suite", choices=["short", "long"], default="short",
                    help="short: tasks.py (models/diffullama-tiny); long: tasks_long.py, answers of 64-512 tokens "
                         "(models/diffullama-long)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--batch", type=int, default=None, help="problems per step (short; default 64), "
                    "or tokens per step (long; default 4096)")
    ap.add_argument("--ar-steps", type=int, default=2500)
    ap.add_argument("--dlm-steps", type=int, default=6000)
    ap.add_argument("--anneal", type=int, default=1000, help="steps over which attention goes causal -> bidirectional")
    ap.add_argument("--ar-lr", type=float, default=1e-3)
    ap.add_argument("--dlm-lr", type=float, default=7e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--eval-n", type=int, default=40, help="held-out problems per task in the training log")
    ap.add_argument("--test-n", type=int, default=100, help="held-out problems per task in test.jsonl")
    ap.add_argument("--ar-minutes", type=float, default=None,
                    help="a time budget for stage 1: the learning-rate schedule runs on whichever of steps and "
                         "time is further along, and the stage ends when either is used up (the log records the "
                         "steps taken)")
    ap.add_argument("--dlm-minutes", type=float, default=None, help="the same for stage 2")
    ap.add_argument("--curriculum", type=float, default=0.0,
                    help="long suite: over this fraction of each stage, batches draw regions of 64, then up to "
                         "128, 256 and 512 tokens (0: every region from the start)")
    ap.add_argument("--block-masks", type=float, default=0.0,
                    help="stage 2: the share of sequences masked as decoding in blocks of 32 leaves them (clean "
                         "before a block boundary, the block masked with probability t and scored, all masked "
                         "and not scored after it, a random tail of that dropped from the canvas); default 0. "
                         "Tried at 0.5 on the long model: see models/MODEL-long.md")
    ap.add_argument("--fill", type=float, nargs=2, default=list(tasks_long.FILL), metavar=("LO", "HI"),
                    help="long suite: a training answer fills a share of its region drawn uniformly from [LO, HI] "
                         "(default 0.55 0.95, as the held-out split, which never changes). A wide range such as "
                         "0.1 0.95 makes where the canvas ends say little about where the answer ends")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from a saved state (models/.state/*.pt, same suite and seed): an AR state skips "
                         "stage 1, a diffusion state continues stage 2")
    a = ap.parse_args()
    if not 0 < a.fill[0] <= a.fill[1] <= 0.95:
        sys.exit(f"--fill {a.fill[0]} {a.fill[1]}: expected 0 < LO <= HI <= 0.95 (an answer must fit its region)")
    if a.suite == "short" and tuple(a.fill) != tasks_long.FILL:
        sys.exit("--fill: only the long suite has answer regions to fill (--suite long)")
    suite = Suite(a.suite, tuple(a.fill))
    if a.batch is None:
        a.batch = 4096 if suite.long else 64
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(a.seed)

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    corpus = Corpus(tok, a.seed, suite)
    global MASK_SUB
    MASK_SUB = corpus.sub[MASK]
    c = Config(a)
    model = Tiny(c, len(corpus.used), gen)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(corpus.used)} used tokens of {VOCAB}; {n_params / 1e6:.2f} M trained parameters "
          f"({(VOCAB - len(corpus.used)) * c.d / 1e6:.2f} M embedding entries held at zero)", flush=True)
    erng = random.Random(a.seed + 2)
    if suite.long:  # the log decodes the two shorter regions (a long decode in PyTorch is slow)
        problems = {t: [suite.draw(t, erng, "test", r) for r in (64, 128) for _ in range(a.eval_n // 2)]
                    for t in suite.mod.TASKS}
    else:
        problems = {t: [suite.draw(t, erng, "test") for _ in range(a.eval_n)] for t in suite.mod.TASKS}
    write_test_split(corpus, a.out / "tasks" / suite.test_file, a.test_n, a.seed)

    log, t_all = [], time.time()
    start = None
    if a.init:
        state = torch.load(a.init)
        if state["used"] != corpus.used:
            sys.exit(f"--init {a.init}: saved for another vocabulary (another suite or seed)")
        model.load_state_dict(state["model"])
        start = "dlm" if a.init.stem == suite.dlm else "ar"
        print(f"started from {a.init} ({'stage 2 continues' if start == 'dlm' else 'stage 1 skipped'})", flush=True)
    if start is None:
        s1 = train_stage("ar", model, corpus, a.ar_steps, a.ar_lr, a.batch,
                         lambda m, i, v, mk, s: ar_loss(m, i, v), log, a.eval_every, problems, False, a.ar_minutes,
                         a.curriculum)
    else:
        s1 = {"from": str(a.init)}
    state = a.out / ".state"  # not committed: lets a changed export run without retraining
    state.mkdir(exist_ok=True)
    if start != "dlm":
        export(model, corpus, c, a.out / suite.ar, suite.ar, False)
        torch.save({"model": model.state_dict(), "used": corpus.used}, state / f"{suite.ar}.pt")
    # A continued stage 2 is bidirectional from its first step (its annealing is done).
    anneal = (lambda s: 1.0) if start == "dlm" else (lambda s: min(1.0, s / max(1, a.anneal)))
    s2 = train_stage("dlm", model, corpus, a.dlm_steps, a.dlm_lr, a.batch,
                     lambda m, i, v, mk, s: dlm_loss(m, i, v, mk, anneal(s), gen, block_share=a.block_masks),
                     log, a.eval_every, problems, True, a.dlm_minutes, a.curriculum)
    export(model, corpus, c, a.out / suite.dlm, suite.dlm, True)
    torch.save({"model": model.state_dict(), "used": corpus.used}, state / f"{suite.dlm}.pt")
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "used_tokens": len(corpus.used), "trained_parameters": n_params,
               "stage1": s1, "stage2": s2, "wall_seconds": time.time() - t_all,
               "torch": torch.__version__, "log": log}
    (a.out / suite.log_file).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"done in {summary['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
