"""`/docs` in a real browser: headless Chromium (Debian's package; .ci/run installs it) driven over
the DevTools protocol on a pipe (no driver, no extra package). The page renders the endpoints from
assets the server holds (no CDN: the browser is cut off from the network) and "Try it out" gets
an answer from the model."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_serve import Running

from rerank import CrossEncoder
from rerank.serve import Service, create_app


def chromium() -> str:
    """The browser; missing, the test fails under CI (which installs it) and is skipped elsewhere."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    hint = "no headless browser: apt-get install -y chromium (.ci/run installs it)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(hint)
    pytest.skip(hint)


class Browser:
    """Chromium over ``--remote-debugging-pipe``: JSON commands, NUL-terminated, on fds 3 and 4."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()

        def fds() -> None:
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,1600",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"],  # nothing but loopback reachable
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buf:
                assert time.monotonic() < deadline, f"no answer to {method}"
                chunk = os.read(self._from, 1 << 20)
                assert chunk, "the browser closed its pipe"
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def js(self, expression: str) -> Any:
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        assert "exceptionDetails" not in out, out["exceptionDetails"]
        return out["result"].get("value")

    def until(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) at the middle of the element ``selector`` finds."""
        self.until(f"!!({selector})")
        box = self.js(f"(() => {{ const e = {selector}; e.scrollIntoView({{block: 'center'}}); "
                      f"const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        os.close(self._to)
        os.close(self._from)


_OPERATIONS = """[...document.querySelectorAll('.opblock')].map(b =>
    b.querySelector('.opblock-summary-method').textContent.trim() + ' ' +
    b.querySelector('.opblock-summary-path').textContent.trim().replace(/\\u200b/g, ''))"""
_V2 = """[...document.querySelectorAll('.opblock')].find(b =>
    b.querySelector('.opblock-summary-path').textContent.replace(/\\u200b/g, '').trim() === '/v2/rerank')"""


def test_docs_render_offline_and_try_it_out_answers(tiny_ce, tmp_path):
    binary = chromium()
    service = Service(CrossEncoder(tiny_ce, dtype="float32"))
    with Running(create_app(service)) as running:
        browser = Browser(binary, tmp_path / "profile")
        try:
            browser.open(f"{running.url}/docs")
            browser.until("document.querySelectorAll('.opblock').length >= 5")
            operations = browser.js(_OPERATIONS)
            browser.click(f"({_V2}).querySelector('.opblock-summary-control')")
            browser.click(f"({_V2}).querySelector('.try-out__btn')")
            browser.click(f"({_V2}).querySelector('.execute')")
            live = f"({_V2}).querySelector('.live-responses-table tr.response"
            status = browser.until(f"({live} .response-col_status') || {{}}).textContent")
            answer = browser.js(f"{live} .response-col_description pre').textContent")
            shot = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"])
            (Path(os.environ.get("RERANK_DOCS_SCREENSHOT", tmp_path / "docs.png"))).write_bytes(shot)
        finally:
            browser.close()
    assert {"POST /v1/rerank", "POST /v2/rerank", "POST /rerank", "POST /v1/search", "GET /health",
            "GET /metrics"} <= set(operations)
    assert status.strip() == "200"
    results = json.loads(answer)["results"]
    assert results and all(0 <= r["relevance_score"] <= 1 for r in results)
