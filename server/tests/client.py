"""The real `openai` Python client (and raw sockets) against a running dlm-server.

Usage: client.py BASE_URL --dlm-run PATH --model GGUF [--chat-key KEY --chat-url URL]

Checks, each bounded in count and time:
- completions (plain, infill through `suffix`, stop strings, echo, several prompts and n) equal
  `dlm-run` run on the same model with the same settings and seed;
- streaming: the concatenated chunks equal the non-streamed text, end with a finish reason and
  [DONE], and `stream_canvas` frames drain their masks;
- errors: wrong types, out-of-range values, a context overflow, a model without a chat
  template: 400s with OpenAI's error object naming the field;
- load: 16 clients x 8 requests, mixed streaming and plain, lengths, settings and seeds: no
  response lost, duplicated or mixed up, each equal to its single-request answer;
- hostile input over raw sockets: random and truncated JSON, invalid UTF-8, huge numbers,
  oversized bodies, many idle connections, a client that leaves mid-generation: only 4xx
  answers, and the server keeps serving;
- /metrics parsed by `prometheus_client`'s own parser.
Prints one line per group and exits non-zero on the first failure.
"""

import argparse
import concurrent.futures
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 60


def dlm_run(args, prompt, n, settings, suffix=None):
    """What dlm-run prints (prompt echoed, then the text, then the suffix) for these settings."""
    cmd = [args.dlm_run, "-m", args.model, "-p", prompt, "-n", str(n), "-t", "2", "--backend", "cpu", "--color", "off"]
    flags = {"seed": "--seed", "temperature": "--temp", "top_p": "--top-p", "steps": "--steps", "unmask": "--unmask",
             "block_length": "--block-length", "threshold": "--threshold", "cache": "--cache", "top_k": "--top-k"}
    for k, v in settings.items():
        cmd += [flags[k], str(v)]
    if suffix is not None:
        cmd += ["--suffix", suffix]
    out = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT)
    assert out.returncode == 0, (cmd, out.stderr.decode())
    return out.stdout.decode().removesuffix("\n")


def extra(settings):
    """OpenAI's own parameters as arguments, dlm's diffusion fields in extra_body."""
    own = {k: settings[k] for k in ("seed", "temperature", "top_p") if k in settings}
    diff = {k: v for k, v in settings.items() if k not in own}
    return own, diff


def complete(client, model, prompt, n, settings, suffix=None, stream=False):
    own, diff = extra(settings)
    if suffix is not None:
        diff = dict(diff, suffix=suffix)
    if not stream:
        r = client.completions.create(model=model, prompt=prompt, max_tokens=n, extra_body=diff, **own)
        assert len(r.choices) == 1, r
        return r.choices[0].text, r.choices[0].finish_reason
    text, reasons = "", []
    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=n, stream=True, extra_body=diff, **own):
        for c in chunk.choices:
            text += c.text or ""
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert len(reasons) == 1, reasons
    return text, reasons[0]


# Distinct requests: (prompt, max_tokens, settings, suffix). The trained tiny model answers the
# task prompts; the rest vary the sampler.
CASES = [
    ("copy 58213:", 8, {"seed": 1, "temperature": 0}, None),
    ("reverse 4096:", 8, {"seed": 2, "temperature": 0, "unmask": "confidence", "steps": 8}, None),
    ("347+85=", 6, {"seed": 3, "temperature": 0, "unmask": "entropy", "steps": 6}, None),
    ("sort 5821393:", 9, {"seed": 4, "temperature": 0, "unmask": "margin", "steps": 9}, None),
    ("rev:", 5, {"seed": 5, "temperature": 0}, "= 1284"),
    ("Today is a wonderful day,", 12, {"seed": 6}, None),
    ("Today is a wonderful day,", 12, {"seed": 7, "temperature": 0.9, "top_p": 0.9, "unmask": "origin", "steps": 12}, None),
    ("Today is a wonderful day,", 16, {"seed": 8, "temperature": 1.0, "block_length": 8, "steps": 8, "unmask": "confidence"}, None),
    ("k=5 q=2 m=8; q?", 3, {"seed": 9, "temperature": 0.5, "top_k": 5}, None),
    ("", 12, {"seed": 10, "temperature": 0.8}, None),
    ("copy 777123:", 8, {"seed": 11, "temperature": 0.7, "unmask": "threshold", "threshold": 0.9}, None),
    ("Today is a wonderful day,", 10, {"seed": 12, "unmask": "confidence", "steps": 10, "block_length": 5, "cache": "prefix"}, None),
]


