"""The local device's process measurements: real subprocesses, real /proc sampling, wait4."""

from __future__ import annotations

import sys

from devprof.devices.base import RunRequest
from devprof.devices.local import LocalDevice, exit_peak_kb
from devprof.results import MemorySample

MiB = 1024


def _sample(rss: int, hwm: int | None) -> MemorySample:
    return MemorySample(t_ms=0.0, rss_kb=rss, anon_kb=None, file_kb=None, hwm_kb=hwm)


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
