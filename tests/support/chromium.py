"""Load an HTML file in headless Chromium and report what the page became and what went wrong.

    from tests.support.chromium import render_in_chromium, plot_divs
    dom, errors = render_in_chromium(path)
    assert errors == []
    assert all(n > 0 for n in plot_divs(dom).values())

The page is copied into a temporary folder with a first script injected at the top of <head> that
records uncaught errors (``error`` events, including resources that fail to load), unhandled
promise rejections and ``console.error`` calls into the ``data-devprof-errors`` attribute of the
<html> element; Chromium then runs the page with a virtual time budget (timers and animation
frames run to completion without waiting in real time) and prints the serialised DOM.

Needs Debian's ``chromium`` (``apt-get install chromium``; scripts/test-setup does it).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ERRORS_ATTR = "data-devprof-errors"

_RECORDER = """<script>(function () {
  var errs = [];
  function rec(msg) {
    errs.push(String(msg));
    try { document.documentElement.setAttribute('%(attr)s', JSON.stringify(errs)); } catch (e) {}
  }
  document.documentElement.setAttribute('%(attr)s', '[]');
  window.addEventListener('error', function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { rec('resource failed to load: <' + t.tagName.toLowerCase() + '> ' + (t.src || t.href)); return; }
    rec('error: ' + (e.message || e) + (e.filename ? ' (' + e.filename + ':' + e.lineno + ')' : ''));
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    var r = e.reason; rec('unhandledrejection: ' + (r && (r.stack || r.message) || r));
  });
  var orig = console.error;
  console.error = function () {
    rec('console.error: ' + Array.prototype.map.call(arguments, String).join(' '));
    return orig.apply(console, arguments);
  };
})();</script>""" % {"attr": ERRORS_ATTR}

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


class ChromiumMissing(RuntimeError):
    pass


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise ChromiumMissing("headless Chromium is needed to check HTML reports and was not found on PATH: "
                          "install it with `apt-get install chromium` (or run scripts/test-setup)")


def inject_recorder(text: str) -> str:
    """The page with the error recorder as its very first script."""
    m = re.search(r"<head\b[^>]*>", text, re.I)
    if m is None:
        m = re.search(r"<html\b[^>]*>", text, re.I)
    if m is None:
        return _RECORDER + text
    return text[: m.end()] + _RECORDER + text[m.end():]


def render_in_chromium(html_path: Path | str, budget_ms: int = 10_000, timeout_s: float = 90.0) -> tuple[str, list[str]]:
    """(serialised DOM after the page ran, list of script errors) for an HTML file."""
    chromium = find_chromium()
    src = Path(html_path)
    text = src.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="devprof-chromium-") as tmp:
        page = Path(tmp) / src.name
        page.write_text(inject_recorder(text), encoding="utf-8")
        profile = Path(tmp) / "profile"
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
               "--dump-dom", page.resolve().as_uri()]
        env = dict(os.environ)
        env.setdefault("HOME", tmp)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"chromium did not finish loading {src} within {timeout_s:.0f} s") from None
    dom = proc.stdout
    if proc.returncode != 0 or "<html" not in dom.lower():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"chromium failed on {src} (exit {proc.returncode}):\n{tail}")
    return dom, errors_from_dom(dom)


def errors_from_dom(dom: str) -> list[str]:
    m = re.search(ERRORS_ATTR + r'="([^"]*)"', dom)
    if m is None:
        return ["the error recorder did not run (no %s attribute on <html>)" % ERRORS_ATTR]
    return list(json.loads(html.unescape(m.group(1))))


def plot_divs(dom: str) -> dict[str, int]:
    """For every plotly figure div (class plotly-graph-div), how many <svg class="main-svg"> it holds.

    Plotly draws two main-svg layers per rendered figure; 0 means the figure never rendered.
    """
    counts: dict[str, int] = {}
    current: str | None = None
    for m in re.finditer(r"<(div|svg)\b([^>]*)>", dom):
        tag, attrs = m.group(1), m.group(2)
        cls = re.search(r'class="([^"]*)"', attrs)
        classes = cls.group(1).split() if cls else []
        if tag == "div" and "plotly-graph-div" in classes:
            ident = re.search(r'id="([^"]*)"', attrs)
            current = ident.group(1) if ident else f"plot-{len(counts) + 1}"
            counts[current] = 0
        elif tag == "svg" and "main-svg" in classes and current is not None:
            counts[current] += 1
    return counts
