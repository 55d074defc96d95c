"""devprof.memory: the /proc parsers on real text from this host (tests/data/proc/, captured from a
process that had mapped a cold file and touched anonymous memory, and from one whose name holds
spaces and parentheses), the on-device sampler script run for real, the host sampler, Android's
peak rule, the store's new columns, and the runner's exit report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devprof import memory
from devprof.results import MemorySample, ProcessOutcome

DATA = Path(__file__).parent / "data" / "proc"
SAMPLER = Path(__file__).resolve().parent.parent / "devprof" / "devices" / "sampler.sh"


def _read(name: str) -> str:
    return (DATA / name).read_text()


# ---- parsers on real text ---------------------------------------------------------------------
def test_status_fields_from_a_real_status_file():
    assert memory.parse_status(_read("status.txt")) == {
        "VmHWM": 62064, "VmRSS": 62064, "RssAnon": 39024, "RssFile": 23040, "RssShmem": 0, "VmSwap": 0}
    # bytes as the host sampler reads them, same answer
    assert memory.parse_status(_read("status.txt").encode()) == memory.parse_status(_read("status.txt"))


def test_smaps_rollup_takes_pss_and_swap_not_their_lookalikes():
    got = memory.parse_smaps_rollup(_read("smaps_rollup.txt"))
    # Pss_Dirty (39024) and Pss_Shmem are other lines: only the five asked for
    assert got == {"Pss": 56080, "Pss_Anon": 39024, "Pss_File": 17056, "Swap": 0, "SwapPss": 0}
    assert got["Pss_Anon"] + got["Pss_File"] == got["Pss"]


def test_meminfo_fields_and_not_swapcached():
    got = memory.parse_meminfo(_read("meminfo.txt"))
    assert set(got) == set(memory.MEMINFO_KEYS)
    assert 0 < got["MemAvailable"] <= got["MemTotal"]
    lines = dict(line.split(":", 1) for line in _read("meminfo.txt").splitlines())
    assert got["SwapFree"] == int(lines["SwapFree"].split()[0])  # not SwapCached's value


def test_stat_faults_count_fields_after_the_command_name():
    # fields 10 (minflt) and 12 (majflt); a cold mapped file gave a real major fault
    assert memory.parse_stat_faults(_read("stat.txt")) == {"minflt": 14316, "majflt": 1}
    # "we) ird (x": spaces and both parentheses inside the name
    text = _read("stat-weird-comm.txt")
    assert "(we) ird (x)" in text
    assert memory.parse_stat_faults(text) == {"minflt": 76, "majflt": 0}
    assert memory.parse_stat_faults("") == {}
    assert memory.parse_stat_faults("12 (cut) S 1 2") == {}


# ---- the on-device sampler, run for real with this host's sh -----------------------------------
def test_sampler_script_records_faults_pss_and_meminfo(tmp_path):
    from devprof.devices.android import parse_sampler_output

    child = ("import time\na = bytearray(48 << 20)\nfor i in range(0, len(a), 4096): a[i] = 1\ntime.sleep(1.0)")
    out = tmp_path / "run"
    r = subprocess.run(["sh", str(SAMPLER), str(out), "0.01", sys.executable, "-c", child], timeout=60)
    assert r.returncode == 0
    text = (tmp_path / "run.mem").read_text()
    samples, _, rc = parse_sampler_output(text)
    assert rc == 0 and len(samples) >= 5
    before = memory.sampler_meminfo(text)
    assert set(before) == set(memory.MEMINFO_KEYS) and before["MemAvailable"] > 0
    assert all(s.minflt is not None and s.majflt is not None and s.swap_kb is not None
               and s.shmem_kb is not None for s in samples)
    assert samples[-1].minflt > 48 << 8  # one fault per touched 4 KiB page of the 48 MiB at least
    with_pss = [s for s in samples if s.pss_kb is not None]
    # the first sample reads smaps_rollup; later ones at most every 100 ms
    assert with_pss and with_pss[0] is samples[0]
    assert all(s.mem_available_kb is not None for s in with_pss)
    assert all(b.t_ms - a.t_ms >= 95 for a, b in zip(with_pss, with_pss[1:]))
    assert len(with_pss) < len(samples)
    assert max(s.pss_kb for s in with_pss) > 40 << 10


# ---- the host sampler --------------------------------------------------------------------------
def test_local_device_samples_faults_pss_and_meminfo(tmp_path):
    from devprof.devices.base import RunRequest
    from devprof.devices.local import LocalDevice

    weights = tmp_path / "w.bin"
    with open(weights, "wb") as f:
        f.write(os.urandom(8 << 20))
        f.flush()
        os.fsync(f.fileno())  # clean pages: DONTNEED can drop them
    child = ("import mmap, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n"
             "m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)\ns = sum(m[i] for i in range(0, len(m), 4096))\n"
             "a = bytearray(32 << 20)\nfor i in range(0, len(a), 4096): a[i] = 1\ntime.sleep(0.4)")
    with LocalDevice(scratch_dir=tmp_path / "s") as dev:
        o = dev.run(RunRequest(argv=[sys.executable, "-c", child, str(weights)], sample_ms=10))
    assert o.status == "ok" and o.memory_metric == "VmHWM"
    assert set(o.memory["meminfo_before"]) == set(memory.MEMINFO_KEYS)
    last = o.samples[-1]
    assert last.minflt > 32 << 8 and last.majflt is not None and last.swap_kb is not None
    assert last.majflt >= 1  # the file was dropped from the page cache: at least one read from storage
    pss = [s for s in o.samples if s.pss_kb is not None]
    assert pss and all(s.mem_available_kb and s.pss_file_kb is not None for s in pss)
    assert len(pss) < len(o.samples)


def test_smaps_cadence_keeps_its_share_of_a_core():
    c = memory.SmapsCadence()
    assert c.due(0.0)
    c.done(0.0, 0.001)  # a cheap read: the 100 ms floor
    assert not c.due(0.1) and c.due(0.101)
    c.done(1.0, 1.06)  # 60 ms (a GB-sized process): 50 x its cost later
    assert not c.due(1.06 + 2.99) and c.due(1.06 + 3.001)


# ---- Android's peak rule ----------------------------------------------------------------------
def _s(t, rss, hwm, swap=None):
    return MemorySample(t_ms=t, rss_kb=rss, hwm_kb=hwm, swap_kb=swap)


def test_peak_rule_takes_rss_plus_swap_when_pages_went_to_zram():
    samples = [_s(0, 100, 100, 0), _s(10, 300, 300, 0), _s(20, 200, 300, 250), _s(30, 150, 300, 100)]
    peak, parts = memory.android_peak(samples)
    assert peak == 450 and parts == {"VmHWM": 300, "RSS+swap": 450, "at_ms": 20, "won": "RSS+swap"}


def test_peak_rule_keeps_vmhwm_when_a_spike_fell_between_samples():
    peak, parts = memory.android_peak([_s(0, 100, 100, 0), _s(10, 120, 400, 10)])
    assert peak == 400 and parts["won"] == "VmHWM" and parts["RSS+swap"] == 130
    assert memory.android_peak([]) == (None, {"VmHWM": None, "RSS+swap": None, "at_ms": None, "won": None})


def test_runner_exit_status_folds_into_either_metric():
    o = ProcessOutcome(exit_code=0, stdout="", stderr="", start_wall_ms=0, wall_ms=1, peak_rss_kb=450,
                       memory_metric=memory.PEAK_RULE,
                       memory={"peak": {"VmHWM": 300, "RSS+swap": 450, "at_ms": 20, "won": "RSS+swap"}})
    memory.fold_runner_exit(o, {"VmHWM": 320, "VmRSS": 200, "VmSwap": 300, "Pss": 180, "majflt": 7})
    assert o.peak_rss_kb == 500 and o.memory["peak"]["won"] == "RSS+swap" and o.memory["peak"]["VmHWM"] == 320
    assert o.memory["exit"]["majflt"] == 7 and "status at exit" in o.note
    local = ProcessOutcome(exit_code=0, stdout="", stderr="", start_wall_ms=0, wall_ms=1, peak_rss_kb=100)
    memory.fold_runner_exit(local, {"VmHWM": 90, "VmRSS": 80, "VmSwap": 50})
    assert local.peak_rss_kb == 100 and local.note == ""  # VmHWM: swap does not count on the host
    memory.fold_runner_exit(local, {"VmHWM": 130})
    assert local.peak_rss_kb == 130 and local.note == "peak from the runner's own VmHWM"


def test_headroom_against_memavailable_before_the_run():
    before = {"MemTotal": 8_000_000, "MemAvailable": 3_000_000, "SwapTotal": 4_000_000, "SwapFree": 4_000_000}
    room = memory.headroom(2_400_000, before)
    assert room["fits"] and room["headroom_kb"] == 600_000 and room["share"] == pytest.approx(0.8)
    assert not memory.headroom(3_100_000, before)["fits"]
    assert memory.headroom(None, before) is None and memory.headroom(1, {}) is None


# ---- the runner's exit report and the store ----------------------------------------------------
def test_runner_status_line_carries_smaps_and_faults():
    from devprof.errors import ParseError
    from devprof.runtimes.llamacpp import parse_runner_lines

    line = ('devprof_status: {"VmHWM": 900, "VmRSS": 800, "RssAnon": 300, "RssFile": 500, "RssShmem": 4, '
            '"VmSwap": 12, "Pss": 700, "Pss_Anon": 290, "Pss_File": 410, "Swap": 12, "SwapPss": 11, '
            '"majflt": 40, "minflt": 9000}')
    st = parse_runner_lines(line)["status"]
    assert st["Pss"] == 700 and st["majflt"] == 40 and st["RssShmem"] == 4 and st["SwapPss"] == 11
    older = parse_runner_lines('devprof_status: {"VmHWM": 9, "VmRSS": 8, "RssAnon": 3, "RssFile": 5, "VmSwap": null}')
    assert older["status"] == {"VmHWM": 9, "VmRSS": 8, "RssAnon": 3, "RssFile": 5}
    with pytest.raises(ParseError):
        parse_runner_lines('devprof_status: {"majflt": -1}')


def test_store_keeps_the_new_sample_fields_and_rep_columns(tmp_path):
    import sqlite3

    from tests.support import factories as F
    from devprof.store import Store

    rep = F.make_rep(F.MOE, "real", 256, 0, new_tokens=8, memory_metric=memory.PEAK_RULE)
    for i, s in enumerate(rep.outcome.samples):
        s.swap_kb, s.shmem_kb, s.majflt, s.minflt = 100 + i, 4, i // 3, 10 * i
        if i % 5 == 0:
            s.pss_kb, s.pss_anon_kb, s.pss_file_kb, s.smaps_swap_kb, s.swap_pss_kb = 900 + i, 300, 600 + i, 100 + i, 90
            s.mem_available_kb, s.swap_free_kb = 3_000_000 - i, 1_000_000
    rep.outcome.memory = {"meminfo_before": {"MemTotal": 8_000_000, "MemAvailable": 3_100_000, "SwapTotal": 2_000_000,
                                             "SwapFree": 2_000_000}}
    db = tmp_path / "m.db"
    with Store(db) as st:
        rid = st.create_run(F.make_meta())
        st.add_repetition(rid, rep)
        back = st.load_run(rid).repetitions[0]
    assert back.outcome.samples == rep.outcome.samples and back.outcome.memory == rep.outcome.memory
    n = len(rep.outcome.samples)
    row = sqlite3.connect(db).execute("SELECT peak_swap_kb, peak_pss_kb, major_faults, minor_faults, "
                                      "mem_available_kb FROM repetitions").fetchone()
    last_pss = max(900 + i for i in range(0, n, 5))
    assert row == (100 + n - 1, last_pss, (n - 1) // 3, 10 * (n - 1), 3_100_000)
