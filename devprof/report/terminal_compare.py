"""Rich renderables for `devprof compare` and `devprof diff` (the terminal view; it only formats).

Every text from a run (model, workload, device names) goes into ``Text`` objects, never into rich
markup, so it is shown literally.
"""

from __future__ import annotations

import io

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from devprof import stats
from devprof.analysis.compare import JOIN_NOTE, CompareReport, ModelCompare, workload_words
from devprof.analysis.coverage import coverage_at
from devprof.analysis.diff import DiffReport
from devprof.report.base import Renderer, fmt, fmt_cv, when

_LABEL = {"peak_rss_mb": "peak {metric} MiB", "peak_rss_file_mb": "peak RssFile MiB",
          "peak_rss_anon_mb": "peak RssAnon MiB", "distinct_experts": "experts (pairs)"}


def to_text(renderables: list[RenderableType], width: int = 140) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False,
                      soft_wrap=False, emoji=False)
    for r in renderables:
        console.print(r)
    return buf.getvalue()


def _metric_text(m: stats.Metric | None, decimals: int, cache: list[str] | None = None) -> Text:
    if m is None:
        return Text("—", style="dim")
    t = Text(fmt(m.median, decimals))
    if m.n >= 2 and m.cv is not None:
        t.append(f" {fmt_cv(m.cv)}", style="dim")
    if cache is not None:
        t.append(f" ({'/'.join(cache) or '?'})", style="cyan")
    return t


# ---- compare -------------------------------------------------------------------------------------
def compare_renderables(rep: CompareReport, width: int = 140) -> list[RenderableType]:
    """``width``: the terminal's; below 90 columns the routing table leaves out its first milestone."""
    m = rep.record.meta
    d = m.device
    out: list[RenderableType] = [Text.assemble(
        ("Templated vs real prompts · run ", "bold"), (m.run_id, "bold"), f" · {when(m.created)} · ",
        f"{d.name or d.serial} ({d.kind}) · runtime {m.runtime} · {m.status}")]
    from devprof.interference import verdict as noise_verdict

    noise = noise_verdict(rep.record)
    if noise.noisy:
        out.append(Text(noise.line, style="bold yellow"))
    for msg in rep.messages:
        out.append(Text(msg, style="yellow"))
    for mc in rep.models:
        out.extend(_model(rep, mc, width))
    if rep.warnings:
        out.append(Group(*[Text(f"! {w}", style="yellow") for w in rep.warnings]))
    if any(mc.projections for mc in rep.models):
        out.append(Text(rep.assumption, style="dim"))
    if any(mc.joins for mc in rep.models):
        out.append(Text(JOIN_NOTE, style="dim"))
    return out


def _model(rep: CompareReport, mc: ModelCompare, width: int = 140) -> list[RenderableType]:
    out: list[RenderableType] = [Text(f"\n{mc.display} at {mc.context} tokens of context", style="bold underline")]
    if mc.pairs:
        out.extend(_memory_tables(rep, mc))
        for p in mc.pairs:
            s = p.sentence("peak_rss_mb")
            clear = p.deltas["peak_rss_mb"].clear
            out.append(Text(("→ " if clear else "· ") + s[0].upper() + s[1:] + ".",
                            style="bold" if clear and p is mc.primary else ""))
            f = p.deltas.get("peak_rss_file_mb")
            if f is not None and f.ratio is not None:
                s2 = p.sentence("peak_rss_file_mb")
                out.append(Text("· " + s2[0].upper() + s2[1:] + ".", style="" if f.clear else "dim"))
    elif mc.templated is None:
        out.append(Text("No templated workload in this run: nothing to hold the real prompts against.", style="dim"))
    if mc.routing:
        out.extend(_routing(mc, width))
    if mc.joins:
        out.extend(_join(mc))
    if mc.projections:
        out.append(_projection_table(mc))
    for n in mc.notes:
        out.append(Text(n, style="dim"))
    return out


