"""`devprof diff A B`: every metric of two runs side by side, with the change and its confidence interval.

For each (model, workload, context) both runs measured and each metric of ``stats.METRICS``:
the median of A and of B, the change ``B / A - 1`` (B / A the ratio of the geometric means) with its
interval (``stats.ratio_ci``: Welch's t-interval on the logs), and a status:

- ``regression``: B is worse (slower prefill or decode, higher TTFT, higher peak memory, RssFile or
  RssAnon) by more than the threshold, and the interval excludes "no change";
- ``improvement``: the same, in the good direction;
- ``within threshold``: the interval excludes no change but the change is at most the threshold;
- ``no clear change``: the interval includes 1 (fewer than ``stats.MIN_N`` on a side: no interval at all,
  status ``n < 3``);
- ``not judged (noisy)``: a regression beyond the threshold while run A or B is noisy
  (``devprof.interference.verdict``: other processes busy during many repetitions, or a wide
  spread); it is called a regression only with ``allow_noisy`` (``--allow-noisy``);
- distinct experts are shown, never flagged (more or fewer is neither good nor bad).

A diff across devices, runtimes or settings is allowed and says so in a warning line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devprof import stats
from devprof.analysis.compare import cv_warning
from devprof.errors import ExitCode, UsageError
from devprof.results import RunRecord

FORMAT = "devprof.diff/1"
CV_LIMIT = 0.05


@dataclass
class DiffRow:
    model: str
    display: str
    workload: str
    context: int
    metric: str
    a: stats.Metric | None
    b: stats.Metric | None
    ratio: stats.Interval | None  # median(B) / median(A)
    threshold: float  # percent
    noisy: bool = False  # A or B is noisy (devprof.interference) and --allow-noisy was not given

    @property
    def change_pct(self) -> float | None:
        return None if self.ratio is None else (self.ratio.estimate - 1.0) * 100.0

    @property
    def ci_pct(self) -> tuple[float, float] | None:
        if self.ratio is None or self.ratio.degenerate:
            return None
        return ((self.ratio.low - 1.0) * 100.0, (self.ratio.high - 1.0) * 100.0)

    @property
    def worse(self) -> bool | None:
        """Whether B moved in the bad direction (None: the metric has no good direction, or no ratio)."""
        hib = stats.METRIC_INFO[self.metric].higher_is_better
        if hib is None or self.ratio is None:
            return None
        return self.ratio.estimate < 1.0 if hib else self.ratio.estimate > 1.0

    @property
    def status(self) -> str:
        if self.ratio is None:
            return "—"
        if self.ratio.degenerate:
            return f"n < {stats.MIN_N}"
        if not self.ratio.clear_of(1.0, 2, scale=100.0, offset=1.0):
            return "no clear change"
        if abs(self.change_pct) <= self.threshold:
            return "within threshold"
        w = self.worse
        if w is None:
            return "changed"
        if w and self.noisy:
            return "not judged (noisy)"
        return "regression" if w else "improvement"

    @property
    def flagged(self) -> bool:
        return self.status == "regression"

    def words(self) -> str:
        """The flagged change in plain words."""
        info = stats.METRIC_INFO[self.metric]
        ci = self.ci_pct
        lo, hi = ci if ci else (self.change_pct, self.change_pct)
        what = {"prefill_tok_s": "prefill is slower", "decode_tok_s": "decode is slower", "ttft_ms": "TTFT is longer",
                }.get(self.metric, f"{info.label} is higher")
        if not self.worse:
            what = {"prefill_tok_s": "prefill is faster", "decode_tok_s": "decode is faster",
                    "ttft_ms": "TTFT is shorter"}.get(self.metric, f"{info.label} is lower")
        return (f"{self.display} · {self.workload} · {self.context}: {what} by {abs(self.change_pct):.1f}% "
                f"(95% CI {lo:+.1f}% to {hi:+.1f}%; {_fmt(self.a)} → {_fmt(self.b)} {info.unit})")


def _fmt(m: stats.Metric | None) -> str:
    return "—" if m is None else f"{m.median:,.2f}"


@dataclass
class DiffReport:
    a: RunRecord
    b: RunRecord
    threshold: float
    rows: list[DiffRow]
    warnings: list[str] = field(default_factory=list)
    only_a: list[tuple[str, str, int]] = field(default_factory=list)
    only_b: list[tuple[str, str, int]] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)  # "run B: host busy: ..." for each noisy run
    allow_noisy: bool = False

    @property
    def unjudged(self) -> list[DiffRow]:
        """Regressions beyond the threshold that are not called because a run is noisy."""
        return [r for r in self.rows if r.status == "not judged (noisy)"]

    @property
    def regressions(self) -> list[DiffRow]:
        return [r for r in self.rows if r.flagged]

    @property
    def improvements(self) -> list[DiffRow]:
        return [r for r in self.rows if r.status == "improvement"]

    @property
    def exit_code(self) -> int:
        return ExitCode.REGRESSION if self.regressions else ExitCode.OK


def _describe(m) -> str:
    d = m.device
    return f"{d.name or d.serial} ({d.kind}{', ' + d.model if d.model and d.model not in (d.name or '') else ''})"


def _setting_warnings(a: RunRecord, b: RunRecord) -> list[str]:
    ma, mb = a.meta, b.meta
    out = []
    if (ma.device.kind, ma.device.serial) != (mb.device.kind, mb.device.serial):
        out.append(f"different devices: A ran on {_describe(ma)}, B on {_describe(mb)}; the changes include the device")
    elif ma.device.name != mb.device.name:
        out.append(f"the device's name changed: {ma.device.name} → {mb.device.name}")
    if ma.runtime != mb.runtime:
        out.append(f"different runtimes: A {ma.runtime}, B {mb.runtime}")
    if ma.device.memory_metric != mb.device.memory_metric:
        out.append(f"peak memory means different things: A {ma.device.memory_metric}, B {mb.device.memory_metric}")
    if ma.new_tokens != mb.new_tokens:
        out.append(f"different generation lengths: A {ma.new_tokens} new tokens, B {mb.new_tokens}")
    sa, sb = ma.settings or {}, mb.settings or {}
    for key in ("cache", "threads", "cpu_mask", "seed", "binary", "weights", "runtime_args"):
        if key in sa or key in sb:
            if sa.get(key) != sb.get(key):
                out.append(f"setting {key} differs: A {sa.get(key)!r}, B {sb.get(key)!r}")
    for m, rec in (("A", a), ("B", b)):
        if rec.meta.status != "complete":
            out.append(f"run {m} ({rec.meta.run_id}) is {rec.meta.status}")
    return out


def diff_runs(a: RunRecord, b: RunRecord, threshold: float = 5.0, level: float = 0.95, n_boot: int = 2000,
              seed: int = 0, allow_noisy: bool = False) -> DiffReport:
    """Compare run B against run A (A is the reference: "B is 7% slower")."""
    if threshold < 0:
        raise UsageError(f"--threshold must be >= 0, got {threshold}")
    for name, rec in (("A", a), ("B", b)):
        if not rec.measured():
            raise UsageError(f"run {rec.meta.run_id} ({name}) has no measured repetitions ({rec.meta.status}): "
                             "nothing to diff")
    rows_a = {r.key: r for r in stats.summarize(a, level=level, n_boot=n_boot, seed=seed) if r.n}
    rows_b = {r.key: r for r in stats.summarize(b, level=level, n_boot=n_boot, seed=seed) if r.n}
    common = [k for k in rows_a if k in rows_b]
    if not common:
        raise UsageError(f"runs {a.meta.run_id} and {b.meta.run_id} measured nothing in common "
                         f"(A: {_keys(rows_a)}; B: {_keys(rows_b)})")
    warnings = _setting_warnings(a, b)
    from devprof.interference import verdict as noise_verdict

    noise = []
    for tag, rec in (("A", a), ("B", b)):
        v = noise_verdict(rec)
        if v.noisy:
            noise.append(f"run {tag} ({rec.meta.run_id}): {v.line}")
    noisy = bool(noise) and not allow_noisy
    out = []
    for key in common:
        ra, rb = rows_a[key], rows_b[key]
        if ra.cache_states != rb.cache_states:
            warnings.append(f"{ra.display} · {key[1]} · {key[2]}: page cache {'/'.join(ra.cache_states) or '?'} in A, "
                            f"{'/'.join(rb.cache_states) or '?'} in B: memory figures are not like for like")
        for name in stats.METRICS:
            va, vb = ra.values.get(name, []), rb.values.get(name, [])
            ratio = None
            if va and vb and stats.median(va) != 0:
                ratio = stats.ratio_ci(vb, va, level=level, n_boot=n_boot, seed=seed)
            if ratio is None and not va and not vb:
                continue
            out.append(DiffRow(model=key[0], display=ra.display, workload=key[1], context=key[2], metric=name,
                               a=ra.metric(name), b=rb.metric(name), ratio=ratio, threshold=threshold,
                               noisy=noisy))
        for tag, row in (("A", ra), ("B", rb)):
            w = cv_warning(row, CV_LIMIT, prefix=f"run {tag}: ")
            if w:
                warnings.append(w)
    return DiffReport(a=a, b=b, threshold=threshold, rows=out, warnings=warnings,
                      only_a=[k for k in rows_a if k not in rows_b], only_b=[k for k in rows_b if k not in rows_a],
                      noise=noise, allow_noisy=allow_noisy)


def _keys(rows: dict) -> str:
    return ", ".join(f"{m}/{w}/{c}" for m, w, c in rows) or "nothing"


def to_dict(d: DiffReport) -> dict[str, Any]:
    def m(x: stats.Metric | None, nd: int) -> dict | None:
        if x is None:
            return None
        return {"median": round(x.median, nd), "ci": [round(x.ci_low, nd), round(x.ci_high, nd)],
                "cv": None if x.cv is None else round(x.cv, 4), "n": x.n}

    rows = []
    for r in d.rows:
        nd = stats.METRIC_INFO[r.metric].decimals
        ci = r.ci_pct
        rows.append({"model": r.model, "workload": r.workload, "context": r.context, "metric": r.metric,
                     "a": m(r.a, nd), "b": m(r.b, nd),
                     "change_pct": None if r.change_pct is None else round(r.change_pct, 2),
                     "change_ci_pct": None if ci is None else [round(ci[0], 2), round(ci[1], 2)],
                     "status": r.status, "flagged": r.flagged})
    return {"format": FORMAT, "a": d.a.meta.run_id, "b": d.b.meta.run_id, "threshold_pct": d.threshold,
            "regressions": len(d.regressions), "improvements": len(d.improvements), "exit_code": d.exit_code,
            "noise": d.noise, "allow_noisy": d.allow_noisy, "not_judged_noisy": len(d.unjudged),
            "warnings": d.warnings, "only_in_a": [list(k) for k in d.only_a], "only_in_b": [list(k) for k in d.only_b],
            "rows": rows}
