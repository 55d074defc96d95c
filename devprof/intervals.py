"""The interval maths behind devprof.stats: medians, the coefficient of variation, confidence intervals
of a median (order statistics, bootstrap) and of a ratio (paired t or Welch's t on the logs), Student's t
quantile. Plain numbers in, numbers out; :mod:`devprof.stats` says which one each summary uses and why.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

import numpy as np

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
