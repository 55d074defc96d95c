"""Energy per token from a phone's battery, and the parsers it rests on.

Unit tests: the arithmetic (units, sign, integration, idle baseline, slow gauges, refusals) and the
parsers on real-format text (sysfs values, AOSP and Samsung `dumpsys battery`); power_sampler.sh runs
for real on this host. End to end (tests/test_energy_e2e.py): `devprof run --device s25` against the
test daemon's fake battery, whose true energy is known.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from devprof import energy as E
from devprof.devices import power as P
from devprof.results import RunResult
from tests.support.fake_battery import run_power_sampler

AOSP_DUMPSYS = """Current Battery Service state:
  AC powered: false
  USB powered: true
  Wireless powered: false
  Dock powered: false
  Max charging current: 500000
  Max charging voltage: 5000000
  Charge counter: 3045000
  status: 2
  health: 2
  present: true
  level: 87
  scale: 100
  voltage: 4294
  temperature: 290
  technology: Li-ion
"""

SAMSUNG_DUMPSYS = """Current Battery Service state:
  mBootCompleted: true
  AC powered: false
  USB powered: false
  Wireless powered: false
  Max charging current: 0
  Max charging voltage: 0
  Charge counter: 0
  status: 3
  health: 2
  present: true
  level: 84
  scale: 100
  voltage: 4063
  temperature: 326
  technology: Li-ion
  LED Charging: true
  current now: 321
  charge counter: 0
  Adaptive Fast Charging Settings: true