def check_completions(args, client, model):
    refs = {}
    for k, (prompt, n, s, suffix) in enumerate(CASES):
        text, reason = complete(client, model, prompt, n, s, suffix)
        want = dlm_run(args, prompt, n, s, suffix)
        got = prompt + text + (suffix or "")
        assert got == want, f"case {k}: server {got!r} != dlm-run {want!r}"
        assert reason in ("stop", "length"), reason
        refs[k] = text
    # The trained model answers: the task prompts are right, not only well-formed.
    assert refs[0].strip() == "58213", refs[0]
    assert refs[1].strip() == "6904", refs[1]
    assert refs[2].strip() == "432", refs[2]
    assert refs[4].strip() == "4821", refs[4]
    # Stop strings: the text ends before the stop, as dlm-run --stop prints it.
    r = client.completions.create(model=model, prompt="Today is a wonderful day,", max_tokens=12, seed=6, stop=["e"])
    full = refs[5]
    assert r.choices[0].text == full[: full.index("e")] and r.choices[0].finish_reason == "stop", (r, full)
    # echo, several prompts, n: choices in order, each its own sequence and seed.
    r = client.completions.create(model=model, prompt=["copy 58213:", "347+85="], max_tokens=8, temperature=0, seed=1, echo=True)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == "copy 58213:" + refs[0], r
    r = client.completions.create(model=model, prompt="Today is a wonderful day,", max_tokens=12, n=3, seed=6)
    texts = [c.text for c in r.choices]
    assert texts[0] == refs[5], (texts, refs[5])
    assert texts[1] == complete(client, model, "Today is a wonderful day,", 12, {"seed": 7})[0]
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    # Token ids as the prompt: the same as the text.
    ids = post(args.base, "/tokenize", {"content": "copy 58213:", "add_special": True})["tokens"]
    r = client.completions.create(model=model, prompt=ids, max_tokens=8, temperature=0, seed=1)
    assert r.choices[0].text == refs[0], r
    # /infill, llama.cpp's shape.
    r = post(args.base, "/infill", {"input_prefix": "rev:", "input_suffix": "= 1284", "n_predict": 5, "seed": 5, "temperature": 0})
    assert r["content"] == refs[4], r
    print(f"completions: {len(CASES)} settings equal dlm-run's output; stop, echo, n, token prompts, infill")
    return refs


