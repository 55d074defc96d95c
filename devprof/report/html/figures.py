"""The run report's figure sections: speed, inter-token latency, memory, memory timelines, routing, the
context sweep and every repetition.

Mixed into ``report.html._Page`` (``self.figure`` adds one plotly figure)."""

from __future__ import annotations

from devprof import stats
from devprof.report.base import fmt, phase_spans, phase_spans_from_durations, rep_label, representative
from devprof.report.html.page import C_ANON, C_FILE, C_HWM, C_RSS, SPAN_COLORS, h, t
from devprof.report.html.plot import axes, downsample, error_bars, grid, median_err, rss_label


class FigureSections:
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
                    ys, up, down = zip(*[median_err(r.metric(name)) for r in mrows])
                    data.append({
                        "type": "bar", **axes(col), "x": [t(r.workload) for r in mrows], "y": list(ys),
                        "name": t(self.display[model]), "legendgroup": model, "showlegend": col == 1,
                        "marker": {"color": self.colors[model]}, "error_y": error_bars(up, down),
                        "customdata": [[r.n] for r in mrows],
                        "hovertemplate": "%{y:.2f} (n=%{customdata[0]})<extra>%{fullData.name}</extra>",
                    })
            layout = grid(["prefill (tok/s)", "decode (tok/s)", "time to first token (ms)"])
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
            vals = [median_err(r.metric(name)) for r in rows]
            if all(v[0] is None for v in vals):
                continue
            ys, up, down = zip(*vals)
            data.append({"type": "bar", "x": x, "y": list(ys), "name": t(label), "marker": {"color": color},
                         "error_y": error_bars(up, down), "customdata": [[r.n] for r in rows],
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
        metric = rep.outcome.memory_metric
        shapes, notes, spans, approx = _phase_marks(rep)
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
        cap = self._timeline_caption(rep, pool, peak, bool(spans), approx)
        return self.figure(self._timeline_traces(rep, pool), layout, cap, height=380)

    def _timeline_traces(self, rep, pool) -> list[dict]:
        """The memory series of ``rep``, then the other repetitions' RSS (hidden until clicked)."""
        o, mp = rep.outcome, self.r.max_points
        metric = o.memory_metric
        ts = [s.t_ms / 1000.0 for s in o.samples]
        data: list[dict] = []
        for name, attr, color, dash in ((rss_label(metric), "rss_kb", C_RSS, "solid"),
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
                         "name": t(f"{rss_label(metric)} {rep_label(other)}"), "visible": "legendonly",
                         "line": {"color": C_RSS, "width": 1, "dash": "dash"}, "opacity": 0.6})
        return data

    def _timeline_caption(self, rep, pool, peak: float | None, has_spans: bool, approx: bool) -> str:
        o, mp = rep.outcome, self.r.max_points
        metric = o.memory_metric
        max_rss = max(s.rss_kb for s in o.samples) / 1024.0
        cap = [f"<b>Cache: {h(rep.cache_state)}</b>" + (f" ({h(rep.cache_note)})" if rep.cache_note else "") + ".",
               f"Shown: {h(rep_label(rep))}" + (f", the median peak of {len(pool)} repetitions; the others' "
                                                 f"{h(rss_label(metric))} can be switched on in the legend"
                                                 if len(pool) > 1 else "") + ".",
               f"Reported peak ({h(metric)}) {fmt(peak / 1024.0 if peak else None)} MiB; largest sample "
               f"{fmt(max_rss)} MiB; {len(o.samples)} samples"
               + (f" (drawn: at most {mp} per line, keeping minima and maxima)" if len(o.samples) > mp else "") + ".",
               ("Shaded: load, prefill, decode from the runtime's timestamps minus the process start."
                if not approx else "Shaded: load, prefill, decode placed from the runtime's durations alone "
                "(approximate: it printed no usable timestamps).")
               if has_spans else "Prefill/decode spans unknown: the runtime printed no timestamps or durations."]
        return " ".join(cap)

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
        layout = grid(["distinct (layer, expert) pairs vs tokens processed", "distinct experts per layer"],
                       widths=[0.58, 0.42])
        data: list[dict] = []
        shapes: list[dict] = []
        totals: dict[str, int] = {}
        caps = []
        for model, w, rep in groups:
            g = rep.routing
            templated = w.startswith("templated")
            label = t(f"{self.display[model]} · {w}")
            data.append({"type": "scatter", "mode": "lines", **axes(1), "x": g.coverage_tokens,
                         "y": g.coverage_distinct, "name": label, "legendgroup": f"{model}|{w}",
                         "line": {"color": self.colors[model], "dash": "dash" if templated else "solid", "width": 2},
                         "hovertemplate": "%{y} pairs after %{x} tokens<extra>%{fullData.name}</extra>"})
            data.append({"type": "bar", **axes(2), "x": [f"L{j}" for j in range(len(g.distinct_per_layer))],
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

    # ---- context sweep --------------------------------------------------------------------------
    def sweep(self) -> str:
        ctxs = sorted(self.rec.contexts())
        titles = ["decode (tok/s)", "time to first token (ms)", "peak memory (MiB)"]
        layout = grid(titles)
        data: list[dict] = []
        for model in self.rec.models():
            for w in self.rec.workloads():
                rows = sorted((r for r in self.a.rows if r.model == model and r.workload == w and r.n),
                              key=lambda r: r.context)
                if len(rows) < 1:
                    continue
                for col, name in enumerate(("decode_tok_s", "ttft_ms", "peak_rss_mb"), start=1):
                    pts = [(r.context, *median_err(r.metric(name)), r.n, "/".join(r.cache_states)) for r in rows
                           if r.metric(name) is not None]
                    if not pts:
                        continue
                    xs, ys, up, down, ns, caches = zip(*pts)
                    data.append({"type": "scatter", "mode": "lines+markers", **axes(col), "x": list(xs),
                                 "y": list(ys), "error_y": error_bars(up, down), "name": t(f"{self.display[model]} · {w}"),
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
        layout = grid(titles)
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
                    data.append({"type": "scatter", "mode": "markers", **axes(col), "x": list(xs), "y": list(ys),
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


def _phase_marks(rep) -> tuple[list[dict], list[dict], list, bool]:
    """Shaded load/prefill/decode spans and their labels: (shapes, annotations, spans, approximate)."""
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
    return shapes, notes, spans, approx
