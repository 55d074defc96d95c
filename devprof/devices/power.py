"""A phone's battery as the adb shell can read it: where the files are, what they say, and a sampler
that records current and voltage alongside a run.

Sources, best first:

* ``sysfs``: ``/sys/class/power_supply/<battery>/current_now`` (µA; some Samsung kernels give mA)
  and ``voltage_now`` (µV; a few give mV), read by ``power_sampler.sh`` with shell builtins every
  :data:`SAMPLE_S`. Readable by the shell user on most phones (SELinux allows ``sysfs_batteryinfo``).
* ``dumpsys``: ``dumpsys battery`` each sample: ``voltage:`` (mV) everywhere, ``current now:``
  only where the vendor prints it (Samsung, in mA).
* ``sysfs-counter``: no readable current, but the battery's ``charge_counter`` (µAh of charge left)
  and ``voltage_now`` read: energy is Δcharge × mean voltage over a phase (devprof/energy.py). Charge
  counters tick in steps (often hundreds of µAh) and update every few to tens of seconds.
* ``dumpsys-counter``: stock AOSP/Pixel ``dumpsys battery`` prints ``Charge counter:`` (µAh) and
  ``voltage:`` but no current; sampled every :data:`DUMPSYS_COUNTER_SAMPLE_S` (a dumpsys costs the
  phone CPU, and the value healthd publishes changes far less often than that).

Without any of these there is no energy figure.

Paths are read under the device backend's **sysroot** (``AndroidDevice.sysroot``, "/" on a real
phone): the suite's test daemon serves a fake battery, thermal zones and cpufreq files from its
sandbox and names that folder in the ``debug.devprof.sysroot`` property (empty on real phones).
"""

from __future__ import annotations

import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

POWER_SAMPLER = Path(__file__).with_name("power_sampler.sh")
#: Battery sampling interval (s). Fuel gauges update every 0.1-10 s; sampling faster only shows
#: how often the value really changes (the resolution the report states).
SAMPLE_S = 0.05
#: The dumpsys charge counter's sampling interval (s): fast enough to time its updates to a few %.
DUMPSYS_COUNTER_SAMPLE_S = 0.5
#: The sources that read a charge counter instead of a current.
COUNTER_SOURCES = ("sysfs-counter", "dumpsys-counter")
#: The property naming a test sysroot (tests/adbd.py sets it; empty, so "/", on a real phone).
SYSROOT_PROP = "debug.devprof.sysroot"
#: dumpsys battery's status codes (BatteryManager.BATTERY_STATUS_*).
DUMPSYS_STATUS = {"1": "Unknown", "2": "Charging", "3": "Discharging", "4": "Not charging", "5": "Full"}


def sample_s(source: str | None) -> float:
    """The sampling interval of a source (s)."""
    return DUMPSYS_COUNTER_SAMPLE_S if source == "dumpsys-counter" else SAMPLE_S


def join_root(root: str, path: str) -> str:
    """``path`` (absolute, device side) under ``root``."""
    return root.rstrip("/") + "/" + path.lstrip("/") if root not in ("", "/") else "/" + path.lstrip("/")


def normal_status(raw: str) -> str:
    """A battery status word as sysfs spells it, from sysfs text or a dumpsys code."""
    s = (raw or "").strip()
    if s in DUMPSYS_STATUS:
        return DUMPSYS_STATUS[s]
    squashed = s.replace(" ", "").replace("_", "").lower()
    for word in ("Charging", "Discharging", "Not charging", "Full", "Unknown"):
        if squashed == word.replace(" ", "").lower():
            return word
    return s or "Unknown"


@dataclass
class Battery:
    """What a phone offers for energy: the source, its files, and whether external power is in."""

    source: str | None  # sysfs | dumpsys | sysfs-counter | dumpsys-counter | None (nothing usable)
    path: str = ""  # the battery's sysfs folder (device side, sysroot included) for sysfs[-counter]
    status: str = "Unknown"
    plugged: list[str] = field(default_factory=list)  # supplies online: USB, AC, Wireless, ...
    why: str = ""  # when source is None: what was missing

    def to_dict(self) -> dict:
        return {"source": self.source, "path": self.path, "status": self.status, "plugged": list(self.plugged),
                **({"why": self.why} if self.why else {})}


