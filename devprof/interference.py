"""Interference: what else the device was doing while a repetition ran, and whether to trust the run.

Per repetition (``measure``): from the device's ``/proc/stat`` read just before the runtime starts
and just after it ends, the CPU time every other process took (all non-idle time minus the
runtime's own user + system time, minus devprof's own sampler on this host) as a share of all the
CPUs' time in that window, and the hypervisor's steal time; the 1-minute load average before it;
on phones (and wherever the device exposes them) the hottest thermal zone and the fastest core's
clock before and after, which show throttling.

Per run (``verdict``): a run is *noisy* when other processes took more than ``BUSY_PCT`` of the CPU
(or steal more than ``STEAL_PCT``) during a quarter or more of its measured repetitions, or when
the repetitions of a cell spread more than ``SPREAD_CV`` (coefficient of variation of decode or
prefill speed). The renderers put the verdict's one line at the top; ``devprof diff`` will not call
a regression on noisy data unless asked (``--allow-noisy``).

Linux accounts /proc/stat in USER_HZ ticks (100 a second on every Linux/Android ABI in use).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devprof.results import ProcessOutcome, RunRecord

USER_HZ = 100
#: other processes' share of all CPUs' time during a repetition above which it counts as disturbed
BUSY_PCT = 15.0
#: steal (the hypervisor giving the CPU to other guests) above which a repetition counts as disturbed
STEAL_PCT = 5.0
#: share of disturbed repetitions from which the whole run is flagged
DISTURBED_SHARE = 0.25
#: coefficient of variation of a cell's decode/prefill speed above which the run is flagged
SPREAD_CV = 0.10

_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str) -> dict[str, int] | None:
    """The aggregate ``cpu`` line of /proc/stat as ticks by field (None when there is none)."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            vals = [int(x) for x in parts[1:9] if x.isdigit()]
            vals += [0] * (8 - len(vals))
            return dict(zip(_FIELDS, vals))
    return None


def count_cpus(text: str) -> int | None:
    n = sum(1 for line in text.splitlines() if line.startswith("cpu") and line[3:4].isdigit())
    return n or None


def parse_loadavg(text: str) -> float | None:
    parts = text.split()
    try:
        return float(parts[0])
    except (IndexError, ValueError):
        return None


def snapshot_from_text(stat_text: str, loadavg_text: str, t: float | None = None) -> dict[str, Any] | None:
    cpu = parse_proc_stat(stat_text)
    if cpu is None:
        return None
    return {"cpu": cpu, "ncpu": count_cpus(stat_text), "load1": parse_loadavg(loadavg_text),
            "t": time.monotonic() if t is None else t}


def local_snapshot() -> dict[str, Any] | None:
    """This host's snapshot (a few microseconds: two small procfs reads)."""
    try:
        stat = Path("/proc/stat").read_text()
        load = Path("/proc/loadavg").read_text()
    except OSError:
        return None
    return snapshot_from_text(stat, load)


#: one adb round trip on Android: /proc/stat's cpu lines, a separator, /proc/loadavg
ANDROID_SNAPSHOT_CMD = "grep '^cpu' /proc/stat; echo ---; cat /proc/loadavg"


def snapshot_from_shell(out: str) -> dict[str, Any] | None:
    stat, _, load = out.partition("---")
    return snapshot_from_text(stat, load)


def sampler_cpu_seconds(mem_text: str) -> float | None:
    """The runtime's own CPU seconds from sampler.sh's output: the last "cpu:<ticks>" it saw."""
    last = None
    for line in mem_text.splitlines():
        for item in line.split()[1:]:
            if item.startswith("cpu:") and item[4:].isdigit():
                last = int(item[4:])
    return None if last is None else last / USER_HZ


def measure(before: dict | None, after: dict | None, outcome: ProcessOutcome | None = None) -> dict[str, Any]:
    """Interference during one repetition from two snapshots around it.

    Keys: ``window_s``, ``ncpu``, ``busy_pct`` (all non-idle time, % of all CPUs' time), ``own_cpu_pct``
    (the runtime's and devprof's sampler), ``other_cpu_pct`` (the rest: other processes), ``steal_pct``,
    ``load_before``; missing figures are left out (None values are not stored).
    """
    out: dict[str, Any] = {}
    if before is not None:
        out["load_before"] = before.get("load1")
    if not before or not after:
        return {k: v for k, v in out.items() if v is not None}
    a, b = before["cpu"], after["cpu"]
    d = {k: max(0, b.get(k, 0) - a.get(k, 0)) for k in _FIELDS}
    total = sum(d.values())
    out["ncpu"] = after.get("ncpu") or before.get("ncpu")
    out["window_s"] = round(max(0.0, after["t"] - before["t"]), 3)
    if total <= 0:
        return {k: v for k, v in out.items() if v is not None}
    busy = total - d["idle"] - d["iowait"]
    own = None
    if outcome is not None and outcome.cpu_s is not None:
        own = outcome.cpu_s * USER_HZ + (outcome.sampler_cpu_s or 0.0) * USER_HZ
    out["busy_pct"] = round(100.0 * busy / total, 2)
    out["steal_pct"] = round(100.0 * d["steal"] / total, 2)
    if own is not None:
        out["own_cpu_pct"] = round(min(100.0, 100.0 * own / total), 2)
        out["other_cpu_pct"] = round(max(0.0, 100.0 * (busy - own) / total), 2)
    return {k: v for k, v in out.items() if v is not None}


