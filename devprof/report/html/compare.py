"""The run report's templated-vs-real section (also the page of `devprof compare --html`): memory deltas,
coverage curves, expert load, the routing x memory join and the full-size projection.

Mixed into ``report.html._Page``."""

from __future__ import annotations

from devprof import stats
from devprof.report.base import fmt
from devprof.report.html.page import C_FILE, C_RSS, SPAN_COLORS, h, t
from devprof.report.html.plot import axes, downsample, grid


class CompareSections:
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
        layout = grid(titles, widths=[0.5, 0.5] if has_layers else [1.0])
        data: list[dict] = []
        shapes: list[dict] = []
        for v in views:
            templated = v.workload.startswith("templated")
            name = t(f"{v.workload} ({v.rep_label}, cache {v.cache_state})")
            data.append({"type": "scatter", "mode": "lines", **axes(1), "x": v.coverage_tokens,
                         "y": v.coverage_distinct, "name": name, "legendgroup": v.workload,
                         "line": {"color": colors[v.workload], "width": 2.5, "dash": "dash" if templated else "solid"},
                         "hovertemplate": "%{y} pairs after %{x} tokens<extra>%{fullData.name}</extra>"})
            if has_layers and v.layer_curves:
                for i, curve in enumerate(v.layer_curves):
                    data.append({"type": "scatter", "mode": "lines", **axes(2), "x": v.coverage_tokens, "y": curve,
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
        layout = grid([t(x) for x in titles], widths=widths, gap=0.05)
        data: list[dict] = []
        for i, v in enumerate(views, start=1):
            z = load_shares(v.load)
            data.append({"type": "heatmap", **axes(i), "z": z, "x": list(range(1, v.n_experts + 1)),
                         "y": [f"L{j}" for j in range(v.n_layers)], "coloraxis": "coloraxis",
                         "name": t(v.workload),
                         "hovertemplate": "%{y}, rank %{x}: %{z:.1%} of the slots<extra>" + t(v.workload) + "</extra>"})
            layout[f"xaxis{'' if i == 1 else i}"]["title"] = {"text": "expert rank"}
        k = n + 1
        for v in views:
            data.append({"type": "scatter", "mode": "lines+markers", **axes(k),
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
        joins = mc.joins
        colors = self._workload_colors([j.workload for j in joins])
        titles = [f"{j.workload} · {j.rep_label} · cache {j.cache_state}" for j in joins] + \
            ["RssFile growth vs what routing predicts"]
        layout = grid([t(x) for x in titles])
        data: list[dict] = []
        shapes: list[dict] = []
        mp = self.r.max_points
        for i, j in enumerate(joins, start=1):
            ax = axes(i)
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
            data.append({"type": "scatter", "mode": "markers", **axes(k), "x": j.join_predicted_mib,
                         "y": j.join_growth_mib, "name": t(f"{j.workload}: samples"),
                         "marker": {"color": colors[j.workload], "size": 5,
                                    "symbol": "circle-open" if j.workload.startswith("templated") else "circle"},
                         "hovertemplate": "routing %{x:.1f} MiB, RssFile +%{y:.1f} MiB<extra>%{fullData.name}</extra>"})
        top = max((j.predicted_mib or j.experts_mib for j in joins), default=0.0)
        data.append({"type": "scatter", "mode": "lines", **axes(k), "x": [0, top], "y": [0, top],
                     "name": "residency = routing", "line": {"color": C_RSS, "dash": "dash", "width": 1}})
        sfx = str(k)
        layout[f"xaxis{sfx}"]["title"] = {"text": "routing predicts by then (MiB)"}
        layout[f"yaxis{sfx}"]["title"] = {"text": "RssFile growth (MiB)"}
        layout.update(shapes=shapes, title={"text": t(f"Routing joined with memory: {mc.display} at {mc.context} tokens")})
        return self.figure(data, layout, _join_caption(joins), height=400)

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


def _join_caption(joins) -> str:
    """What the join figure shows, how each pair is placed in time, and the cache state of each workload."""
    from devprof.analysis.join import ALIGNMENT_WORDS

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
    return cap
