"""Swap, PSS, page faults, the peak's parts and the device's headroom in every renderer besides the HTML
report -- `show --json`, the CSV, JSON and Markdown exports, Perfetto -- from a factories run shaped like
a current Android one (tests/support/factories.py ``phone_memory``), checked against what
``devprof.memory`` computes from the same repetitions; and the energy setting in words."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import pytest

from tests.support import factories as F
from devprof import memory, stats
from devprof.report import perfetto
from devprof.report.csv import to_csv
from devprof.report.html import HTMLRenderer
from devprof.report.jsonexport import to_json
from devprof.report.jsonout import JSONRenderer
from devprof.report.markdown import to_markdown
from devprof.report.memory_figures import headroom_rows
from devprof.report.memory_rows import HEADROOM_KEYS, MEMORY_METRICS, PEAK_KEYS
from devprof.report.soak_figures import setting_text
from devprof.report.terminal import TerminalRenderer
from devprof.results import RunRecord

MIB = 1024.0


@pytest.fixture(scope="module")
def record() -> RunRecord:
    return F.make_record(phone_memory=True, contexts=(1024,), new_tokens=16)


def _mems(rec, model, workload):
    return [memory.rep_memory(r) for r in rec.measured(model, workload)]


def test_factories_phone_run_is_realistic(record):
    """The factories' phone run: the dense model's zram share makes RSS+swap win, the MoE's does not."""
    assert record.meta.device.memory_metric == memory.PEAK_RULE
    for rep in record.measured():
        m = memory.rep_memory(rep)
        assert stats.peak_rss_kb(rep) == max(m["peak"]["VmHWM"], m["peak"]["RSS+swap"])
        assert 0 < m["peak_swap_kb"] < m["peak_pss_kb"] < stats.peak_rss_kb(rep)
        assert 0 < m["major_faults"] < m["minor_faults"]
        assert m["meminfo_at_peak"]["MemAvailable"] < m["meminfo_before"]["MemAvailable"]
    assert {m["peak"]["won"] for m in _mems(record, F.DENSE, "real")} == {"RSS+swap"}
    assert {m["peak"]["won"] for m in _mems(record, F.MOE, "real")} == {"VmHWM"}


def test_show_json_has_swap_pss_faults_peak_parts_and_headroom(record):
    data = json.loads(JSONRenderer().render(record))
    rooms = {(r["model"], r["workload"], r["context"]): r for r in headroom_rows(record)}
    assert len(data["results"]) == 4
    for r in data["results"]:
        mems = _mems(record, r["model"], r["workload"])
        swaps = sorted(m["peak_swap_kb"] / MIB for m in mems)
        assert r["peak_swap_mb"] == pytest.approx(swaps[1], abs=0.006)  # the median of 3
        assert r["peak_swap_mb_min"] == pytest.approx(swaps[0], abs=0.006)
        assert r["peak_swap_mb_max"] == pytest.approx(swaps[-1], abs=0.006)
        lo, hi = r["peak_pss_mb_ci"]
        assert r["peak_pss_mb_min"] <= lo <= r["peak_pss_mb"] <= hi <= r["peak_pss_mb_max"]
        assert r["major_faults"] == sorted(m["major_faults"] for m in mems)[1]
        assert r["minor_faults_cv"] is not None and 0 <= r["minor_faults_cv"] < 0.05
        assert r["peak_rss_mb"] == pytest.approx(max(r["peak_vmhwm_mb"], r["peak_rss_swap_mb"]), abs=0.3)
        assert sum(r["peak_won"].values()) == r["n"] == 3
        room = rooms[(r["model"], r["workload"], r["context"])]  # the HTML's headroom table, in MiB
        assert r["headroom_mb"] == pytest.approx(room["headroom_kb"] / MIB, abs=0.006)
        assert r["peak_share"] == pytest.approx(room["share"], abs=1e-4)
        assert r["mem_total_mb"] == 11600.0 and r["swap_total_mb"] == pytest.approx(4096.0, abs=0.01)
        assert r["mem_available_at_peak_mb"] == pytest.approx(room["available_at_peak_kb"] / MIB, abs=0.006)
        assert r["mem_available_at_peak_mb"] < r["mem_available_before_mb"]
        assert r["swap_free_at_peak_mb"] == pytest.approx(room["swap_free_at_peak_kb"] / MIB, abs=0.006)
        tightest = min(m["meminfo_before"]["MemAvailable"] - stats.peak_rss_kb(rep)
                       for m, rep in zip(mems, record.measured(r["model"], r["workload"])))
        assert r["headroom_mb"] == pytest.approx(tightest / MIB, abs=0.006)
    dense = next(r for r in data["results"] if (r["model"], r["workload"]) == (F.DENSE, "real"))
    assert dense["peak_won"] == {"RSS+swap": 3} and dense["peak_rss_swap_mb"] > dense["peak_vmhwm_mb"]


