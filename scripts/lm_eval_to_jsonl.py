#!/usr/bin/env python3
"""Turns rows of the multiple-choice tasks the DiffuLLaMA paper reports (HellaSwag, PIQA, SIQA,
Winogrande) into `dlm-score choice` items: {"context", "choices", "label"}, prepared as the
paper's evaluation (and lm-evaluation-harness) prepares them.

    python3 scripts/lm_eval_to_jsonl.py --task hellaswag hellaswag-validation.jsonl hellaswag.jsonl

The input is the task's validation split as JSON lines with the dataset's own fields, e.g.
exported with the `datasets` package:

    python3 -c "import datasets; datasets.load_dataset('Rowan/hellaswag', split='validation').to_json('hellaswag-validation.jsonl')"

(also 'ybisk/piqa', 'allenai/social_i_qa', and 'allenai/winogrande' with config 'winogrande_xl').

  hellaswag   context "<activity_label>: <ctx_a> <Ctx_b>", choices " <ending>" (bracketed
              WikiHow artifacts removed), label = int(label)
  piqa        context "Question: <goal>\\nAnswer:", choices " <sol1>", " <sol2>"
  siqa        context "Question: <context> <question>\\nAnswer:", choices " <answerA|B|C>",
              label = int(label) - 1
  winogrande  context = the sentence up to "_"; each choice is the option followed by the rest
              of the sentence, all of it scored (as the paper's eval_wino masks target + suffix)
"""
import argparse
import json
import re
import sys


def clean(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(d):
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    return {"context": clean(d["activity_label"] + ": " + ctx), "choices": [" " + clean(e) for e in d["endings"]], "label": int(d["label"])}


def piqa(d):
    return {"context": f"Question: {d['goal']}\nAnswer:", "choices": [" " + d["sol1"], " " + d["sol2"]], "label": int(d["label"])}


def siqa(d):
    return {"context": f"Question: {d['context']} {d['question']}\nAnswer:", "choices": [" " + d[k] for k in ("answerA", "answerB", "answerC")], "label": int(d["label"]) - 1}


def winogrande(d):
    s = d["sentence"]
    i = s.index("_")
    return {"context": s[:i].rstrip(), "choices": [" " + d["option1"] + s[i + 1:], " " + d["option2"] + s[i + 1:]], "label": int(d["answer"]) - 1}


TASKS = {"hellaswag": hellaswag, "piqa": piqa, "siqa": siqa, "winogrande": winogrande}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("input")
    ap.add_argument("output")
    args = ap.parse_args()
    out = []
    with open(args.input, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = TASKS[args.task](json.loads(line))
            except (KeyError, ValueError, TypeError) as e:
                sys.exit(f"error: {args.input} line {n}: not a {args.task} row ({type(e).__name__}: {e})")
            item["task"] = args.task
            out.append(json.dumps(item, ensure_ascii=False))
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("".join(o + "\n" for o in out))
    print(f"{len(out)} items -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
