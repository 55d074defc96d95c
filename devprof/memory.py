"""Process and device memory as the kernel reports it, and the peak rule for phones.

Parsers for the /proc files the samplers read (``/proc/PID/status``, ``/proc/PID/smaps_rollup``,
``/proc/PID/stat``, ``/proc/PID/io``, ``/proc/meminfo``), the cadence of the costly smaps_rollup
reads, Pipette's peak rule for Android, and the per-repetition summary the store and the report use. No I/O here
beyond what a caller passes in.

Why more than VmHWM: Android compresses anonymous pages into zram swap, so a process can hold
more than its resident set shows; the low-memory killer and Android's per-app limits count
anonymous + swap. The reported peak on Android is therefore max(VmHWM, max over samples of
VmRSS + VmSwap) (:data:`PEAK_RULE`), with both parts kept. PSS (proportional set size: shared
pages divided among their users) is what ExecuTorch's Android benchmarks and ``dumpsys meminfo``
report; it comes from smaps_rollup, which walks every page table of the process and costs
thousands of times a status read (docs/measurements.md, "smaps_rollup cadence"), so it is read at
most every :data:`SMAPS_MIN_S` and never sooner than :data:`SMAPS_BUDGET` times its own last cost
after it (at most 1/SMAPS_BUDGET of a core).

Page faults are not a measure of storage reads: a fault is major only when the page was not in
the page cache at all, so a file that readahead or MAP_POPULATE pulls in (llama.cpp maps its GGUF
with MAP_POPULATE) reads from storage with no major fault. What the process made the kernel read
from storage is /proc/PID/io's read_bytes (docs/measurements.md, "Page faults and storage reads").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devprof.results import MemorySample

#: the reported peak on Android: the larger of the kernel's high-water mark and RSS + swap
PEAK_RULE = "max(VmHWM, RSS+swap)"
STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap", "VmHWM")
SMAPS_KEYS = ("Pss", "Pss_Anon", "Pss_File", "Swap", "SwapPss")
MEMINFO_KEYS = ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")

#: /proc field name (as the samplers write it) -> MemorySample attribute
SAMPLE_FIELDS = {
    "VmRSS": "rss_kb", "RssAnon": "anon_kb", "RssFile": "file_kb", "VmHWM": "hwm_kb",
    "RssShmem": "shmem_kb", "VmSwap": "swap_kb", "Pss": "pss_kb", "Pss_Anon": "pss_anon_kb",
    "Pss_File": "pss_file_kb", "Swap": "smaps_swap_kb", "SwapPss": "swap_pss_kb",
    "majflt": "majflt", "minflt": "minflt", "MemAvailable": "mem_available_kb", "SwapFree": "swap_free_kb",
}

#: smaps_rollup (and meminfo beside it) at most this often, seconds
SMAPS_MIN_S = 0.1
#: ... and never sooner after a read than this many times what the read cost
SMAPS_BUDGET = 50


# ---- parsers ----------------------------------------------------------------------------------
def parse_kb(text: str | bytes, keys: tuple[str, ...]) -> dict[str, int]:
    """``Key:  123 kB`` lines of a /proc file, for ``keys`` only (kB; a key missing is absent)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    want = set(keys)
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, sep, rest = line.partition(":")
        if not sep or k not in want:
            continue
        tok = rest.split()
        if tok and tok[0].isdigit():
            out[k] = int(tok[0])
    return out


def parse_status(text: str | bytes) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem, VmSwap, VmHWM (kB) from /proc/PID/status."""
    return parse_kb(text, STATUS_KEYS)


def parse_smaps_rollup(text: str | bytes) -> dict[str, int]:
    """Pss, Pss_Anon, Pss_File, Swap, SwapPss (kB) from /proc/PID/smaps_rollup (Pss_Anon/Pss_File
    are there since Linux 5.8; older kernels give Pss, Swap and SwapPss only)."""
    return parse_kb(text, SMAPS_KEYS)


def parse_meminfo(text: str | bytes) -> dict[str, int]:
    """MemTotal, MemAvailable, SwapTotal, SwapFree (kB) from /proc/meminfo."""
    return parse_kb(text, MEMINFO_KEYS)


def parse_stat_faults(text: str | bytes) -> dict[str, int]:
    """minflt and majflt (fields 10 and 12) from /proc/PID/stat; {} when it does not parse.

    Field 2 is the command name in parentheses and may hold spaces and ')' itself, so the fields
    are counted after the last ')': field 3 (the state) is the first token there."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    close = text.rfind(")")
    if close < 0:
        return {}
    rest = text[close + 1:].split()
    if len(rest) < 10 or not (rest[7].isdigit() and rest[9].isdigit()):
        return {}
    return {"minflt": int(rest[7]), "majflt": int(rest[9])}


