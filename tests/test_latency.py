"""Per-token latency: p50/p90/p99 of the decode steps, pooled over the measured repetitions; shown apart from TTFT."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tests.support import factories as F
from devprof import stats
from devprof.report import HtmlRenderer, JsonRenderer, TerminalRenderer
from devprof.results import RunRecord


def _with_steps(record: RunRecord) -> RunRecord:
    reps = []
    for r in record.repetitions:
        if r.result is not None:
            base = 1000.0 / r.result.decode_tok_s
            steps = [base] * 9 + [base * 10]  # one stall in ten steps
            r = replace(r, result=replace(r.result, extra={**r.result.extra, "token_ms": steps}))
        reps.append(r)
    return RunRecord(meta=record.meta, repetitions=reps)


def test_percentiles_exact():
    rec = _with_steps(F.make_record())
    rows = {(r.model, r.workload): r for r in stats.summarize(rec)}
    row = rows[(F.MOE, "real")]
    vals = [v for r in rec.measured(F.MOE, "real") for v in r.result.extra["token_ms"]]
    assert row.itl.n == 30 and row.itl.n_reps == 3
    assert row.itl.p50 == pytest.approx(float(np.quantile(vals, 0.5)))
    assert row.itl.p99 == pytest.approx(float(np.quantile(vals, 0.99)))
    assert row.itl.p90 < row.itl.p99  # the stall shows in the tail only
    assert stats.summarize(F.make_record())[0].itl is None  # a runtime without per-token times: nothing invented


def test_renderers_show_the_tail_apart_from_ttft():
    rec = _with_steps(F.make_record())
    doc = json.loads(JsonRenderer().render(rec))
    itl = doc["results"][0]["inter_token_ms"]
    assert set(itl) == {"p50", "p90", "p99", "n", "n_reps"} and itl["n"] == 30
    text = TerminalRenderer(width=160).render(rec)
    assert "Inter-token latency, ms" in text and "p99" in text
    page = HtmlRenderer().render(rec)
    assert 'id="itl-table"' in page and "Inter-token latency, distribution" in page
