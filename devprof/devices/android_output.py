"""What an Android phone prints, read: /proc/meminfo, ``df``, the low-memory killer's log lines and
sampler.sh's samples file."""

from __future__ import annotations

import re

from devprof.results import MemorySample

__all__ = ["parse_meminfo_available", "parse_df_available", "find_lmk_record", "sampler_pid", "parse_sampler_output"]

_DF_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$", re.I)


def _df_bytes(tok: str, unit: int) -> int | None:
    m = _DF_SIZE.match(tok)
    if not m:
        return None
    mult = {"": unit, "K": 1024, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def parse_meminfo_available(text: str) -> int | None:
    """MemAvailable from /proc/meminfo text, in bytes; None when the line is missing or unreadable."""
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "MemAvailable:" and parts[1].isdigit():
            return int(parts[1]) * 1024
    return None


def parse_df_available(text: str) -> int | None:
    """Free bytes from ``df -k DIR`` output: toybox/GNU/busybox (Filesystem 1K-blocks Used
    Available Use% Mounted on; a long device name may wrap onto its own line) and the old
    toolbox df (Filesystem Size Used Free Blksize, sizes like 1.9G). None when unparseable."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    head = lines[0].lower().split()
    if not head or head[0] != "filesystem":
        return None
    toolbox = "free" in head and not any(h.startswith("avail") for h in head)
    col = head.index("free") if toolbox else next((i for i, h in enumerate(head) if h.startswith("avail")), 3)
    # the last data row (a wrapped device name puts the numbers on the next line): the sizes
    # are the tokens after the file system name, so count columns from the name
    tokens = " ".join(lines[1:]).split()
    name_at = 0
    for i, t in enumerate(tokens):  # the name is the last token before the first size
        if _df_bytes(t, 1024) is not None:
            name_at = i - 1
            break
    idx = name_at + col
    if name_at < 0 or idx >= len(tokens):
        return None
    return _df_bytes(tokens[idx], 1024)


def find_lmk_record(text: str, pid: int) -> str:
    """The first log line in which the low-memory killer (lmkd, the kernel's lowmemorykiller,
    the events log's killinfo/lmk_kill/am_kill) names ``pid``; "" when there is none."""
    want = re.compile(rf"(?<![\d.]){pid}(?!\d)")
    for line in text.splitlines():
        low = line.lower()
        if not any(k in low for k in ("killinfo", "lmk_kill", "lowmemorykiller", "lmkd", "am_kill", "low memory")):
            continue
        if want.search(line):
            return " ".join(line.split())
    return ""


def sampler_pid(mem: str) -> int | None:
    """The runtime's pid from sampler.sh's "start UPTIME WALL PID" line."""
    for line in mem.splitlines():
        parts = line.split()
        if parts[:1] == ["start"] and len(parts) >= 4 and parts[3].isdigit():
            return int(parts[3])
    return None


def parse_sampler_output(text: str) -> tuple[list[MemorySample], float | None, int | None]:
    """Parse sampler.sh's OUT.mem: (samples, device wall clock at start in ms, exit code)."""
    samples: list[MemorySample] = []
    up0 = None
    wall0 = None
    rc = None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "start" and len(parts) >= 2:
            up0 = _float(parts[1])
            if len(parts) >= 3 and parts[2].isdigit() and len(parts[2]) > 12:
                wall0 = int(parts[2]) / 1e6
            continue
        if parts[0] == "end":
            if len(parts) >= 3 and parts[2].lstrip("-").isdigit():
                rc = int(parts[2])
            continue
        t = _float(parts[0])
        if t is None or up0 is None:
            continue
        vals = {}
        for item in parts[1:]:
            k, _, v = item.partition(":")
            if v.isdigit():
                vals[k] = int(v)
        if "VmRSS" not in vals:
            continue
        samples.append(MemorySample(t_ms=round((t - up0) * 1000.0, 1), rss_kb=vals["VmRSS"], anon_kb=vals.get("RssAnon"),
                                    file_kb=vals.get("RssFile"), hwm_kb=vals.get("VmHWM")))
    return samples, wall0, rc


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None
