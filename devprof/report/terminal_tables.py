"""The terminal tables of the listing commands (list, models, devices, bins list), of `history` and of
`diff --against-last`: each a function of what the command read, returning rich renderables. Tables
built with ``fit_table`` take the console they will be printed on (its width decides what is dropped)."""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from devprof.report.fit import Col, fit_table
from devprof.stats import METRIC_INFO


def runs_table(console: Console, runs, where: str) -> RenderableType:
    """`devprof list`: the stored runs' metadata, newest first."""
    # the run id (it holds the creation time) and the model names are never cut; narrow terminals
    # lose created, reps, runtime, workloads and context, in that order
    cols = [Col("run", keep=True), Col("created", drop=5), Col("status"), Col("device"), Col("runtime", drop=3),
            Col("models", keep=True), Col("workloads", drop=2), Col("context", drop=1), Col("reps", "right", drop=4)]
    rows = []
    for m in runs:
        style = {"complete": "green", "interrupted": "yellow", "running": "cyan"}.get(m.status, "red")
        models = m.models[:1] + [f"vs {x}" for x in m.models[1:]]
        rows.append([Text(m.run_id), Text(m.created), Text(m.status, style=style), Text(m.device.name or ""),
                     Text(m.runtime), Text("\n".join(models)), Text(", ".join(m.workloads)),
                     Text(", ".join(map(str, m.contexts))), Text(str(m.reps))])
    return fit_table(console, cols, rows, title=escape(f"runs in {where}"))


def models_table(console: Console, models, context: int) -> RenderableType:
    """`devprof models`: the catalog's shapes, with the KV cache and FLOPs at ``context`` tokens."""
    # model names are never cut; narrow terminals lose fp32 GiB, hidden, prefill, layers, decode, in that order
    cols = [Col("model", keep=True), Col("kind"), Col("layers", "right", drop=3), Col("hidden", "right", drop=5),
            Col("experts"), Col("total", "right"), Col("active", "right"), Col("INT4 GiB", "right"),
            Col("fp32 GiB", "right", drop=6), Col("KV fp16 MiB", "right"), Col("decode GFLOP/tok", "right", drop=2),
            Col("prefill TFLOP", "right", drop=4)]
    rows = []
    for m in models:
        exp = f"{m.n_experts}x{m.expert_ffn} top-{m.top_k}" + (f" +{m.n_shared}x{m.shared_ffn}" if m.n_shared else "") if m.is_moe else f"ffn {m.ffn}"
        mark = lambda f: " (3rd)" if f in m.third_party else ""  # noqa: E731
        rows.append([m.name, m.kind, f"{m.n_layers}{mark('n_layers')}", str(m.hidden), exp,
                  f"{m.total_params / 1e9:.3f}B{mark('total_params')}", f"{m.active_params / 1e6:.0f}M{mark('active_params')}",
                  f"{m.weight_bytes('int4') / 2**30:.3f}", f"{m.weight_bytes('fp32') / 2**30:.2f}",
                  f"{m.kv_cache_bytes(min(context, m.max_context), 2) / 2**20:.1f}",
                  f"{m.decode_flops_per_token(min(context, m.max_context)) / 1e9:.2f}",
                  f"{m.prefill_flops(min(context, m.max_context)) / 1e12:.2f}"])
    return fit_table(console, cols, [[Text(c) for c in r] for r in rows],
                        title=f"models (KV cache and FLOPs at {context} tokens; (3rd) = third-party figure)")


def devices_table(console: Console, found) -> RenderableType:
    """`devprof devices`: what discovery found."""
    cols = [Col("serial", keep=True), Col("alias"), Col("name"), Col("OS", drop=1), Col("ABI", drop=2),
            Col("RAM", "right", drop=3), Col("state"), Col("adb server", drop=4)]
    rows = []
    for d in found:
        ram = d.extra.get("mem_total_mb")
        alias = "local" if d.kind == "local" else ", ".join(d.extra.get("aliases") or [])
        name = d.name if d.kind == "android" else f"{d.name} ({d.model})" if d.model else d.name
        rows.append([Text(d.serial), Text(alias), Text(name or ""), Text(d.os_version or ""),
                     Text(str(d.extra.get("abi") or d.extra.get("machine", ""))),
                     Text(f"{ram / 1024:.1f} GiB" if ram else ""), Text(str(d.extra.get("state", "ready"))),
                     Text(str(d.extra.get("adb_server", "")))])
    return fit_table(console, cols, rows, title="devices")