def parse_io(text: str | bytes) -> dict[str, int]:
    """read_bytes from /proc/PID/io: bytes the process made the kernel read from storage so far
    (its own reads, the readahead they and its page faults started, MAP_POPULATE's reads; not
    what it found in the page cache). {} when absent (the file is the owner's or root's only)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    for line in text.splitlines():
        k, sep, rest = line.partition(":")
        if sep and k == "read_bytes" and rest.strip().isdigit():
            return {"read_bytes": int(rest)}
    return {}


def sample_from(t_ms: float, vals: dict[str, int]) -> MemorySample | None:
    """A MemorySample from /proc field values (as the samplers name them); None without VmRSS."""
    if "VmRSS" not in vals:
        return None
    s = MemorySample(t_ms=t_ms, **{attr: vals[k] for k, attr in SAMPLE_FIELDS.items() if k in vals})
    if "read_bytes" in vals:
        s.read_kb = vals["read_bytes"] // 1024
    return s


def sampler_meminfo(text: str) -> dict[str, int]:
    """The device's /proc/meminfo before the run from sampler.sh's ``meminfo K:V ...`` line."""
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["meminfo"]:
            return {k: int(v) for k, _, v in (p.partition(":") for p in parts[1:]) if k in MEMINFO_KEYS and v.isdigit()}
    return {}


@dataclass
class SmapsCadence:
    """When the next smaps_rollup read is due: at most every SMAPS_MIN_S seconds, and never sooner
    than SMAPS_BUDGET times the last read's own cost after it (so it takes at most 1/SMAPS_BUDGET
    of a core, however large the process). The first read is due at once."""

    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def done(self, started: float, finished: float) -> None:
        self.next_at = finished + max(SMAPS_MIN_S, SMAPS_BUDGET * (finished - started))


# ---- the peak ---------------------------------------------------------------------------------
def rss_swap_peak(samples: list[MemorySample]) -> tuple[int | None, float | None]:
    """The largest VmRSS + VmSwap over the samples (kB) and when (ms); (None, None) without samples."""
    best, at = None, None
    for s in samples:
        v = s.rss_kb + (s.swap_kb or 0)
        if best is None or v > best:
            best, at = v, s.t_ms
    return best, at


def android_peak(samples: list[MemorySample]) -> tuple[int | None, dict[str, Any]]:
    """Pipette's rule: max(VmHWM, max(VmRSS + VmSwap)) over the samples, and its parts
    ({"VmHWM": kB, "RSS+swap": kB, "at_ms": when RSS+swap peaked, "won": which part})."""
    hwm = max((s.hwm_kb for s in samples if s.hwm_kb), default=None)
    rs, at = rss_swap_peak(samples)
    parts: dict[str, Any] = {"VmHWM": hwm, "RSS+swap": rs, "at_ms": at}
    return _won(parts)


def _won(parts: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    hwm, rs = parts.get("VmHWM"), parts.get("RSS+swap")
    if hwm is None and rs is None:
        parts["won"] = None
        return None, parts
    parts["won"] = "RSS+swap" if (rs or 0) > (hwm or 0) else "VmHWM"
    return max(hwm or 0, rs or 0), parts


def fold_runner_exit(outcome: Any, status: dict[str, int] | None) -> None:
    """Fold the runtime's own /proc/self/status at exit into ``outcome``'s peak: its VmHWM (and on
    Android its VmRSS + VmSwap, under Pipette's rule) can no longer fall between two samples."""
    if not status:
        return
    outcome.memory = dict(outcome.memory or {}, exit=dict(status))
    own = status.get("VmHWM")
    if outcome.memory_metric == PEAK_RULE:
        parts = dict(outcome.memory.get("peak") or {})
        if own and own > (parts.get("VmHWM") or 0):
            parts["VmHWM"] = own
        exit_rs = status["VmRSS"] + (status.get("VmSwap") or 0) if status.get("VmRSS") else None
        if exit_rs and exit_rs > (parts.get("RSS+swap") or 0):
            parts["RSS+swap"], parts["at_ms"] = exit_rs, None
        peak, parts = _won(parts)
        outcome.memory["peak"] = parts
        if peak is not None and (outcome.peak_rss_kb is None or peak > outcome.peak_rss_kb):
            outcome.peak_rss_kb = peak
            outcome.note = (outcome.note + "; " if outcome.note else "") + "peak from the runner's own status at exit"
        return
    if own and (outcome.peak_rss_kb is None or own > outcome.peak_rss_kb):
        outcome.peak_rss_kb = own
        outcome.note = (outcome.note + "; " if outcome.note else "") + "peak from the runner's own VmHWM"


# ---- one repetition's memory, summarised ------------------------------------------------------
def _max(samples: list[MemorySample], attr: str, exit_val: int | None = None) -> int | None:
    vals = [getattr(s, attr) for s in samples if getattr(s, attr) is not None]
    if exit_val is not None:
        vals.append(exit_val)
    return max(vals) if vals else None


def rep_memory(rep: Any) -> dict[str, Any]:
    """What the store's columns and the report say about one repetition's memory: peak swap and
    PSS, page faults, the peak's parts, and the device's meminfo before the run and at the peak."""
    o = rep.outcome
    mem = o.memory or {}
    ex = dict(mem.get("exit") or {})
    if not ex and rep.result is not None:
        ex = dict((rep.result.extra or {}).get("runner_status_kb") or {})
    samples = o.samples
    out: dict[str, Any] = {
        "peak_swap_kb": _max(samples, "swap_kb", ex.get("VmSwap")),
        "peak_pss_kb": _max(samples, "pss_kb", ex.get("Pss")),
        "peak_swap_pss_kb": _max(samples, "swap_pss_kb", ex.get("SwapPss")),
        "peak_shmem_kb": _max(samples, "shmem_kb", ex.get("RssShmem")),
        "major_faults": _max(samples, "majflt", ex.get("majflt")),
        "minor_faults": _max(samples, "minflt", ex.get("minflt")),
        "storage_read_kb": _max(samples, "read_kb"),
        "weights_read_in_kb": weights_read_in(rep),
        "peak": mem.get("peak") or {},
        "meminfo_before": mem.get("meminfo_before") or {},
        "meminfo_at_peak": meminfo_near(samples, _peak_time(samples, mem)),
    }
    return out


def weights_read_in(rep: Any) -> int | None:
    """kB of the weights file that came into the page cache during the run, from the native runner's
    mincore residency (the most resident at any stage minus before the load); None without it."""
    stages = ((rep.result.extra or {}).get("residency") or []) if rep.result is not None else []
    kbs = {r.get("stage"): r["resident_kb"] for r in stages
           if isinstance(r, dict) and isinstance(r.get("resident_kb"), int)}
    before = kbs.get("before_load")
    later = [v for k, v in kbs.items() if k != "before_load"]
    if before is None or not later:
        return None
    return max(0, max(later) - before)


def _peak_time(samples: list[MemorySample], mem: dict[str, Any]) -> float | None:
    at = (mem.get("peak") or {}).get("at_ms")
    if at is not None:
        return at
    return rss_swap_peak(samples)[1]


def meminfo_near(samples: list[MemorySample], t_ms: float | None) -> dict[str, Any]:
    """MemAvailable and SwapFree of the sample with meminfo nearest ``t_ms`` (and when it was read)."""
    with_mi = [s for s in samples if s.mem_available_kb is not None]
    if t_ms is None or not with_mi:
        return {}
    s = min(with_mi, key=lambda x: abs(x.t_ms - t_ms))
    out: dict[str, Any] = {"MemAvailable": s.mem_available_kb, "t_ms": s.t_ms, "peak_t_ms": t_ms}
    if s.swap_free_kb is not None:
        out["SwapFree"] = s.swap_free_kb
    return out


def headroom(peak_kb: int | None, meminfo_before: dict[str, int]) -> dict[str, Any] | None:
    """The peak against the device's MemAvailable before the run: {peak_kb, available_kb,
    total_kb, headroom_kb (available - peak), share (peak / available), fits}; None when unknown."""
    avail = meminfo_before.get("MemAvailable")
    if peak_kb is None or not avail:
        return None
    return {"peak_kb": peak_kb, "available_kb": avail, "total_kb": meminfo_before.get("MemTotal"),
            "swap_total_kb": meminfo_before.get("SwapTotal"), "headroom_kb": avail - peak_kb,
            "share": peak_kb / avail, "fits": peak_kb <= avail}