def thermal_figures(thermal_before: dict[str, float], thermal_after: dict[str, float],
                    freqs_before: dict[str, float], freqs_after: dict[str, float]) -> dict[str, Any]:
    """Hottest zone and the fastest core's clock (the big cores on a phone) before and after."""
    out: dict[str, Any] = {}
    for key, zones in (("hottest_c_before", thermal_before), ("hottest_c_after", thermal_after)):
        vals = [v for v in (zones or {}).values() if v is not None and -50 < v < 200]
        if vals:
            out[key] = round(max(vals), 1)
    for key, fr in (("max_core_mhz_before", freqs_before), ("max_core_mhz_after", freqs_after)):
        vals = [v for v in (fr or {}).values() if v]
        if vals:
            out[key] = round(max(vals), 0)
    return out


def disturbed(cond: dict[str, Any]) -> bool:
    i = cond.get("interference") or {}
    return (i.get("other_cpu_pct") or 0.0) > BUSY_PCT or (i.get("steal_pct") or 0.0) > STEAL_PCT


# ---- the verdict of a run --------------------------------------------------------------------------
@dataclass
class NoiseVerdict:
    noisy: bool
    line: str | None  # the one line to show at the top, when noisy (or a milder note)
    n_reps: int  # measured repetitions with interference figures
    n_disturbed: int
    mean_other_pct: float | None  # over the disturbed repetitions
    max_steal_pct: float | None
    spread: list[str] = field(default_factory=list)  # cells whose CV is above SPREAD_CV

    def to_dict(self) -> dict[str, Any]:
        return {"noisy": self.noisy, "line": self.line, "repetitions_measured": self.n_reps,
                "repetitions_disturbed": self.n_disturbed,
                "mean_other_cpu_pct": None if self.mean_other_pct is None else round(self.mean_other_pct, 1),
                "max_steal_pct": None if self.max_steal_pct is None else round(self.max_steal_pct, 1),
                "spread": self.spread, "thresholds": {"other_cpu_pct": BUSY_PCT, "steal_pct": STEAL_PCT,
                                                      "disturbed_share": DISTURBED_SHARE, "cv": SPREAD_CV}}


def verdict(record: RunRecord, rows: list | None = None) -> NoiseVerdict:
    """Whether the figures of a run can be trusted, in one line."""
    from devprof import stats

    reps = record.measured()
    with_i = [r for r in reps if (r.conditions or {}).get("interference", {}).get("busy_pct") is not None]
    bad = [r for r in with_i if disturbed(r.conditions)]
    others = [r.conditions["interference"].get("other_cpu_pct") for r in bad]
    others = [x for x in others if x is not None]
    steals = [r.conditions["interference"].get("steal_pct") or 0.0 for r in with_i]
    spread = []
    for row in rows if rows is not None else stats.summarize(record, n_boot=200):
        for name in ("decode_tok_s", "prefill_tok_s"):
            m = row.metric(name)
            if m is not None and m.n >= 3 and m.cv is not None and m.cv > SPREAD_CV:
                spread.append(f"{row.display} {row.workload} {row.context} {stats.METRIC_INFO[name].label} "
                              f"±{m.cv * 100:.0f}%")
    busy = bool(with_i) and len(bad) / len(with_i) >= DISTURBED_SHARE
    host = "host" if record.meta.device.kind == "local" else "device"
    parts = []
    if busy:
        what = []
        if others:
            what.append(f"other processes took {sum(others) / len(others):.0f}% of CPU")
        if steals and max(steals) > STEAL_PCT:
            what.append(f"steal up to {max(steals):.0f}%")
        parts.append(f"{host} busy: {' and '.join(what) or 'disturbed'} during {len(bad)} of {len(with_i)} "
                     "repetitions")
    if spread:
        parts.append(f"repetitions spread widely ({'; '.join(spread[:3])}{'; ...' if len(spread) > 3 else ''})")
    noisy = bool(parts)
    line = (("; ".join(parts) + "; figures below are unreliable") if noisy else None)
    if noisy:
        line = line[0].upper() + line[1:] if not line.startswith(host) else line
    return NoiseVerdict(noisy=noisy, line=line, n_reps=len(with_i), n_disturbed=len(bad),
                        mean_other_pct=(sum(others) / len(others)) if others else None,
                        max_steal_pct=max(steals) if steals else None, spread=spread)

