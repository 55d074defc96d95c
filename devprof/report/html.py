"""The self-contained HTML report of a run: one file, plotly.js embedded once, works offline.

Layout (top to bottom):

1. header: run id, date, device, status; a banner when the run is interrupted/failed or
   repetitions are missing (how many);
2. Summary: the verdicts in words, the table per (model, workload, context) with n, cache state,
   median, its 95% interval (order statistics) and CV, and the MoE ÷ dense ratio table;
3. Setup: device (and what its peak-memory metric means), runtime, settings, model shapes from
   the catalog (total/active parameters, INT4 GiB, "(3rd)" marks);
4. Speed: one figure per context (prefill tok/s, decode tok/s, TTFT; bars with CI whiskers);
5. Memory: one figure per context of peak memory, templated vs real per model (peak, RssFile,
   RssAnon; CI whiskers), then one timeline per (model, workload, context): VmRSS, RssFile,
   RssAnon and VmHWM of a representative repetition (median peak) over time, the other
   repetitions' VmRSS (hidden until clicked), load/prefill/decode spans shaded from the
   runtime's timestamps minus the process start, the reported peak as a line; the cache state
   is printed with every memory figure;
6. Routing: one figure per context: distinct (layer, expert) pairs vs tokens processed
   (templated vs real), and distinct experts per layer;
7. Thermal: before/after readings per repetition (when any were recorded);
8. Repetitions: every repetition, warm-ups and failures included;
9. Prompt sources and licences (from ``meta.settings["prompt_sources"]``);
10. the JSON of `devprof show --json` in a ``<script type="application/json" id="devprof-data">``.

Every text that comes from a prompt, a run or a device is escaped. Timelines are reduced to at
most ``max_points`` points per trace, keeping each bucket's minimum and maximum so peaks survive.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import plotly.io as pio
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from devprof import __version__, stats
from devprof.report.base import (  # noqa: F401 (phase_spans* and representative are re-exported)
    Analysis, Renderer, analyse, fmt, fmt_cv, memory_metric_note, phase_spans, phase_spans_from_durations,
    adaptive_lines, rep_label, representative, reps_text, threads_used, when,
)
from devprof.report import soak_figures
from devprof.report.jsonout import JSONRenderer
from devprof.store import RunRecord

GIB = 1024**3

#: series colours, shared by every memory figure
C_RSS, C_FILE, C_ANON, C_HWM = "#2b2d42", "#e08e0b", "#1f78b4", "#8d99ae"
SPAN_COLORS = {"load": "#adb5bd", "prefill": "#74c0fc", "decode": "#ffc078"}
MODEL_COLORS = ["#d9480f", "#1864ab", "#2b8a3e", "#862e9c", "#c2255c", "#5c940d", "#0b7285", "#e67700"]

# Figures are plain dicts handed to plotly.js (plotly.graph_objects validation costs seconds).
_AXIS = {"gridcolor": "#e9ecef", "linecolor": "#adb5bd", "zeroline": False, "ticks": "outside", "automargin": True}
_TEMPLATE = {"layout": {
    "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#212529"},
    "paper_bgcolor": "white", "plot_bgcolor": "white", "colorway": MODEL_COLORS,
    "xaxis": _AXIS, "yaxis": _AXIS,
    "legend": {"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
    "margin": {"l": 60, "r": 20, "t": 60, "b": 80}, "hoverlabel": {"namelength": -1},
    "title": {"x": 0.01, "font": {"size": 15}},
}}
_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}

h = html.escape


def t(text: Any) -> str:
    """Text for plotly labels: plotly reads a small HTML subset, so escape like HTML."""
    return html.escape(str(text), quote=False)


# ---- helpers -----------------------------------------------------------------------------------
def downsample(xs: Sequence[float], ys: Sequence[float | None], max_points: int = 2000) -> tuple[list, list]:
    """At most ``max_points`` points, keeping each bucket's min and max (peaks survive); None dropped."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    n = len(pts)
    if n <= max_points:
        return [p[0] for p in pts], [p[1] for p in pts]
    buckets = max(1, max_points // 2)
    keep: list[int] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if hi <= lo:
            continue
        seg = range(lo, hi)
        i_min = min(seg, key=lambda i: pts[i][1])
        i_max = max(seg, key=lambda i: pts[i][1])
        keep.extend(sorted({i_min, i_max}))
    return [pts[i][0] for i in keep], [pts[i][1] for i in keep]


def _err(m: stats.Metric | None) -> tuple[float | None, float, float]:
    if m is None:
        return None, 0.0, 0.0
    return m.median, max(0.0, m.ci_high - m.median), max(0.0, m.median - m.ci_low)


def _grid(titles: Sequence[str], widths: Sequence[float] | None = None, gap: float = 0.07) -> dict[str, Any]:
    """Layout of side-by-side subplots: axes x, x2, ... with a title above each."""
    n = len(titles)
    widths = list(widths or [1.0 / n] * n)
    usable = 1.0 - gap * (n - 1)
    layout: dict[str, Any] = {"annotations": []}
    x = 0.0
    for i, (title, w) in enumerate(zip(titles, widths)):
        a, b = x, min(1.0, x + w * usable)
        x = b + gap
        sfx = "" if i == 0 else str(i + 1)
        layout[f"xaxis{sfx}"] = {"domain": [a, b], "anchor": f"y{sfx}"}
        layout[f"yaxis{sfx}"] = {"anchor": f"x{sfx}", "rangemode": "tozero"}
        layout["annotations"].append({"text": title, "x": (a + b) / 2, "y": 1.0, "xref": "paper", "yref": "paper",
                                      "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                                      "font": {"size": 13}})
    return layout


def _axes(col: int) -> dict[str, str]:
    return {"xaxis": "x" if col == 1 else f"x{col}", "yaxis": "y" if col == 1 else f"y{col}"}


def _error(up: Sequence[float], down: Sequence[float]) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "array": list(up), "arrayminus": list(down),
            "thickness": 1.2, "width": 4}


def _json_script(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _rss_label(metric: str) -> str:
    return "VmRSS" if metric == "VmHWM" else metric


# ---- the renderer ------------------------------------------------------------------------------
class HTMLRenderer(Renderer):
    """One self-contained HTML file per run."""

    output_file_extension = "html"

    def __init__(self, max_points: int = 2000, plot_height: int = 420) -> None:
        self.max_points = max_points
        self.plot_height = plot_height

    def render(self, record: RunRecord | Analysis) -> str:
        a = record if isinstance(record, Analysis) else analyse(record)
        return _Page(self, a).html()


HtmlRenderer = HTMLRenderer


class CompareHTMLRenderer(HTMLRenderer):
    """`devprof compare --html`: the templated-vs-real section of a run as a page of its own."""

    def render(self, report: Any) -> str:  # a CompareReport, a RunRecord or an Analysis
        from devprof.analysis.compare import CompareReport

        if isinstance(report, CompareReport):
            a = analyse(report.record)
        else:
            a = report if isinstance(report, Analysis) else analyse(report)
            report = None
        page = _Page(self, a, compare=report)
        return page.html(sections=[("compare", "Templated vs real prompts", page.compare()),
                                   ("repetitions", "Repetitions", page.repetitions())])


class _Page:
    def __init__(self, renderer: HTMLRenderer, a: Analysis, compare: Any = None) -> None:
        self.r = renderer
        self.a = a
        self.rec = a.record
        self.meta = a.record.meta
        self.n_figures = 0
        self.colors = {m: MODEL_COLORS[i % len(MODEL_COLORS)] for i, m in enumerate(self.rec.models())}
        self.display = {m: stats.model_info(m)[0] for m in self.rec.models()}
        self._compare = compare

    # ---- page -------------------------------------------------------------------------------
    def html(self, sections: list[tuple[str, str, str]] | None = None) -> str:
        if sections is None:
            sections = [
                ("summary", "Summary", self.summary()),
                ("setup", "Setup", self.setup()),
                ("speed", "Speed", self.speed()),
            ]
            if len(self.rec.contexts()) > 1:
                sections.append(("sweep", "Context sweep", self.sweep()))
            sections += [
                ("memory", "Memory", self.memory()),
                ("compare", "Templated vs real prompts", self.compare()),
                ("routing", "Routing", self.routing()),
                ("thermal", "Thermal", self.thermal()),
                *soak_figures.sections(self),  # energy and --soak, where the run has them
                ("repetitions", "Repetitions", self.repetitions()),
                ("sources", "Prompt sources", self.sources()),
            ]
        nav = " · ".join(f'<a href="#{sid}">{h(title)}</a>' for sid, title, _ in sections)
        body = "\n".join(f'<section id="{sid}">\n<h2>{h(title)}</h2>\n{content}\n</section>'
                         for sid, title, content in sections)
        data = JSONRenderer().data(self.a)
        return page(f"devprof · {self.meta.run_id} · {' vs '.join(self.display.values())}", self.n_figures,
                    f"{self.header()}\n<nav>{nav}</nav>\n<main>\n{body}\n</main>", "devprof-data", data)

    def figure(self, data: list[dict], layout: dict[str, Any], caption: str = "", height: int | None = None) -> str:
        """One plotly figure as a div (plotly.js is on the page once); ``caption`` is HTML."""
        self.n_figures += 1
        layout = {"template": _TEMPLATE, **layout, "height": height or self.r.plot_height}
        div = pio.to_html({"data": data, "layout": layout}, include_plotlyjs=False, full_html=False,
                          div_id=f"fig-{self.n_figures}", config=_CONFIG, default_width="100%", validate=False)
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        return f'<figure class="plot">{div}{cap}</figure>'

    # ---- header -----------------------------------------------------------------------------
    def header(self) -> str:
        m, d = self.meta, self.meta.device
        status_class = {"complete": "ok", "running": "info", "interrupted": "warn"}.get(m.status, "bad")
        banner = ""
        if self.a.problem:
            cls = "warn" if m.status in ("interrupted", "running", "complete") else "bad"
            banner = f'<p class="banner {cls}">{h(self.a.problem)}</p>'
        if self.a.noise is not None and self.a.noise.noisy:
            banner += f'<p class="banner warn" id="noise-verdict">{h(self.a.noise.line)}</p>'
        models = " vs ".join(h(self.display[x]) for x in m.models)
        return f"""<header>
<h1>{models} on {h(d.name or d.serial)}</h1>
<p class="meta">Run <code>{h(m.run_id)}</code> · {h(when(m.created))} ·
<span class="status {status_class}">{h(m.status)}</span> · runtime {h(m.runtime)} ·
{self.a.measured} of {self.a.planned} measured repetitions
({h(reps_text(m))} per model, workload and context, after {m.warmup} warm-up)</p>
{"".join(f'<p class="meta adaptive">Repetitions: {h(x)}</p>' for x in adaptive_lines(m))}
{banner}
</header>"""

    # ---- summary ----------------------------------------------------------------------------
    def summary(self) -> str:
        a = self.a
        parts = []
        if a.headline:
            parts.append(f'<p class="headline" id="verdict"><b>{h(a.headline)}</b></p>')
        if a.verdicts:
            parts.append("<ul class=\"verdicts\">" + "".join(f"<li>{h(v)}</li>" for v in a.verdicts) + "</ul>")
        elif a.ratios:
            parts.append("<p>No difference between the models is clear at 95% confidence with these repetitions.</p>")
        if not a.rows:
            parts.append("<p>No repetitions were recorded.</p>")
            return "\n".join(parts)
        metric = "/".join(sorted({r.memory_metric for r in a.rows if r.n})) or self.meta.device.memory_metric
        head = ["model", "workload", "context", "n", "cache", "prefill tok/s", "decode tok/s", "TTFT ms",
                f"peak {metric} MiB", "peak RssFile MiB", "peak RssAnon MiB", "distinct (layer, expert)"]
        rows = []
        for r in a.rows:
            n = f"{r.n}" + (f' <span class="bad">({r.n_failed} failed)</span>' if r.n_failed else "")
            cells = [h(r.display), h(r.workload), str(r.context), n, h(", ".join(r.cache_states) or "—")]
            for name in stats.METRICS:
                cells.append(self._metric_cell(r.metric(name), 0 if name == "distinct_experts" else
                                               (2 if name == "decode_tok_s" else 1)))
            cls = ' class="short"' if r.n < self.meta.reps else ""
            rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append(f"""<div class="wide"><table class="summary" id="summary-table">
<caption>Median over the n measured repetitions; below it the {int(a.level * 100)}% distribution-free interval of the
median (order statistics; up to n = 5 the range) and ± the coefficient of variation. Memory in MiB; peak = {h(metric)} as the device reports it, not the
largest sample.</caption>
<thead><tr>{"".join(f"<th>{h(x)}</th>" for x in head)}</tr></thead>
<tbody>{"".join(rows)}</tbody></table></div>""")
        if a.ratios:
            parts.append(self._ratio_table())
        return "\n".join(parts)

    def _metric_cell(self, m: stats.Metric | None, decimals: int) -> str:
        if m is None:
            return '<span class="na">—</span>'
        if m.n < 2:
            spread = "n = 1: no interval"
        else:
            spread = f"{fmt(m.ci_low, decimals)}–{fmt(m.ci_high, decimals)} {fmt_cv(m.cv)}"
        title = f"min {fmt(m.min, decimals)}, max {fmt(m.max, decimals)}, n {m.n}"
        return f'<span class="v" title="{h(title)}">{fmt(m.median, decimals)}</span><span class="ci">{h(spread)}</span>'

    def _ratio_table(self) -> str:
        r0 = self.a.ratios[0]
        s, b = self.display.get(r0.subject, r0.subject), self.display.get(r0.baseline, r0.baseline)
        rows = []
        for r in self.a.ratios:
            ci = h(r.ci_text(3))
            clear = '<span class="ok">yes</span>' if r.verdict else '<span class="na">no</span>'
            rows.append(f"<tr><td>{h(r.workload)}</td><td>{r.context}</td><td>{h(stats.ratio_name(r.metric))}</td>"
                        f"<td><b>{r.ratio:.3f}×</b></td><td>{ci}</td><td>{r.n_subject} / {r.n_baseline}</td>"
                        f"<td>{clear}</td></tr>")
        return f"""<table class="ratios" id="ratio-table">
<caption>{h(s)} ÷ {h(b)}: geometric mean of the interleaved pairs' ratios (each repetition of {h(s)} ran
back to back with one of {h(b)}) with a 95% t-interval on the logs of those ratios; with fewer than
{stats.MIN_N} pairs only their range, never "clear". A speedup above 1 and a memory or TTFT ratio below 1
favour {h(s)}; "clear" when the interval excludes 1.00 as printed (the findings above say it in words).</caption>
<thead><tr><th>workload</th><th>context</th><th>ratio of</th><th>ratio</th><th>95% CI</th>
<th>n</th><th>clear</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>"""

    # ---- setup ------------------------------------------------------------------------------
    def setup(self) -> str:
        m, d = self.meta, self.meta.device
        metrics = sorted({r.outcome.memory_metric for r in self.rec.repetitions}) or [d.memory_metric]
        dev_rows = [("name", d.name), ("kind", d.kind), ("model", d.model), ("OS", d.os_version),
                    ("serial", d.serial)]
        dev_rows += [(k, _plain(v)) for k, v in d.extra.items()]
        dev_rows.append(("peak memory metric", "; ".join(memory_metric_note(x) for x in metrics)))
        run_rows = [("runtime", m.runtime), ("models", ", ".join(m.models)), ("baseline", m.baseline or "—"),
                    ("workloads", ", ".join(m.workloads)), ("contexts", ", ".join(map(str, m.contexts))),
                    ("new tokens", m.new_tokens), ("repetitions", f"{reps_text(m)} measured + {m.warmup} warm-up"),
                    ("memory sampling", f"every {m.sample_ms} ms" if m.sample_ms else "off"),
                    ("artifacts", m.artifacts_dir or "—")]
        used = threads_used(self.rec)
        run_rows += [(k, _plain(v) if k != "threads" else (used or _plain(v)))
                     for k, v in m.settings.items() if k != "prompt_sources"]
        return (f'<div class="cols"><div><h3>Device</h3>{_kv(dev_rows)}</div>'
                f'<div><h3>Run</h3>{_kv(run_rows)}</div></div>\n<h3>Models</h3>\n{self._models_table()}')

    def _models_table(self) -> str:
        from devprof.catalog import get_model
        from devprof.errors import UsageError

        rows = []
        for name in self.rec.models():
            try:
                s = get_model(name)
            except UsageError:
                rows.append(f"<tr><td>{h(name)}</td><td colspan=\"8\" class=\"na\">not in devprof's catalog</td></tr>")
                continue

            def mark(field: str, s=s) -> str:
                return ' <span class="third" title="from a third-party summary">(3rd)</span>' \
                    if field in s.third_party else ""

            experts = (f"{s.n_experts} × {s.expert_ffn}, top-{s.top_k}"
                       + (f", {s.n_shared} shared × {s.shared_ffn}" if s.n_shared else "")) if s.is_moe \
                else f"dense FFN {s.ffn}"
            pub = s.published.get("int4_gib")
            int4 = f"{s.weight_bytes('int4') / GIB:.3f}" + (f" (published {pub}{mark('int4_gib')})" if pub else "")
            rows.append(
                f"<tr><td>{h(s.display)}</td><td>{h(s.kind)}</td><td>{s.n_layers}{mark('n_layers')}</td>"
                f"<td>{s.hidden}</td><td>{s.n_heads} / {s.n_kv_heads} / {s.head_dim}</td><td>{h(experts)}</td>"
                f"<td>{s.total_params / 1e6:,.1f} M{mark('total_params')}</td>"
                f"<td>{s.active_params / 1e6:,.1f} M{mark('active_params')}</td><td>{int4}</td></tr>")
        return ("<table class=\"models\"><thead><tr><th>model</th><th>kind</th><th>layers</th><th>hidden</th>"
                "<th>heads / kv / dim</th><th>FFN</th><th>total params</th><th>active params</th>"
                "<th>INT4 weights GiB</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
                "<p class=\"note\">Shapes and parameter arithmetic from devprof's model catalog; "
                "(3rd) marks a figure taken from a third-party summary of the paper.</p>")

    # ---- speed ------------------------------------------------------------------------------
    def speed(self) -> str:
        out = []
        for ctx in self.rec.contexts():
            rows = [r for r in self.a.rows if r.context == ctx and r.n]
            if not rows:
                continue
            data: list[dict] = []
            for model in self.rec.models():
                mrows = [r for r in rows if r.model == model]
                if not mrows:
                    continue
                for col, name in enumerate(("prefill_tok_s", "decode_tok_s", "ttft_ms"), start=1):
                    ys, up, down = zip(*[_err(r.metric(name)) for r in mrows])
                    data.append({
                        "type": "bar", **_axes(col), "x": [t(r.workload) for r in mrows], "y": list(ys),
                        "name": t(self.display[model]), "legendgroup": model, "showlegend": col == 1,
                        "marker": {"color": self.colors[model]}, "error_y": _error(up, down),
                        "customdata": [[r.n] for r in mrows],
                        "hovertemplate": "%{y:.2f} (n=%{customdata[0]})<extra>%{fullData.name}</extra>",
                    })
            layout = _grid(["prefill (tok/s)", "decode (tok/s)", "time to first token (ms)"])
            layout.update(barmode="group", title={"text": f"Speed at {ctx} tokens of context"})
            out.append(self.figure(data, layout, "Bars: median of the measured repetitions; whiskers: 95% interval of "
                                                 "the median (order statistics; up to n = 5 the range). Higher is better for tok/s, lower for TTFT."))
        itl = self._itl()
        if itl:
            out.append(itl)
        return "\n".join(out) or "<p>No measured repetitions.</p>"

    def _itl(self) -> str:
        """Inter-token latency: p50/p90/p99 per model and workload, TTFT apart, and the distribution."""
        rows = [r for r in self.a.rows if r.itl is not None]
        if not rows:
            return ""
        body = "".join(
            f"<tr><td>{h(r.display)}</td><td>{h(r.workload)}</td><td>{r.context}</td><td>{r.itl.p50:.2f}</td>"
            f"<td>{r.itl.p90:.2f}</td><td>{r.itl.p99:.2f}</td><td>{r.itl.n} ({r.itl.n_reps} reps)</td>"
            f"<td>{fmt(r.ttft_ms.median if r.ttft_ms else None, 0)}</td></tr>" for r in rows)
        table = f"""<div class="wide"><table class="itl" id="itl-table">
<caption>Inter-token latency: the wall time of every decode step (model + sampling) of the measured repetitions,
pooled; with few steps p99 is close to the largest. Time to first token (prefill + first sampling) apart, median.</caption>
<thead><tr><th>model</th><th>workload</th><th>context</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>
<th>decode steps</th><th>TTFT ms</th></tr></thead><tbody>{body}</tbody></table></div>"""
        data = []
        dashes = ["solid", "dot", "dash", "dashdot"]
        for i, r in enumerate(rows):
            xs = sorted(r.token_ms)
            n = len(xs)
            data.append({"type": "scatter", "mode": "lines", "line": {"shape": "hv", "color": self.colors.get(r.model),
                                                                       "dash": dashes[i % len(dashes)]},
                         "x": xs, "y": [(k + 1) / n for k in range(n)],
                         "name": t(f"{r.display} · {r.workload} · {r.context}"),
                         "hovertemplate": "%{x:.2f} ms: %{y:.0%} of steps<extra>%{fullData.name}</extra>"})
        layout = {"title": {"text": "Inter-token latency, distribution"}, "xaxis": {"title": {"text": "ms per decode step"},
                  "type": "log"}, "yaxis": {"title": {"text": "share of decode steps"}, "tickformat": ".0%"},
                  "legend": {"orientation": "h", "y": -0.25}}
        return table + self.figure(data, layout, "Cumulative distribution of the decode steps' wall time per model and "
                                                 "workload (log scale): a long tail is stalls, not speed.")

    # ---- memory -----------------------------------------------------------------------------
    def memory(self) -> str:
        out = []
        for ctx in self.rec.contexts():
            fig_html = self._peak_figure(ctx)
            if fig_html:
                out.append(fig_html)
        out.append("<h3>Memory over time</h3>")
        n_before = len(out)
        for ctx in self.rec.contexts():
            for model in self.rec.models():
                for workload in self.rec.workloads():
                    fig_html = self._timeline(model, workload, ctx)
                    if fig_html:
                        out.append(fig_html)
        if len(out) == n_before:
            out.append("<p>No memory samples were recorded (sampling off, or no repetition finished).</p>")
        return "\n".join(out)

    def _peak_figure(self, ctx: int) -> str | None:
        rows = [r for r in self.a.rows if r.context == ctx and r.n and r.peak_rss_mb]
        if not rows:
            return None
        metric = "/".join(sorted({r.memory_metric for r in rows}))
        x = [[t(r.display) for r in rows], [t(f"{r.workload} · {'/'.join(r.cache_states) or '?'}") for r in rows]]
        data = []
        for name, label, color in (("peak_rss_mb", f"peak ({metric})", C_RSS),
                                   ("peak_rss_file_mb", "peak RssFile (weights paged in)", C_FILE),
                                   ("peak_rss_anon_mb", "peak RssAnon (activations, KV cache)", C_ANON)):
            vals = [_err(r.metric(name)) for r in rows]
            if all(v[0] is None for v in vals):
                continue
            ys, up, down = zip(*vals)
            data.append({"type": "bar", "x": x, "y": list(ys), "name": t(label), "marker": {"color": color},
                         "error_y": _error(up, down), "customdata": [[r.n] for r in rows],
                         "hovertemplate": "%{y:.1f} MiB (n=%{customdata[0]})<extra>%{fullData.name}</extra>"})
        layout = {"barmode": "group", "title": {"text": f"Peak memory at {ctx} tokens: templated vs real prompts"},
                  "yaxis": {"title": {"text": "MiB"}, "rangemode": "tozero"}}
        caption = ["Per model and workload, with the page-cache state of the weights file before the runs "
                   "(cold = evicted, warm = cached): the device's reported peak, and the largest sampled RssFile and "
                   "RssAnon. Whiskers: 95% interval of the median (order statistics; up to n = 5 the range)."]
        caption += self._workload_sentences(ctx)
        return self.figure(data, layout, " ".join(caption))

    def _workload_sentences(self, ctx: int) -> list[str]:
        workloads = self.rec.workloads()
        ref = next((w for w in workloads if w.startswith("templated")), None)
        if ref is None:
            return []
        out = []
        for model in self.rec.models():
            for w in workloads:
                if w == ref:
                    continue
                bits = []
                for name, what in (("peak_rss_mb", "peak memory"), ("peak_rss_file_mb", "RssFile")):
                    ci = stats.workload_ratio(self.rec, model, name, w, ref, ctx)
                    if ci is None:
                        continue
                    spread = f" ({'95% CI ' if not ci.degenerate else ''}{stats.ci_text(ci.low, ci.high, ci.degenerate, ci.n)})"
                    bits.append(f"{what} {ci.estimate:.2f}×{spread}")
                if bits:
                    out.append(h(f"{self.display[model]}: {w} ÷ {ref} prompts: " + ", ".join(bits) + "."))
        return out

    def _timeline(self, model: str, workload: str, ctx: int) -> str | None:
        reps = [r for r in self.rec.repetitions if (r.model, r.workload, r.context) == (model, workload, ctx)
                and not r.warmup and r.outcome.samples]
        ok = [r for r in reps if r.outcome.status == "ok"]
        pool = ok or reps
        if not pool:
            return None
        rep = representative(pool)
        o = rep.outcome
        metric = o.memory_metric
        mp = self.r.max_points
        ts = [s.t_ms / 1000.0 for s in o.samples]
        data: list[dict] = []
        for name, attr, color, dash in ((_rss_label(metric), "rss_kb", C_RSS, "solid"),
                                        ("RssFile", "file_kb", C_FILE, "solid"),
                                        ("RssAnon", "anon_kb", C_ANON, "solid"),
                                        ("VmHWM (running peak)" if metric == "VmHWM" else f"{metric} peak", "hwm_kb",
                                         C_HWM, "dot"),
                                        ("physFootprint", "footprint_kb", C_HWM, "solid")):
            ys = [getattr(s, attr) for s in o.samples]
            if all(y is None for y in ys):
                continue
            x, y = downsample(ts, [None if v is None else v / 1024.0 for v in ys], mp)
            data.append({"type": "scatter", "mode": "lines", "x": x, "y": y, "name": t(name),
                         "line": {"color": color, "dash": dash, "width": 2},
                         "hovertemplate": "%{y:.1f} MiB<extra>%{fullData.name}</extra>"})
        for other in pool:
            if other is rep:
                continue
            x, y = downsample([s.t_ms / 1000.0 for s in other.outcome.samples],
                              [s.rss_kb / 1024.0 for s in other.outcome.samples], mp)
            data.append({"type": "scatter", "mode": "lines", "x": x, "y": y,
                         "name": t(f"{_rss_label(metric)} {rep_label(other)}"), "visible": "legendonly",
                         "line": {"color": C_RSS, "width": 1, "dash": "dash"}, "opacity": 0.6})
        shapes: list[dict] = []
        notes: list[dict] = []
        spans, approx = phase_spans(rep), False
        if not spans:
            spans, approx = phase_spans_from_durations(rep), True
        for i, (name, a, b) in enumerate(spans):
            shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": a, "x1": b, "y0": 0, "y1": 1,
                           "fillcolor": SPAN_COLORS[name], "opacity": 0.25, "layer": "below", "line": {"width": 0}})
            # one row per phase, from the bottom up (the reported-peak label sits at the top): a short load
            # span never puts its label on top of the prefill's
            notes.append({"x": a, "y": 0.01 + 0.085 * i, "xref": "x", "yref": "paper", "text": name,
                          "showarrow": False, "xanchor": "left", "yanchor": "bottom",
                          "bgcolor": "rgba(255,255,255,0.7)", "font": {"size": 11, "color": "#495057"}})
        peak = stats.peak_rss_kb(rep)
        if peak is not None:
            shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": peak / 1024.0,
                           "y1": peak / 1024.0, "line": {"color": "#c92a2a", "dash": "dash", "width": 1}})
            notes.append({"x": 1, "y": peak / 1024.0, "xref": "paper", "yref": "y", "showarrow": False,
                          "xanchor": "right", "yanchor": "bottom", "font": {"size": 11, "color": "#c92a2a"},
                          "text": t(f"reported peak ({metric}) {peak / 1024:.1f} MiB")})
        status = "" if rep.outcome.status == "ok" else f" · {rep.outcome.status}"
        layout = {
            "title": {"text": t(f"{self.display.get(model, model)} · {workload} · {ctx} tokens · "
                                f"{rep_label(rep)} · cache {rep.cache_state}{status}")},
            "xaxis": {"title": {"text": "seconds since the process started"}},
            "yaxis": {"title": {"text": "MiB"}, "rangemode": "tozero"},
            "hovermode": "x unified", "shapes": shapes, "annotations": notes,
        }
        max_rss = max(s.rss_kb for s in o.samples) / 1024.0
        cap = [f"<b>Cache: {h(rep.cache_state)}</b>" + (f" ({h(rep.cache_note)})" if rep.cache_note else "") + ".",
               f"Shown: {h(rep_label(rep))}" + (f", the median peak of {len(pool)} repetitions; the others' "
                                                 f"{h(_rss_label(metric))} can be switched on in the legend"
                                                 if len(pool) > 1 else "") + ".",
               f"Reported peak ({h(metric)}) {fmt(peak / 1024.0 if peak else None)} MiB; largest sample "
               f"{fmt(max_rss)} MiB; {len(o.samples)} samples"
               + (f" (drawn: at most {mp} per line, keeping minima and maxima)" if len(o.samples) > mp else "") + ".",
               ("Shaded: load, prefill, decode from the runtime's timestamps minus the process start."
                if not approx else "Shaded: load, prefill, decode placed from the runtime's durations alone "
                "(approximate: it printed no usable timestamps).")
               if spans else "Prefill/decode spans unknown: the runtime printed no timestamps or durations."]
        return self.figure(data, layout, " ".join(cap), height=380)

    # ---- routing ----------------------------------------------------------------------------
    def routing(self) -> str:
        out = []
        for ctx in self.rec.contexts():
            fig_html = self._coverage(ctx)
            if fig_html:
                out.append(fig_html)
        if not out:
            return ("<p>No routing traces in this run (dense models have none; the runtime "
                    f"<code>{h(self.meta.runtime)}</code> may not emit them).</p>")
        return "\n".join(out)

    def _coverage(self, ctx: int) -> str | None:
        groups = []
        for model in self.rec.models():
            for w in self.rec.workloads():
                reps = [r for r in self.rec.measured(model, w, ctx) if r.routing is not None]
                if reps:
                    reps.sort(key=lambda r: (r.routing.distinct_pairs, r.index))
                    groups.append((model, w, reps[(len(reps) - 1) // 2]))
        if not groups:
            return None
        layout = _grid(["distinct (layer, expert) pairs vs tokens processed", "distinct experts per layer"],
                       widths=[0.58, 0.42])
        data: list[dict] = []
        shapes: list[dict] = []
        totals: dict[str, int] = {}
        caps = []
        for model, w, rep in groups:
            g = rep.routing
            templated = w.startswith("templated")
            label = t(f"{self.display[model]} · {w}")
            data.append({"type": "scatter", "mode": "lines", **_axes(1), "x": g.coverage_tokens,
                         "y": g.coverage_distinct, "name": label, "legendgroup": f"{model}|{w}",
                         "line": {"color": self.colors[model], "dash": "dash" if templated else "solid", "width": 2},
                         "hovertemplate": "%{y} pairs after %{x} tokens<extra>%{fullData.name}</extra>"})
            data.append({"type": "bar", **_axes(2), "x": [f"L{j}" for j in range(len(g.distinct_per_layer))],
                         "y": g.distinct_per_layer, "name": label, "legendgroup": f"{model}|{w}", "showlegend": False,
                         "marker": {"color": self.colors[model], "pattern": {"shape": "/" if templated else ""}},
                         "hovertemplate": "%{y} experts in %{x}<extra>%{fullData.name}</extra>"})
            total = g.n_layers * g.n_experts
            totals[model] = total
            caps.append(h(f"{self.display[model]}, {w}: {g.distinct_pairs} of {total} pairs "
                          f"({g.distinct_pairs / max(1, total):.0%}) after {g.n_tokens} tokens, cache {rep.cache_state}"))
        for model, total in totals.items():
            shapes.append({"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "yref": "y", "y0": total, "y1": total,
                           "line": {"color": self.colors[model], "width": 1, "dash": "dot"}})
            layout["annotations"].append({"xref": "x domain", "x": 1, "yref": "y", "y": total, "showarrow": False,
                                          "xanchor": "right", "yanchor": "bottom", "font": {"size": 10},
                                          "text": t(f"all {total} pairs ({self.display[model]})")})
        layout["xaxis"].update(title={"text": "tokens processed (prompt, then generated; log scale)"}, type="log")
        layout["yaxis"]["title"] = {"text": "distinct (layer, expert) pairs"}
        layout["yaxis2"]["title"] = {"text": "experts touched"}
        layout.update(barmode="group", shapes=shapes, title={"text": f"Expert coverage at {ctx} tokens of context"})
        cap = ("A memory-mapped MoE runtime pages an expert's weights in only when a token is routed to it, "
               "so RssFile follows these curves. Dashed/hatched: templated prompts; solid: real prompts. "
               + "; ".join(caps) + ".")
        return self.figure(data, layout, cap)

    # ---- templated vs real ----------------------------------------------------------------------
    def compare_report(self):
        """The templated-vs-real analysis of this run (computed once, lenient: messages, no errors)."""
        if self._compare is None:
            from devprof.analysis.compare import compare

            self._compare = compare(self.rec, level=self.a.level, rows=self.a.rows, strict=False)
        return self._compare

    def compare(self) -> str:
        from devprof.analysis.compare import JOIN_NOTE

        rep = self.compare_report()
        parts = []
        heads = rep.headlines
        if heads:
            parts.append('<ul class="verdicts headline">' + "".join(
                f"<li>{h(x[0].upper() + x[1:])}.</li>" for x in heads) + "</ul>")
        for msg in rep.messages:
            parts.append(f'<p class="warnline">{h(msg)}</p>')
        for mc in rep.models:
            parts.append(self._compare_model(mc))
        if rep.warnings:
            parts.append('<ul class="cv-warnings">' + "".join(f"<li>{h(w)}</li>" for w in rep.warnings) + "</ul>")
        if any(mc.joins for mc in rep.models):
            parts.append(f'<p class="note">{h(JOIN_NOTE)}</p>')
        if any(mc.projections for mc in rep.models):
            parts.append(f'<p class="note" id="projection-assumption">{h(rep.assumption)}</p>')
        if not parts:
            parts.append("<p>Nothing to compare in this run.</p>")
        return "\n".join(parts)

    def _compare_model(self, mc) -> str:
        parts = [f"<h3>{h(mc.display)} at {mc.context} tokens of context</h3>"]
        if mc.pairs:
            parts.append(self._compare_table(mc))
            items = []
            for p in mc.pairs:
                for name in ("peak_rss_mb", "peak_rss_file_mb"):
                    s = p.sentence(name)
                    cls = "ok" if p.deltas[name].clear else "na"
                    items.append(f'<li class="{cls}">{h(s[0].upper() + s[1:])}.</li>')
            parts.append('<ul class="verdicts">' + "".join(items) + "</ul>")
        elif mc.templated is None:
            parts.append("<p>No templated workload in this run: nothing to hold the real prompts against.</p>")
        if mc.routing:
            parts.append(self._coverage_curves(mc))
            parts.append(self._load_figure(mc))
            parts.append(self._category_table(mc))
        if mc.joins:
            parts.append(self._join_figure(mc))
            parts.append(self._join_table(mc))
        if mc.projections:
            parts.append(self._projection_table(mc))
        parts += [f'<p class="note">{h(n)}</p>' for n in mc.notes]
        return "\n".join(x for x in parts if x)

    def _compare_table(self, mc) -> str:
        metric = "/".join(sorted({p.memory_metric for p in mc.pairs}))
        labels = {"peak_rss_mb": f"peak {metric} MiB", "peak_rss_file_mb": "peak RssFile MiB",
                  "peak_rss_anon_mb": "peak RssAnon MiB", "distinct_experts": "distinct (layer, expert) pairs"}
        rows = []
        for p in mc.pairs:
            for name, d in p.deltas.items():
                if d.templated is None and d.real is None:
                    continue
                nd = 0 if name == "distinct_experts" else 1
                cache_t = "" if name == "distinct_experts" else f' <span class="cache">cache {h("/".join(p.cache_templated) or "?")}</span>'
                cache_r = "" if name == "distinct_experts" else f' <span class="cache">cache {h("/".join(p.cache_real) or "?")}</span>'
                pct, ci = d.pct_text(), h(d.ci_text())
                clear = '<span class="ok">yes</span>' if d.clear else '<span class="na">no</span>'
                rows.append(f"<tr><td>{h(p.real)}</td><td>{h(labels[name])}</td><td>{d.n}</td>"
                            f"<td>{self._metric_cell(d.templated, nd)}{cache_t}</td>"
                            f"<td>{self._metric_cell(d.real, nd)}{cache_r}</td><td><b>{pct}</b></td><td>{ci}</td>"
                            f"<td>{clear}</td></tr>")
        return f"""<div class="wide"><table class="compare" id="compare-table-{h(mc.model)}-{mc.context}">
<caption>Templated vs real prompts: median over the n measured repetitions with its 95% interval (order statistics) and ±CV,
and the page-cache state of the weights file before the runs (cold = evicted, warm = cached). "Understated by" =
1 − templated ÷ real (ratio of the geometric means), with Welch's t-interval on the logs; clear when it excludes 0
as printed (never below n = {stats.MIN_N}).
Peak = the device's reported peak; RssFile/RssAnon = the largest sample.</caption>
<thead><tr><th>real workload</th><th>metric</th><th>n</th><th>templated</th><th>real</th><th>understated by</th>
<th>95% CI</th><th>clear</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>"""

    def _workload_colors(self, workloads: list[str]) -> dict[str, str]:
        palette = ["#e08e0b", "#1f78b4", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285"]
        out, i = {}, 1
        for w in workloads:
            if w.startswith("templated"):
                out[w] = palette[0]
            else:
                out[w] = palette[i % len(palette)]
                i += 1
        return out

    def _coverage_curves(self, mc) -> str:
        views = mc.routing
        colors = self._workload_colors([v.workload for v in views])
        has_layers = any(v.layer_curves for v in views)
        titles = ["overall: distinct (layer, expert) pairs"] + (["per layer: distinct experts"] if has_layers else [])
        layout = _grid(titles, widths=[0.5, 0.5] if has_layers else [1.0])
        data: list[dict] = []
        shapes: list[dict] = []
        for v in views:
            templated = v.workload.startswith("templated")
            name = t(f"{v.workload} ({v.rep_label}, cache {v.cache_state})")
            data.append({"type": "scatter", "mode": "lines", **_axes(1), "x": v.coverage_tokens,
                         "y": v.coverage_distinct, "name": name, "legendgroup": v.workload,
                         "line": {"color": colors[v.workload], "width": 2.5, "dash": "dash" if templated else "solid"},
                         "hovertemplate": "%{y} pairs after %{x} tokens<extra>%{fullData.name}</extra>"})
            if has_layers and v.layer_curves:
                for i, curve in enumerate(v.layer_curves):
                    data.append({"type": "scatter", "mode": "lines", **_axes(2), "x": v.coverage_tokens, "y": curve,
                                 "name": t(f"{v.workload} · layer {i}"), "legendgroup": v.workload, "showlegend": False,
                                 "line": {"color": colors[v.workload], "width": 1,
                                          "dash": "dash" if templated else "solid"}, "opacity": 0.75,
                                 "hovertemplate": f"layer {i}: " + "%{y} experts after %{x} tokens<extra>"
                                                  + t(v.workload) + "</extra>"})
        v0 = views[0]
        shapes.append({"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "yref": "y", "y0": v0.total_pairs,
                       "y1": v0.total_pairs, "line": {"color": "#868e96", "width": 1, "dash": "dot"}})
        if has_layers:
            shapes.append({"type": "line", "xref": "x2 domain", "x0": 0, "x1": 1, "yref": "y2", "y0": v0.n_experts,
                           "y1": v0.n_experts, "line": {"color": "#868e96", "width": 1, "dash": "dot"}})
        prompt = next((v.n_prompt for v in views if v.n_prompt), None)
        for ax in (("x", "y"), ("x2", "y2"))[: 2 if has_layers else 1]:
            if prompt:
                shapes.append({"type": "line", "xref": ax[0], "x0": prompt, "x1": prompt, "yref": f"{ax[1]} domain",
                               "y0": 0, "y1": 1, "line": {"color": "#adb5bd", "width": 1, "dash": "dash"}})
        layout["xaxis"].update(type="log", title={"text": "tokens processed (log scale)"})
        layout["yaxis"]["title"] = {"text": "distinct (layer, expert) pairs"}
        if has_layers:
            layout["xaxis2"].update(type="log", title={"text": "tokens processed (log scale)"})
            layout["yaxis2"]["title"] = {"text": f"distinct experts (of {v0.n_experts})"}
        layout.update(shapes=shapes, title={"text": t(f"Coverage: {mc.display} at {mc.context} tokens")})
        caps = [f"{v.workload}: {fmt(v.distinct.median if v.distinct else None, 0)} of {v.total_pairs} pairs "
                f"({v.rep_label}, cache {v.cache_state}; {'per-token trace' if v.source == 'trace' else 'stored summary'})"
                for v in views]
        cap = ("Distinct experts touched after each number of tokens (prompt, then generated; the grey dashed line "
               "marks the end of the prompt): a memory-mapped runtime pages an expert in when a token first routes "
               "to it. Dashed: templated; solid: real. " + h("; ".join(caps)) + "."
               + ("" if has_layers else " Per-layer curves need the routing traces in the run folder."))
        return self.figure(data, layout, cap)

    def _load_figure(self, mc) -> str:
        from devprof.analysis.coverage import load_shares

        views = mc.routing
        colors = self._workload_colors([v.workload for v in views])
        titles = [f"{v.workload}: share of slots, busiest first" for v in views] + ["load entropy per layer"]
        n = len(views)
        widths = [0.62 / n] * n + [0.38]
        layout = _grid([t(x) for x in titles], widths=widths, gap=0.05)
        data: list[dict] = []
        for i, v in enumerate(views, start=1):
            z = load_shares(v.load)
            data.append({"type": "heatmap", **_axes(i), "z": z, "x": list(range(1, v.n_experts + 1)),
                         "y": [f"L{j}" for j in range(v.n_layers)], "coloraxis": "coloraxis",
                         "name": t(v.workload),
                         "hovertemplate": "%{y}, rank %{x}: %{z:.1%} of the slots<extra>" + t(v.workload) + "</extra>"})
            layout[f"xaxis{'' if i == 1 else i}"]["title"] = {"text": "expert rank"}
        k = n + 1
        for v in views:
            data.append({"type": "scatter", "mode": "lines+markers", **_axes(k),
                         "x": [f"L{s.layer}" for s in v.load_stats], "y": [s.normalized for s in v.load_stats],
                         "name": t(f"{v.workload}: entropy ÷ log2({v.n_experts})"), "legendgroup": v.workload,
                         "line": {"color": colors[v.workload], "dash": "dash" if v.workload.startswith("templated")
                                  else "solid"},
                         "customdata": [[round(s.effective, 1), round(s.top_share * 100, 1)] for s in v.load_stats],
                         "hovertemplate": "%{x}: %{y:.3f} (effective %{customdata[0]} experts, busiest %{customdata[1]}%)"
                                          "<extra>%{fullData.name}</extra>"})
        sfx = str(k)
        layout[f"yaxis{sfx}"].update(range=[0, 1.02], title={"text": "normalized entropy (1 = even)"})
        layout.update(legend={"orientation": "h", "yanchor": "top", "y": -0.28, "x": 0},
                      margin={"l": 60, "r": 20, "t": 60, "b": 110},
                      coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "share"}, "len": 0.8,
                                                                        "x": 1.02, "tickformat": ".0%"}},
                      title={"text": t(f"Expert load: {mc.display} at {mc.context} tokens")})
        rows = "; ".join(f"{v.workload}: mean normalized entropy {v.mean_normalized_entropy:.3f}, "
                         f"{v.mean_effective:.1f} effective experts of {v.n_experts}" for v in views)
        cap = ("How routing load spreads over each layer's experts (token-slots = tokens × top-k), experts sorted "
               "busiest first; entropy of each layer's load divided by its maximum log2(experts). Skewed routing "
               "(low entropy) touches fewer experts. " + h(rows) + ".")
        return self.figure(data, layout, cap, height=max(360, 22 * max(v.n_layers for v in views) + 160))

    def _category_table(self, mc) -> str:
        from devprof.analysis.coverage import coverage_at

        mixed = next((v for v in mc.routing if v.categories), None)
        if mixed is None:
            return ""
        tmpl = mc.routing_for(mc.templated) if mc.templated else None
        rows = []
        for c in mixed.categories:
            tv = "—" if tmpl is None else f"{coverage_at(tmpl.coverage_tokens, tmpl.coverage_distinct, c.n_tokens):.0f}"
            rows.append(f"<tr><td>{h(c.category)}</td><td>{c.n_tokens}</td><td>{c.distinct_pairs}</td><td>{tv}</td>"
                        f"<td>{h(' '.join(map(str, c.per_layer)))}</td></tr>")
        return (f'<table class="categories"><caption>Within the {h(mixed.workload)} prompt ({h(mixed.rep_label)}): '
                "the distinct (layer, expert) pairs its tokens of each category touch on their own (the categories' "
                "segments are interleaved in the prompt; from the routing trace and the prompt's segments), beside "
                "what the templated prompt touches in as many tokens.</caption><thead><tr><th>category</th>"
                "<th>tokens</th><th>distinct pairs</th><th>templated, as many tokens</th><th>per layer</th></tr>"
                f"</thead><tbody>{''.join(rows)}</tbody></table>")

    def _join_figure(self, mc) -> str:
        from devprof.analysis.join import ALIGNMENT_WORDS

        joins = mc.joins
        colors = self._workload_colors([j.workload for j in joins])
        titles = [f"{j.workload} · {j.rep_label} · cache {j.cache_state}" for j in joins] + \
            ["RssFile growth vs what routing predicts"]
        layout = _grid([t(x) for x in titles])
        data: list[dict] = []
        shapes: list[dict] = []
        mp = self.r.max_points
        for i, j in enumerate(joins, start=1):
            ax = _axes(i)
            first = i == 1
            x, y = downsample(j.t_s, [v - j.baseline_mib for v in j.file_mib], mp)
            data.append({"type": "scatter", "mode": "lines", **ax, "x": x, "y": y, "name": "RssFile − before prefill",
                         "legendgroup": "file", "showlegend": first, "line": {"color": C_FILE, "width": 2},
                         "hovertemplate": "%{y:.1f} MiB<extra>RssFile growth</extra>"})
            p0 = next(a for name, a, _ in j.spans if name == "prefill")
            what = "weights routing says are resident" if j.dense_mib is not None else "expert blocks touched"
            for al, (ts, mib) in j.curves.items():
                primary = al == j.alignment
                data.append({"type": "scatter", "mode": "lines", "line_shape": "hv", **ax, "x": [p0] + ts,
                             "y": [0.0] + mib, "name": t(f"{what} ({al} order)"), "legendgroup": f"pred-{al}",
                             "showlegend": first, "visible": True if primary else "legendonly",
                             "line": {"color": C_RSS if primary else "#868e96", "width": 2 if primary else 1.5,
                                      "dash": "dash" if primary else "dot", "shape": "hv"},
                             "hovertemplate": "%{y:.1f} MiB<extra>routing predicts (" + al + " order)</extra>"})
            xa, ya = ax["xaxis"], ax["yaxis"]
            for name, a, b in j.spans:
                shapes.append({"type": "rect", "xref": xa, "yref": f"{ya} domain", "x0": a, "x1": b, "y0": 0, "y1": 1,
                               "fillcolor": SPAN_COLORS.get(name, "#dee2e6"), "opacity": 0.22, "layer": "below",
                               "line": {"width": 0}})
            sfx = "" if i == 1 else str(i)
            layout[f"xaxis{sfx}"]["title"] = {"text": "s since the process started"}
            layout[f"yaxis{sfx}"]["title"] = {"text": "MiB"}
        k = len(joins) + 1
        for j in joins:
            data.append({"type": "scatter", "mode": "markers", **_axes(k), "x": j.join_predicted_mib,
                         "y": j.join_growth_mib, "name": t(f"{j.workload}: samples"),
                         "marker": {"color": colors[j.workload], "size": 5,
                                    "symbol": "circle-open" if j.workload.startswith("templated") else "circle"},
                         "hovertemplate": "routing %{x:.1f} MiB, RssFile +%{y:.1f} MiB<extra>%{fullData.name}</extra>"})
        top = max((j.predicted_mib or j.experts_mib for j in joins), default=0.0)
        data.append({"type": "scatter", "mode": "lines", **_axes(k), "x": [0, top], "y": [0, top],
                     "name": "residency = routing", "line": {"color": C_RSS, "dash": "dash", "width": 1}})
        sfx = str(k)
        layout[f"xaxis{sfx}"]["title"] = {"text": "routing predicts by then (MiB)"}
        layout[f"yaxis{sfx}"]["title"] = {"text": "RssFile growth (MiB)"}
        layout.update(shapes=shapes, title={"text": t(f"Routing joined with memory: {mc.display} at {mc.context} tokens")})
        approx = any(j.spans_approx for j in joins)
        src = {j.source for j in joins}
        cap = ("RssFile (file-backed resident pages: weights paged in) minus its value just before prefill, beside "
               "the bytes the routing must have paged in by then: each layer's non-expert weights as the layer is "
               "reached, the embedding/LM head at the first logits (end of prefill), and every expert block touched "
               "so far (sizes from the bundle's layout). <b>Approximation:</b> each (layer, expert) pair is placed in "
               "time at its first token, "
               + h(ALIGNMENT_WORDS[joins[0].alignment]) + " (dashed; the other alignment, "
               + h(ALIGNMENT_WORDS["tokens" if joins[0].alignment == "layers" else "layers"])
               + ", can be switched on in the legend); decode steps spread linearly over decode (orange). A cold "
               "page cache makes first touches wait for the disk, so RssFile can lag the line; the end points do not "
               "depend on the alignment."
               + (" Spans placed from the runtime's durations (no timestamps)." if approx else "")
               + (" Expert bytes from the stored coverage curve × block size (no per-token trace in the run folder)."
                  if "summary" in src else "")
               + " Right: each memory sample inside inference, RssFile growth against what routing predicts by then; "
               "on the dashed line residency follows routing exactly, above it readahead, large folios or libraries "
               "paged in on first use add to it. Cache state: " + h(", ".join(f"{j.workload} {j.cache_state}"
                                                                             for j in joins)) + ".")
        return self.figure(data, layout, cap, height=400)

    def _join_table(self, mc) -> str:
        rows = []
        for j in mc.joins:
            ratio = "—" if j.ratio is None else f"{j.ratio:.2f}×"
            rows.append(f"<tr><td>{h(j.workload)}</td><td>{h(j.rep_label)}</td><td>{h(j.cache_state)}</td>"
                        f"<td>{fmt(j.baseline_mib)}</td><td>{fmt(j.observed_mib)}</td><td>{fmt(j.dense_mib)}</td>"
                        f"<td>{fmt(j.experts_mib)} of {fmt(j.all_experts_mib)}</td>"
                        f"<td>{fmt(j.predicted_mib) if j.predicted_mib else '—'}</td><td><b>{ratio}</b></td>"
                        f"<td>{fmt(j.excess_mib)}</td><td>{fmt(j.calibration_mib)}</td>"
                        f"<td class=\"left wrap\">{h(j.verdict())}</td></tr>")
        return ("<div class=\"wide\"><table class=\"join\"><caption>RssFile growth = its peak during prefill and decode minus its value "
                "just before prefill; routing predicts = non-expert weights + the expert blocks touched; excess = growth "
                "− prediction; the dense model's excess = its RssFile growth beyond all its weights in the same run "
                "(file pages that are not weights: library code paged in on first use), the yardstick. MiB.</caption><thead><tr><th>workload</th><th>rep</th><th>cache</th>"
                "<th>RssFile before prefill</th><th>growth</th><th>non-expert weights</th><th>experts touched</th>"
                "<th>routing predicts</th><th>ratio</th><th>excess</th><th>dense model's excess</th><th>reading</th>"
                "</tr></thead><tbody>"
                + "".join(rows) + "</tbody></table></div>")

    def _projection_table(self, mc) -> str:
        from devprof import stats as st

        workloads = list(dict.fromkeys(p.workload for p in mc.projections))
        by = {(p.target, p.workload): p for p in mc.projections}
        caches = {v.workload: v.cache_state for v in mc.routing}
        reals = [w for w in workloads if w.startswith("real")]
        tmpl = mc.templated if mc.templated in workloads else None
        head = ["model", "all weights GiB", "non-routed GiB"] + [f"{w} GiB (cache {caches.get(w, '?')})"
                                                               for w in workloads]
        if tmpl and reals:
            head.append(f"templated understates {reals[0]}")
        rows = []
        for target in dict.fromkeys(p.target for p in mc.projections):
            first = next(p for p in mc.projections if p.target == target)
            cells = [h(first.display), f"{first.all_gib:.3f}", f"{first.dense_gib:.3f}"]
            for w in workloads:
                p = by.get((target, w))
                cells.append("—" if p is None else
                             f"<b>{p.resident_gib.median:.3f}</b> <span class=\"ci\">{p.coverage:.0%} of routed experts</span>")
            if tmpl and reals:
                a, b = by.get((target, tmpl)), by.get((target, reals[0]))
                if a and b:
                    ci = st.ratio_ci(a.values, b.values)
                    spread = f" ({'range ' if ci.degenerate else ''}{(1 - ci.high) * 100:.1f}–{(1 - ci.low) * 100:.1f}%)"
                    cells.append(f"{(1 - ci.estimate) * 100:.1f}%{spread}")
                else:
                    cells.append("—")
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return (f"<table class=\"projection\" id=\"projection-{h(mc.model)}-{mc.context}\"><caption>Projected INT4 "
                f"weight residency of the full-size models from {h(mc.display)}'s per-layer coverage at {mc.context} "
                "tokens (assumption below).</caption><thead><tr>" + "".join(f"<th>{h(x)}</th>" for x in head)
                + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")

    # ---- context sweep --------------------------------------------------------------------------
    def sweep(self) -> str:
        ctxs = sorted(self.rec.contexts())
        titles = ["decode (tok/s)", "time to first token (ms)", "peak memory (MiB)"]
        layout = _grid(titles)
        data: list[dict] = []
        for model in self.rec.models():
            for w in self.rec.workloads():
                rows = sorted((r for r in self.a.rows if r.model == model and r.workload == w and r.n),
                              key=lambda r: r.context)
                if len(rows) < 1:
                    continue
                for col, name in enumerate(("decode_tok_s", "ttft_ms", "peak_rss_mb"), start=1):
                    pts = [(r.context, *_err(r.metric(name)), r.n, "/".join(r.cache_states)) for r in rows
                           if r.metric(name) is not None]
                    if not pts:
                        continue
                    xs, ys, up, down, ns, caches = zip(*pts)
                    data.append({"type": "scatter", "mode": "lines+markers", **_axes(col), "x": list(xs),
                                 "y": list(ys), "error_y": _error(up, down), "name": t(f"{self.display[model]} · {w}"),
                                 "legendgroup": f"{model}|{w}", "showlegend": col == 1,
                                 "line": {"color": self.colors[model],
                                          "dash": "dash" if w.startswith("templated") else "solid"},
                                 "customdata": [[n, c] for n, c in zip(ns, caches)],
                                 "hovertemplate": "%{x} tokens: %{y:.2f} (n=%{customdata[0]}, cache %{customdata[1]})"
                                                  "<extra>%{fullData.name}</extra>"})
        for i in range(1, 4):
            sfx = "" if i == 1 else str(i)
            layout[f"xaxis{sfx}"].update(type="log", title={"text": "context (tokens)"}, tickvals=ctxs,
                                         ticktext=[str(c) for c in ctxs])
        layout.update(title={"text": "Context sweep: decode speed, TTFT and peak memory vs context"})
        cap = ("Median per context with 95% interval whiskers (order statistics); one line per model and workload (dashed: templated). "
               "Peak memory as the device reports it; page-cache state in the hover. Contexts: "
               + ", ".join(map(str, ctxs)) + ".")
        return self.figure(data, layout, cap)

    # ---- per repetition ---------------------------------------------------------------------------
    def _rep_figure(self) -> str:
        reps = [r for r in self.rec.repetitions if not r.warmup]
        if not reps:
            return ""
        order = {id(r): i for i, r in enumerate(reps, start=1)}
        titles = ["decode (tok/s)", "time to first token (ms)", "peak memory (MiB)"]
        layout = _grid(titles)
        data: list[dict] = []
        symbols = ["circle", "diamond", "square", "triangle-up", "x", "star"]
        wl = {w: symbols[i % len(symbols)] for i, w in enumerate(self.rec.workloads())}
        for model in self.rec.models():
            for w in self.rec.workloads():
                group = [r for r in reps if (r.model, r.workload) == (model, w)]
                if not group:
                    continue
                for col, name in enumerate(("decode_tok_s", "ttft_ms", "peak_rss_mb"), start=1):
                    pts = [(order[id(r)], stats.rep_value(r, name), rep_label(r), r.context, r.cache_state,
                            r.outcome.status) for r in group]
                    pts = [p for p in pts if p[1] is not None]
                    if not pts:
                        continue
                    xs, ys, labels, ctxs, caches, sts = zip(*pts)
                    data.append({"type": "scatter", "mode": "markers", **_axes(col), "x": list(xs), "y": list(ys),
                                 "name": t(f"{self.display[model]} · {w}"), "legendgroup": f"{model}|{w}",
                                 "showlegend": col == 1,
                                 "marker": {"color": self.colors[model], "symbol": wl[w], "size": 8},
                                 "customdata": [list(x) for x in zip(labels, ctxs, caches, sts)],
                                 "hovertemplate": "#%{x} %{customdata[0]} at %{customdata[1]} tokens: %{y:.2f} "
                                                  "(cache %{customdata[2]}, %{customdata[3]})"
                                                  "<extra>%{fullData.name}</extra>"})
        for i in range(1, 4):
            sfx = "" if i == 1 else str(i)
            layout[f"xaxis{sfx}"]["title"] = {"text": "measured repetition, in run order"}
        layout.update(title={"text": "Every measured repetition, in the order it ran"})
        return self.figure(data, layout, "One point per measured repetition (warm-ups left out), numbered in the "
                                         "order the session ran them: drift (heat, a busy machine) shows as a trend, "
                                         "an outlier as a lone point. Hover for the page-cache state.", height=380)


    # ---- thermal ----------------------------------------------------------------------------
    def thermal(self) -> str:
        reps = [r for r in self.rec.repetitions if r.thermal_before or r.thermal_after]
        if not reps:
            return "<p>No thermal readings were recorded on this device.</p>"
        zones = sorted({z for r in reps for z in (*r.thermal_before, *r.thermal_after)})
        head = "".join(f"<th>{h(z)} °C before → after</th>" for z in zones)
        rows = []
        for r in reps:
            cells = []
            for z in zones:
                b, a = r.thermal_before.get(z), r.thermal_after.get(z)
                delta = f" ({a - b:+.1f})" if a is not None and b is not None else ""
                cells.append(f"<td>{fmt(b)} → {fmt(a)}{delta}</td>")
            rows.append(f"<tr><td>{h(self.display.get(r.model, r.model))}</td><td>{h(r.workload)}</td>"
                        f"<td>{r.context}</td><td>{h(rep_label(r))}</td>{''.join(cells)}</tr>")
        return (f"<table class=\"thermal\"><thead><tr><th>model</th><th>workload</th><th>context</th><th>rep</th>"
                f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
                "<p class=\"note\">Readings just before and just after each repetition "
                "(thermal zones as the device names them).</p>")

    # ---- repetitions ------------------------------------------------------------------------
    def repetitions(self) -> str:
        if not self.rec.repetitions:
            return "<p>No repetitions were recorded.</p>"
        figure = self._rep_figure()
        head = ["#", "model", "workload", "context", "rep", "status", "cache", "exit", "prefill tok/s",
                "decode tok/s", "TTFT ms", "peak MiB", "file MiB", "anon MiB", "distinct pairs", "wall s", "note"]
        rows = []
        for i, r in enumerate(self.rec.repetitions, start=1):
            res, o = r.result, r.outcome
            peak = stats.peak_rss_kb(r)
            note = o.note or ("" if o.status == "ok" else (o.stderr.strip().splitlines() or [""])[-1][:200])
            cls = "warmup" if r.warmup else ("bad" if o.status != "ok" else "")
            cells = [str(i), h(self.display.get(r.model, r.model)), h(r.workload), str(r.context), h(rep_label(r)),
                     h(o.status), h(r.cache_state), h(str(o.exit_code)) if o.exit_code is not None else "—",
                     fmt(res.prefill_tok_s if res else None), fmt(res.decode_tok_s if res else None, 2),
                     fmt(res.ttft_ms if res else None, 0), fmt(peak / 1024 if peak else None),
                     fmt(r.peak_file_kb / 1024 if r.peak_file_kb else None),
                     fmt(r.peak_anon_kb / 1024 if r.peak_anon_kb else None),
                     str(r.routing.distinct_pairs) if r.routing else "—", fmt(o.wall_ms / 1000, 2),
                     h(note)]
            rows.append(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        return figure + (f"<div class=\"wide\"><table class=\"reps\" id=\"repetitions-table\"><thead><tr>{''.join(f'<th>{h(x)}</th>' for x in head)}"
                f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
                "<p class=\"note\">Warm-ups (grey) and failed repetitions (red) never enter the statistics. "
                "Peak = the device's reported peak; file/anon = the largest sample.</p>")

    # ---- sources ----------------------------------------------------------------------------
    def sources(self) -> str:
        src = self.meta.settings.get("prompt_sources") or self.meta.settings.get("sources")
        if not src:
            return "<p>No prompt sources were recorded in this run's settings.</p>"
        if isinstance(src, dict):
            src = [dict(v, workload=k) if isinstance(v, dict) else {"title": v, "workload": k} for k, v in src.items()]
        rows = []
        for s in src:
            if not isinstance(s, dict):
                rows.append(f"<tr><td colspan=\"6\">{h(str(s))}</td></tr>")
                continue
            title = s.get("title") or s.get("name") or s.get("id") or ""
            where = s.get("url") or s.get("source") or s.get("origin") or ""
            lic = s.get("licence") or s.get("license") or "—"
            present = {True: "yes", False: "missing"}.get(s.get("exists"), "")
            rows.append(f"<tr><td>{h(str(title))}</td><td>{h(str(s.get('category') or s.get('workload') or ''))}</td>"
                        f"<td>{h(str(lic))}</td><td>{h(str(s.get('copyright') or ''))}</td>"
                        f"<td><code>{h(str(where))}</code></td><td>{h(present)}</td></tr>")
        return ("<table class=\"sources\"><thead><tr><th>text</th><th>category</th><th>licence</th><th>copyright</th>"
                "<th>source</th><th>on disk</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
                "<p class=\"note\">Real-prompt workloads draw on these texts; templated prompts repeat a template.</p>")


def _plain(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "—"
    return json.dumps(v, ensure_ascii=False, default=str)


def _kv(rows: list[tuple[str, Any]]) -> str:
    return "<table class=\"kv\"><tbody>" + "".join(
        f"<tr><th>{h(str(k))}</th><td>{h(str(v))}</td></tr>" for k, v in rows) + "</tbody></table>"


_CSS = """
:root { --fg:#212529; --muted:#6c757d; --line:#dee2e6; --bg2:#f8f9fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1880px; padding: 0 20px 40px; }
p, li { max-width: 1200px; }
.wide { overflow-x: auto; max-width: 100%; }
table:not(.wide > table) { display: block; overflow-x: auto; max-width: 100%; }
header { padding: 18px 0 6px; border-bottom: 1px solid var(--line); }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
nav { position: sticky; top: 0; background: white; padding: 8px 0; border-bottom: 1px solid var(--line); z-index: 5; }
nav a { color: #1864ab; text-decoration: none; }
.meta { color: var(--muted); margin: 0; }
.status { font-weight: 600; padding: 1px 6px; border-radius: 4px; }
.status.ok { background: #d3f9d8; color: #2b8a3e; } .status.warn { background: #fff3bf; color: #e67700; }
.status.bad { background: #ffe3e3; color: #c92a2a; } .status.info { background: #d0ebff; color: #1864ab; }
.banner { padding: 8px 12px; border-radius: 6px; font-weight: 600; }
.headline { font-size: 1.08em; overflow-wrap: anywhere; }
.banner.warn { background: #fff3bf; border: 1px solid #ffd43b; } .banner.bad { background: #ffe3e3; border: 1px solid #ff8787; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: right; vertical-align: top;
         white-space: nowrap; }
table.kv td, table.reps td:last-child, table.sources td { white-space: normal; }
th { background: var(--bg2); font-weight: 600; }
td:nth-child(-n+3), th:nth-child(-n+3), td.left, table.reps td:nth-child(-n+4), table.reps th:nth-child(-n+4), table.kv td, table.kv th, table.sources td, table.reps td:last-child { text-align: left; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 12px; padding-top: 4px; }
.v { display: block; font-weight: 600; } .ci { display: block; color: var(--muted); font-size: 11px; white-space: nowrap; }
.na { color: #adb5bd; } .ok { color: #2b8a3e; font-weight: 600; } .bad, tr.bad td { color: #c92a2a; } tr.warmup td { color: #868e96; }
tr.short td { background: #fff9db; }
.verdicts li { margin: 2px 0; } .headline li { font-size: 15px; font-weight: 600; }
.verdicts li.na { color: var(--muted); font-weight: normal; } .verdicts li.ok { color: inherit; font-weight: normal; }
.cache { color: #0b7285; font-size: 11px; white-space: nowrap; } .cv-warnings li { color: #e67700; }
.warnline { color: #e67700; font-weight: 600; } td.wrap { white-space: normal; min-width: 260px; }
.cols { display: flex; gap: 32px; flex-wrap: wrap; } .cols > div { flex: 1 1 420px; }
figure.plot { margin: 14px 0 22px; } figcaption { color: var(--muted); font-size: 12px; max-width: 1100px; }
.third { color: #e67700; font-size: 11px; } .note { color: var(--muted); font-size: 12px; }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); padding-top: 8px; }
code { font-size: 12px; }
"""


def page(title: str, n_figures: int, body: str, data_id: str, data) -> str:
    """A whole self-contained HTML document: the CSS, plotly.js embedded once (the file works offline),
    ``body`` (HTML), a footer, and ``data`` as a JSON script element with id ``data_id``."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="devprof {h(__version__)}">
<meta name="devprof-figures" content="{n_figures}">
<title>{h(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
{body}
<footer>devprof {h(__version__)} · written {h(now)} · plotly.js {h(get_plotlyjs_version())} embedded:
this file needs no network.</footer>
<script type="application/json" id="{data_id}">{_json_script(data)}</script>
</body>
</html>
"""
