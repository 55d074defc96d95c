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
7. Thermal: before/after readings per repetition (when any were recorded); then Energy (battery
   J/token, or why not) and Soak (tok/s, heat and clock over time), from ``report/soak_figures.py``;
8. Repetitions: every repetition, warm-ups and failures included;
9. Prompt sources and licences (from ``meta.settings["prompt_sources"]``);
10. the JSON of `devprof show --json` in a ``<script type="application/json" id="devprof-data">``.

Every text that comes from a prompt, a run or a device is escaped. Timelines are reduced to at
most ``max_points`` points per trace, keeping each bucket's minimum and maximum so peaks survive.
"""

from __future__ import annotations

from typing import Any

import plotly.io as pio

from devprof import stats
from devprof.report.base import (  # noqa: F401 (phase_spans* and representative are re-exported)
    Analysis, Renderer, analyse, phase_spans, phase_spans_from_durations, representative,
)
from devprof.report.html.compare import CompareSections
from devprof.report.html.figures import FigureSections
from devprof.report.html.page import MODEL_COLORS, PLOTLY_CONFIG, PLOTLY_TEMPLATE, h, page
from devprof.report.html.plot import downsample  # noqa: F401 (re-exported)
from devprof.report.html.tables import TableSections
from devprof.report import soak_figures
from devprof.report.jsonout import JSONRenderer
from devprof.results import RunRecord


# ---- the renderer ------------------------------------------------------------------------------
class HTMLRenderer(Renderer):
    """One self-contained HTML file per run."""

    name = "html"
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

    name = "compare-html"

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


class _Page(TableSections, FigureSections, CompareSections):
    """One run's page: the sections of its mixins, each figure numbered as it is added."""

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
        layout = {"template": PLOTLY_TEMPLATE, **layout, "height": height or self.r.plot_height}
        div = pio.to_html({"data": data, "layout": layout}, include_plotlyjs=False, full_html=False,
                          div_id=f"fig-{self.n_figures}", config=PLOTLY_CONFIG, default_width="100%", validate=False)
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        return f'<figure class="plot">{div}{cap}</figure>'
