"""Statistics over stored repetitions: medians, bootstrap confidence intervals, MoE/dense ratios.

Plain functions over plain records (pyinstrument's "processors" style): ``summarize(record)`` turns
a run record into one ``SummaryRow`` per (model, workload, context), ``ratios(record)`` compares the
subject model with the baseline. Renderers only format what these return.

Conventions:
- the centre of every metric is the median of the measured repetitions (warm-ups and failed
  repetitions never count);
- the spread is a percentile bootstrap interval of the median (deterministic: fixed seed), the
  coefficient of variation (sample standard deviation / mean) and the min/max;
- with fewer than two values an interval is degenerate, ``(v, v)``, and says so (``degenerate``);
- peak RSS is what the device reported as the process's peak (VmHWM on Linux/Android,
  physFootprint on iOS), never the maximum of the polled samples, which misses short spikes;
- memory in "MB" means MiB (kB / 1024, as /proc reports kB), the unit runtimes print.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from devprof.results import Repetition

if TYPE_CHECKING:  # the store imports this module: no import cycle at run time
    from devprof.store import RunRecord

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


# ---- basic statistics ----------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    """The median (mean of the two middle values for an even count). Raises on no values."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("median of no values")
    return float(statistics.median(vals))


def cv(values: Iterable[float]) -> float | None:
    """Coefficient of variation: sample standard deviation (n - 1) / mean; None when undefined."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return None
    mean = statistics.fmean(vals)
    if mean == 0:
        return None
    return statistics.stdev(vals) / abs(mean)


class Interval(tuple):
    """A confidence interval that unpacks like ``(low, high)``.

    ``degenerate`` is True when there were too few values (< 2) to say anything about spread: the
    interval is then ``(v, v)``. ``estimate`` is the statistic on the original values.
    """

    def __new__(cls, low: float, high: float, *, estimate: float, n: int, level: float,
                degenerate: bool = False) -> Interval:
        self = super().__new__(cls, (float(low), float(high)))
        self.estimate = float(estimate)
        self.n = n
        self.level = level
        self.degenerate = degenerate
        return self

    @property
    def low(self) -> float:
        return self[0]

    @property
    def high(self) -> float:
        return self[1]

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (never for a degenerate one)."""
        return not self.degenerate and (self[0] > value or self[1] < value)

    def __repr__(self) -> str:
        flag = ", degenerate" if self.degenerate else ""
        return f"Interval({self[0]!r}, {self[1]!r}, estimate={self.estimate!r}, n={self.n}{flag})"


def _boot_stats(vals: np.ndarray, stat: Callable[[Sequence[float]], float], n_boot: int,
                rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(vals), size=(n_boot, len(vals)))
    draws = vals[idx]
    if stat is median or stat is np.median or stat is statistics.median:
        return np.median(draws, axis=1)
    return np.array([float(stat(row.tolist())) for row in draws])


def bootstrap_ci(values: Iterable[float], stat: Callable[[Sequence[float]], float] = median,
                 level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``stat`` (deterministic for a given seed).

    With a single value the interval is ``(v, v)`` flagged ``degenerate``. Raises on no values.
    """
    vals = np.asarray([float(v) for v in values], dtype=float)
    if vals.size == 0:
        raise ValueError("bootstrap of no values")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    est = float(stat(vals.tolist()))
    if vals.size < 2:
        return Interval(est, est, estimate=est, n=int(vals.size), level=level, degenerate=True)
    rng = np.random.default_rng(seed)
    boots = _boot_stats(vals, stat, n_boot, rng)
    alpha = 1.0 - level
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Interval(lo, hi, estimate=est, n=int(vals.size), level=level)


def ratio_ci(a_values: Iterable[float], b_values: Iterable[float], level: float = 0.95,
             n_boot: int = 2000, seed: int = 0) -> Interval:
    """Bootstrap interval of median(a) / median(b), resampling a and b independently.

    ``estimate`` is the ratio of the medians. Degenerate ``(r, r)`` when either side has < 2 values.
    """
    a = np.asarray([float(v) for v in a_values], dtype=float)
    b = np.asarray([float(v) for v in b_values], dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("ratio of no values")
    mb = float(np.median(b))
    if mb == 0:
        raise ValueError("ratio with a zero median denominator")
    est = float(np.median(a)) / mb
    if a.size < 2 or b.size < 2:
        return Interval(est, est, estimate=est, n=int(min(a.size, b.size)), level=level, degenerate=True)
    rng = np.random.default_rng(seed)
    ba = _boot_stats(a, median, n_boot, rng)
    bb = _boot_stats(b, median, n_boot, rng)
    ok = bb != 0
    r = ba[ok] / bb[ok]
    alpha = 1.0 - level
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return Interval(lo, hi, estimate=est, n=int(min(a.size, b.size)), level=level)


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
    """Median, bootstrap interval, min/max and CV of the known values; None when there are none."""
    vals = _finite(values)
    if not vals:
        return None
    ci = bootstrap_ci(vals, median, level=level, n_boot=n_boot, seed=seed)
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
    degenerate: bool  # fewer than two values on a side: no interval
    verdict: str | None  # plain words, only when the interval excludes 1.0

    @property
    def ci(self) -> tuple[float, float]:
        return (self.ci_low, self.ci_high)


def _verdict(metric_name: str, r: float, ci: Interval, subject: str, baseline: str, workload: str,
             context: int) -> str | None:
    if not ci.excludes(1.0):
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
                ci = ratio_ci(a_vals, b_vals, level=level, n_boot=n_boot, seed=seed)
                out.append(RatioRow(
                    subject=subject, baseline=baseline, workload=workload, context=context, metric=name,
                    label=METRIC_INFO[name].ratio_label, ratio=ci.estimate, ci_low=ci.low, ci_high=ci.high,
                    n_subject=len(a_vals), n_baseline=len(b_vals), degenerate=ci.degenerate,
                    verdict=_verdict(name, ci.estimate, ci, s_name, b_name, workload, context),
                ))
    return out


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

