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
from make_checkpoint import write_safetensors  # noqa: E402

TOKENIZER = HERE.parent / "tests" / "data" / "llama-tokenizer"
VOCAB, BOS, EOS, MASK = 32000, 1, 2, 811
WEIGHTS = {"copy": 1.0, "reverse": 1.5, "sort": 1.5, "add": 3.0, "recall": 1.0, "infill": 1.5, "english": 1.0}


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

    def __init__(self, tok, seed):
        self.tok, self.rng = tok, random.Random(seed)
        # The used vocabulary: every token any problem of the grammar can produce (drawn widely,
        # both splits), plus BOS, EOS and the mask. Sorted, so it is the same on every run.
        used = {BOS, EOS, MASK}
        cov = random.Random(12345)
        for task in tasks.TASKS:
            for _ in range(4000):
                pre, ans, suf = tasks.encode_problem(tok, task, *tasks.make(task, cov))
                used.update(pre + ans + suf)
        self.used = sorted(used)
        self.sub = {t: i for i, t in enumerate(self.used)}

    def sample(self, split="train"):
        names = list(WEIGHTS)
        task = self.rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
        p, a, s = tasks.draw(task, self.rng, split)
        pre, ans, suf = tasks.encode_problem(self.tok, task, p, a, s)
        return task, pre, ans, suf

    def batch(self, n):
        """Sub-vocabulary ids [B, T] padded at the end, key-valid [B, T], maskable [B, T]."""
        seqs = [self.sample() for _ in range(n)]
        T = max(len(p) + len(a) + len(s) for _, p, a, s in seqs)
        idx = torch.zeros(n, T, dtype=torch.long)
        valid = torch.zeros(n, T, dtype=torch.bool)
        maskable = torch.zeros(n, T, dtype=torch.bool)
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


def dlm_loss(model, idx, valid, maskable, ratio, gen, eps=1e-3):
    B, T = idx.shape
    t = eps + (1 - eps) * torch.rand(B, 1, generator=gen)
    masked = maskable & (torch.rand(B, T, generator=gen) < t)
    masked[:, 0] = False
    x = torch.where(masked, torch.full_like(idx, MASK_SUB), idx)
    # Annealed attention: causal, plus each future key opened with probability `ratio`.
    opened = torch.rand(T, T, generator=gen) < ratio
    attn = (causal(T) | opened)[None, None] & valid[:, None, None, :]
    h = model.hidden(x, attn)
    # Shifted logits: the prediction for position p is row p - 1.
    rows = masked[:, 1:]
    lp = model.log_probs(h[:, :-1][rows])
    ce = -lp.gather(1, idx[:, 1:][rows][:, None])[:, 0]
    w = (1.0 / t).expand(B, T - 1)[rows]
    return (ce * w).sum() / maskable.sum().clamp(min=1), int(valid.sum())


@torch.no_grad()
def evaluate(model, corpus, problems, diffusion):
    """Greedy exact match per task: diffusion decodes by confidence with steps = region length,
    one position per step; the AR model decodes left to right. Quick, for the training log."""
    model.eval()
    acc = {}
    for task, items in problems.items():
        ok = 0
        for p, a, s in items:
            pre, ans, suf = tasks.encode_problem(corpus.tok, task, p, a, s)
            n = len(ans)
            if diffusion:
                x = [corpus.sub[t] for t in pre] + [MASK_SUB] * n + [corpus.sub[t] for t in suf]
                x = torch.tensor([x])
                T = x.shape[1]
                full = torch.ones(1, 1, T, T, dtype=torch.bool)
                for _ in range(n):
                    lp = model.log_probs(model.hidden(x, full)[0, :-1])
                    conf, tok = lp.max(-1)
                    cand = (x[0, 1:] == MASK_SUB)
                    conf = torch.where(cand, conf, torch.tensor(-1e9))
                    j = int(conf.argmax())
                    x[0, j + 1] = tok[j]
                out = x[0, len(pre):len(pre) + n].tolist()
            else:
                x = [corpus.sub[t] for t in pre]
                for _ in range(n):
                    xt = torch.tensor([x])
                    lp = model.log_probs(model.hidden(xt, causal(len(x))[None, None])[0, -1])
                    x.append(int(lp.argmax()))
                out = x[len(pre):]
            ids = [corpus.used[i] for i in out]
            ids = ids[:ids.index(EOS)] if EOS in ids else ids
            ok += tasks.correct(task, p, a, s, corpus.tok.decode(ids))
        acc[task] = ok / len(items)
    model.train()
    return acc


