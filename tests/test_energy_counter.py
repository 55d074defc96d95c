"""Energy from the battery's charge counter, where no current reads (stock AOSP/Pixel, kernels with only
``charge_counter``): the parsers on real-format text, the source order, power_sampler.sh's counter
modes run for real on this host, and the arithmetic (Δcharge × voltage, the idle charge rate, the
measured step and update interval, coarse phases marked). End to end: tests/test_energy_e2e.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devprof import energy as E
from devprof.devices import power as P
from devprof.results import RunResult
from tests.support.fake_battery import run_power_sampler

# `adb shell dumpsys battery` on a Pixel 8 (Android 14) on battery: a charge counter, no current
PIXEL_DUMPSYS = """Current Battery Service state:
  AC powered: false
  USB powered: false
  Wireless powered: false
  Dock powered: false
  Max charging current: 0
  Max charging voltage: 0
  Charge counter: 3561000
  status: 3
  health: 2
  present: true
  level: 79
  scale: 100
  voltage: 4012
  temperature: 283
  technology: Li-ion
  Charging state: 1
  Charging policy: 1
  Capacity level: -1
"""
BAT = "/sys/class/power_supply/battery"


def test_aosp_dumpsys_gives_the_charge_counter_and_voltage_but_no_current():
    d = P.parse_dumpsys_battery(PIXEL_DUMPSYS)
    assert d == {"status": "Discharging", "plugged": [], "voltage_mv": 4012, "current": None, "level": 79,
                 "charge_counter": 3561000}
    bat = P.choose_battery([], d)
    assert (bat.source, bat.status, bat.plugged) == ("dumpsys-counter", "Discharging", [])


def test_sources_in_order_current_then_counter_sysfs_before_dumpsys():
    samsung = P.parse_dumpsys_battery(PIXEL_DUMPSYS.replace("  Charge counter", "  current now: 321\n  Charge counter"))
    both = P.parse_supplies(f"supply|{BAT}|Battery||Discharging|-412000|3871000|3561000\n")
    assert both[0]["counter"] == 3561000 and P.choose_battery(both, None).source == "sysfs"
    counter_only = P.parse_supplies(f"supply|{BAT}|Battery||Discharging||3871000|3561000\n"
                                    "supply|/sys/class/power_supply/usb|USB|1||||\n")
    assert P.choose_battery(counter_only, samsung).source == "dumpsys"  # a current beats a counter
    bat = P.choose_battery(counter_only, P.parse_dumpsys_battery(PIXEL_DUMPSYS))
    assert (bat.source, bat.path, bat.plugged) == ("sysfs-counter", BAT, ["USB"])
    no_volt = P.parse_supplies(f"supply|{BAT}|Battery||Discharging|||3561000\n")  # a counter without voltage_now
    assert P.choose_battery(no_volt, P.parse_dumpsys_battery(PIXEL_DUMPSYS)).source == "dumpsys-counter"
    zero = P.parse_supplies(f"supply|{BAT}|Battery||Discharging||3871000|0\n")  # Samsung kernels print 0
    assert zero[0]["counter"] is None and P.choose_battery(zero, None).source is None
    assert P.sample_s("dumpsys-counter") == P.DUMPSYS_COUNTER_SAMPLE_S and P.sample_s("sysfs-counter") == P.SAMPLE_S


def test_power_sampler_reads_the_sysfs_charge_counter(tmp_path):
    bat = tmp_path / "battery"
    bat.mkdir()
    (bat / "charge_counter").write_text("3561000\n")
    (bat / "voltage_now").write_text("4012000\n")
    (bat / "status").write_text("Discharging\n")
    tr = run_power_sampler(tmp_path, "sysfs-counter", bat)
    assert len(tr.samples) >= 5 and {s[1:] for s in tr.samples} == {(3561000, 4012000)}
    assert tr.status_first == tr.status_last == "Discharging"


def test_power_sampler_reads_aosp_dumpsys_charge_counter(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dumpsys").write_text(f"#!/bin/sh\ncat <<'X'\n{PIXEL_DUMPSYS}X\n")
    (bindir / "dumpsys").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    tr = run_power_sampler(tmp_path, "dumpsys-counter", Path("-"), env=env, samples=2, interval="0.1")
    assert tr.samples and {s[1:] for s in tr.samples} == {(3561000, 4012)}
    assert tr.status_first == "Discharging"


def _counter_trace(update_ms: int, step_uah: int, busy: tuple[int, int], end_ms: int, idle_ua=300_000,
                   busy_ua=1_500_000, volt_uv=3_870_000, sample_ms=50, start_uah=3_120_000, scale=1):
    """A counter that publishes every update_ms the charge left (rounded down to step_uah), drained by
    idle_ua, and busy_ua over busy=(a, b) ms; sampled every sample_ms; the trace starts at wall 1e12 ms."""
    def drained(t: int) -> float:
        return (idle_ua * t + (busy_ua - idle_ua) * max(0, min(t, busy[1]) - busy[0])) / 1000.0 / 3600.0

    pts = []
    for t in range(0, end_ms + 1, sample_ms):
        q = int((start_uah - drained(t // update_ms * update_ms)) // step_uah * step_uah)
        pts.append((100.0 + t / 1000.0, q // scale, volt_uv))
    return P.PowerTrace(start_uptime_s=100.0, start_wall_ms=1e12, samples=pts, status_first="Discharging",
                        status_last="Discharging")


def _result(load_ms: float, prefill_ms: float, decode_ms: float, prompt=256, steps=40) -> RunResult:
    stamps = [prefill_ms + decode_ms * i / steps for i in range(steps + 1)]
    return RunResult(runtime="llamacpp", prompt_tokens=prompt, generated_tokens=steps + 1, load_ms=load_ms,
                     extra={"prefill_wall_ms": prefill_ms, "token_stamp_ms": stamps})


def test_counter_energy_is_the_charge_drained_times_the_voltage_above_the_idle_rate():
    # 10 s idle, then a process (busy 10-43 s): load 0.5 s, prefill 12 s, decode 20 s; a 1 s counter in 10 µAh steps
    trace = _counter_trace(1000, 10, (10_000, 43_000), 55_000)
    e = E.rep_energy(trace, 1e12 + 10_000, _result(500, 12_000, 20_000), "sysfs-counter", [], "R3CY")
    net_w = (1_500_000 - 300_000) * 3_870_000 / 1e12
    assert e["source"] == "sysfs-counter" and e["counter_unit"] == "µAh" and e["counter_direction"] == "falling"
    assert e["baseline_w"] == pytest.approx(0.3 * 3.87, rel=0.03) and not e["baseline_slow"]
    assert e["update_ms"] == pytest.approx(1000, abs=60) and e["resolution_uah"] == pytest.approx(80, abs=10)
    pre, dec = e["phases"]["prefill"], e["phases"]["decode"]
    assert pre["j_per_token"] == pytest.approx(net_w * 12.0 / 256, rel=0.03) and pre["updates"] >= 11
    assert dec["j_per_token"] == pytest.approx(net_w * 20.0 / 40, rel=0.03)
    assert not pre["slow_gauge"] and not dec["slow_gauge"] and not dec["extrapolated"]
    assert E.rep_energy(trace, 1e12 + 10_000, _result(500, 12_000, 20_000), "dumpsys-counter", [], "x")["phases"] \
        == e["phases"]


def test_a_phase_shorter_than_ten_counter_updates_is_marked_coarse():
    trace = _counter_trace(2000, 100, (12_000, 40_000), 50_000)  # a 2 s counter in 100 µAh steps
    e = E.rep_energy(trace, 1e12 + 12_000, _result(500, 1500, 25_000), "sysfs-counter", [], "R3CY")
    assert e["update_ms"] == pytest.approx(2000, abs=60) and e["resolution_uah"] == 100
    assert e["phases"]["prefill"]["slow_gauge"] is True and e["phases"]["prefill"]["updates"] <= 1
    assert e["phases"]["decode"]["slow_gauge"] is False and e["phases"]["decode"]["updates"] >= 12
    assert E.SLOW_UPDATES * e["update_ms"] <= 25_000
    cut = _counter_trace(2000, 100, (12_000, 40_000), 38_400)  # the sampler stopped before the counter's next update
    e = E.rep_energy(cut, 1e12 + 12_000, _result(500, 1500, 25_000), "sysfs-counter", [], "R3CY")
    assert e["phases"]["decode"]["extrapolated"] and e["phases"]["decode"]["slow_gauge"]


def test_an_idle_baseline_without_two_counter_updates_is_refused_with_the_fix():
    trace = _counter_trace(2000, 100, (1_500, 20_000), 30_000)  # 1.5 s of idle against a 2 s counter
    e = E.rep_energy(trace, 1e12 + 1_500, _result(500, 5000, 10_000), "sysfs-counter", [], "R3CY")
    assert e["missing"].startswith("the battery's charge counter changed fewer than twice during the idle baseline")
    assert "--energy-baseline" in e["missing"] and e["update_ms"] == pytest.approx(2000, abs=60)
    short = _counter_trace(1000, 10, (3_000, 26_000), 40_000)  # 3 s of idle: two updates, fewer than three intervals
    e = E.rep_energy(short, 1e12 + 3_000, _result(500, 5000, 10_000), "sysfs-counter", [], "R3CY")
    assert e["baseline_slow"] and all(p["slow_gauge"] for p in e["phases"].values())


def test_a_counter_in_mah_is_read_as_such():
    # 1 mAh steps: 4 s apart at idle, 1.2 s busy
    trace = _counter_trace(1000, 1000, (30_000, 60_000), 80_000, idle_ua=900_000, busy_ua=3_000_000, scale=1000)
    e = E.rep_energy(trace, 1e12 + 30_000, _result(500, 10_000, 20_000), "sysfs-counter", [], "R3CY")
    assert e["counter_unit"] == "mAh" and e["resolution_uah"] == 1000
    net_w = (3_000_000 - 900_000) * 3_870_000 / 1e12
    assert e["phases"]["decode"]["j_per_token"] == pytest.approx(net_w * 20.0 / 40, rel=0.1)


def test_the_notice_says_the_source_and_how_long_the_idle_window_lasts():
    line = E.counter_notice("dumpsys-counter", 2.0)
    assert line.startswith("energy: no readable battery current; from the battery's charge counter "
                           "(dumpsys battery's Charge counter)")
    assert "lasts 2 s and until the counter updated 5 times" in line and "‡" in line
    assert "(sysfs charge_counter)" in E.counter_notice("sysfs-counter", 90.0)


def test_a_counter_faster_than_the_sampling_is_dated_at_the_reading():
    """A counter that changes at every 50 ms reading (it updates faster) is dated at the reading, not
    half a sample gap early: at a phase boundary (prefill at 2000 µAh/s, then decode at 400 µAh/s)
    the charge drained is the true one within a step; midway dating moves 25 ms of the next phase's
    rate into this one (10 µAh here)."""
    rate_a, rate_b, end_s = 2000.0, 400.0, 2.0
    samples = []
    for i in range(61):  # 3 s, one reading every 50 ms
        t = i * 0.05
        q = rate_a * min(t, end_s) + rate_b * max(0.0, t - end_s)
        samples.append((100.0 + t, int(round(3_000_000 - q)), 3_900_000))
    c = E.Counter(P.PowerTrace(start_uptime_s=100.0, start_wall_ms=0.0, samples=samples))
    drained, extrapolated = c.drained(end_s * 1000.0)
    assert not extrapolated
    assert drained == pytest.approx(rate_a * end_s, abs=2.0)
