"""`devprof diff`: two runs side by side; a slowed run is flagged, two runs of the same thing are not."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.support import factories as F
from devprof import stats
from devprof.report.terminal_compare import diff_renderables, to_text
from devprof.analysis.diff import DiffRow, diff_runs, to_dict
from devprof.errors import UsageError
from devprof.results import RunRecord


def slowed_record(monkeypatch, factor: float = 0.8, extra_anon_kb: int = 0, seed: int = 0, **kw) -> RunRecord:
    """The factories' run with the MoE model's runtime ``factor`` times as fast (and more RssAnon)."""
    with monkeypatch.context() as m:
        m.setitem(F.SPEEDS, F.MOE, {k: v * factor for k, v in F.SPEEDS[F.MOE].items()})
        if extra_anon_kb:
            m.setitem(F.ANON_BASE_KB, F.MOE, F.ANON_BASE_KB[F.MOE] + extra_anon_kb)
        return F.make_record(seed=seed, run_id="20260922-090000-b0b0", created="2026-09-22T09:00:00+00:00", **kw)


def rerun(record: RunRecord, seed: int = 1, noise: float = 0.02) -> RunRecord:
    """The same run measured again: the same routing and memory layout, other timing noise (and a little
    memory noise), as two `devprof run`s of the same thing on a quiet machine."""
    rng = np.random.default_rng(seed)
    reps = []
    for r in record.repetitions:
        res = r.result and replace(r.result, prefill_tok_s=r.result.prefill_tok_s * (1 + noise * rng.standard_normal()),
                                   decode_tok_s=r.result.decode_tok_s * (1 + noise * rng.standard_normal()),
                                   ttft_ms=r.result.ttft_ms * (1 + noise * rng.standard_normal()))
        o = replace(r.outcome, peak_rss_kb=int(r.outcome.peak_rss_kb * (1 + 0.002 * rng.standard_normal())))
        reps.append(replace(r, result=res, outcome=o))
    return RunRecord(meta=replace(record.meta, run_id=f"{record.meta.run_id}-again"), repetitions=reps)


@pytest.fixture(scope="module")
def base() -> RunRecord:
    return F.make_record(seed=0)


def test_two_runs_of_the_same_thing_pass(base):
    d = diff_runs(base, rerun(base))
    assert d.regressions == [] and d.exit_code == 0
    assert {r.status for r in d.rows} <= {"no clear change", "within threshold", "improvement", "changed"}
    assert len(d.rows) == 4 * 7 - 2  # 4 (model, workload) x 7 metrics, dense has no distinct experts
    assert d.warnings == []
    assert diff_runs(base, base).exit_code == 0


def test_a_slowed_run_is_flagged(base, monkeypatch):
    slow = slowed_record(monkeypatch, factor=0.8, extra_anon_kb=40_000)
    d = diff_runs(base, slow)
    assert d.exit_code == 1
    flagged = {(r.model, r.workload, r.metric) for r in d.regressions}
    for w in ("templated", "real"):
        assert {(F.MOE, w, "prefill_tok_s"), (F.MOE, w, "decode_tok_s"), (F.MOE, w, "ttft_ms"),
                (F.MOE, w, "peak_rss_mb"), (F.MOE, w, "peak_rss_anon_mb")} <= flagged
    assert not any(m == F.DENSE for m, _, _ in flagged)  # the baseline did not change
    row = next(r for r in d.regressions if (r.workload, r.metric) == ("real", "decode_tok_s"))
    assert row.change_pct == pytest.approx(-20, abs=4)
    lo, hi = row.ci_pct
    assert lo <= row.change_pct <= hi < -5
    assert "decode is slower by" in row.words() and "95% CI" in row.words()
    text = to_text(diff_renderables(d), width=180)
    assert "regression(s) beyond 5%" in text and "✗ MobileMoE-S-mini · real · 2048: decode is slower" in text
    # the other way round it is an improvement, not a regression
    back = diff_runs(slow, base)
    assert back.exit_code == 0 and back.improvements


def test_threshold_decides(base, monkeypatch):
    slow = slowed_record(monkeypatch, factor=0.9)
    assert diff_runs(base, slow, threshold=5).exit_code == 1
    d = diff_runs(base, slow, threshold=25)
    assert d.exit_code == 0
    assert any(r.status == "within threshold" for r in d.rows)  # clear, but smaller than 25%


def test_no_flag_without_a_clear_interval(base):
    one_a = F.make_record(seed=0, reps=1)
    one_b = F.make_record(seed=5, reps=1)
    d = diff_runs(one_a, one_b, threshold=0)
    assert d.exit_code == 0 and {r.status for r in d.rows} == {"n < 3"}
    assert all(r.ci_pct is None for r in d.rows)


def test_status_rules():
    m = stats.metric([10.0, 10.1, 9.9])

    def row(metric: str, lo: float, hi: float, est: float) -> DiffRow:
        return DiffRow(model=F.MOE, display="M", workload="real", context=1, metric=metric, a=m, b=m,
                       ratio=stats.Interval(lo, hi, estimate=est, n=3, level=0.95), threshold=5.0)

    assert row("decode_tok_s", 0.80, 0.90, 0.85).status == "regression"
    assert row("decode_tok_s", 0.80, 1.01, 0.85).status == "no clear change"
    assert row("ttft_ms", 1.10, 1.30, 1.2).status == "regression"
    assert row("ttft_ms", 0.70, 0.90, 0.8).status == "improvement"
    assert row("peak_rss_mb", 1.01, 1.04, 1.02).status == "within threshold"
    assert row("distinct_experts", 1.2, 1.4, 1.3).status == "changed"
    assert not row("distinct_experts", 1.2, 1.4, 1.3).flagged


def test_across_devices_warns(base, monkeypatch):
    phone = F.make_record(seed=1, device=F.make_device("ios"))
    d = diff_runs(base, phone)
    assert any(w.startswith("different devices: A ran on Galaxy S25 (SM-S931B)") and "iPhone 16 Pro" in w
               for w in d.warnings)
    assert any("peak memory means different things" in w for w in d.warnings)
    text = to_text(diff_renderables(d), width=180)
    assert "warning: different devices" in text


def test_cache_state_and_settings_differences_warn(base):
    meta, reps = F.make_run(seed=1, settings={"cache": "warm", "seed": 0, "threads": 4})
    for r in reps:
        r.cache_state = "warm"
    d = diff_runs(base, RunRecord(meta=replace(meta, run_id="x", status="complete"), repetitions=reps))
    assert any("page cache cold in A, warm in B" in w for w in d.warnings)
    assert any(w.startswith("setting cache differs") for w in d.warnings)


def test_nothing_in_common_or_empty(base):
    other = F.make_record(contexts=(512,))
    with pytest.raises(UsageError, match="measured nothing in common"):
        diff_runs(base, other)
    with pytest.raises(UsageError, match="no measured repetitions"):
        diff_runs(base, F.make_record(limit=0, status="interrupted"))
    with pytest.raises(UsageError, match="threshold"):
        diff_runs(base, base, threshold=-1)


def test_only_in_one_run_is_listed(base):
    wider = F.make_record(seed=1, workloads=("templated", "real", "real:code"))
    d = diff_runs(base, wider)
    assert d.only_b == [(F.MOE, "real:code", 2048), (F.DENSE, "real:code", 2048)]
    assert "only in B: mobilemoe-s-mini/real:code/2048" in to_text(diff_renderables(d), width=200)


def test_json(base, monkeypatch):
    d = to_dict(diff_runs(base, slowed_record(monkeypatch)))
    json.dumps(d, allow_nan=False)
    assert d["format"] == "devprof.diff/1" and d["exit_code"] == 1 and d["regressions"] >= 6
    r = d["rows"][0]
    assert list(r) == ["model", "workload", "context", "metric", "a", "b", "change_pct", "change_ci_pct", "status",
                       "flagged"]
