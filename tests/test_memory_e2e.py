"""Swap, PSS, page faults and meminfo headroom end to end: `devprof run --device s25` through the real
adb server and the suite's phone daemon (the committed arm64 runner under qemu; the daemon runs on
this host, so /proc is this host's, real), and `--device local` with the host build of the runner.
The store keeps them, the report shows them, and the page renders in headless Chromium; on the phone
run `show --json` and the CSV and Perfetto exports carry them too."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.chromium import plot_divs, render_in_chromium
from devprof import memory
from devprof.cli import cli

EXIT_KEYS = {"VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap", "Pss", "Pss_Anon", "Pss_File",
             "Swap", "SwapPss", "majflt", "minflt"}
RUN = ("--model", "mobilemoe-s-mini", "--baseline", "none", "--context", "128", "--new-tokens", "6",
       "--reps", "1", "--warmup", "0", "--threads", "1", "--workload", "real", "--sample-ms", "20")


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def adb():
    from tests.support.adb_env import AdbServer

    with AdbServer() as server:
        yield server


def _check_store(db: Path, metric: str) -> None:
    con = sqlite3.connect(db)
    rows = con.execute("SELECT rep_id, memory_metric, peak_rss_kb, peak_swap_kb, peak_pss_kb, major_faults, "
                       "minor_faults, mem_available_kb, outcome_json, result_json FROM repetitions").fetchall()
    assert len(rows) == 1
    rep_id, got_metric, peak, swap, pss, majflt, minflt, avail, outcome_json, result_json = rows[0]
    assert got_metric == metric
    # this host has no swap configured: a measured 0, not a missing value
    assert swap == 0 and 0 < pss <= peak and majflt is not None and minflt > 1000
    o = json.loads(outcome_json)
    before = o["memory"]["meminfo_before"]
    assert set(before) == set(memory.MEMINFO_KEYS) and avail == before["MemAvailable"] > peak
    status = json.loads(result_json)["extra"]["runner_status_kb"]
    assert set(status) == EXIT_KEYS  # the runner's own exit report: status, smaps_rollup, getrusage
    assert status["Pss"] > 0 and status["minflt"] > 0 and minflt >= status["minflt"] * 0.5
    # a cold run: llama.cpp's MAP_POPULATE reads the evicted GGUF in with few or no major faults, and
    # the storage reads (/proc/PID/io) show it all the same
    before_load = next(r for r in json.loads(result_json)["extra"]["residency"] if r["stage"] == "before_load")
    read_kb = con.execute("SELECT storage_read_kb FROM repetitions").fetchone()[0]
    assert read_kb >= 0.9 * (before_load["file_kb"] - before_load["resident_kb"]) > 0
    if metric == memory.PEAK_RULE:
        parts = o["memory"]["peak"]
        assert parts["won"] in ("VmHWM", "RSS+swap") and peak == max(parts["VmHWM"], parts["RSS+swap"])
    samples = con.execute("SELECT swap_kb, pss_kb, majflt, minflt, mem_available_kb FROM samples WHERE rep_id = ?",
                          (rep_id,)).fetchall()
    partial = [(i, s) for i, s in enumerate(samples) if None in (s[0], s[2], s[3])]
    assert samples and not partial, (len(samples), partial)
    with_pss = [s for s in samples if s[1] is not None]
    assert with_pss and all(s[4] for s in with_pss) and len(with_pss) < len(samples)


def _check_report(db: Path, tmp_path: Path, metric: str) -> None:
    html = tmp_path / "r.html"
    res = invoke("report", "latest", "--db", str(db), "--out", str(html))
    assert res.exit_code == 0, res.output
    text = html.read_text()
    assert "Device memory headroom" in text and "MemAvailable before the run: it fits" in text
    assert "Swap, PSS and page faults beside routing" in text and "expert first touched (layer)" in text
    assert "read from storage (MiB)" in text and "read from storage so far (" in text
    assert f"{metric}" in text
    dom, errors = render_in_chromium(html)
    assert errors == []
    assert plot_divs(dom) and all(n > 0 for n in plot_divs(dom).values())


def _check_exports(db: Path, tmp_path: Path) -> None:
    """`show --json`, `export --format csv` and `--format perfetto` carry what the store keeps."""
    res = invoke("show", "latest", "--json", "--db", str(db))
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)["results"]
    assert row["peak_swap_mb"] == 0.0 and 0 < row["peak_pss_mb"] <= row["peak_rss_mb"]
    assert row["major_faults"] is not None and row["minor_faults"] > 1000
    assert row["peak_won"] in ({"VmHWM": 1}, {"RSS+swap": 1})
    assert row["peak_rss_mb"] == pytest.approx(max(row["peak_vmhwm_mb"], row["peak_rss_swap_mb"]), abs=0.01)
    assert row["mem_total_mb"] > row["mem_available_before_mb"] > row["peak_rss_mb"]
    assert row["headroom_mb"] == pytest.approx(row["mem_available_before_mb"] - row["peak_rss_mb"], abs=0.02)
    assert row["mem_available_at_peak_mb"] > 0 and row["swap_free_at_peak_mb"] is not None
    csv_path = tmp_path / "run.csv"
    res = invoke("export", "latest", "--format", "csv", "--out", str(csv_path), "--db", str(db))
    assert res.exit_code == 0, res.output
    (rep,) = [r for r in csv.DictReader(csv_path.open()) if r["kind"] == "repetition"]
    assert float(rep["peak_pss_mb"]) == pytest.approx(row["peak_pss_mb"], abs=0.01)
    assert int(rep["minor_faults"]) == row["minor_faults"] and rep["peak_won"] in row["peak_won"]
    traces = tmp_path / "traces"
    res = invoke("export", "latest", "--format", "perfetto", "--out", str(traces), "--db", str(db))
    assert res.exit_code == 0, res.output
    (trace,) = traces.glob("*.json")
    names = {e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "C"}
    assert {"mem.rss", "mem.swap", "mem.pss", "faults.major"} <= names


def test_s25_stores_and_reports_swap_pss_faults_and_headroom(adb, monkeypatch, tmp_path):
    if not shutil.which("qemu-aarch64-static"):
        pytest.fail("qemu-aarch64-static is not installed: run scripts/test-setup", pytrace=False)
    from tests.support.adb_env import FakePhone

    for k, v in adb.env.items():
        if k.startswith("ANDROID_ADB") or k.startswith("ADB_"):
            monkeypatch.setenv(k, v)
    db = tmp_path / "s.db"
    with FakePhone(adb):
        res = invoke("run", "--device", "s25", *RUN, "--db", str(db))
        assert res.exit_code == 0, res.output
        _check_store(db, memory.PEAK_RULE)
        _check_report(db, tmp_path, memory.PEAK_RULE)
    _check_exports(db, tmp_path)


def test_local_stores_and_reports_swap_pss_faults_and_headroom(tmp_path):
    pytest.importorskip("gguf")
    db = tmp_path / "s.db"
    res = invoke("run", "--device", "local", "--runtime", "llamacpp", *RUN, "--db", str(db))
    assert res.exit_code == 0, res.output
    _check_store(db, "VmHWM")
    _check_report(db, tmp_path, "VmHWM")