def _memory_tables(rep: CompareReport, mc: ModelCompare) -> list[RenderableType]:
    metric = "/".join(sorted({p.memory_metric for p in mc.pairs}))
    states = {s for p in mc.pairs for s in (*p.cache_templated, *p.cache_real)}
    one_state = len(states) <= 1 and all(len(p.cache_templated) <= 1 and len(p.cache_real) <= 1 for p in mc.pairs)
    out: list[RenderableType] = []
    for p in mc.pairs:
        n = min((d.n for d in p.deltas.values() if d.ratio is not None), default=0)
        cache = f"page cache {states.pop() if states else 'unknown'} on both sides" if one_state else \
            "page-cache state in brackets"
        t = Table(title=escape(f"Memory, templated vs {p.real}: median ±CV, n={n}; {cache}"), box=box.SIMPLE_HEAD,
                  title_justify="left", pad_edge=False)
        for col, j in (("", "left"), ("templated", "right"), (p.real, "right"), ("understated", "right"),
                       (f"{rep.level:.0%} CI", "right"), ("clear", "left")):
            t.add_column(col, justify=j)
        for name, d in p.deltas.items():
            if d.templated is None and d.real is None:
                continue
            nd = 0 if name == "distinct_experts" else 1
            show = name != "distinct_experts" and not one_state
            pct, ci = d.pct_text(), d.ci_text()
            clear = Text("yes", style="green") if d.clear else Text("no", style="dim")
            t.add_row(Text(_LABEL[name].format(metric=metric)),
                      _metric_text(d.templated, nd, p.cache_templated if show else None),
                      _metric_text(d.real, nd, p.cache_real if show else None), pct, ci, clear)
        out.append(t)
    out.append(Text("understated = 1 − templated ÷ real (ratio of the geometric means), with Welch's t-interval on the "
                    f"logs; clear = the CI excludes 0.0% as printed (below n = {stats.MIN_N}: the range, never clear). Peak = the device's reported peak; RssFile/RssAnon = the largest "
                    "sample.", style="dim"))
    return out


def _milestones(n: int) -> list[int]:
    pts, x = [], 16
    while x < n:
        pts.append(x)
        x *= 4
    return pts + [n]


