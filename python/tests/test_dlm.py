"""The `dlm` Python package against the binaries of the same build, on the trained tiny
DiffuLLaMA (models/diffullama-tiny as q8_0): generations equal `dlm-run`'s for the same flags and
seed, logits equal `--dump-logits`, token ids equal `--tokenize`, scores equal `dlm-score`'s;
a thread pool gets the serial answers; streams show masks shrinking; bad arguments raise
ValueError with one line naming the argument as Python spells it.

DLM_BIN: the folder holding dlm-run, dlm-score and dlm-convert (python/test.sh sets it).
"""

import concurrent.futures
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dlm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DLM_BIN", os.path.join(ROOT, "target", "release"))


def tool(name):
    return os.path.join(BIN, name)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "tiny-q8_0.gguf"
    subprocess.run([tool("dlm-convert"), os.path.join(ROOT, "models", "diffullama-tiny"), "-o", str(out), "--type", "q8_0"], check=True, capture_output=True)
    return str(out)


@pytest.fixture(scope="session")
def model(model_path):
    return dlm.Model(model_path, threads=2, backend="cpu")


def dlm_run(model_path, *args):
    out = subprocess.run([tool("dlm-run"), "-m", model_path, "-t", "2", "--backend", "cpu", "--json", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def problems(n):
    with open(os.path.join(ROOT, "models", "tasks", "test.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return rows[:: max(1, len(rows) // n)][:n]


# (keyword arguments, the same as dlm-run flags)
SETTINGS = [
    ({}, []),
    ({"unmask": "confidence", "steps": 8, "temp": 0}, ["--unmask", "confidence", "--steps", "8", "--temp", "0"]),
    ({"unmask": "entropy", "temperature": 0.7, "top_p": 0.9, "top_k": 20}, ["--unmask", "entropy", "--temp", "0.7", "--top-p", "0.9", "--top-k", "20"]),
    ({"block_length": 4, "cache": "dual", "steps": 8}, ["--block-length", "4", "--cache", "dual", "--steps", "8"]),
    ({"unmask": "threshold", "threshold": 0.9, "stop": ["3", "x"]}, ["--unmask", "threshold", "--threshold", "0.9", "--stop", "3", "--stop", "x"]),
]


@pytest.mark.parametrize("kw,flags", SETTINGS)
def test_generate_equals_dlm_run(model, model_path, kw, flags):
    for i, p in enumerate(problems(4)):
        seed = 100 + i
        want = dlm_run(model_path, "-p", p["prompt"], "-n", str(p["n"]), "-s", str(seed), *flags)
        got = model.generate(p["prompt"], n_predict=p["n"], seed=seed, **kw)
        assert (got.text, got.tokens, got.steps, got.stop) == (want["text"], want["tokens"], want["steps"], want["stop"]), (p, kw)
        assert got.prompt_tokens == want["prompt_tokens"] and got.seed == seed


def test_the_trained_model_answers(model):
    """As dlm-eval runs a problem: BOS + prompt + n masks + suffix, one step per answer token."""
    right = 0
    ps = [p for p in problems(30) if "pattern" not in p][:20]
    for p in ps:
        g = model.generate(p["prompt"], n_predict=p["n"], steps=p["n"], suffix=p.get("suffix", ""), seed=1, temp=0)
        right += g.text.strip() == p["answer"].strip()
    assert right >= 0.8 * len(ps), f"{right} of {len(ps)}"


def test_a_list_equals_each_alone(model):
    ps = problems(6)
    prompts = [p["prompt"] for p in ps]
    batch = model.generate(prompts, n_predict=8, seed=7)
    alone = [model.generate(p, n_predict=8, seed=7) for p in prompts]
    assert [g.tokens for g in batch] == [g.tokens for g in alone]
    assert [g.text for g in batch] == [g.text for g in alone]


def test_a_thread_pool_gets_the_serial_answers(model):
    ps = problems(12)
    jobs = [(p["prompt"], 50 + i) for i, p in enumerate(ps)]
    serial = [model.generate(pr, n_predict=8, seed=s).tokens for pr, s in jobs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda job: model.generate(job[0], n_predict=8, seed=job[1]).tokens, jobs))
    assert threaded == serial


def test_stream_shows_the_canvas_denoising(model):
    p = problems(1)[0]
    s = model.stream(p["prompt"], n_predict=8, seed=3, unmask="confidence", steps=8, temp=0, mask="#")
    states = list(s)
    assert len(states) >= 2
    masked = [sum(st.masked) for st in states]
    assert masked == sorted(masked, reverse=True) and masked[0] < 8 and masked[-1] == 0
    assert "#" in states[0].text and "#" not in states[-1].text
    assert all(st.committed >= 1 for st in states)
    final = s.result()
    same = lambda g: (g.text, g.tokens, g.steps, g.seed, g.stop)
    assert same(final) == same(model.generate(p["prompt"], n_predict=8, seed=3, unmask="confidence", steps=8, temp=0))
    # Leaving a stream early frees the model for the next call.
    it = iter(model.stream(p["prompt"], n_predict=8, seed=3, unmask="confidence", steps=8, temp=0))
    next(it)
    del it
    assert same(model.generate(p["prompt"], n_predict=8, seed=3, unmask="confidence", steps=8, temp=0)) == same(final)


def test_logits_equal_dump_logits(model, model_path, tmp_path):
    p = problems(1)[0]
    npy = tmp_path / "l.npy"
    want = dlm_run(model_path, "-p", p["prompt"], "-n", "8", "-s", "1", "--dump-logits", str(npy))
    canvas = want["prompt_tokens"] + [model.info["mask_id"]] * 8
    got = model.logits(canvas)
    assert got.dtype == np.float32 and got.shape == (len(canvas), model.n_vocab)
    assert np.array_equal(got, np.load(npy))


def test_tokens_equal_dlm_run(model, model_path):
    text = "copy 6859: the quick brown fox, 12 + 30 = 42"
    out = subprocess.run([tool("dlm-run"), "-m", model_path, "--tokenize", "--json", "-p", text], check=True, capture_output=True, text=True)
    ids = json.loads(out.stdout)
    assert model.tokenize(text) == ids
    assert model.detokenize(model.tokenize(text, bos=False)) == text


def test_likelihood_equals_dlm_score(model, model_path):
    out = subprocess.run(
        [tool("dlm-score"), "likelihood", "-m", model_path, "-t", "2", "--backend", "cpu", "--context", "copy 6859:", "--continuation", " 6859", "--json", "--levels", "8", "--draws", "2", "--seed", "5"],
        check=True, capture_output=True, text=True,
    )
    want = json.loads(out.stdout)
    got = model.likelihood("copy 6859:", " 6859", levels=8, draws=2, seed=5)
    assert (got.score, got.score_se, got.elbo, got.elbo_se) == (want["score"], want["score_se"], want["elbo"], want["elbo_se"])
    wrong = model.likelihood("copy 6859:", " 1234", levels=8, draws=2, seed=5)
    assert wrong.score > got.score


def test_choose_picks_the_answer(model):
    pred, scores = model.choose("copy 6859:", [" 1234", " 6859", " 9586"])
    assert pred == 1 and len(scores) == 3 and scores[1].score == min(s.score for s in scores)


@pytest.mark.parametrize(
    "call,words",
    [
        (lambda m: m.generate("x", top_p=2), ["top_p", "(0, 1]"]),
        (lambda m: m.generate("x", steps=0), ["steps"]),
        (lambda m: m.generate("x", unmask="sideways"), ["sideways"]),
        (lambda m: m.generate("x", bogus=1), ["bogus"]),
        (lambda m: m.generate("x", n_predict=100000), ["exceeds"]),
        (lambda m: m.stream("x", cache="dual", cfg_scale=1.0), ["cfg_scale", "cache"]),
        (lambda m: m.likelihood("a", "", levels=4), ["continuation is empty"]),
        (lambda m: m.likelihood("a", "b", levels=0), ["levels"]),
        (lambda m: m.detokenize([10**9]), ["vocabulary"]),
        (lambda m: m.logits([]), ["at least one token"]),
    ],
)
def test_bad_arguments_raise_one_line(model, call, words):
    with pytest.raises(ValueError) as e:
        call(model)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert "--" not in msg, msg


def test_bad_files_raise(tmp_path):
    with pytest.raises(ValueError, match="no-such.gguf"):
        dlm.Model(str(tmp_path / "no-such.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 60)
    with pytest.raises(ValueError, match="bad.gguf"):
        dlm.Model(str(bad))
    with pytest.raises(ValueError, match="threads"):
        dlm.Model(str(bad), threads="many")


def test_typed_and_documented():
    assert os.path.exists(os.path.join(os.path.dirname(dlm.__file__), "py.typed"))
    for f in [dlm.Model.generate, dlm.Model.stream, dlm.Model.logits, dlm.Model.likelihood, dlm.Model.choose, dlm.Model.tokenize]:
        assert f.__doc__ and f.__annotations__, f
    assert "dlm" in dlm.version()


def test_kl_equals_dlm_score(model, model_path, tmp_path):
    """A base written from Python and compared from Python gives dlm-score's numbers on the same
    files (q4_0 against the q8_0 base), and a model against its own base has KL 0."""
    text = "copy 6859: 6859\nreverse 345: 543\nadd 12 30: 42\n" * 8
    (tmp_path / "text.txt").write_text(text)
    base = tmp_path / "base.kld"
    summary = model.kl_base(text, str(base), ctx=64, levels=4)
    assert summary["windows"] >= 2 and summary["elbo"] > 0
    q4 = tmp_path / "q4.gguf"
    subprocess.run([tool("dlm-convert"), os.path.join(ROOT, "models", "diffullama-tiny"), "-o", str(q4), "--type", "q4_0"], check=True, capture_output=True)
    other = dlm.Model(str(q4), threads=2, backend="cpu")
    got = other.kl(str(base))
    out = subprocess.run([tool("dlm-score"), "perplexity", "-m", str(q4), "-t", "2", "--backend", "cpu", "--kl-divergence-base", str(base), "--kl-divergence", "--json"],
                         check=True, capture_output=True, text=True)
    want = json.loads(out.stdout)["kld"]
    assert got == want
    assert 0 < got["mean_kld"] < 1
    assert model.kl(str(base))["mean_kld"] == 0
    with pytest.raises(ValueError, match="path"):
        model.kl_base(text, str(tmp_path), levels=4)
