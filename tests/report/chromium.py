"""Drive headless Chromium over the DevTools protocol, with the standard library only.

The protocol runs over ``--remote-debugging-pipe`` (the browser reads commands on fd 3 and writes
replies and events on fd 4, NUL-terminated JSON), so there is no port, no websocket client and
nothing to download: the test needs Debian's ``chromium`` package and nothing else.

``inspect_page(html)`` opens a file, waits for its load event and returns what the browser saw:
console errors, uncaught exceptions, log errors, every request that left the file (a
self-contained page makes none), per-figure SVG element counts and dangling ``<use>``
references, and PNG screenshots (viewport and full page).

Also a command for the README's screenshot:
``python tests/report/chromium.py runs/x/report.html docs/report_demo.png [--width 1280 --height 900]``.
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

CANDIDATES = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--no-default-browser-check",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """``$DISTILLPRUNE_CHROMIUM``, else the first Chromium/Chrome on PATH or in the usual places."""
    env = os.environ.get("DISTILLPRUNE_CHROMIUM")
    if env:
        return env if shutil.which(env) or Path(env).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name) or (name if Path(name).is_file() else None)
        if found:
            return found
    return None


class ChromiumError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process with a DevTools pipe; use as a context manager."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="dp-chromium-")
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        # The browser wants the pipe on fds 3 (in) and 4 (out): let the shell put them there.
        cmd = [
            "bash",
            "-c",
            f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}',
            binary,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._inbox: queue.Queue[dict | None] = queue.Queue()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()
        self._id = 0
        self.events: list[dict] = []

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self._inbox.put(None)
                return
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for m in msgs:
                self._inbox.put(json.loads(m))

    def _next(self, deadline: float) -> dict:
        try:
            msg = self._inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise ChromiumError(f"no reply from Chromium within {self.timeout:.0f} s") from None
        if msg is None:
            err = b"".join(self._stderr).decode(errors="replace")[-2000:]
            raise ChromiumError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}): {err}")
        return msg

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str | None = None) -> dict:
        deadline = time.monotonic() + self.timeout
        seen = len(self.events)
        for ev in self.events[:seen]:
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev
        while True:
            ev = self._next(deadline)
            self.events.append(ev)
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.write(self._w, json.dumps({"id": 10**6, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


FIGURE_STATS_JS = """(() => {
  const figs = Array.from(document.querySelectorAll('svg.fig')).map(s => {
    const r = s.getBoundingClientRect();
    return {name: s.dataset.figure, paths: s.querySelectorAll('path').length,
            uses: s.querySelectorAll('use').length, width: r.width, height: r.height};
  });
  const dangling = Array.from(document.querySelectorAll('use')).map(u => u.getAttribute('xlink:href')
      || u.getAttribute('href')).filter(h => h && !document.getElementById(h.slice(1)));
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
  const dupes = ids.filter((id, i) => ids.indexOf(id) !== i);
  return {title: document.title, figures: figs, dangling: dangling, duplicate_ids: dupes,
          sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent),
          width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight};
})()"""


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, log errors
    external_requests: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""  # the viewport
    full_page: bytes = b""
    print_stats: dict[str, Any] = field(default_factory=dict)  # under print media: nav shown? figures?
    pdf: bytes = b""


def _errors(events: list[dict], session: str) -> tuple[list[str], list[str]]:
    errors, external = [], []
    for ev in events:
        if ev.get("sessionId") != session:
            continue
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            errors.append(
                f"console.{p['type']}: "
                + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
            )
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            errors.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:", "about:")):
                external.append(url)
    return errors, external


PRINT_STATS_JS = """(() => ({
  nav_display: getComputedStyle(document.querySelector('nav')).display,
  figures_visible: Array.from(document.querySelectorAll('svg.fig')).filter(
      s => s.getBoundingClientRect().height > 50).length,
  details_open: Array.from(document.querySelectorAll('details')).every(d => d.open)}))()"""


def inspect_page(
    binary: str, html: str | Path, width: int = 1280, height: int = 900, full_page: bool = True, pdf: bool = False
) -> PageResult:
    """Open ``html`` in headless Chromium at ``width`` x ``height`` and report what happened."""
    url = Path(html).resolve().as_uri()
    with Browser(binary) as b:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.send(f"{domain}.enable", session=s)
        b.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=s,
        )
        b.send("Page.navigate", {"url": url}, session=s)
        b.wait_event("Page.loadEventFired", session=s)
        stats = b.send("Runtime.evaluate", {"expression": FIGURE_STATS_JS, "returnByValue": True}, session=s)["result"][
            "value"
        ]
        shot = b.send("Page.captureScreenshot", {"format": "png"}, session=s)["data"]
        full = ""
        if full_page:
            h = min(int(stats["height"]), 30000)
            full = b.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": h, "scale": 1},
                },
                session=s,
            )["data"]
        printed, pdf_data = {}, ""
        if pdf:
            b.send("Emulation.setEmulatedMedia", {"media": "print"}, session=s)
            pdf_data = b.send("Page.printToPDF", {"printBackground": False}, session=s)["data"]
            printed = b.send("Runtime.evaluate", {"expression": PRINT_STATS_JS, "returnByValue": True}, session=s)[
                "result"
            ]["value"]
        b.send("Runtime.evaluate", {"expression": "0"}, session=s)  # flush events queued by the page
        errors, external = _errors(b.events, s)
    return PageResult(
        errors, external, stats, base64.b64decode(shot), base64.b64decode(full), printed, base64.b64decode(pdf_data)
    )


def _main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Screenshot an HTML file with headless Chromium.")
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--full", action="store_true", help="the whole page, not the first screen")
    a = ap.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        print("no Chromium found (apt-get install chromium, or set DISTILLPRUNE_CHROMIUM)", file=sys.stderr)
        return 2
    res = inspect_page(binary, a.html, a.width, a.height, full_page=a.full)
    Path(a.png).write_bytes(res.full_page if a.full else res.screenshot)
    print(
        json.dumps(
            {"errors": res.errors, "external_requests": res.external_requests, "figures": res.stats.get("figures")},
            indent=1,
        )
    )
    return 1 if res.errors or res.external_requests else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