def _routing(mc: ModelCompare, width: int = 140) -> list[RenderableType]:
    n_max = max(v.n_tokens for v in mc.routing)
    miles = _milestones(n_max)
    if width < 90 and len(miles) > 3:  # room for every other column (and its header) at 80 columns
        miles = miles[1:]
    t = Table(title="Routing: distinct (layer, expert) pairs after n tokens, and how even the load is",
              box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    t.add_column("workload")
    for x in miles:
        t.add_column(f"@{x}", justify="right")
    t.add_column("of", justify="right")
    t.add_column("entropy", justify="right")
    t.add_column("effective", justify="right")
    t.add_column("top", justify="right")
    for v in mc.routing:
        cells = []
        for x in miles:
            cells.append("—" if x > v.n_tokens else f"{coverage_at(v.coverage_tokens, v.coverage_distinct, x):.0f}")
        top = max((s.top_share for s in v.load_stats), default=0.0)
        t.add_row(Text(v.workload), *cells, str(v.total_pairs), f"{v.mean_normalized_entropy:.3f}",
                  f"{v.mean_effective:.1f}", f"{top:.1%}")
    out: list[RenderableType] = [t]
    lines = [Text.assemble(("Per layer ", "bold"), f"(of {mc.routing[0].n_experts} experts): ")]
    for v in mc.routing:
        lines.append(Text(f"  {v.workload} ({v.rep_label}, cache {v.cache_state}): {' '.join(map(str, v.per_layer))}"))
    out.append(Group(*lines))
    out.append(Text("entropy = Shannon entropy of each layer's expert load ÷ log2(experts), averaged over layers "
                    "(1 = even); effective = 2^entropy experts; top = the busiest expert's share of its layer. "
                    "Coverage curves, per layer too: --html.", style="dim"))
    mixed = next((v for v in mc.routing if v.categories), None)
    if mixed is not None:
        tmpl = mc.routing_for(mc.templated) if mc.templated else None
        bits = []
        for c in mixed.categories:
            s = f"{c.category} {c.distinct_pairs} pairs from {c.n_tokens} tokens"
            if tmpl is not None:
                s += f" (templated: {coverage_at(tmpl.coverage_tokens, tmpl.coverage_distinct, c.n_tokens):.0f})"
            bits.append(s)
        out.append(Text(f"By category within the {mixed.workload} prompt (each category's tokens on their own; the "
                        "templated prompt in as many tokens): " + "; ".join(bits) + "."))
    return out


def _join(mc: ModelCompare) -> list[RenderableType]:
    lines: list[RenderableType] = [Text("Join: RssFile growth during inference vs what the routing touched",
                                        style="bold")]
    for j in mc.joins:
        ratio = "—" if j.ratio is None else f"{j.ratio:.2f}×"
        pred = (f"routing predicts {fmt(j.predicted_mib)} MiB (non-expert {fmt(j.dense_mib)} + experts touched "
                f"{fmt(j.experts_mib)} of {fmt(j.all_experts_mib)})") if j.predicted_mib else \
            f"experts touched {fmt(j.experts_mib)} of {fmt(j.all_experts_mib)} MiB (layout unknown)"
        dense = "" if j.calibration_mib is None else f"; dense model {j.calibration_mib:+.1f} MiB beyond its weights"
        excess = "" if j.excess_mib is None else f", {j.excess_mib:+.1f} MiB"
        lines.append(Text(f"  {j.workload} ({j.rep_label}, cache {j.cache_state}): RssFile +{fmt(j.observed_mib)} MiB "
                          f"from {fmt(j.baseline_mib)} before prefill; {pred}: {ratio}{excess}{dense}."))
        lines.append(Text(f"    → {j.verdict()}", style="bold" if j.ratio is not None else "dim"))
    lines.append(Text("Over time (RssFile beside the routing, prefill/decode marked): --html.", style="dim"))
    return lines


def _projection_table(mc: ModelCompare) -> Table:
    workloads = list(dict.fromkeys(p.workload for p in mc.projections))
    targets = list(dict.fromkeys(p.target for p in mc.projections))
    by = {(p.target, p.workload): p for p in mc.projections}
    caches = {v.workload: v.cache_state for v in mc.routing}
    t = Table(title=escape(f"Projection: INT4 weights resident in full-size models (GiB), from {mc.display}'s per-layer "
                         f"coverage at {mc.context} tokens; assumption below"), box=box.SIMPLE_HEAD, title_justify="left",
              pad_edge=False)
    t.add_column("model")
    t.add_column("all", justify="right")
    t.add_column("non-routed", justify="right")
    for w in workloads:
        cov_w = stats.median([p.coverage for p in mc.projections if p.workload == w])
        t.add_column(f"{w} {cov_w:.0%}", justify="right")
    tmpl = mc.templated if mc.templated in workloads else None
    reals = [w for w in workloads if w.startswith("real")]
    if tmpl and reals:
        t.add_column("understated", justify="right")
    for target in targets:
        first = next(p for p in mc.projections if p.target == target)
        cells = []
        for w in workloads:
            p = by.get((target, w))
            cells.append("—" if p is None else f"{p.resident_gib.median:.3f}")
        if tmpl and reals:
            a, b = by.get((target, tmpl)), by.get((target, reals[0]))
            if a and b and b.resident_gib.median:
                ci = stats.ratio_ci(a.values, b.values)
                cells.append(f"{(1 - ci.estimate) * 100:.1f}%")
            else:
                cells.append("—")
        t.add_row(first.display, f"{first.all_gib:.3f}", f"{first.dense_gib:.3f}", *cells)
    t.caption = (f"column headers: the workload and the share of routed experts it touched per layer (from runs with "
                 f"page cache {', '.join(sorted(set(caches.values()))) or '?'}); understated = 1 − "
                 f"{tmpl or 'templated'} ÷ {reals[0] if reals else 'real'}.")
    t.caption_justify = "left"
    return t


# ---- diff ------------------------------------------------------------------------------------------
_STATUS_STYLE = {"regression": "bold red", "improvement": "green", "within threshold": "", "no clear change": "dim",
                 "changed": "cyan", f"n < {stats.MIN_N}": "dim", "not judged (noisy)": "yellow", "—": "dim"}


def diff_renderables(d: DiffReport) -> list[RenderableType]:
    ma, mb = d.a.meta, d.b.meta
    out: list[RenderableType] = [
        Text.assemble(("A ", "bold"), (ma.run_id, "bold"), f" · {when(ma.created)} · {ma.device.name or ma.device.serial}"
                      f" · {ma.runtime}"),
        Text.assemble(("B ", "bold"), (mb.run_id, "bold"), f" · {when(mb.created)} · {mb.device.name or mb.device.serial}"
                      f" · {mb.runtime}"),
    ]
    for w in d.noise:
        out.append(Text(w, style="bold yellow"))
    for w in d.warnings:
        out.append(Text(f"warning: {w}", style="yellow"))
    out.append(Text(f"B vs A: change = ratio of the geometric means − 1 with Welch's 95% t-interval on the logs; a "
                    f"regression is flagged beyond {d.threshold:g}% when the CI excludes no change.", style="dim"))
    groups: dict[tuple, list] = {}
    for r in d.rows:
        groups.setdefault((r.display, r.workload, r.context), []).append(r)
    for (display, workload, context), rows in groups.items():
        t = Table(title=escape(f"{display} · {workload} · {context} tokens"), box=box.SIMPLE_HEAD, title_justify="left",
                  pad_edge=False, title_style="bold")
        for col, j in (("metric", "left"), ("A", "right"), ("B", "right"), ("change", "right"), ("95% CI", "right"),
                       ("", "left")):
            t.add_column(col, justify=j)
        for r in rows:
            info = stats.METRIC_INFO[r.metric]
            nd = 0 if r.metric == "distinct_experts" else (2 if r.metric == "decode_tok_s" else 1)
            change = "—" if r.change_pct is None else f"{r.change_pct:+.1f}%"
            ci = r.ci_pct
            ci_s = "—" if ci is None else f"{ci[0]:+.1f}…{ci[1]:+.1f}%"
            unit = "pairs" if r.metric == "distinct_experts" else info.unit
            label = "experts" if r.metric == "distinct_experts" else info.label
            t.add_row(Text(f"{label} {unit}"), fmt(r.a.median if r.a else None, nd),
                      fmt(r.b.median if r.b else None, nd), change, ci_s,
                      Text(r.status, style=_STATUS_STYLE.get(r.status, "")))
        out.append(t)
    for tag, keys in (("A", d.only_a), ("B", d.only_b)):
        if keys:
            out.append(Text(f"only in {tag}: " + ", ".join(f"{m}/{w}/{c}" for m, w, c in keys), style="dim"))
    if d.unjudged:
        out.append(Text(f"{len(d.unjudged)} change(s) beyond {d.threshold:g}% in the bad direction not called a "
                        "regression: the data is noisy (above); rerun on a quiet device, or pass --allow-noisy",
                        style="bold yellow"))
        out.extend(Text(f"  ? {r.words()}") for r in d.unjudged)
    if d.regressions:
        out.append(Text(f"{len(d.regressions)} regression(s) beyond {d.threshold:g}%:", style="bold red"))
        out.extend(Text(f"  ✗ {r.words()}") for r in d.regressions)
    elif not d.unjudged:
        out.append(Text(f"No regression beyond {d.threshold:g}% that the intervals make clear.", style="green"))
    if d.improvements:
        out.append(Text(f"{len(d.improvements)} clear improvement(s):", style="green"))
        out.extend(Text(f"  ✓ {r.words()}") for r in d.improvements)
    return out


__all__ = ["CompareTerminalRenderer", "DiffTerminalRenderer", "compare_renderables", "diff_renderables", "to_text",
           "workload_words"]


class CompareTerminalRenderer(Renderer):
    """`devprof compare`'s tables as plain text (the command prints :func:`compare_renderables` itself)."""

    name = "compare-terminal"

    def __init__(self, width: int = 140) -> None:
        self.width = width

    def render(self, report: CompareReport) -> str:
        return to_text(compare_renderables(report, width=self.width), width=self.width)


class DiffTerminalRenderer(Renderer):
    """`devprof diff`'s tables as plain text (the command prints :func:`diff_renderables` itself)."""

    name = "diff-terminal"

    def __init__(self, width: int = 140) -> None:
        self.width = width

    def render(self, report: DiffReport) -> str:
        return to_text(diff_renderables(report), width=self.width)
