"""The run report's sections that are tables: header, summary, setup, thermal, repetitions, sources.

Mixed into ``report.html._Page`` (``self.a``: the Analysis, ``self.rec``, ``self.meta``, ``self.display``)."""

from __future__ import annotations

from devprof import stats
from devprof.report.base import adaptive_lines, fmt, fmt_cv, memory_metric_note, rep_label, reps_count_text, reps_text, threads_used, when
from devprof.report.html.page import GIB, h, kv_table, plain
from devprof.report.soak_figures import setting_text


class TableSections:
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
{h(reps_count_text(self.a.measured, self.a.planned))}
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
        dev_rows += [(k, plain(v)) for k, v in d.extra.items()]
        dev_rows.append(("peak memory metric", "; ".join(memory_metric_note(x) for x in metrics)))
        run_rows = [("runtime", m.runtime), ("models", ", ".join(m.models)), ("baseline", m.baseline or "—"),
                    ("workloads", ", ".join(m.workloads)), ("contexts", ", ".join(map(str, m.contexts))),
                    ("new tokens", m.new_tokens), ("repetitions", f"{reps_text(m)} measured + {m.warmup} warm-up"),
                    ("memory sampling", f"every {m.sample_ms} ms" if m.sample_ms else "off"),
                    ("artifacts", m.artifacts_dir or "—")]
        used = threads_used(self.rec)
        shown = {"threads": used, "energy": setting_text(self.rec),
                 "adaptive": "; ".join([reps_text(m), *adaptive_lines(m)]) if m.settings.get("adaptive") else None}
        run_rows += [(k, shown.get(k) or plain(v)) for k, v in m.settings.items() if k != "prompt_sources"]
        return (f'<div class="cols"><div><h3>Device</h3>{kv_table(dev_rows)}</div>'
                f'<div><h3>Run</h3>{kv_table(run_rows)}</div></div>\n<h3>Models</h3>\n{self._models_table()}')

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
