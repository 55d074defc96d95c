"""The fake phone's battery (and its heat) for tests/support/adbd.py: sysfs files under the sandbox whose
values follow what the phone runs, so energy per token has a known true value.

Files (under the sandbox, which the daemon names as the sysroot in ``debug.devprof.sysroot``)::

    sys/class/power_supply/battery/{type,status,capacity,present,technology,current_now,voltage_now,charge_counter}
    sys/class/power_supply/usb/{type,online}
    .adbd/bin/dumpsys            (``dumpsys battery`` prints .adbd/dumpsys-battery.txt: AOSP's format)

A gauge thread rewrites ``current_now`` and ``voltage_now`` every ``update_ms`` (atomically: a
reader sees one whole value): the current is ``busy_ua`` while a command matching ``busy_match``
runs (the phone runs a native program: the daemon puts qemu-aarch64-static in front of it) and
``idle_ua`` otherwise, plus a ``jitter_ua`` ramp (-J, -J/2, 0, J/2, J: the reading changes at every update, as a real
gauge's does, and averages out), at ``voltage_uv``; ``sign`` -1 reports a discharge as a
negative current (Pixel), +1 positive (Samsung); ``unit`` "mA" divides by 1000 (some Samsung kernels).
The true energy of a busy stretch of T seconds above idle is (busy_ua - idle_ua) * voltage_uv * T / 1e12 J.

The charge counter drains by that true current (integrated over the real time between updates, from
``start_uah``) and publishes every ``counter_update_ms`` in steps of ``counter_step_uah`` (rounded
down), in sysfs ``charge_counter`` and in the dumpsys text (``Charge counter:`` µAh, ``voltage:`` mV,
``status:`` code, no current: a stock AOSP/Pixel phone). ``current_now`` False removes the sysfs
current and ``sysfs_counter`` False the sysfs counter: a charge-counter-only phone (sysfs or dumpsys).

With ``heat_c_per_s`` > 0, thermal_zone0 warms by that while busy (cools at the same rate when idle,
down to its start) and above ``throttle_c`` the last two cores' scaling_cur_freq drop to
``throttle_share`` of their maximum: a phone that throttles under sustained load.

The configuration is ``SANDBOX/.adbd/battery.json`` (read whenever it changes): tests change the status
to "Charging" with ``plugged`` "USB" to see energy refused.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

from devprof.devices import power as P

DEFAULTS = {
    "status": "Discharging", "plugged": "", "capacity": 78, "idle_ua": 350_000, "busy_ua": 1_250_000,
    "voltage_uv": 3_870_000, "jitter_ua": 2_000, "update_ms": 20, "sign": -1, "unit": "uA",
    "busy_match": "qemu-aarch64", "heat_c_per_s": 0.0, "throttle_c": 60.0, "throttle_share": 0.6,
    "current_now": True, "sysfs_counter": True, "start_uah": 3_120_000, "counter_update_ms": 1000,
    "counter_step_uah": 1,
}
STATUS_CODES = {"Unknown": 1, "Charging": 2, "Discharging": 3, "Not charging": 4, "Full": 5}
DUMPSYS_SCRIPT = """#!/bin/sh
case "$1" in
  battery) cat {text} ;;
  *) echo "Can't find service: $1" ;;
