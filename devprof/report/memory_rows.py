"""Swap, PSS, page faults, the peak's parts and the device's headroom as numbers: per repetition
(:func:`rep_fields`) and per (model, workload, context) (:func:`headroom_rows`, :func:`result_fields`).

The HTML headroom table (``memory_figures``), `show --json`, and the CSV, JSON and Markdown exports
all read them from here. Memory in MiB (kB / 1024), faults as counts. Every value is None where the
run did not record it (a store from before these were sampled, an iPhone, a host without swap
accounting).
"""

from __future__ import annotations

import statistics
from typing import Any

from devprof import memory, stats
from devprof.report.base import rounded

MIB = 1024.0

#: per-repetition values summarised like the speed and RSS metrics: median, interval, CV, min, max
MEMORY_METRICS: tuple[str, ...] = ("peak_swap_mb", "peak_pss_mb", "major_faults", "minor_faults")
#: the parts of the device's peak (Android: max(VmHWM, RSS+swap)) and which one won
PEAK_KEYS: tuple[str, ...] = ("peak_vmhwm_mb", "peak_rss_swap_mb", "peak_won")
#: the device's /proc/meminfo before the repetition and at its peak, and the peak against it
HEADROOM_KEYS: tuple[str, ...] = ("mem_total_mb", "swap_total_mb", "mem_available_before_mb",
                                  "mem_available_at_peak_mb", "swap_free_at_peak_mb", "headroom_mb", "peak_share")
REP_KEYS: tuple[str, ...] = MEMORY_METRICS + PEAK_KEYS + HEADROOM_KEYS
_DECIMALS = {"major_faults": 1, "minor_faults": 1, "peak_share": 4}


def _mb(kb: float | None) -> float | None:
    return None if kb is None else kb / MIB


def decimals(key: str) -> int:
    return _DECIMALS.get(key, 2)


