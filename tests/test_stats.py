"""Statistics on hand-made repetitions whose medians, intervals and ratios are known exactly."""

from __future__ import annotations

import pytest

from devprof import stats
from devprof.results import DeviceInfo, MemorySample, ProcessOutcome, Repetition, RoutingSummary, RunMeta, RunResult
from devprof.store import RunRecord

MOE, DENSE = "mobilemoe-s-mini", "mobilellm-pro-mini"


# ---- basic functions ---------------------------------------------------------------------------
def test_median_odd_even_and_empty():
    assert stats.median([3, 1, 2]) == 2.0
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.median([7]) == 7.0
    with pytest.raises(ValueError):
        stats.median([])


def test_cv_is_sample_stdev_over_mean():
    assert stats.cv([2, 4, 6]) == pytest.approx(0.5)  # stdev (n-1) = 2, mean = 4
    assert stats.cv([10, 10, 10]) == 0.0
    assert stats.cv([5]) is None
    assert stats.cv([0, 0]) is None


def test_bootstrap_single_value_is_degenerate():
    ci = stats.bootstrap_ci([7.0])
    assert ci == (7.0, 7.0)
    assert ci.degenerate and ci.n == 1 and ci.estimate == 7.0
    assert not ci.excludes(1.0)  # a degenerate interval never claims anything


def test_bootstrap_constant_values():
    ci = stats.bootstrap_ci([5, 5, 5, 5])
    assert ci == (5.0, 5.0) and not ci.degenerate


def test_bootstrap_two_values_spans_both():
    # resampled medians are 1 (p=1/4), 2 (1/2), 3 (1/4): the 2.5% and 97.5% quantiles are 1 and 3
    lo, hi = stats.bootstrap_ci([1.0, 3.0])
    assert (lo, hi) == (1.0, 3.0)


def test_bootstrap_is_deterministic_for_a_seed():
    vals = [812.0, 845.5, 799.1, 870.2, 830.0]
    assert stats.bootstrap_ci(vals) == stats.bootstrap_ci(vals)
    assert stats.bootstrap_ci(vals, seed=1) == stats.bootstrap_ci(vals, seed=1)
    lo, hi = stats.bootstrap_ci(vals)
    assert min(vals) <= lo <= stats.median(vals) <= hi <= max(vals)


def test_bootstrap_other_statistic_and_level():
    vals = [1.0, 2.0, 3.0, 4.0, 100.0]
    ci = stats.bootstrap_ci(vals, stat=max, level=0.5)
    assert ci.estimate == 100.0 and ci.level == 0.5
    assert ci.high == 100.0
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1, 2], level=1.5)


def test_ratio_ci_exact_cases():
    assert stats.ratio_ci([2, 2, 2], [1, 1, 1]) == (2.0, 2.0)
    # median(b*) is 4 with p = 7/27, 6 with p = 7/27, else 5: the 2.5%/97.5% quantiles are 10/6 and 10/4
    ci = stats.ratio_ci([10, 10, 10], [4, 5, 6])
    assert ci.estimate == 2.0
    assert ci.low == pytest.approx(10 / 6) and ci.high == pytest.approx(2.5)
    assert ci.excludes(1.0)


def test_ratio_ci_degenerate_and_errors():
    ci = stats.ratio_ci([4, 6], [2])
    assert ci == (2.5, 2.5) and ci.degenerate
    with pytest.raises(ValueError):
        stats.ratio_ci([], [1])
    with pytest.raises(ValueError):
        stats.ratio_ci([1], [0, 0])