#: One line per supply. The group's ``2>/dev/null`` is in force before each ``< file`` is opened
#: (``read -r x < f 2>/dev/null`` opens ``f`` first: its "cannot open" reaches the output, and
#: adb's shell v2 interleaves stderr with stdout mid-line).
PROBE_SCRIPT = r"""for d in {root}/sys/class/power_supply/*; do [ -d "$d" ] || continue
t=""; o=""; s=""; c=""; v=""; q=""
{ read -r t < "$d/type"; read -r o < "$d/online"; read -r s < "$d/status"
  read -r c < "$d/current_now"; read -r v < "$d/voltage_now"; read -r q < "$d/charge_counter"; } 2>/dev/null
echo "supply|$d|$t|$o|$s|$c|$v|$q"; done"""


def parse_supplies(text: str) -> list[dict]:
    """The probe's ``supply|DIR|TYPE|ONLINE|STATUS|CURRENT|VOLTAGE[|CHARGE_COUNTER]`` lines as dicts
    (a charge counter of 0 is none: Samsung's kernels print 0)."""
    out = []
    for line in text.splitlines():
        parts = line[line.rfind("supply|"):].strip().split("|")  # after any stderr text glued in front
        if len(parts) in (7, 8) and parts[0] == "supply":
            _, d, t, o, s, c, v = parts[:7]
            q = _int(parts[7]) if len(parts) == 8 else None
            out.append({"dir": d, "type": t.strip(), "online": o.strip() == "1", "status": s.strip(),
                        "current": _int(c), "voltage": _int(v), "counter": q or None})
    return out


def parse_dumpsys_battery(text: str) -> dict:
    """``dumpsys battery``: {status (word), plugged [AC, USB, ...], voltage_mv, current (raw, the
    vendor's unit: Samsung's mA) or None, level, charge_counter (µAh; None where absent or 0)}."""
    kv: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            kv.setdefault(k.strip(), v.strip())
    plugged = [name for name in ("AC", "USB", "Wireless", "Dock") if kv.get(f"{name} powered") == "true"]
    return {"status": normal_status(kv.get("status", "")), "plugged": plugged,
            "voltage_mv": _int(kv.get("voltage", "")), "current": _int(kv.get("current now", "")),
            "level": _int(kv.get("level", "")), "charge_counter": _int(kv.get("Charge counter", "")) or None}


def choose_battery(supplies: list[dict], dumpsys: dict | None) -> Battery:
    """The best source: a Battery-type supply whose current and voltage read, else dumpsys with a
    current, else a sysfs charge counter with voltage_now, else dumpsys's charge counter, else none
    (with why)."""
    plugged = [s["type"] or Path(s["dir"]).name for s in supplies if s["type"] != "Battery" and s["online"]]
    bats = [s for s in supplies if s["type"] == "Battery"]
    for s in bats:
        if s["current"] is not None and s["voltage"] is not None:
            return Battery("sysfs", s["dir"], normal_status(s["status"]), plugged)
    if dumpsys and dumpsys.get("voltage_mv") and dumpsys.get("current") is not None:
        return Battery("dumpsys", "", dumpsys["status"], plugged or dumpsys["plugged"])
    for s in bats:
        if s.get("counter") and s["voltage"] is not None:
            return Battery("sysfs-counter", s["dir"], normal_status(s["status"]), plugged)
    if dumpsys and dumpsys.get("voltage_mv") and dumpsys.get("charge_counter"):
        return Battery("dumpsys-counter", "", dumpsys["status"], plugged or dumpsys["plugged"])
    why = ("no readable current_now/voltage_now or charge_counter under /sys/class/power_supply" if bats or supplies
           else "no /sys/class/power_supply battery")
    if dumpsys is not None:
        why += ("; dumpsys battery prints neither a current (only Samsung's does) nor a charge counter"
                if dumpsys.get("voltage_mv") else "; dumpsys battery is not readable")
    status = (dumpsys or {}).get("status") or (normal_status(bats[0]["status"]) if bats else "Unknown")
    return Battery(None, "", status, plugged or (dumpsys or {}).get("plugged", []), why)


