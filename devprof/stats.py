"""Statistics over stored repetitions: medians, bootstrap confidence intervals, MoE/dense ratios.

Plain functions over plain records (pyinstrument's "processors" style): ``summarize(record)`` turns
a run record into one ``SummaryRow`` per (model, workload, context), ``ratios(record)`` compares the
subject model with the baseline. Renderers only format what these return.

Conventions:
- the centre of every metric is the median of the measured repetitions (warm-ups and failed
  repetitions never count);
- the spread of one model's metric is the distribution-free interval of the median from order
  statistics (``median_ci``; up to n = 5 that is the range), the coefficient of variation (sample
  standard deviation / mean) and the min/max;
- a ratio (subject ÷ baseline, or templated ÷ real, or run B ÷ run A) has a t-interval on the logs
  (``paired_ratio_ci``: the interleaved pairs, subject and baseline run back to back; ``ratio_ci``:
  Welch's interval when the two sides were not run in pairs). Why not the bootstrap: with n = 3 a
  bootstrap of the median has at most 10 distinct resamples and its "95%" interval covers far less
  often (about 75% for the median of 3); a t-interval on log ratios is exact when the noise is
  lognormal (multiplicative), whatever n, and tests/test_stats.py checks its coverage by simulation
  at n = 3 and n = 5. Below ``MIN_N`` values a side there is no interval: the observed range is shown
  (``degenerate``) and nothing is called clear;
- with fewer than two values an interval is degenerate, ``(v, v)``, and says so (``degenerate``);
- peak RSS is what the device reported as the process's peak (VmHWM on Linux/Android,
  physFootprint on iOS), never the maximum of the polled samples, which misses short spikes;
- memory in "MB" means MiB (kB / 1024, as /proc reports kB), the unit runtimes print.

The interval maths (median, CV, the intervals, Student's t) is in :mod:`devprof.intervals`; its
functions are importable from here too (``stats.median``, ``stats.ratio_ci``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from devprof.intervals import (  # noqa: F401 (stats.median, stats.ratio_ci, ... are its callers' names)
    MIN_N, Interval, bootstrap_ci, bootstrap_ratio_ci, cv, median, median_ci, paired_ratio_ci, ratio_ci, t_quantile,
)
from devprof.results import Repetition, RunRecord

#: The metrics of a summary row, in display order.
METRICS: tuple[str, ...] = (
    "prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb", "peak_rss_file_mb", "peak_rss_anon_mb",
    "distinct_experts",
)


@dataclass(frozen=True)
class MetricInfo:
    label: str  # for tables
    unit: str
    higher_is_better: bool | None  # None: neither (distinct experts)
    ratio_label: str  # what subject / baseline is called
    decimals: int  # how many decimals JSON and tables keep


METRIC_INFO: dict[str, MetricInfo] = {
    "prefill_tok_s": MetricInfo("prefill", "tok/s", True, "speedup", 2),
    "decode_tok_s": MetricInfo("decode", "tok/s", True, "speedup", 2),
    "ttft_ms": MetricInfo("TTFT", "ms", False, "TTFT ratio", 2),
    "peak_rss_mb": MetricInfo("peak RSS", "MiB", False, "memory ratio", 2),
    "peak_rss_file_mb": MetricInfo("peak RssFile", "MiB", False, "memory ratio", 2),
    "peak_rss_anon_mb": MetricInfo("peak RssAnon", "MiB", False, "memory ratio", 2),
    "distinct_experts": MetricInfo("distinct experts", "(layer, expert) pairs", None, "expert ratio", 1),
}

def ratio_name(metric_name: str) -> str:
    """What subject / baseline of a metric is called: "prefill speedup", "peak RSS memory ratio"..."""
    info = METRIC_INFO[metric_name]
    if info.ratio_label.startswith(info.label):
        return info.ratio_label
    return f"{info.label} {info.ratio_label}"


#: Metrics compared between the subject and the baseline.
RATIO_METRICS: tuple[str, ...] = METRICS[:-1]


# ---- per-repetition values -----------------------------------------------------------------
def peak_rss_kb(rep: Repetition) -> int | None:
    """The device's own peak for the process (VmHWM / physFootprint peak).

    Never the largest polled VmRSS, which understates the peak. The stored peak is the largest VmHWM seen: the device's exit figure, every sampled VmHWM
    (a sample read just before exit can be a few pages above the exit figure) and the runtime's
    own VmHWM at exit where it prints one (``result.extra["vmhwm_kb"]``).
    """
    seen = [s.hwm_kb for s in rep.outcome.samples if s.hwm_kb is not None]
    if rep.outcome.peak_rss_kb is not None:
        seen.append(rep.outcome.peak_rss_kb)
    own = (rep.result.extra or {}).get("vmhwm_kb") if rep.result is not None else None
    if isinstance(own, (int, float)) and own > 0 and rep.outcome.memory_metric in ("VmHWM", "", None):
        seen.append(int(own))
    return max(seen) if seen else None


def memory_metric(rep: Repetition) -> str:
    return rep.outcome.memory_metric or "VmHWM"


def _mb(kb: int | float | None) -> float | None:
    return None if kb is None else kb / 1024.0


def rep_value(rep: Repetition, metric: str) -> float | None:
    """The value of one summary metric for one repetition (None where unknown)."""
    r = rep.result
    if metric == "prefill_tok_s":
        return r.prefill_tok_s if r else None
    if metric == "decode_tok_s":
        return r.decode_tok_s if r else None
    if metric == "ttft_ms":
        return r.ttft_ms if r else None
    if metric == "peak_rss_mb":
        return _mb(peak_rss_kb(rep))
    if metric == "peak_rss_file_mb":
        return _mb(rep.peak_file_kb)
    if metric == "peak_rss_anon_mb":
        return _mb(rep.peak_anon_kb)
    if metric == "distinct_experts":
        return float(rep.routing.distinct_pairs) if rep.routing is not None else None
    raise KeyError(f"unknown metric {metric!r}")


def token_latencies(rep: Repetition) -> list[float]:
    """The inter-token latencies (ms per decode step) a runtime printed for one repetition: the reference
    runtime's ``decode_token_ms`` in its stats line, or ``extra["token_ms"]`` from a runtime adapter that
    reads per-token timestamps (the native llama.cpp runner); [] where the runtime gives none."""
    r = rep.result
    if r is None:
        return []
    vals = r.extra.get("token_ms") or (r.extra.get("observer") or {}).get("decode_token_ms") or []
    out = []
    for v in vals:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and f >= 0:
            out.append(f)
    return out


@dataclass(frozen=True)
class Percentiles:
    """Inter-token latency over every decode step of the measured repetitions (pooled), ms."""

    p50: float
    p90: float
    p99: float
    n: int  # decode steps
    n_reps: int

    def to_dict(self) -> dict:
        return {"p50": round(self.p50, 3), "p90": round(self.p90, 3), "p99": round(self.p99, 3), "n": self.n,
                "n_reps": self.n_reps}


def percentiles(reps: list[Repetition]) -> Percentiles | None:
    per = [token_latencies(r) for r in reps]
    vals = [v for p in per for v in p]
    if not vals:
        return None
    q = np.quantile(np.asarray(vals), [0.5, 0.9, 0.99])  # linear interpolation; with few steps p99 ~ max
    return Percentiles(p50=float(q[0]), p90=float(q[1]), p99=float(q[2]), n=len(vals),
                       n_reps=sum(1 for p in per if p))


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


# ---- summaries -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One metric over the measured repetitions of one (model, workload, context)."""

    median: float
    ci_low: float
    ci_high: float
    min: float
    max: float
    cv: float | None
    n: int

    @property
    def ci(self) -> tuple[float, float]:
        return (self.ci_low, self.ci_high)

    @property
    def degenerate(self) -> bool:
        """True when n < 2: the interval says nothing about spread."""
        return self.n < 2