def schedule(step, total, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def train_stage(name, model, corpus, steps, lr, batch, loss_fn, log, eval_every, problems, diffusion):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    t0, seen, hist = time.time(), 0, []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = schedule(step, steps, lr, min(200, steps // 10 + 1))
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
            acc = evaluate(model, corpus, problems, diffusion)
            print(f"{name} step {step + 1} held-out greedy exact match: "
                  + " ".join(f"{k} {v:.2f}" for k, v in acc.items()), flush=True)
            log.append({"stage": name, "step": step + 1, "loss": float(np.mean(hist[-50:])), "acc": acc,
                        "seconds": time.time() - t0, "tokens": seen})
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
        "max_position_embeddings": 128, "rms_norm_eps": c.eps, "rope_theta": c.theta, "rope_scaling": None,
        "vocab_size": VOCAB, "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": 0,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "_name_or_path": name,
    }
    if diffusion:
        config["mask_token_id"] = MASK
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(TOKENIZER / "tokenizer.json", out / "tokenizer.json")
    shutil.copy(TOKENIZER / "tokenizer_config.json", out / "tokenizer_config.json")


def write_test_split(corpus, path, per_task, seed):
    rng = random.Random(seed + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = set()
    with open(path, "w") as f:
        for task in tasks.TASKS:
            n = 0
            while n < per_task:
                p, a, s = tasks.draw(task, rng, "test")
                if (task, p, s) in seen and task != "english":
                    continue
                seen.add((task, p, s))
                item = {"task": task, "prompt": p, "answer": a, "suffix": s, "n": tasks.REGION[task]}
                if task == "english":  # any sentence of the grammar is right
                    item["pattern"] = tasks.ENGLISH_RE.pattern
                f.write(json.dumps(item) + "\n")
                n += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE.parent / "models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ar-steps", type=int, default=2500)
    ap.add_argument("--dlm-steps", type=int, default=6000)
    ap.add_argument("--anneal", type=int, default=1000, help="steps over which attention goes causal -> bidirectional")
    ap.add_argument("--ar-lr", type=float, default=1e-3)
    ap.add_argument("--dlm-lr", type=float, default=7e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--eval-n", type=int, default=40, help="held-out problems per task in the training log")
    ap.add_argument("--test-n", type=int, default=100, help="held-out problems per task in test.jsonl")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(a.seed)

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    corpus = Corpus(tok, a.seed)
    global MASK_SUB
    MASK_SUB = corpus.sub[MASK]
    c = Config(a)
    model = Tiny(c, len(corpus.used), gen)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(corpus.used)} used tokens of {VOCAB}; {n_params / 1e6:.2f} M trained parameters "
          f"({(VOCAB - len(corpus.used)) * c.d / 1e6:.2f} M embedding entries held at zero)", flush=True)
    erng = random.Random(a.seed + 2)
    problems = {t: [tasks.draw(t, erng, "test") for _ in range(a.eval_n)] for t in tasks.TASKS}
    write_test_split(corpus, a.out / "tasks" / "test.jsonl", a.test_n, a.seed)

    log, t_all = [], time.time()
    s1 = train_stage("ar", model, corpus, a.ar_steps, a.ar_lr, a.batch,
                     lambda m, i, v, mk, s: ar_loss(m, i, v), log, a.eval_every, problems, False)
    export(model, corpus, c, a.out / "llama-tiny-ar", "llama-tiny-ar", False)
    state = a.out / ".state"  # not committed: lets a changed export run without retraining
    state.mkdir(exist_ok=True)
    torch.save({"model": model.state_dict(), "used": corpus.used}, state / "llama-tiny-ar.pt")
    s2 = train_stage("dlm", model, corpus, a.dlm_steps, a.dlm_lr, a.batch,
                     lambda m, i, v, mk, s: dlm_loss(m, i, v, mk, min(1.0, s / max(1, a.anneal)), gen),
                     log, a.eval_every, problems, True)
    export(model, corpus, c, a.out / "diffullama-tiny", "diffullama-tiny", True)
    torch.save({"model": model.state_dict(), "used": corpus.used}, state / "diffullama-tiny.pt")
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
               "used_tokens": len(corpus.used), "trained_parameters": n_params,
               "stage1": s1, "stage2": s2, "wall_seconds": time.time() - t_all,
               "torch": torch.__version__, "log": log}
    (a.out / "train-log.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"done in {summary['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
