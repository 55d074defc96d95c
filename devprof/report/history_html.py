"""The HTML page of `devprof history --html`: one plotly chart per (workload, context) series, every
run a point with its 95% interval as an error bar, hover text with the run id, the runtime binary's
sha256 and devprof's version, and change points ringed in red. plotly.js is embedded (as in the
run report, devprof/report/html.py): the file works offline."""

from __future__ import annotations

import plotly.io as pio

from devprof import stats
from devprof.analysis.history import History, against_last
from devprof.report.base import Renderer
from devprof.report.html.page import PLOTLY_CONFIG, PLOTLY_TEMPLATE, h, page


def render(hist: History, last_n: int | None = None) -> str:
    info = stats.METRIC_INFO[hist.metric]
    figs = []
    for k, ((dev, wl, ctx), pts) in enumerate(hist.series().items(), start=1):
        hover = [f"run {h(p.run_id)}<br>{h(p.created)}<br>{p.median:.4g} {h(info.unit)} "
                 f"[{p.ci_low:.4g}, {p.ci_high:.4g}], n={p.n}<br>runtime {h(p.runtime)} · sha256 {h(p.sha256[:16])}"
                 f"<br>devprof {h(p.version)}" + (f"<br><b>change ({p.change})</b>" if p.change else "") for p in pts]
        data = [{"type": "scatter", "mode": "lines+markers", "name": "runs", "x": [p.created for p in pts],
                 "y": [p.median for p in pts], "text": hover, "hovertemplate": "%{text}<extra></extra>",
                 "customdata": [p.run_id for p in pts],
                 "error_y": {"type": "data", "symmetric": False, "array": [p.ci_high - p.median for p in pts],
                             "arrayminus": [p.median - p.ci_low for p in pts]}}]
        ch = [p for p in pts if p.change]
        if ch:
            data.append({"type": "scatter", "mode": "markers", "name": "change point", "x": [p.created for p in ch],
                         "y": [p.median for p in ch], "hoverinfo": "skip",
                         "marker": {"size": 18, "color": "rgba(0,0,0,0)", "line": {"color": "#d62728", "width": 3}}})
        layout = {"template": PLOTLY_TEMPLATE, "height": 420, "title": {"text": h(f"{dev}: {wl}, context {ctx}")},
                  "xaxis": {"title": {"text": "run created (UTC)"}},
                  "yaxis": {"title": {"text": h(f"{info.label} ({info.unit})")}}}
        div = pio.to_html({"data": data, "layout": layout}, include_plotlyjs=False, full_html=False,
                          div_id=f"fig-{k}", config=PLOTLY_CONFIG, default_width="100%", validate=False)
        cmp = against_last(pts, last_n or hist.window)
        cap = f"{len(pts)} run(s), {len(ch)} change point(s)"
        if cmp and cmp["change_pct"] is not None:
            cap += (f"; latest {cmp['latest']:.4g} vs median of the {cmp['baseline_runs']} before it "
                    f"{cmp['baseline_median']:.4g} ({cmp['change_pct']:+.1f}%, "
                    f"{'beyond' if cmp['beyond_noise'] else 'within'} their noise)")
        figs.append(f'<figure class="plot">{div}<figcaption>{h(cap)}</figcaption></figure>')
    doc = {"device": hist.device, "model": hist.model, "metric": hist.metric, "points": len(hist.points)}
    body = f"""<header><h1>{h(info.label)} of {h(hist.model)} on {h(hist.device)} over time</h1>
<p>Every stored run is a point: the median of its repetitions with its 95% interval. A change point (ringed)
is a run whose interval does not overlap the band of the previous {hist.window} runs' medians (their
order-statistic interval of the median; their range for 5 or fewer).</p></header>
<main>
{"".join(figs)}
</main>"""
    return page(f"devprof history · {hist.device} · {hist.model} · {hist.metric}", len(figs), body,
                "devprof-history", doc)


class HistoryHTMLRenderer(Renderer):
    """`devprof history --html`; ``last_n``: the runs the latest one is held against."""

    name = "history-html"
    output_file_extension = "html"

    def __init__(self, last_n: int | None = None) -> None:
        self.last_n = last_n

    def render(self, hist: History) -> str:
        return render(hist, self.last_n)
