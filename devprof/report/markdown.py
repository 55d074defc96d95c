"""`devprof export --format md`: a run as Markdown: its setup, the summary and every repetition."""

from __future__ import annotations

from typing import Any

from devprof import stats
from devprof.report.base import Renderer, rep_label, when
from devprof.report.rows import check_exportable, repetition_rows, summary_rows
from devprof.results import RunRecord


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, no line breaks, no HTML."""
    s = "—" if text is None or text == "" else str(text)
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(s.split())


def _md_table(head: list[str], rows: list[list[Any]]) -> list[str]:
    right = ["---:" if h not in ("model", "workload", "status", "cache", "rep") else "---" for h in head]
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


class MarkdownRenderer(Renderer):
    name = "md"
    output_file_extension = "md"

    def render(self, record: RunRecord) -> str:
        return to_markdown(record)