def metric(values: Iterable[float | None], level: float = 0.95, n_boot: int = 2000,
           seed: int = 0) -> Metric | None:
    """Median, its distribution-free interval (``median_ci``), min/max and CV of the known values; None when
    there are none. ``n_boot`` and ``seed`` are accepted for older callers and unused."""
    vals = _finite(values)
    if not vals:
        return None
    ci = median_ci(vals, level=level)
    return Metric(median=median(vals), ci_low=ci.low, ci_high=ci.high, min=min(vals), max=max(vals),
                  cv=cv(vals), n=len(vals))


@dataclass
class SummaryRow:
    model: str
    workload: str
    context: int
    display: str  # the model's display name (the catalog's, else its id)
    kind: str | None  # moe | dense | None (not in the catalog)
    n: int  # measured repetitions (non-warm-up, status ok)
    n_failed: int  # non-warm-up repetitions that did not finish ok
    cache_states: list[str]  # page-cache states seen among the measured repetitions
    memory_metric: str  # what peak RSS means here: VmHWM, physFootprint
    prefill_tok_s: Metric | None = None
    decode_tok_s: Metric | None = None
    ttft_ms: Metric | None = None
    peak_rss_mb: Metric | None = None
    peak_rss_file_mb: Metric | None = None
    peak_rss_anon_mb: Metric | None = None
    distinct_experts: Metric | None = None  # None for dense models
    values: dict[str, list[float]] = field(default_factory=dict, repr=False)  # metric -> per-rep values
    itl: Percentiles | None = None  # inter-token latency p50/p90/p99 where the runtime printed per-token times
    token_ms: list[float] = field(default_factory=list, repr=False)  # the pooled decode-step times

    def metric(self, name: str) -> Metric | None:
        return getattr(self, name)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.model, self.workload, self.context)


