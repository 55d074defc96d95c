"""`devprof compare`: templated vs real prompts, for each MoE model of a run.

For each MoE model and context:

- memory: peak (VmHWM / physFootprint), peak RssFile and RssAnon, and distinct (layer, expert) pairs,
  templated vs each real workload (real, real:code, real:math, real:prose), with the page-cache
  state of each side, the median and its interval (order statistics) of each, and how much the templated prompt
  understates the real one: ``1 - templated / real`` (ratio of the geometric means) with Welch's
  t-interval on the logs (``stats.ratio_ci``). The verdict in words only when the CI excludes 0 as
  printed, and never below ``stats.MIN_N`` repetitions a side;
- routing: coverage curves (distinct experts vs tokens, overall and per layer), expert load per layer
  and its entropy, and for a mixed real prompt what its code, math and prose tokens touch;
- the join of routing and memory (:mod:`devprof.analysis.join`);
- the projection to full-size MobileMoE-S/M/L at INT4 (:mod:`devprof.analysis.projection`).

What the store does not hold (per-token routing, prompt segments) is read from the run's folder
(:mod:`devprof.analysis.artifacts`); without it the analysis falls back to the stored summaries and
says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devprof import stats
from devprof.analysis import coverage as cov
from devprof.analysis.artifacts import load_rep_trace, prompt_segments
from devprof.analysis.join import (
    ALIGNMENT_WORDS, Join, default_alignment, file_growth, join, weight_bytes, weight_layout,
)
from devprof.analysis.projection import ASSUMPTION, Projection, project
from devprof.errors import DevprofError, UsageError
from devprof.analysis.phases import rep_label, representative
from devprof.results import RunRecord

FORMAT = "devprof.compare/1"
MEMORY_METRICS: tuple[str, ...] = ("peak_rss_mb", "peak_rss_file_mb", "peak_rss_anon_mb", "distinct_experts")
CV_LIMIT = 0.05  # warn when a metric's coefficient of variation is above this

_WHAT = {"peak_rss_mb": "peak memory", "peak_rss_file_mb": "peak RssFile (weights paged in)",
         "peak_rss_anon_mb": "peak RssAnon (activations, KV cache)", "distinct_experts": "distinct experts touched"}


def workload_words(w: str) -> str:
    """"real prompts", "code prompts (real:code)"..."""
    if ":" in w:
        return f"{w.split(':', 1)[1]} prompts ({w})"
    return f"{w} prompts"


@dataclass
class Delta:
    """One metric, templated vs one real workload."""

    metric: str
    templated: stats.Metric | None
    real: stats.Metric | None
    ratio: stats.Interval | None  # templated / real (geometric means), Welch's t-interval on the logs
    level: float = 0.95

    @property
    def pct(self) -> float | None:
        """How much lower templated is than real, in % of real (negative: templated is higher)."""
        return None if self.ratio is None else (1.0 - self.ratio.estimate) * 100.0

    @property
    def pct_ci(self) -> tuple[float, float] | None:
        if self.ratio is None:
            return None
        return ((1.0 - self.ratio.high) * 100.0, (1.0 - self.ratio.low) * 100.0)

    @property
    def degenerate(self) -> bool:
        return self.ratio is None or self.ratio.degenerate

    @property
    def clear(self) -> bool:
        """The interval excludes "no difference" as printed (0.0% at one decimal touches 0); never below MIN_N."""
        return self.ratio is not None and self.ratio.clear_of(1.0, 1, scale=100.0)

    @property
    def n(self) -> int:
        return min(self.templated.n if self.templated else 0, self.real.n if self.real else 0)

    def pct_text(self) -> str:
        return "—" if self.pct is None else f"{self.pct:.1f}%"

    def ci_text(self) -> str:
        """The CI of the percentage as text; below MIN_N values the observed range ("range 1.0–4.2% (n=2)")."""
        if self.ratio is None:
            return "—"
        lo, hi = self.pct_ci
        return stats.ci_text(lo, hi, self.degenerate, self.n, 1, "%")


@dataclass
class Pair:
    """Templated vs one real workload, for one model at one context."""

    model: str
    display: str
    context: int
    templated: str
    real: str
    cache_templated: list[str]
    cache_real: list[str]
    memory_metric: str
    deltas: dict[str, Delta]
    level: float = 0.95

    def sentence(self, metric: str = "peak_rss_mb") -> str:
        """The verdict in words; "not clear" unless the interval excludes no difference."""
        d = self.deltas.get(metric)
        what = _WHAT[metric]
        unit = "pairs" if metric == "distinct_experts" else "MiB"
        nd = 0 if metric == "distinct_experts" else 1
        real_w = workload_words(self.real)
        if d is None or d.templated is None or d.real is None or d.ratio is None:
            return f"{self.display}'s {what}: no values on both templated and {real_w} at {self.context} tokens"
        sides = (f"templated {d.templated.median:,.{nd}f} {unit}, cache {'/'.join(self.cache_templated) or '?'}; "
                 f"{self.real} {d.real.median:,.{nd}f} {unit}, cache {'/'.join(self.cache_real) or '?'}")
        lvl = f"{self.level:.0%}"
        if d.degenerate:
            return (f"the difference in {self.display}'s {what} between templated and {real_w} cannot be judged at "
                    f"n={d.n} ({sides}); run more repetitions")
        lo, hi = d.pct_ci
        if not d.clear:
            return (f"the difference in {self.display}'s {what} between templated and {real_w} is not clear at "
                    f"n={d.n} at {self.context} tokens ({sides}; {lvl} CI of the understatement {lo:.1f}–{hi:.1f}%)")
        verb = "understate" if d.pct > 0 else "overstate"
        a, b = (lo, hi) if d.pct > 0 else (-hi, -lo)
        return (f"templated prompts {verb} {self.display}'s {what} by {abs(d.pct):.1f}% ({lvl} CI {a:.1f}–{b:.1f}%) "
                f"against {real_w} at {self.context} tokens ({sides})")


@dataclass
class RoutingView:
    """Routing of one model on one workload at one context (representative repetition + all reps)."""

    workload: str
    rep_label: str
    cache_state: str
    source: str  # "trace": per-token routing from the run folder; "summary": the stored summary only
    n_layers: int
    n_experts: int
    top_k: int
    n_tokens: int
    n_prompt: int | None
    distinct: stats.Metric | None  # distinct (layer, expert) pairs over the measured repetitions
    per_layer: list[int]
    coverage_tokens: list[int]
    coverage_distinct: list[int]
    layer_curves: list[list[int]] | None  # per layer, at coverage_tokens (trace only)
    load: list[list[int]]
    load_stats: list[cov.LayerLoad]
    categories: list[cov.CategoryCoverage] = field(default_factory=list)
    per_rep_layers: list[list[int]] = field(default_factory=list)

    @property
    def total_pairs(self) -> int:
        return self.n_layers * self.n_experts

    @property
    def mean_normalized_entropy(self) -> float:
        vals = [s.normalized for s in self.load_stats if s.slots]
        return sum(vals) / len(vals) if vals else 0.0

    @property
    def mean_effective(self) -> float:
        vals = [s.effective for s in self.load_stats if s.slots]
        return sum(vals) / len(vals) if vals else 0.0


@dataclass
class ModelCompare:
    model: str
    display: str
    context: int
    templated: str | None
    pairs: list[Pair]
    routing: list[RoutingView]
    joins: list[Join]
    projections: list[Projection]
    notes: list[str] = field(default_factory=list)

    @property
    def primary(self) -> Pair | None:
        """The pair the headline is about: templated vs "real" (mixed), else the first real workload."""
        for p in self.pairs:
            if p.real == "real":
                return p
        return self.pairs[0] if self.pairs else None

    @property
    def headline(self) -> str | None:
        p = self.primary
        return p.sentence("peak_rss_mb") if p else None

    def routing_for(self, workload: str) -> RoutingView | None:
        return next((r for r in self.routing if r.workload == workload), None)


@dataclass
class CompareReport:
    record: RunRecord
    level: float
    models: list[ModelCompare]
    messages: list[str] = field(default_factory=list)  # what could not be done, one line each
    warnings: list[str] = field(default_factory=list)  # CV above 5%
    assumption: str = ASSUMPTION

    @property
    def headlines(self) -> list[str]:
        return [m.headline for m in self.models if m.headline]


# ---- building ------------------------------------------------------------------------------------
def moe_models(record: RunRecord) -> list[str]:
    """Models of the run that are MoE in the catalog, or that have routing summaries."""
    out = []
    for m in record.models():
        kind = stats.model_info(m)[1]
        if kind == "moe" or (kind is None and any(r.routing for r in record.measured(m))):
            out.append(m)
    return out


def compare(record: RunRecord, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
            rows: list[stats.SummaryRow] | None = None, strict: bool = True) -> CompareReport:
    """Templated vs real for every MoE model and context of ``record``.

    ``strict``: raise a one-line error when there is nothing to compare (no measured repetitions, no
    MoE model); otherwise return a report with only messages (what the HTML report does).
    """
    empty = _nothing_to_compare(record, level, strict)
    if empty is not None:
        return empty
    meta = record.meta
    messages: list[str] = []
    moes = moe_models(record)
    rows = rows if rows is not None else stats.summarize(record, level=level, n_boot=n_boot, seed=seed)
    workloads = record.workloads()
    templated = next((w for w in workloads if w.startswith("templated")), None)
    reals = [w for w in workloads if w.startswith("real")]
    if templated is None or not reals:
        messages.append(f"run {meta.run_id} has workloads {', '.join(workloads)}: templated vs real needs both "
                        "(devprof run --workload templated,real); showing what there is")
    inputs = _Inputs(record=record, by_key={r.key: r for r in rows}, workloads=workloads, templated=templated,
                     reals=reals, level=level, n_boot=n_boot, seed=seed, calibration=_dense_overhead(record, moes))
    layout_cache: dict[str, Any] = {}
    seed_run = int(meta.settings.get("seed") or 0) if isinstance(meta.settings, dict) else 0
    models: list[ModelCompare] = []
    for model in moes:
        display = stats.model_info(model)[0]
        if model not in layout_cache:
            layout_cache[model] = weight_layout(model, seed_run, meta.runtime)
        layout = layout_cache[model]
        if not record.measured(model):
            messages.append(f"no measured repetitions of {display} in this run (all failed or not run): nothing to "
                            "compare for it")
            continue
        any_routing = any(r.routing for r in record.measured(model))
        if not any_routing:
            messages.append(f"no routing data for {display} in this run (runtime {meta.runtime} emits none): "
                            "coverage, expert load, the join with memory and the projection need it")
        traces_missing = False
        for ctx in record.contexts():
            if not record.measured(model, context=ctx):
                continue
            mc, missing = _model_at_context(inputs, model, display, ctx, layout)
            traces_missing |= missing
            if any_routing and not mc.joins and layout is None:
                mc.notes.append(f"the join of routing and memory needs the weights' layout: known for devprof's "
                                f"bundles, not for runtime {meta.runtime}")
            models.append(mc)
        if any_routing and traces_missing:
            messages.append(f"some routing traces of {display} are not in the run folder ({meta.artifacts_dir or '?'}): "
                            "per-layer coverage curves and the per-category breakdown come from the traces, "
                            "the rest from the stored summaries")
    return CompareReport(record=record, level=level, models=models, messages=messages, warnings=inputs.warnings)


def _nothing_to_compare(record: RunRecord, level: float, strict: bool) -> CompareReport | None:
    """Without measured repetitions or an MoE model: raise (``strict``) or a report of only that message."""
    meta = record.meta
    if not record.measured():
        if strict:
            raise UsageError(f"run {meta.run_id} has no measured repetitions ({meta.status}): nothing to compare")
        return CompareReport(record, level, [], [f"run {meta.run_id} has no measured repetitions: nothing to compare"])
    if not moe_models(record):
        msg = (f"run {meta.run_id} has no MoE model ({', '.join(record.models())}): the templated-vs-real routing "
               "analysis needs one (run with --model mobilemoe-s-mini, say)")
        if strict:
            raise DevprofError(msg)
        return CompareReport(record, level, [], [msg])
    return None


@dataclass
class _Inputs:
    """What every (model, context) of one comparison reads; ``warnings`` collects the CV warnings."""

    record: RunRecord
    by_key: dict[Any, stats.SummaryRow]
    workloads: list[str]
    templated: str | None
    reals: list[str]
    level: float
    n_boot: int
    seed: int
    calibration: dict[tuple[str, int], float]
    warnings: list[str] = field(default_factory=list)


def _model_at_context(inp: _Inputs, model: str, display: str, ctx: int, layout: Any) -> tuple[ModelCompare, bool]:
    """The pairs, routing views, projections and joins of ``model`` at ``ctx``; True when traces are missing."""
    record, meta, by_key = inp.record, inp.record.meta, inp.by_key
    traces_missing = False
    mc = ModelCompare(model=model, display=display, context=ctx, templated=inp.templated, pairs=[], routing=[],
                      joins=[], projections=[])
    if inp.templated is not None:
        for w in inp.reals:
            t_row, r_row = by_key.get((model, inp.templated, ctx)), by_key.get((model, w, ctx))
            if not t_row or not r_row or not t_row.n or not r_row.n:
                continue
            mc.pairs.append(_pair(model, display, ctx, inp.templated, w, t_row, r_row, inp.level, inp.n_boot, inp.seed))
    for w in inp.workloads:
        reps = record.measured(model, w, ctx)
        row = by_key.get((model, w, ctx))
        if row is not None and row.n:
            inp.warnings.extend(_cv_warnings(row))
        routed = [r for r in reps if r.routing is not None]
        if routed:
            view, missing = _routing_view(record, routed, w, ctx, row)
            traces_missing |= missing
            mc.routing.append(view)
            mc.projections.extend(project(model, w, ctx, view.per_rep_layers, view.n_experts))
        if reps:
            rep = representative(reps)
            j = join(rep, load_rep_trace(meta, rep) if rep.routing else None, layout, rep_label(rep),
                     alignment=default_alignment(meta.runtime))
            if j is not None:
                j.calibration_mib = inp.calibration.get((w, ctx))
                mc.joins.append(j)
    return mc, traces_missing


def _dense_overhead(record: RunRecord, moes: list[str]) -> dict[tuple[str, int], float]:
    """(workload, context) -> RssFile growth of the run's dense model beyond all its weights, MiB (median over
    its measured repetitions): the file pages that are not weights (libraries paged in on first use...)."""
    out: dict[tuple[str, int], float] = {}
    dense = [m for m in record.models() if m not in moes and stats.model_info(m)[1] == "dense"]
    if not dense:
        return out
    total = weight_bytes(dense[0], record.meta.runtime)
    if not total:
        return out
    for w in record.workloads():
        for ctx in record.contexts():
            vals = [g[1] - total / 2**20 for g in (file_growth(r) for r in record.measured(dense[0], w, ctx)) if g]
            if vals:
                out[(w, ctx)] = stats.median(vals)
    return out


def _pair(model: str, display: str, ctx: int, templated: str, real: str, t_row: stats.SummaryRow,
          r_row: stats.SummaryRow, level: float, n_boot: int, seed: int) -> Pair:
    deltas = {}
    for name in MEMORY_METRICS:
        a, b = t_row.values.get(name, []), r_row.values.get(name, [])
        ratio = None
        if a and b and stats.median(b) != 0:
            ratio = stats.ratio_ci(a, b, level=level, n_boot=n_boot, seed=seed)
        deltas[name] = Delta(metric=name, templated=t_row.metric(name), real=r_row.metric(name), ratio=ratio,
                             level=level)
    metric = "/".join(sorted({t_row.memory_metric, r_row.memory_metric}))
    return Pair(model=model, display=display, context=ctx, templated=templated, real=real,
                cache_templated=list(t_row.cache_states), cache_real=list(r_row.cache_states), memory_metric=metric,
                deltas=deltas, level=level)


def cv_warning(row: stats.SummaryRow, limit: float = CV_LIMIT, prefix: str = "",
               metrics: tuple[str, ...] = stats.METRICS) -> str | None:
    """One line naming every metric (of ``metrics``) of a summary row whose coefficient of variation is above
    ``limit``."""
    bad = []
    n = 0
    for name in metrics:
        m = row.metric(name)
        if m is not None and m.n >= 2 and m.cv is not None and m.cv > limit:
            bad.append(f"{stats.METRIC_INFO[name].label} {m.cv:.1%}")
            n = max(n, m.n)
    if not bad:
        return None
    return (f"{prefix}CV above {limit:.0%} for {row.display} · {row.workload} · {row.context} (n={n}): "
            f"{', '.join(bad)}; a noisy machine: more repetitions tighten the intervals")


def _cv_warnings(row: stats.SummaryRow) -> list[str]:
    w = cv_warning(row, metrics=MEMORY_METRICS)  # the figures compare compares
    return [w] if w else []


def _routing_view(record: RunRecord, reps: list, workload: str, ctx: int,
                  row: stats.SummaryRow | None) -> tuple[RoutingView, bool]:
    reps = sorted(reps, key=lambda r: (r.routing.distinct_pairs, r.index))
    rep = reps[(len(reps) - 1) // 2]  # the median coverage
    g = rep.routing
    trace = load_rep_trace(record.meta, rep)
    missing = trace is None
    layer_curves = None
    tokens, distinct = list(g.coverage_tokens), list(g.coverage_distinct)
    categories: list[cov.CategoryCoverage] = []
    n_prompt = rep.result.prompt_tokens if rep.result and rep.result.prompt_tokens else None
    if trace is not None and trace.n_layers == g.n_layers and trace.n_experts == g.n_experts:
        tokens = cov.coverage_points(trace.n_tokens)
        layer_curves = cov.layer_coverage(trace, tokens)
        distinct = [sum(c) for c in zip(*layer_curves)] if layer_curves else [0] * len(tokens)
        n_prompt = trace.n_prompt
        segs = prompt_segments(record.meta, workload, ctx)
        if segs and len({s[2] for s in segs}) > 1:
            categories = cov.category_coverage(trace, segs)
    elif trace is not None:
        missing = True
    distinct_metric = row.distinct_experts if row is not None and row.distinct_experts else \
        stats.metric([r.routing.distinct_pairs for r in reps])
    return RoutingView(
        workload=workload, rep_label=rep_label(rep), cache_state=rep.cache_state,
        source="trace" if layer_curves is not None else "summary", n_layers=g.n_layers, n_experts=g.n_experts,
        top_k=g.top_k, n_tokens=g.n_tokens, n_prompt=n_prompt, distinct=distinct_metric,
        per_layer=list(g.distinct_per_layer), coverage_tokens=tokens, coverage_distinct=distinct,
        layer_curves=layer_curves, load=[list(x) for x in g.expert_load], load_stats=cov.load_stats(g.expert_load),
        categories=categories, per_rep_layers=[list(r.routing.distinct_per_layer) for r in reps],
    ), missing


# ---- JSON ------------------------------------------------------------------------------------------
def _metric(m: stats.Metric | None, nd: int = 2) -> dict[str, Any] | None:
    if m is None:
        return None
    r = lambda x: None if x is None else round(float(x), nd)  # noqa: E731
    return {"median": r(m.median), "ci": [r(m.ci_low), r(m.ci_high)], "cv": None if m.cv is None else round(m.cv, 4),
            "min": r(m.min), "max": r(m.max), "n": m.n}


def to_dict(rep: CompareReport) -> dict[str, Any]:
    meta = rep.record.meta
    models = []
    for mc in rep.models:
        pairs = []
        for p in mc.pairs:
            deltas = {}
            for name, d in p.deltas.items():
                ci = d.pct_ci
                deltas[name] = {
                    "templated": _metric(d.templated), "real": _metric(d.real),
                    "ratio": None if d.ratio is None else round(d.ratio.estimate, 4),
                    "ratio_ci": None if d.ratio is None else [round(d.ratio.low, 4), round(d.ratio.high, 4)],
                    "understatement_pct": None if d.pct is None else round(d.pct, 2),
                    "understatement_ci": None if ci is None else [round(ci[0], 2), round(ci[1], 2)],
                    "ci_method": None if d.ratio is None else d.ratio.method,
                    "clear": d.clear, "n": d.n, "sentence": p.sentence(name),
                }
            pairs.append({"templated": p.templated, "real": p.real, "cache_templated": p.cache_templated,
                          "cache_real": p.cache_real, "memory_metric": p.memory_metric, "metrics": deltas})
        routing = []
        for v in mc.routing:
            routing.append({
                "workload": v.workload, "rep": v.rep_label, "cache_state": v.cache_state, "source": v.source,
                "n_layers": v.n_layers, "n_experts": v.n_experts, "top_k": v.top_k, "n_tokens": v.n_tokens,
                "n_prompt": v.n_prompt, "distinct_pairs": _metric(v.distinct, 1), "total_pairs": v.total_pairs,
                "distinct_per_layer": v.per_layer, "coverage_tokens": v.coverage_tokens,
                "coverage_distinct": v.coverage_distinct, "coverage_per_layer": v.layer_curves,
                "expert_load": v.load,
                "entropy": [{"layer": s.layer, "bits": round(s.entropy_bits, 4), "normalized": round(s.normalized, 4),
                             "effective_experts": round(s.effective, 2), "top_share": round(s.top_share, 4),
                             "touched": s.touched} for s in v.load_stats],
                "categories": [{"category": c.category, "n_tokens": c.n_tokens, "distinct_pairs": c.distinct_pairs,
                                "distinct_per_layer": c.per_layer} for c in v.categories],
            })
        joins = [{"workload": j.workload, "rep": j.rep_label, "cache_state": j.cache_state, "source": j.source,
                  "baseline_rss_file_mib": round(j.baseline_mib, 2), "rss_file_growth_mib": round(j.observed_mib, 2),
                  "dense_weights_mib": None if j.dense_mib is None else round(j.dense_mib, 2),
                  "experts_touched_mib": round(j.experts_mib, 2), "all_experts_mib": round(j.all_experts_mib, 2),
                  "predicted_mib": round(j.predicted_mib, 2),
                  "excess_mib": None if j.excess_mib is None else round(j.excess_mib, 2),
                  "dense_model_excess_mib": None if j.calibration_mib is None else round(j.calibration_mib, 2),
                  "ratio": None if j.ratio is None else round(j.ratio, 3), "verdict": j.verdict(),
                  "alignment": j.alignment, "spans_approximate": j.spans_approx} for j in mc.joins]
        projections = [{"target": p.target, "workload": p.workload, "from_model": p.from_model, "context": p.context,
                        "coverage": round(p.coverage, 4), "resident_gib": _metric(p.resident_gib, 4),
                        "dense_gib": round(p.dense_gib, 4), "all_weights_gib": round(p.all_gib, 4)}
                       for p in mc.projections]
        models.append({"model": mc.model, "display": mc.display, "context": mc.context, "templated": mc.templated,
                       "headline": mc.headline, "pairs": pairs, "routing": routing, "join": joins,
                       "projection": projections, "notes": mc.notes})
    return {"format": FORMAT, "run_id": meta.run_id, "device": meta.device.name, "runtime": meta.runtime,
            "level": rep.level, "headlines": rep.headlines, "models": models, "messages": rep.messages,
            "warnings": rep.warnings, "projection_assumption": rep.assumption,
            "join_note": JOIN_NOTE}


JOIN_NOTE = ("Join: RssFile growth since just before prefill vs the non-expert weights plus the expert blocks the "
             "routing touched (block bytes from the bundle's layout). In time, an approximation: each (layer, expert) "
             "pair is placed at its first token, " + ALIGNMENT_WORDS["layers"] + "; or " + ALIGNMENT_WORDS["tokens"]
             + ". Decode steps are spread linearly over decode. The ratio of the end points does not depend on it.")
