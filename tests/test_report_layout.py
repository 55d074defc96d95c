"""The HTML report's layout in headless Chromium at 1280 and 1920 px: nothing overflows the page, tables fit
or scroll inside their own box (the summary table fits whole at 1920 px), the phase labels of the memory plots
do not overlap, and Setup shows the threads the runtime used."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support import factories as F
from tests.support.chromium import FLAGS, find_chromium, inject_recorder
from devprof.report import HtmlRenderer
from devprof.results import RunRecord

_MEASURE = """<script>window.addEventListener('load', function () { setTimeout(function () {
  function box(e) { var r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }
  function scrolls(e) {
    for (var p = e.parentElement; p && p !== document.body; p = p.parentElement) {
      var o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll') return p;
    }
    return null;
  }
  var out = {inner: window.innerWidth, scroll: document.documentElement.scrollWidth, tables: [], plots: []};
  document.querySelectorAll('table').forEach(function (t) {
    var s = scrolls(t);
    out.tables.push({id: t.id || t.className, right: t.getBoundingClientRect().right,
                     box_right: s ? s.getBoundingClientRect().right : null,
                     cut: s ? s.scrollWidth > s.clientWidth + 1 : false});
  });
  document.querySelectorAll('.plotly-graph-div').forEach(function (d) {
    var anns = [];
    d.querySelectorAll('g.annotation').forEach(function (a) {
      var t = a.querySelector('text'); anns.push({text: t ? t.textContent : '', box: box(a)});
    });
    out.plots.push({id: d.id, title: (d.querySelector('.gtitle') || {}).textContent || '', anns: anns});
  });
  var th = null;
  document.querySelectorAll('table.kv tr').forEach(function (r) {
    var c = r.querySelectorAll('th, td'); if (c.length > 1 && c[0].textContent.trim() === 'threads') th = c[1].textContent;
  });
  out.threads = th;
  document.documentElement.setAttribute('data-layout', JSON.stringify(out));
}, 1500); });</script>"""


def _measure(page: Path, width: int) -> dict:
    text = inject_recorder(page.read_text(encoding="utf-8")).replace("</body>", _MEASURE + "</body>")
    with tempfile.TemporaryDirectory(prefix="devprof-layout-") as tmp:
        p = Path(tmp) / "r.html"
        p.write_text(text, encoding="utf-8")
        cmd = [find_chromium(), *FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}", f"--window-size={width},1000",
               "--hide-scrollbars", "--virtual-time-budget=15000", "--dump-dom", p.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": tmp})
    m = re.search(r'data-layout="([^"]*)"', proc.stdout)
    assert m, proc.stderr[-2000:]
    return json.loads(html.unescape(m.group(1)))


def _overlap(a, b, tol=0.5) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    rec = F.make_record(contexts=(1024, 8192))
    reps = []
    for r in rec.repetitions:  # the reference runtime's stats line says how many threads it used
        if r.result is not None:
            obs = {**r.result.extra.get("observer", {}), "cpu_threads": 2}
            r = replace(r, result=replace(r.result, extra={**r.result.extra, "observer": obs}))
        reps.append(r)
    rec = RunRecord(meta=replace(rec.meta, settings={**rec.meta.settings, "threads": -1}), repetitions=reps)
    path = tmp_path_factory.mktemp("layout") / "report.html"
    path.write_text(HtmlRenderer().render(rec), encoding="utf-8")
    return path


@pytest.mark.parametrize("width", [1280, 1920])
def test_layout_at(page, width):
    got = _measure(page, width)
    assert got["inner"] == width
    assert got["scroll"] <= got["inner"], "the page scrolls sideways"
    for t in got["tables"]:
        limit = t["box_right"] if t["box_right"] is not None else got["inner"]
        assert t["box_right"] is not None or t["right"] <= limit + 1, t  # fits, or scrolls in its own box
    summary = next(t for t in got["tables"] if t["id"] == "summary-table")
    if width >= 1920:
        assert not summary["cut"], "the summary table is cut on the right at 1920 px"
    timelines = [p for p in got["plots"] if any(a["text"] in ("load", "prefill", "decode") for a in p["anns"])]
    assert timelines
    for p in got["plots"]:
        anns = p["anns"]
        for i in range(len(anns)):
            for j in range(i + 1, len(anns)):
                assert not _overlap(anns[i]["box"], anns[j]["box"]), (p["title"], anns[i], anns[j])
    assert got["threads"] is not None and "-1" not in got["threads"] and got["threads"].startswith("2")