def model_info(name: str) -> tuple[str, str | None]:
    """(display name, kind) from the catalog; (name, None) for a model it does not know."""
    from devprof.catalog import get_model
    from devprof.errors import UsageError

    try:
        spec = get_model(name)
    except UsageError:
        return name, None
    return spec.display, spec.kind


def summarize(record: RunRecord, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> list[SummaryRow]:
    """One row per (model, workload, context) planned or seen, in the run's order."""
    rows = []
    for model in record.models():
        display, kind = model_info(model)
        for workload in record.workloads():
            for context in record.contexts():
                all_reps = [r for r in record.repetitions
                            if (r.model, r.workload, r.context) == (model, workload, context) and not r.warmup]
                reps = [r for r in all_reps if r.outcome.status == "ok"]
                planned = model in record.meta.models and workload in record.meta.workloads \
                    and context in record.meta.contexts
                if not all_reps and not planned:
                    continue
                metrics_seen = {memory_metric(r) for r in reps} or {record.meta.device.memory_metric}
                row = SummaryRow(
                    model=model, workload=workload, context=context, display=display, kind=kind,
                    n=len(reps), n_failed=len(all_reps) - len(reps),
                    cache_states=sorted({r.cache_state for r in reps}),
                    memory_metric="/".join(sorted(metrics_seen)),
                )
                for name in METRICS:
                    vals = _finite(rep_value(r, name) for r in reps)
                    if name == "distinct_experts" and kind == "dense":
                        vals = []
                    row.values[name] = vals
                    setattr(row, name, metric(vals, level=level, n_boot=n_boot, seed=seed))
                row.itl = percentiles(reps)
                row.token_ms = [v for r in reps for v in token_latencies(r)]
                rows.append(row)
    return rows


# ---- subject vs baseline -------------------------------------------------------------------
@dataclass
class RatioRow:
    """subject / baseline of one metric at one (workload, context)."""

    subject: str
    baseline: str
    workload: str
    context: int
    metric: str
    label: str  # speedup | TTFT ratio | memory ratio
    ratio: float
    ci_low: float
    ci_high: float
    n_subject: int
    n_baseline: int
    degenerate: bool  # fewer than MIN_N values (pairs): no interval, ci_low/ci_high are the observed range
    verdict: str | None  # plain words, only when the interval excludes 1.0 (as printed, 2 decimals)
    method: str = ""  # "paired t on log ratios" | "Welch t on logs" | "range"
    n_pairs: int = 0  # interleaved (subject, baseline) pairs the interval rests on
    level: float = 0.95

    @property
    def level_text(self) -> str:
        return f"{self.level:.0%} CI"

    @property
    def ci(self) -> tuple[float, float]:
        return (self.ci_low, self.ci_high)

    @property
    def clear(self) -> bool:
        return self.verdict is not None

    @property
    def finding(self) -> bool:
        """Clear and more than trivial: an interval that lies within ±2% of 1 is no finding."""
        return self.clear and not (self.ci_low >= 1 - TRIVIAL and self.ci_high <= 1 + TRIVIAL)

    def ci_text(self, decimals: int = 2) -> str:
        return ci_text(self.ci_low, self.ci_high, self.degenerate, min(self.n_subject, self.n_baseline), decimals)


#: A ratio whose interval lies within 1 ± TRIVIAL is not a finding (a "1.01× (1% more)" bullet).
TRIVIAL = 0.02


def ci_text(low: float, high: float, degenerate: bool, n: int, decimals: int = 2, suffix: str = "") -> str:
    """An interval as text: "1.67–2.40", or for too few values "range 1.5–3.1 (n=2)" / "n=1"."""
    if degenerate:
        if n < 2 or round(low, decimals) == round(high, decimals):
            return f"n={n}, no CI"
        return f"range {low:.{decimals}f}–{high:.{decimals}f}{suffix} (n={n})"
    return f"{low:.{decimals}f}–{high:.{decimals}f}{suffix}"


def _verdict(metric_name: str, r: float, ci: Interval, subject: str, baseline: str, workload: str,
             context: int) -> str | None:
    if not ci.clear_of(1.0, 2):
        return None
    where = f"on {workload} prompts at {context} tokens (95% CI {ci.low:.2f}–{ci.high:.2f}×)" \
        if ci.level == 0.95 else \
        f"on {workload} prompts at {context} tokens ({ci.level:.0%} CI {ci.low:.2f}–{ci.high:.2f}×)"
    if metric_name in ("prefill_tok_s", "decode_tok_s"):
        verb = "prefills" if metric_name == "prefill_tok_s" else "decodes"
        if r > 1:
            return f"{subject} {verb} {r:.2f}× faster than {baseline} {where}"
        return f"{subject} {verb} at {r:.2f}× the speed of {baseline} {where}"
    if metric_name == "ttft_ms":
        if r < 1:
            return f"{subject} reaches the first token in {r:.2f}× the time of {baseline} {where}"
        return f"{subject} takes {r:.2f}× as long as {baseline} to the first token {where}"
    pct = f"{abs(r - 1) * 100:.0f}% {'less' if r < 1 else 'more'}"
    if metric_name == "peak_rss_file_mb":
        return f"{subject} pages in {r:.2f}× the weight memory (peak RssFile) of {baseline} ({pct}) {where}"
    if metric_name == "peak_rss_anon_mb":
        return (f"{subject} needs {r:.2f}× the anonymous memory (peak RssAnon: activations, KV cache) "
                f"of {baseline} ({pct}) {where}")
    return f"{subject} peaks at {r:.2f}× the memory of {baseline} ({pct}) {where}"


def ratios(record: RunRecord, subject: str | None = None, baseline: str | None = None,
           level: float = 0.95, n_boot: int = 2000, seed: int = 0,
           rows: list[SummaryRow] | None = None) -> list[RatioRow]:
    """subject ÷ baseline per (workload, context) for each metric both have values for.

    Defaults: the run's subject (models[0]) and baseline. An empty list when there is no baseline.
    """
    subject = subject or (record.meta.models[0] if record.meta.models else None)
    baseline = baseline or record.meta.baseline
    if not subject or not baseline or subject == baseline:
        return []
    rows = rows if rows is not None else summarize(record, level=level, n_boot=n_boot, seed=seed)
    by_key = {r.key: r for r in rows}
    s_name, b_name = model_info(subject)[0], model_info(baseline)[0]
    out = []
    for workload in record.workloads():
        for context in record.contexts():
            s, b = by_key.get((subject, workload, context)), by_key.get((baseline, workload, context))
            if s is None or b is None:
                continue
            for name in RATIO_METRICS:
                a_vals, b_vals = s.values.get(name, []), b.values.get(name, [])
                if not a_vals or not b_vals or median(b_vals) == 0:
                    continue
                pa, pb = pairs(record, subject, baseline, workload, context, name)
                if len(pa) >= MIN_N and min(pb) > 0:
                    ci = paired_ratio_ci(pa, pb, level=level)
                else:
                    ci = ratio_ci(a_vals, b_vals, level=level)
                out.append(RatioRow(
                    subject=subject, baseline=baseline, workload=workload, context=context, metric=name,
                    label=METRIC_INFO[name].ratio_label, ratio=ci.estimate, ci_low=ci.low, ci_high=ci.high,
                    n_subject=len(a_vals), n_baseline=len(b_vals), degenerate=ci.degenerate,
                    verdict=_verdict(name, ci.estimate, ci, s_name, b_name, workload, context),
                    method=ci.method, n_pairs=len(pa), level=level,
                ))
    return out


def pairs(record: RunRecord, subject: str, baseline: str, workload: str, context: int,
          metric_name: str) -> tuple[list[float], list[float]]:
    """The interleaved pairs of one cell: (subject's values, baseline's values) of the measured repetitions
    with the same index (the session runs subject rep i and baseline rep i back to back)."""
    def by_index(model: str) -> dict[int, float]:
        out = {}
        for r in record.measured(model, workload, context):
            v = rep_value(r, metric_name)
            if v is not None and math.isfinite(float(v)):
                out[r.index] = float(v)
        return out

    sa, sb = by_index(subject), by_index(baseline)
    common = sorted(set(sa) & set(sb))
    return [sa[i] for i in common], [sb[i] for i in common]


def workload_ratio(record: RunRecord, model: str, metric_name: str, workload: str, reference: str,
                   context: int, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval | None:
    """metric(workload) ÷ metric(reference) for one model, e.g. real vs templated peak memory."""
    def vals(w: str) -> list[float]:
        return _finite(rep_value(r, metric_name) for r in record.measured()
                       if (r.model, r.workload, r.context) == (model, w, context))

    a, b = vals(workload), vals(reference)
    if not a or not b or median(b) == 0:
        return None
    return ratio_ci(a, b, level=level, n_boot=n_boot, seed=seed)

