"""`devprof show`: the figures of a run as rich tables in the terminal.

    Run 20260921-140507-beef · complete · 2026-09-21 14:05 UTC · runtime reference
    Device: Galaxy S25 (SM-S931B) · android 15 · serial R5CY20ABCDE · peak memory = VmHWM
    ┌ summary table: per (model, workload, context) median ±CV of prefill/decode tok/s, TTFT,
    │ peak RSS (file/anon), distinct experts, n, cache state
    ┌ MoE ÷ dense: speedup / memory ratio with the 95% CI, and the verdicts in words
    Report: reports/20260921-140507-beef.html
"""

from __future__ import annotations

import io
from pathlib import Path

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from devprof import stats
from devprof.report.base import Analysis, Renderer, adaptive_lines, analyse, fmt, fmt_cv, reps_text, when
from devprof.results import RunRecord

_SPEED = ("prefill_tok_s", "decode_tok_s", "ttft_ms")
_MEMORY = ("peak_rss_mb", "peak_rss_file_mb", "peak_rss_anon_mb", "distinct_experts", "cache")
_DECIMALS = {"decode_tok_s": 2, "ttft_ms": 0, "distinct_experts": 0}
_HEADLINE = ("prefill_tok_s", "decode_tok_s", "peak_rss_mb")  # verdicts worth a line in the terminal
_STATUS_STYLE = {"complete": "green", "running": "cyan", "interrupted": "yellow"}


def _cell(m: stats.Metric | None, decimals: int, stacked: bool = False) -> Text:
    if m is None:
        return Text("—", style="dim")
    t = Text(fmt(m.median, decimals))
    if m.n >= 2 and m.cv is not None:
        t.append(("\n" if stacked else " ") + fmt_cv(m.cv), style="dim")
    return t