"""


def test_dumpsys_battery_parses_aosp_and_samsung_text():
    a = P.parse_dumpsys_battery(AOSP_DUMPSYS)
    assert a == {"status": "Charging", "plugged": ["USB"], "voltage_mv": 4294, "current": None, "level": 87,
                 "charge_counter": 3045000}
    s = P.parse_dumpsys_battery(SAMSUNG_DUMPSYS)
    assert s["status"] == "Discharging" and s["plugged"] == [] and s["current"] == 321 and s["voltage_mv"] == 4063
    assert s["charge_counter"] is None  # Samsung prints "Charge counter: 0"


def test_choose_battery_prefers_sysfs_then_a_dumpsys_current_else_says_why():
    probe = ("supply|/sys/class/power_supply/battery|Battery||Discharging|-412000|3871000\n"
             "supply|/sys/class/power_supply/usb|USB|0|||\n"
             "supply|/sys/class/power_supply/ac|Mains|1|||\n")
    supplies = P.parse_supplies(probe)
    bat = P.choose_battery(supplies, None)
    assert (bat.source, bat.path, bat.status, bat.plugged) == ("sysfs", "/sys/class/power_supply/battery",
                                                               "Discharging", ["Mains"])
    unreadable = P.parse_supplies("supply|/sys/class/power_supply/battery|Battery||Discharging||\n")
    assert P.choose_battery(unreadable, P.parse_dumpsys_battery(SAMSUNG_DUMPSYS)).source == "dumpsys"
    counter = P.choose_battery(unreadable, P.parse_dumpsys_battery(AOSP_DUMPSYS))  # AOSP: a charge counter only
    assert counter.source == "dumpsys-counter" and counter.status == "Charging" and counter.plugged == ["USB"]
    no_counter = AOSP_DUMPSYS.replace("Charge counter: 3045000", "Charge counter: 0")
    none = P.choose_battery(unreadable, P.parse_dumpsys_battery(no_counter))
    assert none.source is None and "prints neither a current" in none.why and none.status == "Charging"
    assert P.choose_battery([], None).why == "no /sys/class/power_supply battery"


def test_the_battery_probe_prints_supply_lines_only(tmp_path):
    """A phone's supplies lack some of the files read (a battery has no ``online``, a USB supply no
    ``current_now``): the probe says nothing on stderr, which adb's shell v2 would interleave with
    its lines (the test daemon's fake battery showed 6 % of probes without a battery under load)."""
    bat, usb = tmp_path / "sys/class/power_supply/battery", tmp_path / "sys/class/power_supply/usb"
    for d, files in ((bat, {"type": "Battery", "status": "Discharging", "current_now": "-412000",
                            "voltage_now": "3871000"}), (usb, {"type": "USB", "online": "1"})):
        d.mkdir(parents=True)
        for name, value in files.items():
            (d / name).write_text(value + "\n")
    r = subprocess.run(["sh", "-c", P.PROBE_SCRIPT.replace("{root}", str(tmp_path))], capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines() == [f"supply|{bat}|Battery||Discharging|-412000|3871000|", f"supply|{usb}|USB|1||||"]
    # stderr glued in front of a line (a device whose shell still prints it) does not hide the supply
    glued = f"/bin/sh: 3: cannot open {bat}/online: No such file" + r.stdout.replace("\n", "\n\n", 1)
    assert P.parse_supplies(glued) == P.parse_supplies(r.stdout)
    assert P.choose_battery(P.parse_supplies(glued), None) == P.Battery("sysfs", str(bat), "Discharging", ["USB"])


def test_status_words_from_sysfs_and_dumpsys_codes():
    assert [P.normal_status(x) for x in ("Charging", "2", "Notcharging", "Not charging", "5", "", "weird")] == \
        ["Charging", "Charging", "Not charging", "Not charging", "Full", "Unknown", "weird"]


def test_power_sampler_reads_sysfs_files_with_builtins(tmp_path):
    bat = tmp_path / "battery"
    bat.mkdir()
    (bat / "current_now").write_text("-412000\n")
    (bat / "voltage_now").write_text("3871000\n")
    (bat / "status").write_text("Not charging\n")
    tr = run_power_sampler(tmp_path, "sysfs", bat)
    assert len(tr.samples) >= 5 and {s[1:] for s in tr.samples} == {(-412000, 3871000)}
    assert tr.status_first == tr.status_last == "Not charging"
    assert abs(tr.start_wall_ms - time.time() * 1000) < 60_000
    ups = [s[0] for s in tr.samples]
    assert ups == sorted(ups) and tr.wall_ms(ups[0]) >= tr.start_wall_ms


def test_power_sampler_falls_back_to_dumpsys(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dumpsys").write_text(f"#!/bin/sh\ncat <<'X'\n{SAMSUNG_DUMPSYS}X\n")
    (bindir / "dumpsys").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    tr = run_power_sampler(tmp_path, "dumpsys", Path("-"), env=env)
    assert tr.samples and {s[1:] for s in tr.samples} == {(321, 4063)}
    assert tr.status_first == "Discharging"


def _trace(points: list[tuple[float, int, int]], status: str = "Discharging") -> P.PowerTrace:
    """points: (ms from the trace start, raw current, raw voltage); the trace starts at wall 1e12 ms."""
    return P.PowerTrace(start_uptime_s=100.0, start_wall_ms=1e12,
                        samples=[(100.0 + t / 1000.0, c, v) for t, c, v in points],
                        status_first=status, status_last=status)


def test_units_and_sign_are_read_from_the_values():
    ts, ws, units = E.to_watts(_trace([(0, -500_000, 4_000_000), (10, -500_000, 4_000_000)]))
    assert ws == pytest.approx([2.0, 2.0]) and units == {"current_unit": "µA", "voltage_unit": "µV",
                                                           "discharge_sign": "negative"}
    _, ws, units = E.to_watts(_trace([(0, 500, 4000), (10, 500, 4000)]))  # Samsung: mA, and a mV gauge
    assert ws == pytest.approx([2.0, 2.0]) and units["current_unit"] == "mA" and units["voltage_unit"] == "mV"
    assert units["discharge_sign"] == "positive"


def test_integration_is_exact_for_piecewise_linear_power():
    ts, ws = [0.0, 1000.0, 2000.0], [1.0, 3.0, 3.0]
    assert E.integrate(ts, ws, 0, 2000) == pytest.approx(2.0 + 3.0)
    assert E.integrate(ts, ws, 500, 1500) == pytest.approx((2.0 + 3.0) / 2 * 0.5 + 3.0 * 0.5)
    assert E.integrate(ts, ws, -1, 100) is None and E.integrate(ts, ws, 100, 2001) is None
    assert E.mean_power(ts, ws, 1000, 2000) == pytest.approx(3.0)


def _busy_trace(step_ms: int, update_ms: int, busy: tuple[float, float], idle_ua=250_000, busy_ua=1_000_000,
                jitter=1000, end_ms=6000):
    """A gauge that reads a new value every update_ms (± jitter), busy over busy=(a, b) ms, at 4 V."""
    pts = []
    for t in range(0, end_ms + 1, step_ms):
        k = t // update_ms
        at = k * update_ms  # the value the gauge last published
        ua = (busy_ua if busy[0] <= at < busy[1] else idle_ua) + jitter * (k % 2 * 2 - 1)
        pts.append((t, -ua, 4_000_000))
    return _trace(pts)


def test_rep_energy_subtracts_the_idle_baseline_per_phase():
    # process starts at 2000 ms (after a 2 s idle window), loads 500 ms, prefill 1000 ms, decode 2000 ms
    trace = _busy_trace(10, 10, (2000, 6000))
    result = RunResult(runtime="llamacpp", prompt_tokens=100, generated_tokens=11, load_ms=500.0,
                       extra={"prefill_wall_ms": 1000.0, "token_stamp_ms": [1000.0 + 200 * i for i in range(11)]})
    e = E.rep_energy(trace, 1e12 + 2000, result, "sysfs", [], "R3CY")
    assert e["baseline_w"] == pytest.approx(1.0, rel=0.01) and e["discharge_sign"] == "negative"
    net_w = (1.0 - 0.25) * 4.0
    pre, dec = e["phases"]["prefill"], e["phases"]["decode"]
    assert pre["tokens"] == 100 and pre["j_per_token"] == pytest.approx(net_w * 1.0 / 100, rel=0.01)
    assert dec["tokens"] == 10 and dec["j_per_token"] == pytest.approx(net_w * 2.0 / 10, rel=0.01)
    assert dec["j_gross"] == pytest.approx(4.0 * 2.0, rel=0.01)
    assert not pre["slow_gauge"] and e["update_ms"] == pytest.approx(10.0)


def test_a_gauge_slower_than_the_phase_is_marked():
    trace = _busy_trace(50, 1000, (2000, 6000), end_ms=8000)
    result = RunResult(runtime="llamacpp", prompt_tokens=20, generated_tokens=5, load_ms=100.0,
                       extra={"prefill_wall_ms": 300.0, "token_stamp_ms": [400.0, 1800, 3200, 4600, 5800]})
    e = E.rep_energy(trace, 1e12 + 2000, result, "sysfs", [], "R3CY")
    assert e["update_ms"] == pytest.approx(1000.0)
    assert e["phases"]["prefill"]["slow_gauge"] is True  # 0.3 s phase, 1 s gauge
    assert e["phases"]["decode"]["slow_gauge"] is False  # 5.4 s phase


def test_phase_windows_without_runner_timestamps_lay_durations_end_to_end():
    r = RunResult(runtime="reference", prompt_tokens=64, generated_tokens=9, load_ms=200.0, prefill_ms=300.0,
                  decode_ms=800.0)
    assert E.phase_windows(r) == {"prefill": (200.0, 500.0, 64), "decode": (500.0, 1300.0, 8)}
    assert E.phase_windows(None) == {}


def test_charging_is_refused_with_the_wireless_debugging_hint():
    usb = E.refusal("Charging", ["USB"], "R3CY20ABCDE")
    assert usb.startswith("energy refused: the battery is charging on USB power")
    assert "adb pair" in usb and "adb connect" in usb and "--device IP:PORT" in usb
    wifi = E.refusal("Charging", ["Mains"], "192.168.1.23:40135")
    assert "unplug the charger" in wifi and "adb pair" not in wifi
    both = E.refusal("Charging", ["USB"], "192.168.1.23:40135")  # on Wi-Fi, yet the cable still charges it
    assert both.endswith("unplug the USB cable: devprof already reaches 192.168.1.23:40135 over wireless debugging")
    assert "adb pair" in E.refusal("Charging", [], "R3CY20ABCDE")  # over USB, whatever the supplies say
    assert E.refusal("Full", ["USB"], "x") and E.refusal("Not charging", ["USB"], "x")
    assert E.refusal("Full", [], "x") is None and E.refusal("Discharging", [], "x") is None
    assert E.is_wireless("adb-R3CY20-abc._adb-tls-connect._tcp") and not E.is_wireless("R3CY20ABCDE")
    trace = _busy_trace(10, 10, (2000, 6000))
    trace.status_last = "Charging"  # plugged in during the run: the figures are dropped, never wrong
    e = E.rep_energy(trace, 1e12 + 2000, RunResult(runtime="x"), "sysfs", ["USB"], "R3CY")
    assert set(e) == {"refused", "status"} and "charging" in e["refused"]


def test_soak_verdict_finds_the_onset_and_the_drop():
    from devprof import soak

    pts = [{"t_s": float(t), "decode_tok_s": 10.0 if t < 120 else 7.0, "hottest_c": 40 + t / 10,
            "big_core_mhz": 4320.0 if t < 120 else 2600.0} for t in range(0, 300, 10)]
    v = soak.verdict(pts)
    assert v["throttled"] and v["onset_s"] == 120.0 and v["change_pct"] == -30.0
    assert v["sentence"].startswith("throttled from 120 s: decode 10.00 → 7.00 tok/s (-30%) from the first minute")
    assert "big core 4320 → 2600 MHz" in v["sentence"] and "hottest zone" in v["sentence"]
    flat = [{"t_s": float(t), "decode_tok_s": 10.0, "hottest_c": None, "big_core_mhz": None} for t in range(0, 30, 5)]
    v = soak.verdict(flat)
    assert not v["throttled"] and v["onset_s"] is None
    assert v["sentence"] == ("no throttling: decode 10.00 tok/s at the end, +0% against the first 8 s (10.00); "
                             "this device exposes no thermal zones")


def test_the_estimate_counts_the_soak_and_the_idle_baselines():
    from devprof.catalog import get_model
    from devprof.estimate import estimate
    from devprof.session import Plan

    plan = Plan(models=[get_model("mobilemoe-s-mini")], workloads=["real"], contexts=[128], reps=3, warmup=0)
    base = estimate(plan, device_kind="android").seconds
    assert estimate(Plan(**{**plan.__dict__, "soak_min": 2.0}), device_kind="android").seconds == \
        pytest.approx(base + 120.0)
    off = estimate(Plan(**{**plan.__dict__, "energy": False}), device_kind="android").seconds
    assert base - off == pytest.approx(3 * 2.0)  # 3 repetitions x the 2 s idle window
    assert estimate(plan, device_kind="local").seconds < base
