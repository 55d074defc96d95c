"""`devprof export`: every format read back -- CSV, JSON, Markdown, and Perfetto trace-event JSON validated
against the trace-event format (the `perfetto` package's trace processor downloads a binary at run time,
which cannot work offline here, so the structure is checked by ``report.perfetto.validate_trace``)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from tests.support import factories as F
from devprof import report
from devprof.report import perfetto
from devprof.report.csv import to_csv
from devprof.report.jsonexport import to_json
from devprof.report.markdown import to_markdown
from devprof.report.rows import columns
from devprof import stats
from devprof.errors import DevprofError, UsageError
from devprof.report.base import analyse
from devprof.report.jsonout import result_dicts
from devprof.results import RunRecord

EVIL = "<b>x</b> | y"


@pytest.fixture(scope="module")
def record() -> RunRecord:
    return F.make_record(contexts=(1024,), new_tokens=16)


def test_csv_reads_back(record):
    rows = list(csv.DictReader(io.StringIO(to_csv(record))))
    reps = [r for r in rows if r["kind"] == "repetition"]
    summ = [r for r in rows if r["kind"] == "summary"]
    assert len(reps) == len(record.repetitions) == 16 and len(summ) == 4
    assert list(rows[0]) == columns()
    for row, rep in zip(reps, record.repetitions):
        assert (row["model"], row["workload"], int(row["context"]), int(row["index"])) == \
            (rep.model, rep.workload, rep.context, rep.index)
        assert row["warmup"] == str(rep.warmup) and row["cache_state"] == "cold" and row["status"] == "ok"
        assert float(row["decode_tok_s"]) == pytest.approx(rep.result.decode_tok_s, rel=1e-3)
        assert float(row["peak_rss_mb"]) == pytest.approx(stats.peak_rss_kb(rep) / 1024, rel=1e-4)
        assert row["decode_tok_s_ci_low"] == "" and row["n"] == ""
    by = {r.key: r for r in stats.summarize(record)}
    for row in summ:
        s = by[(row["model"], row["workload"], int(row["context"]))]
        assert int(row["n"]) == s.n == 3
        assert float(row["peak_rss_mb"]) == pytest.approx(s.peak_rss_mb.median, rel=1e-4)
        assert float(row["peak_rss_mb_ci_low"]) <= float(row["peak_rss_mb"]) <= float(row["peak_rss_mb_ci_high"])
        assert float(row["decode_tok_s_cv"]) == pytest.approx(s.decode_tok_s.cv, abs=1e-5)
        if s.kind == "dense":
            assert row["distinct_experts"] == ""


def test_json_reads_back(record):
    doc = json.loads(to_json(record))
    assert doc["format"] == "devprof.export/1" and list(doc) == ["format", "run", "repetitions", "summary", "ratios",
                                                                     "energy", "soak"]
    assert doc["run"]["run_id"] == record.meta.run_id and doc["run"]["measured_reps"] == 12
    assert len(doc["repetitions"]) == 16
    moe = next(r for r in doc["repetitions"] if r["model"] == F.MOE and not r["warmup"])
    assert moe["routing"]["distinct_pairs"] == record.measured(F.MOE)[0].routing.distinct_pairs
    assert "cache_note" in moe and "thermal_before" in moe and moe["conditions"] == {}
    assert doc["summary"] == json.loads(json.dumps(result_dicts(analyse(record))))
    assert len(doc["ratios"]) == 12


def test_markdown_reads_back_and_escapes(record):
    reps = [replace(r, workload="real" + EVIL) if r.workload == "real" else r for r in record.repetitions]
    meta = replace(record.meta, workloads=["templated", "real" + EVIL])
    md = to_markdown(RunRecord(meta=meta, repetitions=reps))
    lines = md.splitlines()
    tables = [i for i, ln in enumerate(lines) if ln.startswith("| model |")]
    assert len(tables) == 2
    def rows_after(i):
        out = []
        for ln in lines[i + 2:]:
            if not ln.startswith("|"):
                break
            out.append(ln)
        return out
    summary, repetitions = rows_after(tables[0]), rows_after(tables[1])
    assert len(summary) == 4 and len(repetitions) == 16
    ncols = lines[tables[0]].count(" | ") + 1
    for ln in summary:  # escaped pipes do not add columns
        assert len([c for c in ln.replace("\\|", "").split("|")[1:-1]]) == ncols
    assert "<b>" not in md and "real&lt;b&gt;x&lt;/b&gt; \\| y" in md
    assert "[" in summary[0] and "±" in summary[0]  # median [CI] ±CV


def test_empty_run_is_an_error():
    empty = F.make_record(limit=0, status="interrupted")
    for fmt in ("csv", "json", "md"):
        with pytest.raises(UsageError, match="has no repetitions"):
            report.export_renderer(fmt).render(empty)
    with pytest.raises(UsageError, match="has no repetitions"):
        perfetto.perfetto_traces(empty)


# ---- perfetto -------------------------------------------------------------------------------------
def _events(doc, ph=None, name=None):
    return [e for e in doc["traceEvents"] if (ph is None or e["ph"] == ph) and (name is None or e["name"] == name)]


def test_perfetto_trace_per_repetition(record, tmp_path):
    paths = report.export(record, "perfetto", tmp_path / "traces")
    assert len(paths) == len(record.repetitions)
    assert len({p.name for p in paths}) == len(paths)
    for path, rep in zip(paths, record.repetitions):
        doc = json.loads(path.read_text())
        assert perfetto.validate_trace(doc) == []
        assert doc["displayTimeUnit"] == "ms" and doc["otherData"]["run_id"] == record.meta.run_id
        names = {e["name"]: e for e in _events(doc, "M")}
        assert rep.workload in names["process_name"]["args"]["name"] and "thread_name" in names
        spans = {e["name"]: e for e in _events(doc, "X")}
        assert set(spans) == {"load", "prefill", "decode"}
        assert spans["prefill"]["dur"] == pytest.approx(rep.result.prefill_ms * 1000, rel=1e-3)
        assert spans["decode"]["ts"] == pytest.approx(spans["prefill"]["ts"] + spans["prefill"]["dur"], abs=1)
        assert spans["prefill"]["args"]["tokens"] == rep.context
        rss = _events(doc, "C", "mem.rss")
        assert len(rss) == len(rep.outcome.samples)
        assert [e["args"]["MiB"] for e in rss] == [round(s.rss_kb / 1024, 3) for s in rep.outcome.samples]
        assert [e["ts"] for e in _events(doc, "C", "mem.rss.file")] == [round(s.t_ms * 1000, 1) for s in rep.outcome.samples]
        assert len(_events(doc, "C", "mem.rss.anon")) == len(rep.outcome.samples)
        experts = _events(doc, "C", "experts.distinct")
        if rep.routing is None:
            assert experts == []
        else:
            vals = [e["args"]["pairs"] for e in experts]
            assert vals == sorted(vals) and vals[-1] == rep.routing.distinct_pairs
            assert spans["prefill"]["ts"] <= experts[0]["ts"] <= experts[-1]["ts"] <= \
                spans["decode"]["ts"] + spans["decode"]["dur"] + 1


def test_perfetto_from_a_routing_trace_counts_exactly(tmp_path):
    from test_compare import with_traces

    rec = with_traces(F.make_record(contexts=(512,), new_tokens=8, reps=1, warmup=0), tmp_path)
    rep = rec.measured(F.MOE, "real")[0]
    doc = perfetto.perfetto_trace(rec, rep)
    assert perfetto.validate_trace(doc) == []
    pairs = [e["args"]["pairs"] for e in _events(doc, "C", "experts.distinct")]
    mib = [e["args"]["MiB"] for e in _events(doc, "C", "experts.touched")]
    assert pairs[-1] == rep.routing.distinct_pairs and len(mib) == len(pairs)
    block = 3 * 256 * 128 * 4 / 2**20
    assert mib[-1] == pytest.approx(rep.routing.distinct_pairs * block, rel=1e-6)


def test_validate_trace_catches_malformed_traces():
    ok = {"traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "p"}},
        {"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
        {"ph": "X", "name": "inner", "pid": 1, "tid": 1, "ts": 2, "dur": 3},
        {"ph": "C", "name": "mem.rss", "pid": 1, "ts": 1, "args": {"MiB": 1.5}},
    ]}
    assert perfetto.validate_trace(ok) == []
    cases = {
        "traceEvents list": [],
        "unknown phase": {"traceEvents": [{"ph": "Q", "name": "x", "pid": 1, "ts": 0}]},
        "pid must be an integer": {"traceEvents": [{"ph": "C", "name": "x", "pid": "1", "ts": 0, "args": {"v": 1}}]},
        "ts must be": {"traceEvents": [{"ph": "C", "name": "x", "pid": 1, "ts": -5, "args": {"v": 1}}]},
        "X needs a finite dur": {"traceEvents": [{"ph": "X", "name": "x", "pid": 1, "tid": 1, "ts": 0}]},
        "C needs numeric args": {"traceEvents": [{"ph": "C", "name": "x", "pid": 1, "ts": 0, "args": {"v": "a"}}]},
        "goes back in time": {"traceEvents": [{"ph": "C", "name": "x", "pid": 1, "ts": 5, "args": {"v": 1}},
                                              {"ph": "C", "name": "x", "pid": 1, "ts": 4, "args": {"v": 1}}]},
        "overlap": {"traceEvents": [{"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
                                    {"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 5, "dur": 10}]},
        "needs args.name": {"traceEvents": [{"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {}}]},
        "not plain JSON": {"traceEvents": [{"ph": "C", "name": "x", "pid": 1, "ts": 0, "args": {"v": 1}}],
                           "otherData": {"bad": math.nan}},
    }
    for expected, doc in cases.items():
        problems = perfetto.validate_trace(doc)
        assert any(expected in p for p in problems), (expected, problems)


def test_write_errors_are_one_line(record, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(DevprofError, match="cannot write to") as e:
        report.export(record, "csv", blocker / "out.csv")
    assert "\n" not in e.value.message
    with pytest.raises(DevprofError, match="it is a file"):
        report.export(record, "perfetto", blocker)
    with pytest.raises(DevprofError, match="it is a folder"):
        report.export(record, "json", tmp_path)
    assert report.export(record, "md", tmp_path / "sub" / "run.md")[0].read_text().startswith("# devprof run")


def test_numbers_stay_finite():
    rec = F.make_record(contexts=(256,), new_tokens=4, reps=2, warmup=0)
    rec.repetitions[0].result.decode_tok_s = float("nan")
    doc = json.loads(to_json(rec))
    assert doc["repetitions"][0]["decode_tok_s"] is None
    assert np.isfinite([r["peak_rss_mb"] for r in doc["repetitions"]]).all()


def test_every_renderer_is_found_by_its_name_and_export_formats_are_renderers():
    for name in report.RENDERERS:
        assert report.get_renderer(name).name == name
    for fmt, name in report.EXPORT_FORMATS.items():
        assert report.export_renderer(fmt).name == name
    with pytest.raises(UsageError, match="unknown export format"):
        report.export_renderer("xml")


def test_perfetto_render_is_one_valid_trace_of_every_repetition(record):
    doc = json.loads(perfetto.PerfettoRenderer().render(record))
    assert perfetto.validate_trace(doc) == []
    assert {e["pid"] for e in doc["traceEvents"]} == set(range(1, len(record.repetitions) + 1))
    assert len(doc["otherData"]["repetitions"]) == len(record.repetitions)
