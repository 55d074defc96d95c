"""Interference per repetition: /proc/stat arithmetic, and real CPU hogs seen on this host and through adb."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from devprof import interference as I
from devprof.devices.base import RunRequest
from devprof.devices.local import LocalDevice
from devprof.results import ProcessOutcome
from devprof.store import Store

STAT = """cpu  1000 10 200 5000 50 0 5 20 0 0
cpu0 500 5 100 2500 25 0 3 10 0 0
cpu1 500 5 100 2500 25 0 2 10 0 0
intr 12345
"""
STAT2 = """cpu  1300 10 260 5200 50 0 5 40 0 0
cpu0 650 5 130 2600 25 0 3 20 0 0
cpu1 650 5 130 2600 25 0 2 20 0 0
"""

#: busy on one core until it has used ``secs`` CPU seconds (the "runtime" of these tests); prints nothing
BUSY = ("import sys, time\nwhile time.process_time() < float(sys.argv[1]): pass\n"
        "time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)\n")


def test_parse_and_measure_exact():
    a = I.snapshot_from_text(STAT, "0.52 0.40 0.30 2/100 999\n", t=10.0)
    b = I.snapshot_from_text(STAT2, "1.10 0.5 0.3 3/100 999\n", t=14.0)
    assert a["cpu"]["user"] == 1000 and a["cpu"]["steal"] == 20 and a["ncpu"] == 2 and a["load1"] == 0.52
    # window: user +300, system +60, idle +200, steal +20 -> total 580 ticks, busy 380
    out = I.measure(a, b, ProcessOutcome(exit_code=0, stdout="", stderr="", start_wall_ms=0, wall_ms=1,
                                         cpu_s=1.5, sampler_cpu_s=0.1))
    assert out["window_s"] == 4.0 and out["ncpu"] == 2 and out["load_before"] == 0.52
    assert out["busy_pct"] == pytest.approx(100 * 380 / 580, abs=0.01)
    assert out["steal_pct"] == pytest.approx(100 * 20 / 580, abs=0.01)
    assert out["own_cpu_pct"] == pytest.approx(100 * 160 / 580, abs=0.01)  # 1.5 s + 0.1 s = 160 ticks
    assert out["other_cpu_pct"] == pytest.approx(100 * 220 / 580, abs=0.01)
    # without the runtime's own CPU time, no "other" figure (it would count the runtime as interference)
    assert "other_cpu_pct" not in I.measure(a, b, None)
    assert I.measure(None, b) == {} and I.measure(a, None) == {"load_before": 0.52}


def test_sampler_cpu_ticks_and_thermal_figures():
    mem = "start 10.0 1790000000000000000 42\n10.01 VmRSS:100 cpu:5\n10.02 VmRSS:120 cpu:37\nend 10.5 0\n"
    assert I.sampler_cpu_seconds(mem) == 0.37
    assert I.sampler_cpu_seconds("start 1 2 3\n") is None
    t = I.thermal_figures({"a": 35.0, "b": 41.5}, {"a": 44.0}, {"cpu0": 1800.0, "cpu7": 4320.0}, {"cpu7": 2100.0})
    assert t == {"hottest_c_before": 41.5, "hottest_c_after": 44.0, "max_core_mhz_before": 4320.0,
                 "max_core_mhz_after": 2100.0}


class Hog:
    """A real busy loop on one core (``python3 -c 'while 1: pass'``), and its CPU time."""

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        self.ps = psutil.Process(self.p.pid)
        time.sleep(0.2)
        return self

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def __exit__(self, *exc):
        self.p.kill()
        self.p.wait()


def _run_busy(dev, secs: float, hog: Hog | None = None, idle_after: float = 0.0):
    before = dev.cpu_snapshot()
    h0 = hog.cpu() if hog else 0.0
    out = dev.run(RunRequest(argv=[sys.executable, "-c", BUSY, str(secs), str(idle_after)], sample_ms=10,
                             timeout_s=120))
    h1 = hog.cpu() if hog else 0.0
    after = dev.cpu_snapshot()
    assert out.status == "ok", out.note
    m = I.measure(before, after, out)
    total_s = sum(after["cpu"].values()) / I.USER_HZ - sum(before["cpu"].values()) / I.USER_HZ
    m["_total_s"] = total_s
    return out, m, 100.0 * (h1 - h0) / total_s


def test_a_cpu_hog_on_this_host_shows_as_interference():
    dev = LocalDevice()
    try:
        quiet_out, quiet, _ = _run_busy(dev, 1.0)
        assert quiet_out.cpu_s == pytest.approx(1.0, abs=0.15)  # the runtime's own CPU comes from wait4
        # the runtime's own share: its CPU time (and the sampler's) over all CPUs' time in the window
        own = 100.0 * (quiet_out.cpu_s + (quiet_out.sampler_cpu_s or 0)) / quiet["_total_s"]
        # (the shares' sizes depend on what else this shared host runs: on a loaded one 1 s of CPU is
        # under 5 % of a window of 2 cores x 10 s)
        assert quiet["own_cpu_pct"] == pytest.approx(own, abs=0.5) and quiet["own_cpu_pct"] > 0
        with Hog() as hog:
            out, busy, hog_pct = _run_busy(dev, 1.0, hog)
        assert hog_pct > 0  # the hog really ran
        # everything the hog took is counted as other processes' CPU (the rest of the machine may add to it),
        # and the runtime's own CPU is not
        assert busy["other_cpu_pct"] >= hog_pct - 3, (busy, hog_pct)
        assert busy["other_cpu_pct"] + busy["own_cpu_pct"] <= busy["busy_pct"] + 2  # tick rounding
    finally:
        dev.close()


def test_android_reads_the_phones_proc_stat_and_the_runtimes_cpu(tmp_path, monkeypatch):
    from tests.support.adb_env import AdbServer, FakePhone

    from devprof.devices import android

    with AdbServer() as adb:
        for k, v in adb.env.items():
            if k.startswith("ANDROID_ADB") or k.startswith("ADB_"):
                monkeypatch.setenv(k, v)
        with FakePhone(adb) as phone:
            dev = android.resolve(phone.serial)[0]
            snap = dev.cpu_snapshot()
            assert snap is not None and snap["ncpu"] == os.cpu_count() and snap["load1"] is not None
            with Hog() as hog:  # idle after its CPU second: the sampler's last reading holds all of it
                out, m, hog_pct = _run_busy(dev, 1.0, hog, idle_after=1.0)
            # the on-device sampler read the runtime's utime + stime from /proc/PID/stat
            assert out.cpu_s is not None and 0.85 <= out.cpu_s <= 1.2
            assert hog_pct > 0 and m["other_cpu_pct"] >= hog_pct - 5, (m, hog_pct)


def test_store_keeps_conditions_and_migrates_a_version_1_file(tmp_path):
    from dataclasses import replace

    from tests.support import factories as F

    from devprof.store_schema import _SCHEMA_V1, SCHEMA_VERSION

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(_SCHEMA_V1 + "; CREATE TABLE schema_version (version INTEGER NOT NULL);"
                                   "INSERT INTO schema_version VALUES (1);")
    con.commit()
    con.close()
    meta, reps = F.make_run(reps=1, warmup=0)
    store = Store(db)
    assert store.schema_version == SCHEMA_VERSION >= 2  # migrated to the latest (3: energy and soak)
    run_id = store.create_run(meta)
    rep = replace(reps[0], conditions={"interference": {"other_cpu_pct": 38.5, "load_before": 1.2}})
    store.add_repetition(run_id, rep)
    store.add_repetition(run_id, reps[1])
    back = store.load_run(run_id).repetitions
    assert back[0].conditions == {"interference": {"other_cpu_pct": 38.5, "load_before": 1.2}}
    assert back[1].conditions == {}


# ---- the noise verdict ---------------------------------------------------------------------------
def _with_interference(record, busy_indices, other=38.0):
    from dataclasses import replace

    from devprof.results import RunRecord

    reps = []
    k = 0
    for r in record.repetitions:
        cond = {}
        if not r.warmup:
            cond = {"interference": {"busy_pct": 60.0, "own_cpu_pct": 45.0, "steal_pct": 0.0, "load_before": 0.4,
                                     "other_cpu_pct": other if k in busy_indices else 2.0}}
            k += 1
        reps.append(replace(r, conditions=cond))
    return RunRecord(meta=record.meta, repetitions=reps)


def test_verdict_names_the_busy_host_in_one_line():
    from tests.support import factories as F

    rec = _with_interference(F.make_record(device=F.make_device("local")), busy_indices={0, 2, 3, 5, 7, 8, 10})
    v = I.verdict(rec)
    assert v.noisy and v.n_reps == 12 and v.n_disturbed == 7
    assert v.line == ("host busy: other processes took 38% of CPU during 7 of 12 repetitions; "
                      "figures below are unreliable")
    quiet = I.verdict(_with_interference(F.make_record(), busy_indices={4}))  # 1 of 12: below a quarter
    assert not quiet.noisy and quiet.line is None
    # no interference figures at all (older runs): nothing claimed either way
    assert not I.verdict(F.make_record()).noisy


def test_verdict_flags_a_wide_spread():
    from dataclasses import replace

    from tests.support import factories as F
    from devprof.results import RunRecord

    rec = F.make_record()
    reps = []
    for r in rec.repetitions:
        if r.result is not None and r.model == F.DENSE and r.workload == "real" and r.index == 1:
            r = replace(r, result=replace(r.result, decode_tok_s=r.result.decode_tok_s * 0.35))  # fell to a third
        reps.append(r)
    v = I.verdict(RunRecord(meta=rec.meta, repetitions=reps))
    assert v.noisy and "spread widely" in v.line and "MobileLLM-Pro-mini real 2048 decode" in v.line


def _stored(db, record):
    st = Store(db)
    meta = record.meta
    from dataclasses import replace

    meta = replace(meta, run_id="")
    rid = st.create_run(meta)
    for r in record.repetitions:
        st.add_repetition(rid, r)
    st.finish_run(rid, "complete")
    return rid


def test_show_report_and_diff_say_so(tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from tests.support import factories as F
    from devprof.cli import cli

    db = tmp_path / "s.db"
    base = _with_interference(F.make_record(device=F.make_device("local")), busy_indices=set())
    with monkeypatch.context() as m:  # run B: the MoE 25% slower, measured while the host was busy
        m.setitem(F.SPEEDS, F.MOE, {k: v * 0.75 for k, v in F.SPEEDS[F.MOE].items()})
        slow = _with_interference(F.make_record(device=F.make_device("local"), created="2026-09-22T09:00:00+00:00"),
                                  busy_indices=set(range(12)))
    a, b = _stored(db, base), _stored(db, slow)
    run = CliRunner()
    shown = run.invoke(cli, ["show", b, "--db", str(db)], catch_exceptions=False, terminal_width=200)
    assert shown.exit_code == 0
    first = [ln for ln in shown.output.splitlines() if ln.strip()]
    busy = next(i for i, ln in enumerate(first) if ln.startswith("host busy: other processes took 38% of CPU "
                                                                   "during 12 of 12 repetitions"))
    assert busy < 6  # at the top, after the run's header lines
    assert first[busy + 1].startswith("On real prompts at 2048 tokens MobileMoE-S-mini against MobileLLM-Pro-mini:")
    quiet = run.invoke(cli, ["show", a, "--db", str(db)], catch_exceptions=False, terminal_width=200).output
    assert "host busy" not in quiet and "unreliable" not in quiet
    doc = json.loads(run.invoke(cli, ["show", b, "--json", "--db", str(db)]).output)
    assert doc["noise"]["noisy"] and doc["noise"]["repetitions_disturbed"] == 12
    assert doc["verdict"].startswith("On real prompts")
    html = (tmp_path / "r.html")
    assert run.invoke(cli, ["report", b, "--out", str(html), "--db", str(db)]).exit_code == 0
    page = html.read_text()
    assert 'id="noise-verdict"' in page and "12 of 12 repetitions; figures below are unreliable" in page
    assert page.index('id="noise-verdict"') < page.index('id="verdict"') < page.index('id="summary-table"')

    comp = run.invoke(cli, ["compare", b, "--db", str(db)], catch_exceptions=False, terminal_width=200).output
    assert comp.splitlines()[1].startswith("host busy: other processes took 38% of CPU")
    d = run.invoke(cli, ["diff", a, b, "--db", str(db)], catch_exceptions=False, terminal_width=200)
    assert d.exit_code == 0, d.output  # not called a regression: B is noisy
    assert "not called a regression: the data is noisy" in d.output and "--allow-noisy" in d.output
    d = run.invoke(cli, ["diff", a, b, "--allow-noisy", "--db", str(db)], catch_exceptions=False,
                   terminal_width=200)
    assert d.exit_code == 1 and "regression(s) beyond 5%" in d.output
