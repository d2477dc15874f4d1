"""dlm as an lm-evaluation-harness model (PyPI `lm_eval`, no torch), on the trained tiny
DiffuLLaMA: a local YAML task in lm-eval's own format over items from models/tasks/choice.jsonl
gets, through lm_eval's real command line, the accuracy and every per-item score of
`dlm-score choice` on the same file; generate_until equals dlm.Model.generate with the stop
strings; loglikelihood_rolling is minus the ELBO bound.
"""

import glob
import json
import os
import subprocess
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval")

import dlm  # noqa: E402
import dlm.lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from test_dlm import ROOT, model, model_path, problems, tool  # noqa: E402,F401

TASK = """task: dlm_tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def test_lm_eval_command_line_equals_dlm_score_choice(model_path, tmp_path):
    with open(os.path.join(ROOT, "models", "tasks", "choice.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    items = tmp_path / "items.jsonl"
    with open(items, "w") as f:
        for r in rows[::20][:35]:  # every task
            f.write(json.dumps({"task": r["task"], "context": r["context"], "choices": r["choices"], "label": r["label"]}) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "dlm_tiny_choice.yaml").write_text(TASK.format(items=items))
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "dlm.lm_eval", "--model", "dlm", "--model_args", f"path={model_path},levels=8,seed=3,threads=2,backend=cpu",
           "--tasks", "dlm_tiny_choice", "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out"), "--log_samples"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.load(open(glob.glob(str(tmp_path / "out" / "**" / "results_*.json"), recursive=True)[0]))
    acc = results["results"]["dlm_tiny_choice"]["acc,none"]
    samples = [json.loads(line) for line in open(glob.glob(str(tmp_path / "out" / "**" / "samples_dlm_tiny_choice_*.jsonl"), recursive=True)[0])]

    per_item = tmp_path / "per-item.jsonl"
    out = subprocess.run([tool("dlm-score"), "choice", "-m", model_path, "--items", str(items), "--levels", "8", "--seed", "3", "-t", "2", "--backend", "cpu", "--json", "--per-item", str(per_item)],
                         check=True, capture_output=True, text=True)
    want = json.loads(out.stdout)
    assert acc == pytest.approx(want["accuracy"], abs=1e-12), (acc, want["accuracy"])
    assert 0.6 < acc <= 1.0  # the trained model, well above the 0.25 of chance
    lines = [json.loads(line) for line in open(per_item)]
    by_doc = {s["doc_id"]: s for s in samples}
    assert len(by_doc) == len(lines) == 35
    for line in lines:
        s = by_doc[line["line"] - 1]
        # lm_eval logs each response as strings: [[loglikelihood, is_greedy]] per choice.
        lls = [float(r[0][0]) for r in s["resps"]]
        assert [-x for x in lls] == line["scores"], (line, s["resps"])


def instance(kind, args, doc_id=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=("t", doc_id, 1))


def test_generate_until_is_generate_with_stops(model_path):
    lm = dlm.lm_eval.DlmLM.create_from_arg_string(f"path={model_path},threads=2,backend=cpu,unmask=confidence,steps=8,seed=4", {"batch_size": 1})
    ps = problems(3)
    got = lm.generate_until([instance("generate_until", (p["prompt"], {"until": ["\n", "9"], "max_gen_toks": 8})) for p in ps])
    m = lm.model
    want = [m.generate(p["prompt"], n_predict=8, stop=["\n", "9"], unmask="confidence", steps=8, seed=4).text for p in ps]
    assert got == want


def test_loglikelihood_rolling_is_minus_the_bound(model_path):
    lm = dlm.lm_eval.DlmLM.create_from_arg_string(f"path={model_path},threads=2,backend=cpu,levels=4", None)
    text = "copy 6859: 6859\nadd 12 30: 42\n" * 20
    (ll,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", (text,))])
    nats, n = lm.model._native.rolling(text, 4, 1, 0)
    assert ll == -nats and n > lm.model.info["n_ctx_train"]  # more than one window
    (short,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", ("copy 6859: 6859",))])
    assert ll < short < 0


def test_bad_model_args():
    with pytest.raises(ValueError, match="key=value"):
        dlm.lm_eval.DlmLM.create_from_arg_string("path", None)
    with pytest.raises(TypeError):
        dlm.lm_eval.DlmLM.create_from_arg_string("levels=3", None)
