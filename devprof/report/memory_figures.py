"""The report's memory figures beyond VmRSS: swap, PSS, page faults beside routing, and headroom.

- :func:`headroom` -- one table per run: for each model, workload and context the peak (and which
  part of Android's peak rule won), swap, PSS, major faults, storage reads, and the device's
  MemAvailable before the run and at the peak; the sentence above it answers "would it fit?" on that device.
- :func:`faults_figure` -- per (model, workload, context), the representative repetition: RssFile,
  RssAnon, swap and PSS over time (top), and below on the same time axis the major page faults so
  far beside the experts first touched per layer (each dot: one (layer, expert) pair's first token,
  placed in time as ``devprof.analysis.join`` places routing).
"""

from __future__ import annotations

from typing import Any

from devprof import memory
from devprof.analysis.phases import phase_spans, phase_spans_from_durations, rep_label, representative
from devprof.report.html.page import C_ANON, C_FILE, SPAN_COLORS, h, t
from devprof.report.html.plot import downsample
from devprof.report.memory_rows import MIB, cell_reps, headroom_rows, won_text

C_SWAP, C_PSS, C_FAULT, C_TOUCH, C_READ = "#c92a2a", "#5f3dc4", "#495057", "#e8590c", "#1971c2"


def _mib(kb: float | None) -> str:
    return "–" if kb is None else f"{kb / MIB:,.0f}"


def headroom_sentence(rec: Any, rows: list[dict[str, Any]], display: dict[str, str]) -> str:
    """The one-line answer to "does it fit on this device?" for the tightest cell."""
    known = [r for r in rows if r["share"] is not None]
    if not known:
        return ""
    worst = max(known, key=lambda r: r["share"])
    total = worst["total_kb"]
    dev = rec.meta.device.name or rec.meta.device.serial
    fits = "fits" if worst["share"] <= 1 else "does NOT fit"
    swap = (f", swap {_mib(worst['swap_total_kb'])} MiB" if worst["swap_total_kb"] else ", no swap")
    return (f"Headroom on {dev} (MemTotal {_mib(total)} MiB{swap}): the largest share is "
            f"{display.get(worst['model'], worst['model'])} on {worst['workload']} at {worst['context']} tokens, "
            f"whose peak ({worst['metric']}) {_mib(worst['peak_kb'])} MiB is {worst['share'] * 100:.0f}% of the "
            f"{_mib(worst['available_kb'])} MiB MemAvailable before the run: it {fits}, with "
            f"{_mib(worst['headroom_kb'])} MiB to spare at the tightest repetition.")


def headroom(page: Any) -> str:
    """The headroom table (HTML) for the report's memory section; "" when nothing was measured."""
    rows = headroom_rows(page.rec)
    if not rows:
        return ""
    head = ("<tr><th>model</th><th>workload</th><th>context</th><th>n</th><th>peak (MiB)</th><th>won</th>"
            "<th>swap (MiB)</th><th>PSS (MiB)</th><th>major faults</th><th>read from storage (MiB)</th>"
            "<th>MemAvailable before (MiB)</th>"
            "<th>peak ÷ available</th><th>headroom (MiB)</th><th>MemAvailable at peak (MiB)</th>"
            "<th>SwapFree at peak (MiB)</th></tr>")
    body = []
    for r in rows:
        won = won_text(r["won"], r["n"]) or "–"
        faults = "–" if r["major_faults"] is None else f"{r['major_faults']:,.0f}"
        share = "–" if r["share"] is None else f"{r['share'] * 100:.0f}%"
        cells = [h(page.display.get(r["model"], r["model"])), h(r["workload"]), str(r["context"]), str(r["n"]),
                 f"{_mib(r['peak_kb'])} <small>{h(r['metric'])}</small>", h(won), _mib(r["swap_kb"]),
                 _mib(r["pss_kb"]), faults, _storage_cell(r), _mib(r["available_kb"]), share,
                 _mib(r["headroom_kb"]), _mib(r["available_at_peak_kb"]), _mib(r["swap_free_at_peak_kb"])]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    sentence = headroom_sentence(page.rec, rows, page.display)
    note = ("Medians over the measured repetitions; peak ÷ available is the largest and headroom "
            "(MemAvailable before the run − peak) the smallest of any repetition. Peak: the device's metric "
            f"(on Android {memory.PEAK_RULE}; \"won\" says which part was larger); swap: the largest VmSwap "
            "(anonymous pages compressed into zram on a phone); PSS: the largest proportional set size "
            "(smaps_rollup, read every few samples); major faults: page faults that found the page in no cache "
            "(/proc/PID/stat majflt): readahead and MAP_POPULATE bring a file in as minor faults, so a cold load "
            "can read every weight from storage with 0 major faults; read from storage: /proc/PID/io read_bytes "
            "(or, marked mincore, how much of the weights file the native runner saw come into the page cache). "
            "MemAvailable/SwapFree at peak: the device's /proc/meminfo read nearest the peak.")
    return (f'<h3 id="headroom">Device memory headroom</h3>\n<p class="headroom">{h(sentence)}</p>\n'
            f'<table class="headroom"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>\n'
            f"<p><small>{h(note)}</small></p>")


