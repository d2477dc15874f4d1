#!/usr/bin/env python3
"""Reference of the DiffuLLaMA authors' `eval_forward` in numpy, on given masks, independent of
dlm: the weights are the GGUF's, dequantized by PyPI `gguf`; the forward pass is
tests/ref_forward.py's (float64, Hugging Face semantics, bidirectional).

    python3 tests/ref_score.py --gguf FILE --masks masks.json --out scores.json

masks.json: {"mask_id": int, "shift": bool, "levels": T, "draws": R,
             "targets": [{"tokens": [...], "scored": [bool...],
                          "copies": [{"level": t, "draw": d, "masked": [positions]}]}]}

For every copy, as eval_forward does: x_t = tokens with the masked positions set to the mask
token; logits = model(x_t); with shift, logits[:-1] predict tokens[1:] and the loss mask is
shifted the same way; loss = cross-entropy over the masked positions; unweighted level loss =
sum / count (0 when nothing is masked); score = sum over the T levels / T, averaged over draws.
Beside it the 1/t-weighted bound: sum over levels of (T/t) * sum(loss) / n_scored / T.
Writes {"targets": [{"score": float, "elbo": float}]}.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ref_forward import config_from_gguf, forward, load_gguf_as_hf  # noqa: E402


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def score_target(cfg, w, t, mask_id, shift, levels, draws):
    x = np.array(t["tokens"], dtype=np.int64)
    scored = np.array(t["scored"], dtype=bool)
    n_scored = int(scored.sum())
    per_draw = np.zeros((draws, 2))
    for c in t["copies"]:
        masked = np.zeros_like(scored)
        masked[c["masked"]] = True
        assert not (masked & ~scored).any(), "a mask outside the targets"
        if c["level"] == levels:
            assert (masked == scored).all(), "level T must mask every target"
        xt = np.where(masked, mask_id, x)
        logits = forward(cfg, w, xt.tolist())
        loss_mask = xt == mask_id
        label = x
        if shift:
            logits, loss_mask, label = logits[:-1], loss_mask[1:], x[1:]
        ce = -log_softmax(logits)[np.arange(len(label)), label]
        ce = np.where(loss_mask, ce, 0.0)
        cnt = loss_mask.sum()
        rate = c["level"] / levels
        if cnt > 0:
            per_draw[c["draw"], 0] += ce.sum() / cnt / levels
            per_draw[c["draw"], 1] += (1.0 / rate) * ce.sum() / n_scored / levels
    return {"score": float(per_draw[:, 0].mean()), "elbo": float(per_draw[:, 1].mean())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--masks", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    m = json.loads(args.masks.read_text())
    cfg = config_from_gguf(args.gguf)
    w = load_gguf_as_hf(args.gguf, cfg)
    out = [score_target(cfg, w, t, m["mask_id"], m["shift"], m["levels"], m["draws"]) for t in m["targets"]]
    args.out.write_text(json.dumps({"targets": out}))


if __name__ == "__main__":
    main()