def check_streaming(args, client, model, refs):
    for k in (0, 4, 5, 6, 9):
        prompt, n, s, suffix = CASES[k]
        text, reason = complete(client, model, prompt, n, s, suffix, stream=True)
        assert text == refs[k], f"case {k}: streamed {text!r} != {refs[k]!r}"
    # Raw SSE: every event is JSON or [DONE] (last); the canvas frames drain their masks.
    body = json.dumps({"prompt": "Today is a wonderful day,", "max_tokens": 16, "seed": 8, "stream": True, "stream_canvas": True,
                       "temperature": 1.0, "unmask": "confidence", "steps": 8, "block_length": 8}).encode()
    req = urllib.request.Request(args.base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    masks = [c["canvas"]["masked"] for c in chunks if "canvas" in c]
    assert len(masks) >= 3 and masks == sorted(masks, reverse=True), masks
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == complete(client, model, "Today is a wonderful day,", 16, CASES[7][2])[0]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    # Text comes while the canvas still has masks (a final left-to-right prefix), not only at the end.
    first_text = next(i for i, c in enumerate(chunks) if c["choices"][0]["text"])
    first_canvas_done = next((i for i, c in enumerate(chunks) if c.get("canvas", {}).get("masked") == 0), len(chunks))
    assert first_text < first_canvas_done, "text only after the canvas was complete"
    # Stop strings and several choices: each streamed choice equals its plain answer.
    for stop in (["e"], [" s", "th"], ["."]):
        body = dict(model=model, prompt="Today is a wonderful day,", max_tokens=12, seed=6, n=2, stop=stop)
        plain = [c.text for c in sorted(client.completions.create(**body).choices, key=lambda c: c.index)]
        got, reasons = ["", ""], [None, None]
        for chunk in client.completions.create(stream=True, **body):
            for c in chunk.choices:
                got[c.index] += c.text or ""
                reasons[c.index] = c.finish_reason or reasons[c.index]
        assert got == plain and all(reasons), (stop, got, plain, reasons)
    # /infill streams llama.cpp's bare objects, ending with stop: true and no [DONE].
    body = json.dumps({"input_prefix": "rev:", "input_suffix": "= 1284", "n_predict": 5, "seed": 5, "temperature": 0, "stream": True}).encode()
    with urllib.request.urlopen(urllib.request.Request(args.base + "/infill", data=body), timeout=TIMEOUT) as resp:
        events = [json.loads(line[6:]) for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == refs[4] and events[-1]["stop"] is True, events
    print(f"streaming: 5 settings equal their plain answers; {len(masks)} canvas frames, masks {masks[0]} -> {masks[-1]}")


def post(base, path, obj, key=None, raw=None):
    data = raw if raw is not None else json.dumps(obj).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    req = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return json.loads(r.read())


def status_of(base, path, raw, key=None, method="POST"):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    req = urllib.request.Request(base + path, data=raw, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body


def check_errors(args, client, model):
    bad = [
        ({"prompt": "x", "max_tokens": "8"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**30}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "seed": -5}, "seed"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "steps": 10**9}, "steps"),
        ({"prompt": "x", "unmask": "best"}, "unmask"),
        ({"prompt": "x", "threshold": 1.5}, "threshold"),
        ({"prompt": "x", "cache": "all"}, "cache"),
        ({"prompt": "x", "stop": 5}, "stop"),
        ({"prompt": "x", "stop": ["a"] * 100}, "stop"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [1, 2, 10**12]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "x", "suffix": 3}, "suffix"),
        ({"prompt": "x", "logprobs": 5}, "logprobs"),
        ({"prompt": "x " * 200, "max_tokens": 100}, "max_tokens"),
        ({"prompt": "x", "user": {"id": 1}}, "user"),
        ({"prompt": "x", "cfg_scale": 1e9}, "cfg_scale"),
    ]
    for body, field in bad:
        code, resp = status_of(args.base, "/v1/completions", json.dumps(body).encode())
        assert code == 400, (body, code, resp)
        err = resp["error"]
        assert err["param"] == field and field in err["message"] and err["type"] == "invalid_request_error", (body, err)
    # Without max_tokens a long prompt gets the room the context leaves, not an error.
    long = "copy 58213: " * 9
    r = post(args.base, "/v1/completions", {"prompt": long, "seed": 1})
    n_prompt = len(post(args.base, "/tokenize", {"content": long, "add_special": True})["tokens"])
    assert 0 < r["usage"]["completion_tokens"] <= 128 - n_prompt, (r, n_prompt)
    # Unknown fields are ignored.
    r = post(args.base, "/v1/completions", {"prompt": "copy 58213:", "max_tokens": 8, "seed": 1, "temperature": 0, "frobnicate": [1, 2]})
    assert r["choices"][0]["text"].strip() == "58213", r
    # Through the client: its exception carries the status and our message.
    try:
        client.completions.create(model=model, prompt="x", max_tokens=8, temperature=-3)
        raise AssertionError("temperature -3 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "temperature" in str(e), e
    # A model without a chat template: a clear 400.
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("chat without a template was accepted")
    except openai.BadRequestError as e:
        assert "chat template" in str(e) and "--chat-template" in str(e), e
    # Endpoints and methods that do not exist.
    code, resp = status_of(args.base, "/v1/nothing", b"{}")
    assert code == 404 and resp["error"]["code"] == "not_found", (code, resp)
    code, _ = status_of(args.base, "/v1/completions", None, method="GET")
    assert code == 405, code
    # tokenize / detokenize round trip, and their errors.
    ids = post(args.base, "/tokenize", {"content": "Today is a wonderful day,"})["tokens"]
    assert post(args.base, "/detokenize", {"tokens": ids})["content"] == "Today is a wonderful day,"
    assert status_of(args.base, "/detokenize", json.dumps({"tokens": [1, -1]}).encode())[0] == 400
    assert status_of(args.base, "/tokenize", json.dumps({"text": "x"}).encode())[0] == 400
    models = client.models.list()
    assert [m.id for m in models.data] == [model], models
    print(f"errors: {len(bad)} bad requests each a 400 naming its field; 404, 405, no chat template; tokenize round trip")


def check_load(args, client, model, refs):
    """16 clients x 8 requests at once: each answer equals its single-request answer."""
    rng = random.Random(0)
    plan = [(c, j, rng.randrange(len(CASES)), rng.random() < 0.5) for c in range(16) for j in range(8)]
    results = {}
    lock = threading.Lock()

    def client_thread(c):
        local = openai.OpenAI(base_url=args.base + "/v1", api_key="none", max_retries=8, timeout=TIMEOUT)
        for (cc, j, k, stream) in plan:
            if cc != c:
                continue
            prompt, n, s, suffix = CASES[k]
            text, _ = complete(local, model, prompt, n, s, suffix, stream=stream)
            with lock:
                assert (c, j) not in results
                results[(c, j)] = (k, text)

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        for f in [ex.submit(client_thread, c) for c in range(16)]:
            f.result(timeout=300)
    dt = time.time() - t0
    assert len(results) == len(plan), len(results)
    wrong = [(key, k, text, refs[k]) for key, (k, text) in results.items() if text != refs[k]]
    assert not wrong, wrong[:3]
    metrics = scrape(args.base)
    occupancy = metrics["dlm_batch_sequences"]
    assert occupancy["sum"] / occupancy["count"] > 1.0, occupancy
    print(f"load: 16 clients x 8 requests in {dt:.1f} s, every answer equal to its single-request answer; "
          f"mean batch {occupancy['sum'] / occupancy['count']:.2f} sequences per pass")


def scrape(base):
    with urllib.request.urlopen(base + "/metrics", timeout=TIMEOUT) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_sum"):
                out.setdefault(fam.name, {})["sum"] = s.value
            elif s.name.endswith("_count"):
                out.setdefault(fam.name, {})["count"] = s.value
            elif not s.name.endswith("_bucket"):
                out.setdefault(fam.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def raw(host, port, data, read=True, timeout=10):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b"Content-Length" not in out.split(b"\r\n\r\n")[0] and b"chunked" not in out.split(b"\r\n\r\n")[0]:
                break
            head, _, body = out.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                    return out
        return out


def request(path, body, extra_headers=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n" + extra_headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def check_hostile(args, host, port):
    rng = random.Random(1)
    good = json.dumps({"prompt": "copy 58213:", "max_tokens": 8, "seed": 1, "temperature": 0, "stop": ["x"], "steps": 4}).encode()
    bodies = [b"", b"{", b"[1,2", b"null", b"[]", b"\"text\"", b"\xff\xfe{}", b'{"prompt": "\xc3\x28"}', b'{"prompt": "a\\ud800"}',
              b'{"max_tokens": 1e400}', b'{"max_tokens": -0.0}', b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
              b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', b'{"messages": "hi"}', b'{"messages": []}']
    bodies += [good[: rng.randrange(1, len(good))] for _ in range(20)]
    bodies += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(20)]
    codes = []
    for path in (b"/v1/completions", b"/v1/chat/completions", b"/infill", b"/tokenize", b"/detokenize"):
        for b in bodies:
            resp = raw(host, port, request(path, b))
            code = int(resp.split(b" ")[1]) if resp.startswith(b"HTTP/1.1 ") else 0
            codes.append(code)
            try:
                is_object = isinstance(json.loads(b), dict)
            except (ValueError, RecursionError):
                is_object = False
            # A well-formed object may be a valid request of that endpoint (all fields are
            # optional for a completion); anything else is the client's error.
            ok = (200 <= code < 500) if is_object else (400 <= code < 500)
            assert ok, (path, b[:60], resp[:200])
    # Oversized bodies: 413, from the length header alone or from the bytes.
    big = b'{"prompt": "' + b"a" * (2 << 20) + b'"}'
    resp = raw(host, port, request(b"/v1/completions", big))
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    resp = raw(host, port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{}")
    assert resp.startswith(b"HTTP/1.1 4"), resp[:200]
    # Garbage instead of HTTP, and a header line without end: answered or closed, never a crash.
    for junk in (b"\x00\x01\x02\r\n\r\n", b"GET /nothing-here HTTP/1.1\r\nHost: " + b"a" * 100000 + b"\r\n\r\n", b"BREW /coffee HTCPCP/1.0\r\n\r\n"):
        resp = raw(host, port, junk)
        assert resp == b"" or resp.startswith(b"HTTP/1.1 4"), resp[:200]
    # Many idle connections (sending nothing, or half a request) while others are served.
    idle = []
    for i in range(200):
        s = socket.create_connection((host, port), timeout=10)
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
        idle.append(s)
    r = post(args.base, "/v1/completions", json.loads(good))
    assert r["choices"][0]["text"].strip() == "58213", r
    for s in idle:
        s.close()
    # A client that leaves mid-generation: its sequence is cancelled, the server goes on.
    before = scrape(args.base).get("dlm_sequences_cancelled", {}).get((), 0)
    # At temperature 100 no EOS ends it early: 100 passes, one position each, about 5 s.
    slow = json.dumps({"prompt": "Today is a wonderful day,", "max_tokens": 100, "steps": 4000, "unmask": "confidence", "seed": 1,
                       "temperature": 100, "top_p": 1}).encode()
    for stream in (False, True):
        body = json.loads(slow)
        body["stream"] = stream
        body = json.dumps(body).encode()
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(request(b"/v1/completions", body))
        time.sleep(0.5)
        s.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        m = scrape(args.base)
        if m.get("dlm_sequences_cancelled", {}).get((), 0) >= before + 2 and m["dlm_active_sequences"][()] == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"disconnected clients were not cancelled: {scrape(args.base)}")
    r = post(args.base, "/v1/completions", json.loads(good))
    assert r["choices"][0]["text"].strip() == "58213", r
    # A full queue (this server: -b 8, --max-queue 12): 429 with Retry-After; a request that
    # could never fit the queue: 400 naming n.
    hog = {"max_tokens": 100, "steps": 4000, "unmask": "confidence", "temperature": 100, "top_p": 1, "seed": 1}
    socks = []
    for k in (8, 12):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(request(b"/v1/completions", json.dumps(dict(hog, prompt=["Today is"] * k)).encode()))
        socks.append(s)
        time.sleep(0.5)
    code, resp = status_of(args.base, "/v1/completions", good)
    assert code == 429 and resp["error"]["code"] == "queue_full", (code, resp)
    head = raw(host, port, request(b"/v1/completions", good))
    assert b"retry-after: 1" in head.lower(), head[:300]
    for s in socks:
        s.close()
    code, resp = status_of(args.base, "/v1/completions", json.dumps({"prompt": ["a"] * 13}).encode())
    assert code == 400 and resp["error"]["param"] == "n", (code, resp)
    # A body sent a byte a second: cut off at --timeout (5 s here) as a whole, not per byte.
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    t0 = time.time()
    try:
        while time.time() - t0 < 15:
            s.sendall(b" ")
            time.sleep(1)
    except OSError:
        pass
    s.settimeout(2)
    try:
        answer = s.recv(200)
    except OSError:
        answer = b""
    s.close()
    assert time.time() - t0 < 10, f"a trickled body held the connection {time.time() - t0:.0f} s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    deadline = time.time() + 20
    while scrape(args.base)["dlm_active_sequences"][()] > 0 and time.time() < deadline:
        time.sleep(0.2)
    print(f"hostile: {len(codes)} malformed requests, {sum(400 <= c < 500 for c in codes)} of them 4xx, none 5xx; 413 for 2 MiB; junk, 200 idle connections and 2 clients that left: still serving; 429 with Retry-After; a trickled body cut off")


def check_chat(args):
    """The second server: a chat template from the GGUF, and an API key."""
    key = args.chat_key
    base = args.chat_url
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)
    # The template renders the user's message alone as the prompt: the trained task answers.
    r = client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": "copy 58213:"}],
                                       max_tokens=8, temperature=0, seed=1)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content.strip() == "58213", r
    assert r.object == "chat.completion"
    pieces, usage = [], []
    for chunk in client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [{"type": "text", "text": "347+85="}]}],
                                                 max_tokens=6, temperature=0, seed=1, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage:
            usage.append(chunk.usage)
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
    assert "".join(pieces).strip() == "432", pieces
    assert len(usage) == 1 and usage[0].completion_tokens > 0 and usage[0].prompt_tokens > 0, usage
    # The template's own error (raise_exception) is a 400 with its message.
    try:
        client.chat.completions.create(model="tiny", messages=[{"role": "tool", "content": "x"}], max_tokens=4)
        raise AssertionError("a tool message was accepted")
    except openai.BadRequestError as e:
        assert "roles are user, system and assistant" in str(e), e
    # Keys: missing or wrong is 401; /health needs none.
    for k in (None, "wrong", key + "x"):
        code, resp = status_of(base, "/v1/models", None, key=k, method="GET")
        assert code == 401 and resp["error"]["code"] == "invalid_api_key", (k, code, resp)
    assert status_of(base, "/health", None, method="GET")[0] == 200
    try:
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass
    print("chat: the GGUF's template renders, plain and streamed answers right; template errors 400; API key 401s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--dlm-run", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--chat-url")
    ap.add_argument("--chat-key")
    args = ap.parse_args()
    host, port = args.base.split("//")[1].split(":")
    client = openai.OpenAI(base_url=args.base + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT)
    model = client.models.list().data[0].id
    refs = check_completions(args, client, model)
    check_streaming(args, client, model, refs)
    check_errors(args, client, model)
    check_load(args, client, model, refs)
    check_hostile(args, host, int(port))
    if args.chat_url:
        check_chat(args)
    m = scrape(args.base)
    requests = sum(v for k, v in m["dlm_requests"].items())
    assert m["dlm_generated_tokens"][()] > 0 and m["dlm_steps"][()] > 0 and requests > 100, m
    print(f"metrics: {int(requests)} requests, {int(m['dlm_generated_tokens'][()])} tokens, {int(m['dlm_steps'][()])} passes")


if __name__ == "__main__":
    main()
