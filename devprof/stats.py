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
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

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
                degenerate: bool = False, method: str = "bootstrap") -> Interval:
        self = super().__new__(cls, (float(low), float(high)))
        self.estimate = float(estimate)
        self.n = n
        self.level = level
        self.degenerate = degenerate
        self.method = "range" if degenerate and method != "bootstrap" else method
        return self

    def clear_of(self, value: float, decimals: int = 2, scale: float = 1.0, offset: float = 0.0) -> bool:
        """Whether the interval excludes ``value`` even as printed: with ``decimals`` decimals of
        ``(bound - offset) * scale`` (a "1.00–1.05" interval touches 1; "0.0–2.7%" touches 0)."""
        if not self.excludes(value):
            return False
        lo, hi = (round((b - offset) * scale, decimals) for b in (self[0], self[1]))
        v = round((value - offset) * scale, decimals)
        return min(lo, hi) > v or max(lo, hi) < v

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


#: Fewest values (pairs, or values a side) a ratio needs for an interval; below it only the range.
MIN_N = 3


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


@lru_cache(maxsize=4096)
def _t_upper_quantile(q: float, df: float) -> float:
    def upper(t: float) -> float:  # P(T > t) for t >= 0
        return 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))

    lo, hi = 0.0, 1.0
    while upper(hi) > 1 - q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if upper(mid) > 1 - q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` (possibly fractional, kept to 3 decimals) degrees of freedom."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    t = _t_upper_quantile(round(max(p, 1 - p), 12), round(float(df), 3))
    return t if p > 0.5 else -t


def _logs(values: Iterable[float]) -> np.ndarray | None:
    v = np.asarray([float(x) for x in values], dtype=float)
    if v.size and (v <= 0).any():
        return None
    return np.log(v)


def paired_ratio_ci(a_values: Sequence[float], b_values: Sequence[float], level: float = 0.95) -> Interval:
    """Interval of the ratio a / b from pairs ``(a[i], b[i])`` run back to back (interleaved).

    ``estimate`` is the geometric mean of the pairs' ratios; the interval is Student's t on the logs of
    the pairs' ratios, ``exp(mean ± t(n-1) · sd / √n)``, exact for lognormal (multiplicative) noise at
    any n, and drift that falls on both members of a pair cancels. With fewer than ``MIN_N`` pairs (or
    a value <= 0) there is no interval: ``(min, max)`` of the pairs' ratios, flagged ``degenerate``.
    """
    a = [float(x) for x in a_values]
    b = [float(x) for x in b_values]
    if len(a) != len(b):
        raise ValueError(f"paired ratio needs as many values on each side ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError("ratio of no values")
    if any(x == 0 for x in b):
        raise ValueError("ratio with a zero denominator")
    r = [x / y for x, y in zip(a, b)]
    d = _logs(r)
    if d is None or len(r) < MIN_N:
        est = float(np.exp(d.mean())) if d is not None else median(r)
        return Interval(min(r), max(r), estimate=est, n=len(r), level=level, degenerate=True, method="range")
    n = len(d)
    m, sd = float(d.mean()), float(d.std(ddof=1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(math.exp(m - half), math.exp(m + half), estimate=math.exp(m), n=n, level=level,
                    method="paired t on log ratios")


def ratio_ci(a_values: Iterable[float], b_values: Iterable[float], level: float = 0.95,
             n_boot: int = 2000, seed: int = 0) -> Interval:
    """Interval of a / b from two independent samples (not run in pairs).

    ``estimate`` is the ratio of the geometric means; the interval is Welch's t on the logs (unequal
    variances, Welch–Satterthwaite degrees of freedom), exact-ish for lognormal noise at small n.
    Fewer than ``MIN_N`` values on a side (or a value <= 0): ``(min(a)/max(b), max(a)/min(b))``, the
    range, flagged ``degenerate``. ``n_boot`` and ``seed`` are accepted for older callers and unused.
    """
    a = np.asarray([float(v) for v in a_values], dtype=float)
    b = np.asarray([float(v) for v in b_values], dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("ratio of no values")
    if float(np.median(b)) == 0 or (b == 0).any():
        raise ValueError("ratio with a zero median denominator")
    la, lb = _logs(a), _logs(b)
    n = int(min(a.size, b.size))
    if la is None or lb is None or n < MIN_N:
        est = float(np.exp(la.mean() - lb.mean())) if la is not None and lb is not None \
            else float(np.median(a)) / float(np.median(b))
        rng = sorted([a.min() / b.max(), a.max() / b.min()])
        return Interval(rng[0], rng[1], estimate=est, n=n, level=level, degenerate=True, method="range")
    m = float(la.mean() - lb.mean())
    va, vb = float(la.var(ddof=1)) / a.size, float(lb.var(ddof=1)) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(math.exp(m), math.exp(m), estimate=math.exp(m), n=n, level=level, method="Welch t on logs")
    df = (va + vb) ** 2 / ((va ** 2 / (a.size - 1) if va else 0.0) + (vb ** 2 / (b.size - 1) if vb else 0.0))
    half = t_quantile(0.5 + level / 2, df) * se
    return Interval(math.exp(m - half), math.exp(m + half), estimate=math.exp(m), n=n, level=level,
                    method="Welch t on logs")


def bootstrap_ratio_ci(a_values: Iterable[float], b_values: Iterable[float], level: float = 0.95,
                       n_boot: int = 2000, seed: int = 0) -> Interval:
    """The former percentile bootstrap of median(a) / median(b) (kept for the coverage comparison)."""
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


def median_ci(values: Iterable[float], level: float = 0.95) -> Interval:
    """The distribution-free interval of the median from order statistics: ``(x(k), x(n-k+1))`` with the
    largest k whose binomial coverage ``1 - 2 P(Bin(n, 1/2) <= k-1)`` is at least ``level``.

    Exact for any continuous distribution, no resampling. Below the n where any k reaches ``level`` (n <= 5
    for 95%) it is the range, whose coverage ``1 - 2^(1-n)`` is less (94% at n = 5, 75% at n = 3):
    ``method`` says "range" then. One value: degenerate ``(v, v)``.
    """
    vals = sorted(float(v) for v in values)
    n = len(vals)
    if n == 0:
        raise ValueError("median of no values")
    est = median(vals)
    if n < 2:
        return Interval(est, est, estimate=est, n=n, level=level, degenerate=True, method="range")
    cdf, k_best = 0.0, 0
    for k in range(1, n // 2 + 1):  # cdf = P(B <= k - 1)
        cdf += math.comb(n, k - 1) / 2 ** n
        if 1 - 2 * cdf >= level:
            k_best = k
        else:
            break
    if k_best == 0:
        return Interval(vals[0], vals[-1], estimate=est, n=n, level=level, method="range")
    return Interval(vals[k_best - 1], vals[n - k_best], estimate=est, n=n, level=level, method="order statistics")


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

