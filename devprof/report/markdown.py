"""`devprof export --format md`: a run as Markdown: its setup, the summary and every repetition."""

from __future__ import annotations

from typing import Any

from devprof import stats
from devprof.memory import PEAK_RULE
from devprof.report import memory_rows
from devprof.report.base import Renderer, rep_label, when
from devprof.report.rows import check_exportable, repetition_rows, summary_rows
from devprof.results import RunRecord


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, no line breaks, no HTML."""
    s = "—" if text is None or text == "" else str(text)
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(s.split())


def _md_table(head: list[str], rows: list[list[Any]]) -> list[str]:
    right = ["---:" if h not in ("model", "workload", "status", "cache", "rep", "peak won") else "---" for h in head]
    out = ["| " + " | ".join(_md(h) for h in head) + " |", "| " + " | ".join(right) + " |"]
    out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return out


def to_markdown(record: RunRecord) -> str:
    check_exportable(record)
    m = record.meta
    d = m.device
    lines = [f"# devprof run {_md(m.run_id)}", "",
             f"- device: {_md(d.name or d.serial)} ({_md(d.kind)} {_md(d.os_version)}), peak memory = {_md(d.memory_metric)}",
             f"- {_md(when(m.created))} · status {_md(m.status)} · runtime {_md(m.runtime)}",
             f"- models: {_md(', '.join(m.models))} · workloads: {_md(', '.join(m.workloads))} · contexts: "
             f"{_md(', '.join(map(str, m.contexts)))} · {m.reps} reps + {m.warmup} warm-up · {m.new_tokens} new tokens",
             "", "## Summary", "",
             "Median over the measured repetitions, [95% bootstrap CI of the median], ±CV. Memory in MiB.", ""]
    head = ["model", "workload", "context", "n", "cache"] + [f"{stats.METRIC_INFO[x].label} {stats.METRIC_INFO[x].unit}"
                                                             for x in stats.METRICS]
    rows = []
    for s in summary_rows(record):
        cells = [s["model"], s["workload"], s["context"], s["n"], s["cache_state"]]
        for name in stats.METRICS:
            v = s[name]
            if v is None:
                cells.append("—")
                continue
            nd = 0 if name == "distinct_experts" else 2
            cv = s[f"{name}_cv"]
            cells.append(f"{v:.{nd}f} [{s[f'{name}_ci_low']:.{nd}f}–{s[f'{name}_ci_high']:.{nd}f}]"
                         + (f" ±{cv * 100:.1f}%" if cv is not None else ""))
        rows.append(cells)
    lines += _md_table(head, rows)
    lines += _memory_table(record)
    lines += ["", "## Repetitions", ""]
    head = ["model", "workload", "context", "rep", "status", "cache"] + [
        f"{stats.METRIC_INFO[x].label} {stats.METRIC_INFO[x].unit}" for x in stats.METRICS] + ["wall s"]
    rows = []
    for rep, r in zip(record.repetitions, repetition_rows(record)):
        cells = [r["model"], r["workload"], r["context"], rep_label(rep), r["status"], r["cache_state"]]
        for name in stats.METRICS:
            v = r[name]
            cells.append("—" if v is None else (f"{v:.0f}" if name == "distinct_experts" else f"{v:.2f}"))
        cells.append(r["wall_s"])
        rows.append(cells)
    lines += _md_table(head, rows)
    return "\n".join(lines) + "\n"


def _memory_table(record: RunRecord) -> list[str]:
    """"## Memory": per cell the swap, PSS, faults, the peak's parts and the device's headroom (as the
    HTML report's headroom table); nothing for a run that recorded none of them."""
    cells = memory_rows.result_fields(record)
    if not memory_rows.any_recorded(cells):
        return []
    head = ["model", "workload", "context", "n", "peak won", "VmHWM MiB", "RSS+swap MiB", "swap MiB", "PSS MiB",
            "major faults", "minor faults", "MemAvailable before MiB", "peak ÷ available", "headroom MiB",
            "MemAvailable at peak MiB", "SwapFree at peak MiB"]
    rows = []
    for (model, workload, context), cell in cells.items():
        met, v = cell["metrics"], cell["values"]
        share = v["peak_share"]
        rows.append([model, workload, context, cell["n"], memory_rows.won_text(v["peak_won"], cell["n"]),
                     _num(v["peak_vmhwm_mb"]), _num(v["peak_rss_swap_mb"]),
                     *(_num(met[x].median if met[x] else None, 0 if x.endswith("faults") else 1)
                       for x in memory_rows.MEMORY_METRICS),
                     _num(v["mem_available_before_mb"]), None if share is None else f"{share * 100:.1f}%",
                     _num(v["headroom_mb"]), _num(v["mem_available_at_peak_mb"]), _num(v["swap_free_at_peak_mb"])])
    return ["", "## Memory", "",
            "Medians over the measured repetitions, in MiB; peak won: which part of the device's peak was larger "
            f"(on Android {PEAK_RULE}) in how many repetitions. peak ÷ available is the largest and headroom "
            "(MemAvailable before the run − peak), MemAvailable and SwapFree at the peak the smallest of any "
            "repetition.", "", *_md_table(head, rows)]


def _num(v: float | None, nd: int = 1) -> str | None:
    return None if v is None else f"{v:,.{nd}f}"


class MarkdownRenderer(Renderer):
    name = "md"
    output_file_extension = "md"

    def render(self, record: RunRecord) -> str:
        return to_markdown(record)