def bins_table(console: Console, entries, checks: list[str | None], manifest_path) -> RenderableType:
    """`devprof bins list`; ``checks``: per entry None when it matches its sha256, else what is wrong."""
    cols = [Col("name", keep=True), Col("runtime"), Col("platform", drop=2), Col("abi", drop=3), Col("cpu features", drop=4), Col("path"),
            Col("sha256", drop=1), Col("ok")]
    rows = []
    for e, problem in zip(entries, checks):
        ok = Text("yes", style="green") if problem is None else Text(problem, style="red")
        rows.append([Text(e.name), Text(e.runtime), Text(e.platform), Text(e.abi), Text(e.cpu_features or "any"), Text(str(e.path)),
                     Text(e.sha256[:12]), ok])
    return fit_table(console, cols, rows, title=escape(str(manifest_path)))


def against_last_table(meta, n: int, rows: list[dict]) -> Table:
    """`devprof diff RUN --against-last N`: every figure of the run against the earlier runs' median."""
    t = Table(title=f"run {meta.run_id} against the median of up to {n} earlier run(s) on "
                    f"{meta.device.name or meta.device.serial}")
    for col in ("model", "workload", "context", "metric", "this run", "earlier median", "change", "status"):
        t.add_column(col)
    for r in rows:
        d = METRIC_INFO[r["metric"]].decimals
        status = ("regression" if r["regression"] else "beyond noise" if r["beyond_noise"] else "within noise")
        t.add_row(r["model"], r["workload"], str(r["context"]), r["metric"], f"{r['median']:.{d}f}",
                  f"{r['baseline_median']:.{d}f} ({len(r['baseline_runs'])} runs)",
                  "" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%",
                  Text(status, style="bold red" if r["regression"] else ""))
    return t


def history_renderables(hist, model: str, last_n: int) -> list[RenderableType]:
    """`devprof history`: a table per series, and the latest run against the ``last_n`` before it."""
    from devprof.analysis.history import against_last

    out: list[RenderableType] = []
    info = METRIC_INFO[hist.metric]
    for (dev, wl, ctx), pts in hist.series().items():
        t = Table(title=escape(f"{info.label} ({info.unit}) of {model} on {dev}: {wl}, context {ctx}"))
        for col in ("run", "created", "device", "median", "95% interval", "n", "runtime sha256", "devprof", "change"):
            t.add_column(col, justify="right" if col in ("median", "n") else "left")
        for p in pts:
            t.add_row(Text(p.run_id), Text(p.created), Text(p.device), Text(f"{p.median:.{info.decimals}f}"),
                      Text(f"[{p.ci_low:.{info.decimals}f}, {p.ci_high:.{info.decimals}f}]"), Text(str(p.n)),
                      Text(p.sha256[:12]), Text(p.version),
                      Text(f"{p.change} (band {p.band[0]:.{info.decimals}f}-{p.band[1]:.{info.decimals}f})"
                           if p.change else "", style="bold red" if p.change else ""))
        out.append(t)
        cmp = against_last(pts, last_n)
        if cmp and cmp["change_pct"] is not None:
            out.append(Text(f"latest {cmp['run_id']}: {cmp['latest']:.{info.decimals}f} vs median of the "
                           f"{cmp['baseline_runs']} run(s) before it {cmp['baseline_median']:.{info.decimals}f} "
                           f"({cmp['change_pct']:+.1f}%, {'beyond' if cmp['beyond_noise'] else 'within'} their noise)"))
    return out
