#!/usr/bin/env python3
"""A multiple-choice set from the held-out problems (models/tasks/test.jsonl) for `dlm-score
choice`: each problem's right answer among three wrong ones that a model only rejects if it
solved the task. Wrong answers are near misses of the same length in characters:

  copy, infill   one digit changed
  reverse        one digit changed, or the digits not reversed
  sort           two neighbouring digits swapped, or one digit changed
  add            the sum off by 1, 10 or 100 (or a digit changed)
  recall         the other keys' values (the hard case: every choice appears in the prompt)
  english        the sentence with two words swapped or a word from the wrong slot

Every item carries the task's answer region as "n" (choices padded with EOS to it, the layout
the model was trained on), so all choices are scored over the same number of tokens.

It also writes the held-out problems as running text, one solved problem per line
(prompt + answer + suffix), for `dlm-score perplexity` and its KL divergence between files.

    python3 train/make_choice.py [--test models/tasks/test.jsonl] [--out models/tasks/choice.jsonl] [--text models/tasks/test.txt]
"""
import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import ENGLISH_RE, PLACE, PREP, SUBJ, VERB  # noqa: E402


def change_digit(rng, s):
    i = rng.choice([k for k, c in enumerate(s) if c.isdigit()])
    return s[:i] + rng.choice([d for d in "0123456789" if d != s[i]]) + s[i + 1:]


def wrong_answers(rng, task, prompt, answer):
    """Candidates for wrong answers (more than three; the caller picks distinct ones)."""
    body = answer[1:]
    if task in ("copy", "infill"):
        return [" " + change_digit(rng, body) for _ in range(12)]
    if task == "reverse":
        shown = prompt.split()[1].rstrip(":")
        return [" " + shown] + [" " + change_digit(rng, body) for _ in range(12)]
    if task == "sort":
        out = []
        for i in range(len(body) - 1):
            if body[i] != body[i + 1]:
                out.append(" " + body[:i] + body[i + 1] + body[i] + body[i + 2:])
        return out + [" " + change_digit(rng, body) for _ in range(12)]
    if task == "add":
        v = int(body)
        near = [v + d for d in (1, -1, 10, -10, 100, -100) if v + d >= 0 and len(str(v + d)) == len(body)]
        rng.shuffle(near)
        return [f" {x}" for x in near] + [" " + change_digit(rng, body) for _ in range(12)]
    if task == "recall":
        vals = re.findall(r"=(\d)", prompt)
        others = [f" {x}" for x in vals if f" {x}" != answer]
        rng.shuffle(others)
        return others + [" " + change_digit(rng, body) for _ in range(12)]
    if task == "english":
        words = body.rstrip(".").split(" ")
        out = []
        for _ in range(24):
            w = list(words)
            if rng.random() < 0.5:
                i, j = rng.sample(range(len(w)), 2)
                w[i], w[j] = w[j], w[i]
            else:
                i = rng.randrange(len(w))
                w[i] = rng.choice(VERB + PLACE + PREP + [s for s in SUBJ if " " not in s])
            out.append(" " + " ".join(w) + ".")
        return [o for o in out if not ENGLISH_RE.match(o.strip())]
    raise ValueError(task)


def main():
    ap = argparse.ArgumentParser()
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--test", type=Path, default=root / "models/tasks/test.jsonl")
    ap.add_argument("--out", type=Path, default=root / "models/tasks/choice.jsonl")
    ap.add_argument("--text", type=Path, default=root / "models/tasks/test.txt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    items, text = [], []
    for line in args.test.read_text().splitlines():
        p = json.loads(line)
        text.append(p["prompt"] + p["answer"] + p.get("suffix", ""))
        wrong = []
        for w in wrong_answers(rng, p["task"], p["prompt"], p["answer"]):
            if w != p["answer"] and w not in wrong and (p["task"] == "english" or len(w) == len(p["answer"])):
                wrong.append(w)
            if len(wrong) == 3:
                break
        assert len(wrong) == 3, p
        label = rng.randrange(4)
        choices = wrong[:label] + [p["answer"]] + wrong[label:]
        item = {"task": p["task"], "context": p["prompt"], "choices": choices, "label": label, "n": p["n"]}
        if p.get("suffix"):
            item["suffix"] = p["suffix"]
        items.append(item)
    args.out.write_text("".join(json.dumps(i) + "\n" for i in items))
    args.text.write_text("".join(t + "\n" for t in text))
    print(f"{len(items)} items -> {args.out}, {len(text)} lines -> {args.text}", file=sys.stderr)


if __name__ == "__main__":
    main()