def test_show_json_memory_keys_are_null_on_an_iphone_and_for_planned_cells():
    ios = F.make_record(device=F.make_device("ios"), contexts=(1024,), new_tokens=16)
    keys = [k for m in MEMORY_METRICS for k in (m, f"{m}_ci", f"{m}_cv", f"{m}_min", f"{m}_max")]
    keys += list(PEAK_KEYS + HEADROOM_KEYS)
    for r in json.loads(JSONRenderer().render(ios))["results"]:
        assert all(r[k] is None for k in keys)
    partial = F.make_record(phone_memory=True, contexts=(1024,), new_tokens=16, limit=4, status="interrupted")
    rows = json.loads(JSONRenderer().render(partial))["results"]
    unmeasured = [r for r in rows if r["n"] == 0]
    assert unmeasured and all(r[k] is None for r in unmeasured for k in keys)


def test_csv_repetitions_carry_raw_values_and_summaries_the_medians(record):
    rows = list(csv.DictReader(io.StringIO(to_csv(record))))
    reps = [r for r in rows if r["kind"] == "repetition"]
    for row, rep in zip(reps, record.repetitions):
        m = memory.rep_memory(rep)
        assert float(row["peak_swap_mb"]) == pytest.approx(m["peak_swap_kb"] / MIB, abs=1e-3)
        assert float(row["peak_pss_mb"]) == pytest.approx(m["peak_pss_kb"] / MIB, abs=1e-3)
        assert row["major_faults"] == str(m["major_faults"]) and row["minor_faults"] == str(m["minor_faults"])
        assert row["peak_won"] == m["peak"]["won"]
        assert float(row["peak_vmhwm_mb"]) == pytest.approx(m["peak"]["VmHWM"] / MIB, abs=1e-3)
        assert float(row["mem_available_before_mb"]) == pytest.approx(m["meminfo_before"]["MemAvailable"] / MIB,
                                                                     abs=1e-3)
        room = memory.headroom(stats.peak_rss_kb(rep), m["meminfo_before"])
        assert float(row["headroom_mb"]) == pytest.approx(room["headroom_kb"] / MIB, abs=1e-3)
        assert row["peak_swap_mb_ci_low"] == ""
    summ = {(r["model"], r["workload"]): r for r in rows if r["kind"] == "summary"}
    dense = summ[(F.DENSE, "real")]
    assert dense["peak_won"] == "RSS+swap 3/3"
    lo, mid, hi = (float(dense[k]) for k in ("peak_pss_mb_ci_low", "peak_pss_mb", "peak_pss_mb_ci_high"))
    assert lo <= mid <= hi
    shown = json.loads(JSONRenderer().render(record))["results"]
    same = next(r for r in shown if (r["model"], r["workload"]) == (F.DENSE, "real"))
    assert float(dense["headroom_mb"]) == same["headroom_mb"] and float(dense["major_faults"]) == same["major_faults"]


def test_export_json_repetitions_have_the_fields(record):
    doc = json.loads(to_json(record))
    rep = next(r for r in doc["repetitions"] if r["model"] == F.DENSE and not r["warmup"])
    assert rep["peak_won"] == "RSS+swap" and rep["major_faults"] > 0 and rep["peak_swap_mb"] > 0
    assert "peak_swap_mb_ci_low" not in rep and "peak_swap_mb_min" not in rep
    assert doc["summary"] == json.loads(JSONRenderer().render(record))["results"]


def test_markdown_memory_table_only_when_recorded(record):
    md = to_markdown(record)
    lines = md.splitlines()
    at = lines.index("## Memory")
    head = next(i for i in range(at, len(lines)) if lines[i].startswith("| model |"))
    table = [ln for ln in lines[head + 2:head + 6]]
    assert len(table) == 4 and all(ln.startswith("| ") for ln in table) and not lines[head + 6].startswith("|")
    dense = next(ln for ln in table if F.DENSE in ln and "| real |" in ln)
    assert "RSS+swap 3/3" in dense
    r = next(x for x in headroom_rows(record) if (x["model"], x["workload"]) == (F.DENSE, "real"))
    shown = next(x for x in json.loads(JSONRenderer().render(record))["results"]
                 if (x["model"], x["workload"]) == (F.DENSE, "real"))
    assert f"| {r['major_faults']:,.0f} |" in dense and f"| {shown['peak_share'] * 100:.1f}% |" in dense
    assert f"| {r['headroom_kb'] / MIB:,.1f} |" in dense
    assert "## Memory" not in to_markdown(F.make_record(contexts=(1024,), new_tokens=16))


