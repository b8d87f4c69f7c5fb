"""Open a report in headless Chromium: console errors, images that did not load, and a full-page screenshot.

Talks the DevTools protocol over `--remote-debugging-pipe` (JSON messages ending in NUL on file
descriptors 3 and 4), so it needs only the chromium binary: no driver, no websocket library, no port.
Passing those two descriptors is POSIX; on Windows `check` refuses with a clear message.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.errors import OpsError, UsageError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "install Chromium (Debian/Ubuntu: sudo apt-get install chromium) or set OPS_HPC_CHROMIUM=/path/to/it"
WIDTH = 1200  # CSS pixels: a laptop screen
TIMEOUT_S = 60.0

_IMAGES_JS = ("JSON.stringify(Array.from(document.images).map(i => "
              "[i.getAttribute('src'), i.complete, i.naturalWidth]))")


@dataclass
class Checked:
    """What the browser saw: how many images loaded and every problem (empty when the page is fine)."""

    images: int = 0
    problems: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary: OPS_HPC_CHROMIUM, else the first of BROWSERS on PATH."""
    named = os.environ.get("OPS_HPC_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


class _Pipe:
    """One DevTools session over the two pipes: send commands, wait for their answers, keep the events."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.proc, self.out, self.next_id = proc, to_browser, 0
        self.answers: queue.Queue = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, args=(from_browser,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        buf = b""
        with os.fdopen(fd, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 16):
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    self.answers.put(json.loads(raw))

    def call(self, method: str, session: str | None = None, deadline: float = TIMEOUT_S, **params: Any) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        return self.wait(lambda m: m.get("id") == self.next_id, deadline, method)

    def wait(self, match: Any, deadline: float, what: str) -> dict:
        end = time.monotonic() + deadline
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise OpsError(f"browser: no answer to {what} within {deadline:.0f} s")
            try:
                msg = self.answers.get(timeout=left)
            except queue.Empty:
                continue
            if "method" in msg:
                self.events.append(msg)
            if match(msg):
                if "error" in msg:
                    raise OpsError(f"browser: {what} failed: {msg['error'].get('message')}")
                return msg.get("result", msg)


def check(index: Path, *, screenshot: Path | None = None, width: int = WIDTH) -> Checked:
    """Load `index` in headless Chromium; report console errors, failed loads and broken images; save a PNG."""
    if os.name == "nt":
        raise UsageError("the browser check talks to Chromium over pipes that Windows does not pass; run it on "
                         "Linux or macOS (the report itself opens anywhere)")
    binary = find_chromium()
    if not binary:
        raise UsageError(f"no Chromium found for the browser check: {INSTALL_HINT}")
    url = Path(index).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="ops-hpc-chromium-") as profile:
        import fcntl  # POSIX only, like the descriptors it arranges

        to_r, to_w = os.pipe()  # our commands -> browser fd 3
        from_r, from_w = os.pipe()  # browser fd 4 -> our reader
        for fd in (to_r, from_w):  # copies above 4, so placing one on 3 cannot overwrite the other
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            if fd == to_r:
                to_r = high
            else:
                from_w = high

        def fds() -> None:  # in the child, before exec: the protocol's fixed descriptors (dup2 clears CLOEXEC)
            os.dup2(to_r, 3)
            os.dup2(from_w, 4)

        args = [binary, "--headless", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox
        proc = subprocess.Popen(args, preexec_fn=fds, close_fds=False,  # our other fds are non-inheritable
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        pipe = _Pipe(proc, to_w, from_r)
        try:
            return _inspect(pipe, url, screenshot, width)
        finally:
            try:
                pipe.call("Browser.close", deadline=5)
            except (OpsError, OSError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_w)


def _inspect(pipe: _Pipe, url: str, screenshot: Path | None, width: int) -> Checked:
    target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
    session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.call(f"{domain}.enable", session)
    pipe.call("Emulation.setDeviceMetricsOverride", session, width=width, height=900, deviceScaleFactor=1,
              mobile=False)
    pipe.call("Page.navigate", session, url=url)
    pipe.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session,
              TIMEOUT_S, f"loading {url}")
    images = json.loads(pipe.call("Runtime.evaluate", session, expression=_IMAGES_JS,
                                  returnByValue=True)["result"]["value"])
    out = Checked(images=sum(1 for _, done, w in images if done and w > 0))
    out.problems += [f"image {src} did not load" for src, done, w in images if not (done and w > 0)]
    if screenshot is not None:
        size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
        pipe.call("Emulation.setDeviceMetricsOverride", session, width=width, height=int(size["height"]),
                  deviceScaleFactor=1, mobile=False)
        shot = pipe.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
    out.problems += _errors(pipe.events)
    return out


def _errors(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, failed resource loads and error log entries, as lines."""
    found = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            found.append("console error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e["method"] == "Runtime.exceptionThrown":
            found.append(f"uncaught exception: {p['exceptionDetails'].get('text')}")
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
            found.append(f"console error: {p['entry'].get('text')} {p['entry'].get('url', '')}".rstrip())
        elif e["method"] == "Network.loadingFailed" and not p.get("canceled"):
            found.append(f"load failed: {p.get('errorText')} (request {p.get('requestId')})")
    return found


if __name__ == "__main__":  # python -m lib.report_browser INDEX [PNG]: a quick manual check
    result = check(Path(sys.argv[1]), screenshot=Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(json.dumps(vars(result), indent=2))
