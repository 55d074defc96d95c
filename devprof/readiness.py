"""The readiness gate: before each repetition, wait (bounded) until the device is quiet and cool.

``--ready cpu<30,temp<45`` holds conditions on what the device reports:

- ``cpu``: % of all CPUs busy over one second (``/proc/stat``), everything counted: devprof's own
  runtime is not running while the gate waits;
- ``load``: the 1-minute load average. It decays with a one-minute time constant, so right after
  a repetition it still counts that repetition's own threads (a 2-thread runtime leaves ~2): prefer
  ``cpu`` between back-to-back repetitions; on Android the load also counts tasks in I/O wait;
- ``temp``: the hottest thermal zone, °C.

A condition the device cannot report (no thermal zones on this host, no /proc/stat on iOS) is
skipped and said so. The gate waits until every condition holds or its timeout passes, then goes on
either way; each repetition records what the gate saw, how long it waited and whether it was ready
(``Repetition.conditions["ready"]``). Defaults (``DEFAULTS``): phones ``temp<45`` (the hottest CPU
zone of an idle phone sits at 35-42 °C; a phone that ran a benchmark a minute ago is above 45);
this host none, since other work here is not devprof's to wait for: it is measured and flagged
instead (``devprof.interference``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from devprof.errors import UsageError

KEYS = {"cpu": "% of all CPUs busy", "load": "1-minute load average", "temp": "hottest thermal zone (C)"}
DEFAULTS = {"android": "temp<45", "local": "none", "ios": "none"}
POLL_S = 2.0


@dataclass(frozen=True)
class Condition:
    key: str
    limit: float

    def __str__(self) -> str:
        return f"{self.key}<{self.limit:g}"


def parse(spec: str | None) -> list[Condition]:
    """``"load<0.5,temp<40"`` -> conditions; ``none``/``off``/empty -> none. Bad input: UsageError."""
    spec = (spec or "").strip()
    if spec.lower() in ("", "none", "off", "no"):
        return []
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*([a-z]+)\s*<\s*([0-9]*\.?[0-9]+)\s*", part)
        if not m or m.group(1) not in KEYS:
            raise UsageError(f"bad --ready condition {part.strip()!r}: use KEY<NUMBER with KEY one of "
                             f"{', '.join(KEYS)} (e.g. --ready cpu<30,temp<45), or none")
        out.append(Condition(m.group(1), float(m.group(2))))
    return out


def default_spec(kind: str) -> str:
    return DEFAULTS.get(kind, "none")


def describe(conds: list[Condition]) -> str:
    return ",".join(map(str, conds)) or "none"


def look(device, conds: list[Condition], cancel: threading.Event | None = None) -> dict[str, float | None]:
    """What the device reports now for each condition's key (None: it cannot tell)."""
    keys = {c.key for c in conds}
    saw: dict[str, float | None] = {}
    if "temp" in keys:
        zones = device.thermal()
        vals = [v for v in zones.values() if v is not None and -50 < v < 200]
        saw["temp"] = round(max(vals), 1) if vals else None
    if keys & {"cpu", "load"}:
        a = device.cpu_snapshot()
        if "load" in keys:
            saw["load"] = a.get("load1") if a else None
        if "cpu" in keys:
            if a is None:
                saw["cpu"] = None
            else:
                if cancel is not None and cancel.wait(1.0):
                    raise KeyboardInterrupt
                if cancel is None:
                    time.sleep(1.0)
                b = device.cpu_snapshot()
                saw["cpu"] = _busy_pct(a, b)
    return saw


def _busy_pct(a: dict, b: dict | None) -> float | None:
    if not b:
        return None
    d = {k: b["cpu"][k] - a["cpu"][k] for k in a["cpu"]}
    total = sum(d.values())
    if total <= 0:
        return None
    return round(100.0 * (total - d.get("idle", 0) - d.get("iowait", 0)) / total, 1)


def failing(conds: list[Condition], saw: dict[str, float | None]) -> list[str]:
    """The conditions that do not hold, as text ("cpu 85 >= 30")."""
    return [f"{c.key} {saw[c.key]:g} >= {c.limit:g}" for c in conds
            if saw.get(c.key) is not None and saw[c.key] >= c.limit]


def wait(device, conds: list[Condition], timeout_s: float, cancel: threading.Event | None = None,
         progress: Callable[[str], None] | None = None) -> dict:
    """Wait until every condition holds or ``timeout_s`` passes; what it saw and how long it waited."""
    t0 = time.monotonic()
    saw = look(device, conds, cancel)
    first = dict(saw)
    checks = 1
    last_said = -1e9
    while True:
        bad = failing(conds, saw)
        waited = time.monotonic() - t0
        if not bad or waited >= timeout_s:
            break
        if progress is not None and waited - last_said >= 5.0:
            progress(f"waiting for the {device.kind} device to be ready: {'; '.join(bad)} "
                     f"({waited:.0f} of {timeout_s:g} s)")
            last_said = waited
        if cancel is not None and cancel.wait(min(POLL_S, max(0.1, timeout_s - waited))):
            raise KeyboardInterrupt
        if cancel is None:
            time.sleep(min(POLL_S, max(0.1, timeout_s - waited)))
        saw = look(device, conds, cancel)
        checks += 1
    waited = time.monotonic() - t0
    bad = failing(conds, saw)
    rec = {"spec": describe(conds), "ready": not bad, "waited_s": round(waited, 2), "checks": checks,
           "saw_first": first, "saw": saw}
    unknown = [c.key for c in conds if saw.get(c.key) is None]
    if unknown:
        rec["unknown"] = unknown  # the device cannot report these: not checked
    if bad:
        rec["not_ready"] = bad
        if progress is not None:
            progress(f"not ready after {timeout_s:g} s ({'; '.join(bad)}); going on")
    return rec