class TerminalRenderer(Renderer):
    """Rich tables for a terminal. ``print(record)`` writes to ``console``; ``render`` returns text."""

    name = "terminal"
    output_file_extension = "txt"

    def __init__(self, console: Console | None = None, width: int | None = None, color: bool = False,
                 report_path: Path | str | None = None) -> None:
        self.console = console
        self.width = width
        self.color = color
        self.report_path = report_path

    # ---- output -------------------------------------------------------------------------
    def print(self, record: RunRecord | Analysis) -> None:
        console = self.console or Console()
        for r in self.renderables(record, width=console.width):
            console.print(r)

    def render(self, record: RunRecord | Analysis) -> str:
        buf = io.StringIO()
        width = self.width or 140
        console = Console(file=buf, width=width, color_system="truecolor" if self.color else None,
                          force_terminal=self.color, highlight=False, soft_wrap=False, emoji=False)
        for r in self.renderables(record, width=width):
            console.print(r)
        return buf.getvalue()

    # ---- content ------------------------------------------------------------------------
    def renderables(self, record: RunRecord | Analysis, width: int = 140) -> list[RenderableType]:
        """What ``print`` shows; below ``WIDE`` columns the summary splits into speed and memory tables."""
        a = record if isinstance(record, Analysis) else analyse(record)
        m = a.record.meta
        out: list[RenderableType] = [self._header(a)]
        if a.problem:
            out.append(Text(a.problem, style="bold yellow" if m.status in ("running", "interrupted") else "bold red"))
        if a.noise is not None and a.noise.noisy:
            out.append(Text(a.noise.line, style="bold yellow"))
        if a.headline:
            out.append(Text(a.headline, style="bold"))
        if a.rows:
            groups = [_SPEED + _MEMORY] if width >= self.WIDE else [_SPEED, _MEMORY]
            out.extend(self._summary(a, cols, stacked=len(groups) > 1) for cols in groups)
        else:
            out.append(Text("No repetitions were recorded.", style="dim"))
        itl = [r for r in a.rows if r.itl is not None]
        if itl:
            out.append(self._itl(itl))
        from devprof.report.soak_figures import energy_lines, soak_lines

        out.extend(Text(line) for line in energy_lines(a.record) + soak_lines(a.record))
        if a.ratios:
            out.append(self._ratios(a))
        found = [r for r in a.ratios if r.finding and r.metric in _HEADLINE]
        headline = [r.verdict for r in sorted(found, key=lambda r: r.workload.startswith("templated"))]
        if headline:
            out.append(Group(*[Text(f"• {v}") for v in headline]))
        elif a.ratios:
            out.append(Text("No difference in prefill, decode or peak memory is clear at 95% confidence "
                            f"with these repetitions (n = {min(r.n_subject for r in a.ratios)}).", style="dim"))
        if self.report_path:
            out.append(Text.assemble(("Report: ", "bold"), str(self.report_path)))
        return out

    WIDE = 150

    def _header(self, a: Analysis) -> RenderableType:
        m = a.record.meta
        d = m.device
        line1 = Text.assemble(("Run ", "bold"), (m.run_id, "bold"), " · ",
                              (m.status, _STATUS_STYLE.get(m.status, "red")), " · ", when(m.created),
                              " · runtime ", m.runtime)
        dev = [d.name or d.serial, d.kind + (f" {d.os_version}" if d.os_version else "")]
        if d.model and d.model not in (d.name or ""):
            dev.append(d.model)
        dev.append(f"serial {d.serial}")
        metrics = sorted({r.memory_metric for r in a.rows if r.n}) or [d.memory_metric]
        dev.append(f"peak memory = {'/'.join(metrics)}")
        line2 = Text.assemble(("Device: ", "bold"), " · ".join(dev))
        models = " vs ".join(stats.model_info(x)[0] for x in m.models)
        line3 = Text.assemble(("Models: ", "bold"), models, " · workloads ", ", ".join(m.workloads),
                              " · context ", ", ".join(map(str, m.contexts)), f" · {reps_text(m)} + {m.warmup} warm-up",
                              f" · {m.new_tokens} new tokens")
        lines = [line1, line2, line3]
        lines += [Text("Repetitions: " + x, style="dim") for x in adaptive_lines(m)]
        from devprof.report.soak_figures import setting_text

        energy = setting_text(a.record, brief=True)
        if energy is not None:
            lines.append(Text.assemble(("Energy setting: ", "bold"), energy))
        return Group(*lines)

    def _summary(self, a: Analysis, cols: tuple[str, ...], stacked: bool = False) -> Table:
        metric = "/".join(sorted({r.memory_metric for r in a.rows if r.n})) or a.record.meta.device.memory_metric
        what = "speed" if cols == _SPEED else ("memory" if cols == _MEMORY else "results")
        title = f"{what.capitalize()}: median ±CV over n measured repetitions"
        if cols != _SPEED:
            title += f"; peak = {metric}, file/anon = largest sample"
        t = Table(title=title, box=box.SIMPLE_HEAD,
                  title_justify="left", pad_edge=False)
        t.add_column("model", no_wrap=True)
        t.add_column("workload", no_wrap=True)
        one_ctx = len({r.context for r in a.rows}) == 1
        if one_ctx:  # say the context once, in the title: room for the figures on narrow terminals
            t.title = f"{t.title} (context {a.rows[0].context if a.rows else '?'})"
        else:
            t.add_column("ctx", justify="right", no_wrap=True)
        show_n = not (stacked and cols != _SPEED)  # the speed table above already says n
        if show_n:
            t.add_column("n", justify="right")
        states = {", ".join(r.cache_states) for r in a.rows if r.n}
        if "cache" in cols and len(states) <= 1:  # one state for all: say it once, in the title
            cols = tuple(c for c in cols if c != "cache")
            t.title = f"{t.title}; page cache: {states.pop() if states else 'unknown'}"
        heads = {"prefill_tok_s": "prefill tok/s", "decode_tok_s": "decode tok/s", "ttft_ms": "TTFT ms",
                 "peak_rss_mb": f"peak {metric} MiB", "peak_rss_file_mb": "file MiB", "peak_rss_anon_mb": "anon MiB",
                 "distinct_experts": "distinct experts", "cache": "cache"}
        if stacked:  # narrow terminal: two-line headers and cells, nothing cut
            heads.update(peak_rss_mb="peak MiB")
            heads = {k: v.replace(" ", "\n", 1) for k, v in heads.items()}
        for c in cols:  # the cache states may wrap; the figures never do
            t.add_column(heads[c], justify="left" if c == "cache" else "right", no_wrap=stacked and c != "cache",
                         min_width=4 if c == "cache" else None)
        t.title = escape(t.title)  # names from the store are shown literally, never read as rich markup
        for r in a.rows:
            n = Text(str(r.n), style="red" if r.n < a.record.meta.reps else "")
            if r.n_failed:
                n.append(f" ({r.n_failed} failed)", style="red")
            cells: list[Text] = []
            for c in cols:
                if c == "cache":
                    cells.append(Text("mixed" if len(r.cache_states) > 1 else (", ".join(r.cache_states) or "—")))
                elif c in ("peak_rss_file_mb", "peak_rss_anon_mb"):
                    m = r.metric(c)
                    cells.append(Text(fmt(m.median if m else None, 1)))
                else:
                    cells.append(_cell(r.metric(c), _DECIMALS.get(c, 1), stacked))
            t.add_row(Text(r.display), Text(r.workload), *([] if one_ctx else [str(r.context)]),
                      *([n] if show_n else []), *cells)
        return t

    def _itl(self, rows: list) -> Table:
        t = Table(title="Inter-token latency, ms (every decode step of the measured repetitions); TTFT apart",
                  box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
        for col, j in (("model", "left"), ("workload", "left"), ("ctx", "right"), ("p50", "right"),
                       ("p90", "right"), ("p99", "right"), ("steps", "right"), ("TTFT", "right")):
            t.add_column(col, justify=j, no_wrap=col in ("model", "workload"))
        for r in rows:
            tt = r.ttft_ms
            t.add_row(Text(r.display), Text(r.workload), str(r.context), f"{r.itl.p50:.1f}", f"{r.itl.p90:.1f}",
                      f"{r.itl.p99:.1f}", str(r.itl.n), fmt(tt.median if tt else None, 0))
        return t

    def _ratios(self, a: Analysis) -> Table:
        s, b = a.ratios[0].subject, a.ratios[0].baseline
        t = Table(title=escape(f"{stats.model_info(s)[0]} ÷ {stats.model_info(b)[0]}"), box=box.SIMPLE_HEAD,
                  title_justify="left", pad_edge=False,
                  caption=f"geometric mean of the interleaved pairs' ratios; 95% t-interval on their logs "
                          f"(n < {stats.MIN_N}: the range, never clear); clear = the CI excludes 1.00",
                  caption_justify="left")
        for col, j in (("workload", "left"), ("ctx", "right"), ("metric", "left"), ("ratio", "right"),
                       ("95% CI", "right"), ("", "left")):
            t.add_column(col, justify=j)
        for r in a.ratios:
            ci = r.ci_text()
            clear = Text("clear", style="green") if r.verdict else Text("not clear", style="dim")
            t.add_row(Text(r.workload), str(r.context), stats.ratio_name(r.metric), f"{r.ratio:.2f}×", ci, clear)
        return t