# ---- hand-made repetitions ---------------------------------------------------------------------
def _rep(model, workload="real", index=0, *, prefill=None, decode=None, ttft=None, peak_mib=None, samples=(),
         distinct=None, warmup=False, status="ok", cache="cold") -> Repetition:
    result = None if status != "ok" else RunResult(runtime="reference", prefill_tok_s=prefill, decode_tok_s=decode,
                                                   ttft_ms=ttft)
    outcome = ProcessOutcome(exit_code=0 if status == "ok" else 1, stdout="", stderr="", start_wall_ms=0.0,
                             wall_ms=100.0, samples=list(samples),
                             peak_rss_kb=None if peak_mib is None else int(peak_mib * 1024), status=status)
    routing = None
    if distinct is not None:
        routing = RoutingSummary(n_layers=6, n_experts=60, top_k=4, n_tokens=100, distinct_pairs=distinct,
                                 distinct_per_layer=[distinct // 6] * 6, coverage_tokens=[100],
                                 coverage_distinct=[distinct], expert_load=[[0] * 60] * 6)
    return Repetition(model=model, workload=workload, context=1024, index=index, warmup=warmup, result=result,
                      outcome=outcome, cache_state=cache, routing=routing)


def _samples(file_mib: float, anon_mib: float) -> list[MemorySample]:
    return [MemorySample(t_ms=0, rss_kb=1024, anon_kb=512, file_kb=512),
            MemorySample(t_ms=10, rss_kb=int((file_mib + anon_mib) * 1024), anon_kb=int(anon_mib * 1024),
                         file_kb=int(file_mib * 1024))]


def _record(reps, models=(MOE, DENSE), workloads=("real",), reps_per=3) -> RunRecord:
    meta = RunMeta(run_id="r1", created="2026-01-01T00:00:00+00:00",
                   device=DeviceInfo(kind="local", serial="local", name="host"), runtime="reference",
                   models=list(models), baseline=models[1] if len(models) > 1 else None, workloads=list(workloads),
                   contexts=[1024], new_tokens=16, reps=reps_per, warmup=1, sample_ms=10, status="complete")
    return RunRecord(meta=meta, repetitions=reps)


@pytest.fixture
def record() -> RunRecord:
    reps = [
        # warm-ups and failures must not count
        _rep(MOE, index=-1, warmup=True, prefill=9999, decode=9999, ttft=1, peak_mib=9999, distinct=1),
        _rep(DENSE, index=-1, warmup=True, prefill=9999, decode=9999, ttft=1, peak_mib=9999),
        _rep(MOE, index=0, prefill=100, decode=20, ttft=10, peak_mib=100, distinct=100, samples=_samples(40, 20)),
        _rep(MOE, index=1, prefill=110, decode=22, ttft=20, peak_mib=200, distinct=120, samples=_samples(60, 30)),
        _rep(MOE, index=2, prefill=120, decode=24, ttft=30, peak_mib=150, distinct=110, samples=_samples(50, 25),
             cache="warm"),
        _rep(MOE, index=3, status="failed"),
        _rep(DENSE, index=0, prefill=50, decode=10, ttft=15, peak_mib=300, samples=_samples(200, 50)),
        _rep(DENSE, index=1, prefill=55, decode=11, ttft=20, peak_mib=300, samples=_samples(200, 50)),
        _rep(DENSE, index=2, prefill=60, decode=12, ttft=25, peak_mib=300, samples=_samples(200, 50)),
    ]
    return _record(reps)


def test_peak_rss_is_the_reported_peak_not_the_largest_sample():
    samples = [MemorySample(t_ms=0, rss_kb=100_000, hwm_kb=100_000), MemorySample(t_ms=10, rss_kb=90_000, hwm_kb=120_000)]
    rep = _rep(MOE, peak_mib=150, samples=samples)
    assert stats.peak_rss_kb(rep) == 150 * 1024
    rep.outcome.peak_rss_kb = None  # no exit figure: the kernel's high-water mark from the samples
    assert stats.peak_rss_kb(rep) == 120_000
    rep.outcome.samples = [MemorySample(t_ms=0, rss_kb=100_000)]  # RSS samples alone are no peak
    assert stats.peak_rss_kb(rep) is None


def test_summarize_exact_numbers(record):
    rows = stats.summarize(record)
    assert [(r.model, r.workload, r.context) for r in rows] == [(MOE, "real", 1024), (DENSE, "real", 1024)]
    moe, dense = rows
    assert (moe.n, moe.n_failed, moe.kind, moe.display) == (3, 1, "moe", "MobileMoE-S-mini")
    assert moe.cache_states == ["cold", "warm"]
    assert moe.memory_metric == "VmHWM"

    p = moe.prefill_tok_s
    assert (p.median, p.min, p.max, p.n) == (110.0, 100.0, 120.0, 3)
    assert p.cv == pytest.approx(10 / 110)
    assert p.min <= p.ci_low <= p.median <= p.ci_high <= p.max
    assert moe.decode_tok_s.median == 22.0
    assert moe.ttft_ms.median == 20.0
    assert moe.peak_rss_mb.median == 150.0 and moe.peak_rss_mb.max == 200.0
    assert moe.peak_rss_file_mb.median == 50.0
    assert moe.peak_rss_anon_mb.median == 25.0
    assert moe.distinct_experts.median == 110.0

    assert dense.kind == "dense" and dense.distinct_experts is None
    assert dense.peak_rss_mb == stats.Metric(median=300.0, ci_low=300.0, ci_high=300.0, min=300.0, max=300.0,
                                             cv=0.0, n=3)
    assert dense.prefill_tok_s.median == 55.0


def test_summarize_keeps_planned_rows_without_results():
    rec = _record([_rep(MOE, prefill=100)], workloads=("real", "templated"))
    rows = stats.summarize(rec)
    assert [(r.model, r.workload, r.n) for r in rows] == [(MOE, "real", 1), (MOE, "templated", 0),
                                                          (DENSE, "real", 0), (DENSE, "templated", 0)]
    one = rows[0].prefill_tok_s
    assert (one.median, one.ci_low, one.ci_high, one.cv, one.n) == (100.0, 100.0, 100.0, None, 1)
    assert one.degenerate
    assert rows[1].prefill_tok_s is None and rows[1].peak_rss_mb is None


def test_ratios_exact_with_verdicts(record):
    by = {r.metric: r for r in stats.ratios(record)}
    assert set(by) == {"prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb", "peak_rss_file_mb",
                       "peak_rss_anon_mb"}
    pre = by["prefill_tok_s"]
    assert (pre.subject, pre.baseline, pre.workload, pre.context) == (MOE, DENSE, "real", 1024)
    assert pre.label == "speedup" and pre.ratio == 2.0
    # medians of 3 resampled values: extremes each have p = 7/27, so the interval is (100/60, 120/50)
    assert pre.ci_low == pytest.approx(100 / 60) and pre.ci_high == pytest.approx(2.4)
    assert (pre.n_subject, pre.n_baseline) == (3, 3)
    assert pre.verdict.startswith("MobileMoE-S-mini prefills 2.00× faster than MobileLLM-Pro-mini on real prompts")
    assert "95% CI 1.67–2.40×" in pre.verdict

    mem = by["peak_rss_mb"]
    assert mem.label == "memory ratio" and mem.ratio == 0.5
    assert mem.ci == pytest.approx((100 / 300, 200 / 300))
    assert "peaks at 0.50× the memory of MobileLLM-Pro-mini (50% less)" in mem.verdict

    ttft = by["ttft_ms"]  # medians 20 vs 20: the interval includes 1, so no verdict
    assert ttft.ratio == 1.0 and ttft.ci_low < 1 < ttft.ci_high
    assert ttft.verdict is None


def test_ratios_without_baseline_or_data(record):
    assert stats.ratios(record, subject=MOE, baseline=MOE) == []
    record.meta.baseline = None
    assert stats.ratios(record) == []
    lonely = _record([_rep(MOE, prefill=100)])
    assert stats.ratios(lonely) == []  # the baseline has no values


def test_ratio_with_one_value_per_side_has_no_verdict():
    rec = _record([_rep(MOE, prefill=300, peak_mib=100), _rep(DENSE, prefill=100, peak_mib=200)])
    pre = {r.metric: r for r in stats.ratios(rec)}["prefill_tok_s"]
    assert pre.ratio == 3.0 and pre.degenerate and pre.verdict is None


def test_workload_ratio_real_vs_templated():
    reps = [_rep(MOE, "templated", i, peak_mib=v) for i, v in enumerate((100, 100, 100))]
    reps += [_rep(MOE, "real", i, peak_mib=v) for i, v in enumerate((130, 130, 130))]
    rec = _record(reps, workloads=("templated", "real"))
    ci = stats.workload_ratio(rec, MOE, "peak_rss_mb", "real", "templated", 1024)
    assert ci.estimate == pytest.approx(1.3) and ci == pytest.approx((1.3, 1.3))
    assert stats.workload_ratio(rec, DENSE, "peak_rss_mb", "real", "templated", 1024) is None


def test_ratio_names():
    assert stats.ratio_name("prefill_tok_s") == "prefill speedup"
    assert stats.ratio_name("ttft_ms") == "TTFT ratio"
    assert stats.ratio_name("peak_rss_mb") == "peak RSS memory ratio"