def probe(dev) -> Battery:
    """Look at ``dev``'s batteries (an AndroidDevice: ``sh`` and ``sysroot``)."""
    rc, out = dev.sh(PROBE_SCRIPT.replace("{root}", shlex.quote(dev.sysroot.rstrip("/")) if dev.sysroot != "/" else ""),
                     timeout=20)
    supplies = parse_supplies(out)
    bat = choose_battery(supplies, None)
    if bat.source != "sysfs":  # dumpsys may print a current (Samsung), better than a charge counter
        rc, text = dev.sh("dumpsys battery", timeout=20)
        bat = choose_battery(supplies, parse_dumpsys_battery(text) if rc == 0 and "voltage" in text else None)
    return bat


@dataclass
class PowerTrace:
    """What ``power_sampler.sh`` wrote: samples in device uptime, and the wall clock at its start."""

    start_uptime_s: float | None = None
    start_wall_ms: float | None = None
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (uptime s, raw current or counter, raw voltage)
    status_first: str = "Unknown"
    status_last: str = "Unknown"

    def wall_ms(self, uptime_s: float) -> float | None:
        """A sample's device wall-clock time (ms since the epoch)."""
        if self.start_uptime_s is None or self.start_wall_ms is None:
            return None
        return self.start_wall_ms + (uptime_s - self.start_uptime_s) * 1000.0


def parse_power_output(text: str) -> PowerTrace:
    tr = PowerTrace()
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "start" and len(parts) >= 2:
            tr.start_uptime_s = _float(parts[1])
            if len(parts) >= 3 and parts[2].isdigit() and len(parts[2]) > 12:
                tr.start_wall_ms = int(parts[2]) / 1e6
        elif parts[0] == "status":
            tr.status_first = normal_status(parts[1]) if len(parts) > 1 else "Unknown"
            tr.status_last = normal_status(" ".join(parts[2:])) if len(parts) > 2 else tr.status_first
        elif len(parts) == 3 and _float(parts[0]) is not None:
            c, v = _int(parts[1]), _int(parts[2])
            if c is not None and v is not None:
                tr.samples.append((float(parts[0]), c, v))
    return tr


class PowerRecorder:
    """One ``power_sampler.sh`` running in its own adb shell: ``start()`` before the idle baseline,
    ``stop()`` after the run (a stop file ends it within one interval); returns the trace."""

    def __init__(self, dev, battery: Battery, script: str, max_s: float) -> None:
        self.dev, self.battery = dev, battery
        dev._power_seq = getattr(dev, "_power_seq", 0) + 1
        base = f"{dev.scratch_dir}/power{dev._power_seq}-{int(time.time() * 1000)}"
        self.out, self.stop_file = base + ".pow", base + ".stop"
        bat = battery.path if battery.source in ("sysfs", "sysfs-counter") else "-"
        every = f"{sample_s(battery.source):.3f}"
        self.cmd = " ".join(shlex.quote(a) for a in ["sh", script, self.out, every, self.stop_file,
                                                       str(int(max_s) + 1), battery.source or "sysfs", bat])
        self.max_s = max_s
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        v2 = self.dev.shell_v2()

        def go() -> None:
            try:
                self.dev.dev.shell2(self.cmd, timeout=self.max_s + 60, v2=v2)  # silent until it ends
            except BaseException as e:  # noqa: BLE001 - reported as a missing trace
                self.error = e

        self._thread = threading.Thread(target=go, daemon=True, name="power-sampler")
        self._thread.start()

    def peek(self) -> PowerTrace:
        """The trace so far, the sampler still running (empty when the phone does not answer)."""
        from devprof.errors import DeviceLost

        try:
            _, text = self.dev.sh(["cat", self.out], timeout=20)
        except DeviceLost:
            return PowerTrace()
        return parse_power_output(text)

    def stop(self) -> PowerTrace:
        from devprof.errors import DeviceLost

        try:
            self.dev.sh(["touch", self.stop_file], timeout=20)
            if self._thread is not None:
                self._thread.join(10)
            _, text = self.dev.sh(["cat", self.out], timeout=20)
            self.dev.sh(["rm", "-f", self.out, self.stop_file], timeout=20)
        except DeviceLost:
            return PowerTrace()
        return parse_power_output(text)


def _int(s: str | None) -> int | None:
    try:
        return int(str(s).strip())
    except (TypeError, ValueError):
        return None


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None