esac
"""


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _present(path: Path, text: str | None) -> None:
    """Write ``path``, or remove it when ``text`` is None (a kernel without that file)."""
    if text is not None:
        _write(path, text)
    else:
        path.unlink(missing_ok=True)


def setup(sandbox: Path) -> Path:
    """Create the battery files and the default configuration; returns the config file."""
    bat = sandbox / "sys/class/power_supply/battery"
    usb = sandbox / "sys/class/power_supply/usb"
    bat.mkdir(parents=True, exist_ok=True)
    usb.mkdir(parents=True, exist_ok=True)
    for name, value in (("type", "Battery"), ("present", "1"), ("technology", "Li-ion")):
        _write(bat / name, value + "\n")
    _write(usb / "type", "USB\n")
    dumpsys = sandbox / ".adbd/bin/dumpsys"
    dumpsys.parent.mkdir(parents=True, exist_ok=True)
    dumpsys.write_text(DUMPSYS_SCRIPT.replace("{text}", str(sandbox / ".adbd/dumpsys-battery.txt")))
    dumpsys.chmod(0o755)
    conf = sandbox / ".adbd/battery.json"
    if not conf.exists():
        conf.write_text(json.dumps(DEFAULTS, indent=1))
    return conf


class Gauge(threading.Thread):
    """Rewrites the battery (and heat) files every update_ms from ``busy()`` (True while a matching
    command runs: the daemon's spawned commands, see Daemon.busy)."""

    def __init__(self, sandbox: Path, busy) -> None:
        super().__init__(daemon=True, name="fake-gauge")
        self.sandbox, self.busy = sandbox, busy
        self.conf_path = setup(sandbox)
        self.conf, self._mtime = dict(DEFAULTS), None
        self.stop_evt = threading.Event()
        self.tick = 0
        self.zone0 = sandbox / "sys/class/thermal/thermal_zone0/temp"
        self.temp0: float | None = None
        self.heat = 0.0
        self.drained_uah, self.last_ua, self.counter = 0.0, 0.0, None
        self.counter_written: tuple | None = None
        self.last_t = self.published_t = time.monotonic()
        self.write_state()

    def matcher(self) -> re.Pattern:
        return re.compile(str(self.conf.get("busy_match") or "qemu-aarch64"))

    def reload(self) -> None:
        try:
            m = self.conf_path.stat().st_mtime_ns
            if m != self._mtime:
                self.conf = {**DEFAULTS, **json.loads(self.conf_path.read_text())}
                self._mtime = m
        except (OSError, ValueError):
            pass

    def write_state(self) -> None:
        c = self.conf
        bat = self.sandbox / "sys/class/power_supply/battery"
        busy = self.busy(self.matcher())
        # -J, -J/2, 0, J/2, J, -J, ...: a new value at every update, a mean of exactly 0 over 5
        ua = (c["busy_ua"] if busy else c["idle_ua"]) + c["jitter_ua"] * ((self.tick % 5) - 2) / 2
        self.drain(ua)
        value = int(round(int(c["sign"]) * ua))
        if c["unit"] == "mA":
            value = int(round(value / 1000))
        _present(bat / "current_now", f"{value}\n" if c["current_now"] else None)
        self.write_counter(bat)
        _write(bat / "voltage_now", f"{int(c['voltage_uv'])}\n")
        _write(bat / "status", f"{c['status']}\n")
        _write(bat / "capacity", f"{int(c['capacity'])}\n")
        _write(self.sandbox / "sys/class/power_supply/usb/online", "1\n" if c["plugged"] else "0\n")
        if self._mtime is not None:
            _write(self.sandbox / ".adbd/battery.applied", f"{self._mtime}\n")
        if float(c["heat_c_per_s"]) > 0:
            self.warm(busy, float(c["heat_c_per_s"]) * float(c["update_ms"]) / 1000.0)

    def drain(self, ua: float) -> None:
        """Count the charge the last current drew since the last tick; publish the counter when due."""
        now = time.monotonic()
        self.drained_uah += self.last_ua * (now - self.last_t) / 3600.0
        self.last_t, self.last_ua = now, ua
        if self.counter is None or (now - self.published_t) * 1000.0 >= float(self.conf["counter_update_ms"]):
            step = max(1, int(self.conf["counter_step_uah"]))
            self.counter = int((float(self.conf["start_uah"]) - self.drained_uah) // step * step)
            self.published_t = now

    def write_counter(self, bat: Path) -> None:
        """The sysfs counter and the dumpsys text, only when they change (a slow counter costs no writes)."""
        counter = f"{self.counter}\n" if self.conf["sysfs_counter"] else None
        text = self.dumpsys_text()
        if (counter, text) != self.counter_written:
            _present(bat / "charge_counter", counter)
            _write(self.sandbox / ".adbd/dumpsys-battery.txt", text)
            self.counter_written = (counter, text)

    def dumpsys_text(self) -> str:
        """``dumpsys battery`` as stock AOSP prints it: a charge counter and a voltage, no current."""
        c = self.conf
        on = {k: str(c["plugged"] == k).lower() for k in ("AC", "USB", "Wireless")}
        return (f"Current Battery Service state:\n  AC powered: {on['AC']}\n  USB powered: {on['USB']}\n"
                f"  Wireless powered: {on['Wireless']}\n  Dock powered: false\n  Max charging current: 0\n"
                f"  Max charging voltage: 0\n  Charge counter: {self.counter}\n"
                f"  status: {STATUS_CODES.get(c['status'], 1)}\n  health: 2\n  present: true\n"
                f"  level: {int(c['capacity'])}\n  scale: 100\n  voltage: {int(c['voltage_uv']) // 1000}\n"
                "  temperature: 290\n  technology: Li-ion\n")

    def warm(self, busy: bool, step: float) -> None:
        try:
            if self.temp0 is None:
                self.temp0 = int(self.zone0.read_text().split()[0]) / 1000.0
        except (OSError, ValueError, IndexError):
            return
        self.heat = self.heat + step if busy else max(0.0, self.heat - step)
        temp = self.temp0 + self.heat
        _write(self.zone0, f"{int(temp * 1000)}\n")
        cpu = self.sandbox / "sys/devices/system/cpu"
        cores = sorted(cpu.glob("cpu[0-9]*/cpufreq"), key=lambda p: int(p.parent.name[3:]))[-2:]
        for d in cores:
            try:
                top = int((d / "cpuinfo_max_freq").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            share = float(self.conf["throttle_share"]) if temp > float(self.conf["throttle_c"]) else 1.0
            _write(d / "scaling_cur_freq", f"{int(top * share)}\n")

    def run(self) -> None:
        while not self.stop_evt.wait(max(0.005, float(self.conf["update_ms"]) / 1000.0)):
            self.tick += 1
            self.reload()
            try:
                self.write_state()
            except OSError:
                pass


def configure(sandbox: Path, **changes) -> dict:
    """Change the fake battery (tests): merged into SANDBOX/.adbd/battery.json; returns the config."""
    conf = sandbox / ".adbd/battery.json"
    cur = {**DEFAULTS, **(json.loads(conf.read_text()) if conf.exists() else {})}
    cur.update(changes)
    _write(conf, json.dumps(cur, indent=1))
    want = str(conf.stat().st_mtime_ns)
    applied = sandbox / ".adbd/battery.applied"
    end = time.monotonic() + 10
    while time.monotonic() < end:  # until the gauge wrote its files from it (a loaded host delays its ticks)
        try:
            if applied.read_text().strip() == want:
                break
        except OSError:
            pass
        time.sleep(0.02)
    return cur


def run_power_sampler(tmp_path: Path, mode: str, bat: Path, env=None, samples: int = 5,
                      interval: str = "0.05") -> P.PowerTrace:
    """Run power_sampler.sh until it wrote ``samples`` sample lines (a loaded host forks slowly: a
    fixed sleep may see none), then stop it with its stop file."""
    out, stop = tmp_path / f"{mode}.pow", tmp_path / f"{mode}.stop"
    proc = subprocess.Popen(["sh", str(P.POWER_SAMPLER), str(out), interval, str(stop), "60", mode, str(bat)],
                            env=env)
    deadline = time.monotonic() + 50
    while time.monotonic() < deadline and proc.poll() is None:
        text = out.read_text() if out.exists() else ""
        if len(P.parse_power_output(text).samples) >= samples:
            break
        time.sleep(0.05)
    stop.touch()
    assert proc.wait(10) == 0
    return P.parse_power_output(out.read_text())

