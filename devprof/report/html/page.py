"""The page writer of every HTML output: the styles shared by all figures, the escaping helpers, and
``page()``, one self-contained document (CSS, plotly.js embedded once, a JSON data script)."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from typing import Any

from plotly.offline import get_plotlyjs, get_plotlyjs_version

from devprof import __version__

GIB = 1024**3

#: series colours, shared by every memory figure
C_RSS, C_FILE, C_ANON, C_HWM = "#2b2d42", "#e08e0b", "#1f78b4", "#8d99ae"
SPAN_COLORS = {"load": "#adb5bd", "prefill": "#74c0fc", "decode": "#ffc078"}
MODEL_COLORS = ["#d9480f", "#1864ab", "#2b8a3e", "#862e9c", "#c2255c", "#5c940d", "#0b7285", "#e67700"]

# Figures are plain dicts handed to plotly.js (plotly.graph_objects validation costs seconds).
PLOTLY_AXIS = {"gridcolor": "#e9ecef", "linecolor": "#adb5bd", "zeroline": False, "ticks": "outside", "automargin": True}
PLOTLY_TEMPLATE = {"layout": {
    "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#212529"},
    "paper_bgcolor": "white", "plot_bgcolor": "white", "colorway": MODEL_COLORS,
    "xaxis": PLOTLY_AXIS, "yaxis": PLOTLY_AXIS,
    "legend": {"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
    "margin": {"l": 60, "r": 20, "t": 60, "b": 80}, "hoverlabel": {"namelength": -1},
    "title": {"x": 0.01, "font": {"size": 15}},
}}
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}

h = html.escape


def t(text: Any) -> str:
    """Text for plotly labels: plotly reads a small HTML subset, so escape like HTML."""
    return html.escape(str(text), quote=False)


def json_script(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def plain(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return "—"
    return json.dumps(v, ensure_ascii=False, default=str)


def kv_table(rows: list[tuple[str, Any]]) -> str:
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
<script type="application/json" id="{data_id}">{json_script(data)}</script>
</body>
</html>
"""