def _storage_cell(r: dict[str, Any]) -> str:
    if r["read_kb"] is not None:
        return _mib(r["read_kb"])
    if r["read_in_kb"] is not None:
        return f"{_mib(r['read_in_kb'])} <small>mincore</small>"
    return "–"


# ---- swap, PSS, faults beside routing ---------------------------------------------------------
def _first_touches(page: Any, rep: Any, spans: list) -> tuple[list[float], list[int], list[str]] | None:
    """(time s, layer, hover text) of each (layer, expert) pair's first touch; None without a trace."""
    import numpy as np

    from devprof.analysis.artifacts import load_rep_trace
    from devprof.analysis.join import default_alignment, pair_times
    from devprof.routing import first_touch

    trace = load_rep_trace(page.meta, rep)
    if trace is None or not spans:
        return None
    first = first_touch(trace.experts, trace.n_experts)
    when = pair_times(first, spans, trace.n_prompt, trace.n_tokens, default_alignment(page.meta.runtime))
    if when is None:
        return None
    layers, experts = np.nonzero(np.isfinite(when))
    order = np.argsort(when[layers, experts], kind="stable")
    xs = [float(when[layers[i], experts[i]]) for i in order]
    ys = [int(layers[i]) for i in order]
    text = [f"layer {layers[i]} expert {experts[i]}: first token {first[layers[i], experts[i]]}" for i in order]
    return xs, ys, text


def _line(name: str, ts: list[float], ys: list[float | None], color: str, yaxis: str, mp: int,
          dash: str = "solid") -> dict[str, Any] | None:
    if all(y is None for y in ys):
        return None
    x, y = downsample(ts, ys, mp)
    return {"type": "scatter", "mode": "lines", "x": x, "y": y, "name": t(name), "yaxis": yaxis,
            "line": {"color": color, "dash": dash, "width": 2},
            "hovertemplate": "%{y:,.1f}<extra>%{fullData.name}</extra>"}


