#!/usr/bin/env python3
"""dlm-server's web page in a real headless Chromium (Debian's `chromium`, driven by PyPI
`playwright` with the system browser): the page loads with nothing fetched from elsewhere, a
prompt produces the text the API gives for the same settings, the canvas shows masked positions
between the first and the last step, a chat against a model without a template shows the
server's error, and a screenshot is saved.

Usage: web.py URL SCREENSHOT.png
"""

import json
import shutil
import sys
import urllib.request

from playwright.sync_api import sync_playwright

url, shot = sys.argv[1].rstrip("/"), sys.argv[2]
browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
assert browser_path, "no chromium on PATH (scripts/setup.sh installs Debian's)"

# 24 passes: the canvas is seen between steps even when the browser reads slowly (a slow
# reader gets the latest canvas, not every one).
SETTINGS = {"max_tokens": 24, "steps": 24, "unmask": "confidence", "temperature": 0, "seed": 5}


def api(prompt):
    body = json.dumps(dict(SETTINGS, prompt=prompt)).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["choices"][0]["text"]


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    assert page.title() == "dlm-server"
    page.wait_for_function("document.getElementById('model').textContent !== 'loading…'")
    assert ".gguf" in page.text_content("#model"), page.text_content("#model")

    # Every mutation of the canvas: how many masked positions it shows.
    page.evaluate("""() => {
        window.maskCounts = [];
        new MutationObserver(() => window.maskCounts.push(document.querySelectorAll('#canvas .mask').length))
            .observe(document.getElementById('canvas'), {childList: true, subtree: true});
    }""")
    prompt = "copy 6859:"
    page.fill("#prompt", prompt)
    page.fill("#max_tokens", str(SETTINGS["max_tokens"]))
    page.fill("#steps", str(SETTINGS["steps"]))
    page.select_option("#unmask", SETTINGS["unmask"])
    page.fill("#temperature", str(SETTINGS["temperature"]))
    page.fill("#seed", str(SETTINGS["seed"]))
    page.click("#go")
    page.wait_for_selector("#canvas[data-done='1']", timeout=60000)
    counts = page.evaluate("window.maskCounts")
    shown = page.text_content("#canvas")
    status = page.text_content("#status")
    want = api(prompt)
    assert shown == prompt + want, (shown, want)
    partial = [c for c in counts if 0 < c < SETTINGS["max_tokens"]]
    assert max(counts) > 0 and partial, f"no intermediate frame with masks: {counts}"
    assert status.startswith("done: ") and "steps" in status, status
    page.screenshot(path=shot, full_page=True)

    # Chat against a model without a chat template: the server's 400 is shown, the page lives.
    page.select_option("#mode", "chat")
    page.fill("#prompt", "hello")
    page.click("#go")
    page.wait_for_selector("#status.error", timeout=30000)
    assert "chat template" in page.text_content("#status"), page.text_content("#status")
    assert not page.is_disabled("#go")

    assert not errors, errors
    foreign = [r for r in requests if not r.startswith(url + "/")]
    assert not foreign, f"the page fetched from elsewhere: {foreign}"
    browser.close()
print(f"web page ok: {len(counts)} canvas updates ({len(partial)} with masks left), text {shown!r}, screenshot {shot}")