def median(vals: list[float | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def cell_reps(rec: Any, model: str, workload: str, ctx: int) -> list:
    """The measured repetitions (not warm-up, status ok) of one cell."""
    return [r for r in rec.repetitions if (r.model, r.workload, r.context) == (model, workload, ctx)
            and not r.warmup and r.outcome.status == "ok"]


def won_text(won: dict[str, int] | None, n: int) -> str:
    """{"RSS+swap": 2, "VmHWM": 1} of 3 -> "RSS+swap 2/3, VmHWM 1/3"; "" when unknown."""
    return ", ".join(f"{k} {v}/{n}" for k, v in (won or {}).items())


# ---- one repetition ---------------------------------------------------------------------------
def rep_fields(rep: Any) -> dict[str, Any]:
    """The raw values of one repetition, keyed by :data:`REP_KEYS` (unrounded)."""
    m = memory.rep_memory(rep)
    peak, before, at = m["peak"], m["meminfo_before"], m["meminfo_at_peak"]
    room = memory.headroom(stats.peak_rss_kb(rep), before)
    return {
        "peak_swap_mb": _mb(m["peak_swap_kb"]), "peak_pss_mb": _mb(m["peak_pss_kb"]),
        "major_faults": m["major_faults"], "minor_faults": m["minor_faults"],
        "peak_vmhwm_mb": _mb(peak.get("VmHWM")), "peak_rss_swap_mb": _mb(peak.get("RSS+swap")),
        "peak_won": peak.get("won"),
        "mem_total_mb": _mb(before.get("MemTotal")), "swap_total_mb": _mb(before.get("SwapTotal")),
        "mem_available_before_mb": _mb(before.get("MemAvailable")),
        "mem_available_at_peak_mb": _mb(at.get("MemAvailable")), "swap_free_at_peak_mb": _mb(at.get("SwapFree")),
        "headroom_mb": _mb(room["headroom_kb"]) if room else None, "peak_share": room["share"] if room else None,
    }


# ---- one (model, workload, context) -----------------------------------------------------------
def headroom_rows(rec: Any) -> list[dict[str, Any]]:
    """Per (model, workload, context) with measured repetitions: the memory summary the headroom table
    shows (kB). Medians over the repetitions; ``share`` is the largest peak ÷ MemAvailable, and
    ``headroom_kb``, MemAvailable and SwapFree at the peak the smallest of any repetition."""
    rows = []
    for ctx in rec.contexts():
        for model in rec.models():
            for workload in rec.workloads():
                reps = cell_reps(rec, model, workload, ctx)
                if reps:
                    rows.append(_headroom_row(model, workload, ctx, reps))
    return rows


def _headroom_row(model: str, workload: str, ctx: int, reps: list) -> dict[str, Any]:
    mems = [memory.rep_memory(r) for r in reps]
    peaks = [stats.peak_rss_kb(r) for r in reps]
    rooms = [memory.headroom(p, m["meminfo_before"]) for p, m in zip(peaks, mems)]
    won = [m["peak"].get("won") for m in mems if m["peak"].get("won")]
    return {
        "model": model, "workload": workload, "context": ctx, "n": len(reps),
        "metric": "/".join(sorted({r.outcome.memory_metric for r in reps})),
        "peak_kb": median(peaks),
        "hwm_kb": median([m["peak"].get("VmHWM") for m in mems]),
        "rss_swap_kb": median([m["peak"].get("RSS+swap") for m in mems]),
        "won": {w: won.count(w) for w in sorted(set(won))},
        "swap_kb": median([m["peak_swap_kb"] for m in mems]),
        "pss_kb": median([m["peak_pss_kb"] for m in mems]),
        "major_faults": median([m["major_faults"] for m in mems]),
        "minor_faults": median([m["minor_faults"] for m in mems]),
        "read_kb": median([m["storage_read_kb"] for m in mems]),
        "read_in_kb": median([m["weights_read_in_kb"] for m in mems]),
        "available_kb": median([m["meminfo_before"].get("MemAvailable") for m in mems]),
        "total_kb": median([m["meminfo_before"].get("MemTotal") for m in mems]),
        "swap_total_kb": median([m["meminfo_before"].get("SwapTotal") for m in mems]),
        "share": max((x["share"] for x in rooms if x), default=None),
        "headroom_kb": min((x["headroom_kb"] for x in rooms if x), default=None),
        "available_at_peak_kb": min((m["meminfo_at_peak"]["MemAvailable"] for m in mems
                                     if m["meminfo_at_peak"].get("MemAvailable") is not None), default=None),
        "swap_free_at_peak_kb": min((m["meminfo_at_peak"]["SwapFree"] for m in mems
                                     if m["meminfo_at_peak"].get("SwapFree") is not None), default=None),
    }


def _from_headroom(row: dict[str, Any]) -> dict[str, Any]:
    """The peak's parts and the headroom of one cell (MiB, rounded) from its :func:`headroom_rows` row."""
    return {
        "peak_vmhwm_mb": rounded(_mb(row["hwm_kb"]), 2), "peak_rss_swap_mb": rounded(_mb(row["rss_swap_kb"]), 2),
        "peak_won": dict(row["won"]) or None,
        "mem_total_mb": rounded(_mb(row["total_kb"]), 2), "swap_total_mb": rounded(_mb(row["swap_total_kb"]), 2),
        "mem_available_before_mb": rounded(_mb(row["available_kb"]), 2),
        "mem_available_at_peak_mb": rounded(_mb(row["available_at_peak_kb"]), 2),
        "swap_free_at_peak_mb": rounded(_mb(row["swap_free_at_peak_kb"]), 2),
        "headroom_mb": rounded(_mb(row["headroom_kb"]), 2), "peak_share": rounded(row["share"], 4),
    }


def result_fields(rec: Any) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Per (model, workload, context) with measured repetitions: :data:`MEMORY_METRICS` as
    ``stats.Metric`` (None where no repetition has the value) under ``"metrics"``, and the peak's parts
    and headroom keyed by :data:`PEAK_KEYS` + :data:`HEADROOM_KEYS` (MiB, rounded) under ``"values"``."""
    out = {}
    for row in headroom_rows(rec):
        key = (row["model"], row["workload"], row["context"])
        fields = [rep_fields(r) for r in cell_reps(rec, *key)]
        out[key] = {"metrics": {name: stats.metric([f[name] for f in fields]) for name in MEMORY_METRICS},
                    "values": _from_headroom(row), "n": row["n"]}
    return out


def any_recorded(fields: dict[tuple[str, str, int], dict[str, Any]]) -> bool:
    """Whether any cell has any of these values (a run from before they were sampled has none)."""
    return any(m is not None for cell in fields.values() for m in cell["metrics"].values()) or any(
        v is not None for cell in fields.values() for v in cell["values"].values())
