"""The local device's process measurements: real subprocesses, real /proc sampling, wait4."""

from __future__ import annotations

import sys

from devprof.devices.base import RunRequest
from devprof.devices.local import LocalDevice, exit_peak_kb, parse_status
from devprof.results import MemorySample

MiB = 1024


def _sample(rss: int, hwm: int | None) -> MemorySample:
    return MemorySample(t_ms=0.0, rss_kb=rss, anon_kb=None, file_kb=None, hwm_kb=hwm)


def test_parse_status_picks_the_six_fields():
    raw = (b"Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  524288 kB\nVmRSS:\t  400000 kB\n"
           b"RssAnon:\t  300000 kB\nRssFile:\t   99000 kB\nRssShmem:\t 1000 kB\nVmSwap:\t 20 kB\nThreads:\t3\n")
    assert parse_status(raw) == {"hwm": 524288, "rss": 400000, "anon": 300000, "file": 99000, "shmem": 1000,
                                 "swap": 20}
    assert parse_status(b"Name:\tzombie\nState:\tZ (zombie)\nThreads:\t1\n") == {}
    with open("/proc/self/status", "rb") as f:
        own = parse_status(f.read())
    assert set(own) == {"rss", "anon", "file", "hwm", "shmem", "swap"} and own["hwm"] >= own["rss"] > 0


def test_exit_peak_trusts_ru_maxrss_only_above_devprofs_own_high_water_mark():
    samples = [_sample(90 * MiB, 95 * MiB), _sample(80 * MiB, 100 * MiB)]
    assert exit_peak_kb(300 * MiB, 200 * MiB, samples) == (300 * MiB, "")
    peak, why = exit_peak_kb(200 * MiB, 200 * MiB, samples)  # the inherited floor
    assert peak == 100 * MiB and "sampled VmHWM" in why and "200 MiB" in why
    assert exit_peak_kb(200 * MiB, 200 * MiB, [])[0] is None
    assert exit_peak_kb(None, 200 * MiB, samples)[0] == 100 * MiB
    assert exit_peak_kb(120 * MiB, None, samples) == (120 * MiB, "")


def test_a_child_smaller_than_devprof_reports_its_own_peak(tmp_path):
    # The kernel folds the spawning process's VmHWM into a child's ru_maxrss at exec: with
    # devprof holding 400 MiB, a 40 MiB child used to "peak" at 400 MiB.
    ballast = bytearray(400 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    child = "import time; b = bytearray(40 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.3)"
    dev = LocalDevice(scratch_dir=tmp_path)
    out = dev.run(RunRequest(argv=[sys.executable, "-c", child], sample_ms=5, timeout_s=60))
    assert out.status == "ok", out.note
    assert 40 * MiB < out.peak_rss_kb < 120 * MiB, (out.peak_rss_kb, out.note)
    assert "sampled VmHWM" in out.note
    assert out.peak_rss_kb >= max(s.rss_kb for s in out.samples) * 0.99
    del ballast


def test_exit_peak_is_never_below_a_sampled_vmhwm():
    # the numbers: ru_maxrss 387,216 kB, a sample's VmHWM 387,420 kB a moment earlier
    samples = [_sample(380_000, 387_420)]
    assert exit_peak_kb(387_216, 200 * MiB, samples) == (387_420, "")