def test_perfetto_swap_pss_and_cumulative_major_faults(record):
    rep = next(r for r in record.measured(F.DENSE, "real"))
    doc = perfetto.perfetto_trace(record, rep)
    assert perfetto.validate_trace(doc) == []

    def counter(name, key):
        return [(e["ts"], e["args"][key]) for e in doc["traceEvents"] if e["ph"] == "C" and e["name"] == name]

    ss = rep.outcome.samples
    swap, pss, faults = counter("mem.swap", "MiB"), counter("mem.pss", "MiB"), counter("faults.major", "faults")
    assert [v for _, v in swap] == [round(s.swap_kb / MIB, 3) for s in ss]
    assert [v for _, v in pss] == [round(s.pss_kb / MIB, 3) for s in ss if s.pss_kb is not None]
    assert 1 < len(pss) < len(ss)
    vals = [v for _, v in faults]
    assert len(vals) == len(ss) and vals == sorted(vals) and vals[-1] == memory.rep_memory(rep)["major_faults"] > 0
    assert [t for t, _ in faults] == [t for t, _ in counter("mem.rss", "MiB")]
    merged = json.loads(perfetto.PerfettoRenderer().render(record))  # every repetition, validated
    assert len({e["pid"] for e in merged["traceEvents"] if e["name"] == "faults.major"}) == len(record.repetitions)
    plain = F.make_record(contexts=(1024,), new_tokens=16)
    old = perfetto.perfetto_trace(plain, plain.measured()[0])
    assert not [e for e in old["traceEvents"] if e["name"] in ("mem.swap", "mem.pss", "faults.major")]


def _with_energy(rec: RunRecord, setting: dict) -> RunRecord:
    return replace(rec, meta=replace(rec.meta, settings={**rec.meta.settings, "energy": setting}))


MEASURED = {"state": "measured", "source": "sysfs", "baseline_s": 2.0, "sample_s": 0.05, "sysroot": "/",
            "battery": {"source": "sysfs", "path": "/sys/class/power_supply/battery", "status": "Discharging",
                        "plugged": []}}


def test_energy_setting_in_words():
    rec = F.make_record(contexts=(1024,), new_tokens=16)
    reps = [replace(r, energy={"source": "sysfs", "update_ms": 250.0, "phases": {}}) for r in rec.repetitions]
    measured = _with_energy(replace(rec, repetitions=reps), MEASURED)
    assert setting_text(measured) == ("on: battery current_now × voltage_now (sysfs), reading changes every ~250 ms, "
                                      "battery /sys/class/power_supply/battery, sampled every 50 ms, idle baseline 2 s")
    assert setting_text(_with_energy(rec, {"state": "off"})) == "off"
    why = "energy refused: the battery is charging (USB)"
    assert setting_text(_with_energy(rec, {**MEASURED, "state": "refused", "why": why})) == why
    assert setting_text(_with_energy(rec, {"state": "refused", "why": "the battery is full"})) == \
        "refused: the battery is full"
    assert setting_text(_with_energy(rec, {"state": "unavailable", "why": "no readable battery current"})) == \
        "unavailable: no readable battery current"
    assert setting_text(rec) is None  # a run from before energy was measured


def test_setup_tables_show_the_energy_setting_readably():
    rec = _with_energy(F.make_record(contexts=(1024,), new_tokens=16), MEASURED)
    page = HTMLRenderer().render(rec)
    assert "<th>energy</th><td>on: battery current_now × voltage_now (sysfs), battery /sys/class/power_supply/" \
           "battery, sampled every 50 ms, idle baseline 2 s</td>" in page
    assert page.count("<th>energy</th>") == 1  # the raw JSON is gone from the table
    term = TerminalRenderer(width=200).render(rec)
    assert "Energy setting: on: battery current_now × voltage_now (sysfs)" in term and "sysroot" not in term
    off = _with_energy(F.make_record(contexts=(1024,), new_tokens=16), {"state": "off"})
    assert "<th>energy</th><td>off</td>" in HTMLRenderer().render(off)
    assert "Energy setting: off" in TerminalRenderer(width=200).render(off)
    why = "energy refused: the battery is charging on USB power"
    refused = _with_energy(F.make_record(contexts=(1024,), new_tokens=16), {"state": "refused", "why": why})
    assert f"<th>energy</th><td>{why}</td>" in HTMLRenderer().render(refused)
    lines = TerminalRenderer(width=200).render(refused).splitlines()
    assert "Energy setting: refused" in lines and lines.count(why) == 1  # the reason once, below