def faults_figure(page: Any, model: str, workload: str, ctx: int) -> str | None:
    """Swap, PSS and page faults over time with routing's first touches; None without such samples."""
    pool = cell_reps(page.rec, model, workload, ctx) or [
        r for r in page.rec.repetitions
        if (r.model, r.workload, r.context) == (model, workload, ctx) and not r.warmup and r.outcome.samples]
    pool = [r for r in pool if r.outcome.samples]
    if not pool:
        return None
    rep = representative(pool)
    ss = rep.outcome.samples
    if all(s.majflt is None and s.swap_kb is None and s.pss_kb is None and s.read_kb is None for s in ss):
        return None  # a store from before these were sampled, or iOS
    ts = [s.t_ms / 1000.0 for s in ss]
    mp = page.r.max_points
    data = [d for d in (
        _line("RssFile", ts, [s.file_kb / MIB if s.file_kb is not None else None for s in ss], C_FILE, "y", mp),
        _line("RssAnon", ts, [s.anon_kb / MIB if s.anon_kb is not None else None for s in ss], C_ANON, "y", mp),
        _line("swap (VmSwap)", ts, [s.swap_kb / MIB if s.swap_kb is not None else None for s in ss], C_SWAP, "y", mp),
        _line("PSS (smaps_rollup)", ts, [s.pss_kb / MIB if s.pss_kb is not None else None for s in ss], C_PSS, "y",
              mp, dash="dot"),
        _line("read from storage so far (/proc/PID/io)", ts,
              [s.read_kb / MIB if s.read_kb is not None else None for s in ss], C_READ, "y", mp, dash="dash"),
        _line("major faults so far", ts, [s.majflt for s in ss], C_FAULT, "y2", mp),
    ) if d is not None]
    spans = phase_spans(rep) or phase_spans_from_durations(rep)
    touches = _first_touches(page, rep, spans)
    layer_axis: dict[str, Any] = {}
    if touches is not None:
        top = max(touches[1], default=0)
        layer_axis = {"dtick": max(1, -(-(top + 1) // 6)), "range": [-0.5, top + 0.5]}
        xs, ys, text = touches
        data.append({"type": "scatter", "mode": "markers", "x": xs, "y": ys, "yaxis": "y3", "text": text,
                     "name": "expert first touched (layer)", "marker": {"color": C_TOUCH, "size": 4, "opacity": 0.6},
                     "hovertemplate": "%{text} at %{x:.2f} s<extra></extra>"})
    shapes = [{"type": "rect", "xref": "x", "yref": "paper", "x0": a, "x1": b, "y0": 0, "y1": 1,
               "fillcolor": SPAN_COLORS.get(name, "#dee2e6"), "opacity": 0.2, "layer": "below", "line": {"width": 0}}
              for name, a, b in spans]
    layout = {
        "title": {"text": t(f"Swap, PSS and page faults beside routing: {page.display.get(model, model)} · {workload} · "
                            f"{ctx} tokens · {rep_label(rep)}")},
        "xaxis": {"title": {"text": "seconds since the process started"}, "anchor": "y2"},
        "yaxis": {"title": {"text": "MiB"}, "domain": [0.5, 1.0], "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "major faults"}, "domain": [0.0, 0.42], "rangemode": "tozero", "anchor": "x"},
        "yaxis3": {"title": {"text": "layer"}, "overlaying": "y2", "side": "right", "showgrid": False,
                   "anchor": "x", **layer_axis},
        "hovermode": "closest", "shapes": shapes,
    }
    faults = [s.majflt for s in ss if s.majflt is not None]
    cap = [f"Shown: {h(rep_label(rep))} (the median peak of {len(pool)}), cache {h(rep.cache_state)}.",
           "Top: file-backed (RssFile: weights paged in) and anonymous (RssAnon: activations, KV cache) resident "
           "memory, swapped-out anonymous memory (VmSwap) and the proportional set size (PSS, read every few "
           "samples because smaps_rollup is costly) and what the process has read from storage so far.",
           f"Bottom: major page faults so far ({faults[-1]:,} at the last sample)" if faults else
           "Bottom: no page-fault counts were sampled",
           ("beside each (layer, expert) pair's first touch, placed in time from the routing trace "
            "(a memory-mapped MoE runtime faults an expert's weights in at its first token: a cold cache shows "
            "major faults where new experts appear, unless readahead or MAP_POPULATE read them in first: then "
            "only the storage reads above show them)." if touches is not None else
            "(no routing trace for this repetition: a dense model, or a runtime that writes none).")]
    return page.figure(data, layout, " ".join(cap), height=520)
