"""``--soak MINUTES``: sustained load. After the plan's repetitions, the subject model generates back
to back (smallest context, first workload, warm page cache, no readiness wait, no cool-down, no
energy baseline) until the time is up; every generation is one point: decode and prefill tok/s, the
hottest thermal zone and the big-core frequency (the highest scaling_cur_freq among the cores with the
highest cpuinfo_max_freq: the prime/big cluster) read right after it, stored the moment it is measured.

``verdict`` says when throttling started and by how much: decode tok/s of the last minute against
the first minute (medians); the onset is the first point below 90 % of the first minute's after
which the rolling median of three stays below it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

#: a fall of decode tok/s below this share of the first minute's counts as throttling
THROTTLE_SHARE = 0.90
#: a soak has at least a first and a last point, however long one generation takes
MIN_POINTS = 2


def run(session, run_id: str, run_dir, staged) -> list[dict[str, Any]]:
    """Generate with ``staged`` (a session's _Staged subject) until ``plan.soak_min`` is over
    (and at least MIN_POINTS times)."""
    plan = session.plan
    workload, context = plan.workloads[0], min(plan.contexts)
    _, ppaths = session._stage_prompt(run_dir, workload, context)
    saved = (session.plan, getattr(session, "ready_conds", None), getattr(session, "meter", None))
    session.plan = dataclasses.replace(plan, cooldown_c=None, cache="warm")
    session.ready_conds, session.meter = [], None
    points: list[dict[str, Any]] = []
    big = big_cores(session.device)
    t0 = time.monotonic()
    total_s = plan.soak_min * 60.0
    try:
        while time.monotonic() - t0 < total_s or len(points) < MIN_POINTS:
            if session.cancel.is_set():
                raise KeyboardInterrupt
            rep = session._one(run_dir, staged, workload, context, len(points), False, ppaths,
                               label=f"soak{len(points)}")
            point = point_of(rep, time.monotonic() - t0, big)
            session.store.add_soak_point(run_id, len(points), point)
            points.append(point)
            session.obs.stage(f"soak {point['t_s']:.0f}/{total_s:.0f} s: "
                              + (f"{point['decode_tok_s']:.1f} tok/s" if point["decode_tok_s"] else point["status"]))
            session._raise_for(rep)
    finally:
        session.plan, session.ready_conds, session.meter = saved
    return points


MAX_FREQ_SCRIPT = ('for f in {root}/sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq; do '
                   '[ -r "$f" ] || continue; c=${{f%/cpufreq/*}}; echo "${{c##*/}} $(cat "$f")"; done')


def big_cores(dev) -> set[str]:
    """The cores (cpuN) with the highest cpuinfo_max_freq; empty when unknown (then every core counts)."""
    import shlex
    from pathlib import Path

    tops: dict[str, int] = {}
    if dev.kind == "android":
        root = "" if dev.sysroot == "/" else shlex.quote(dev.sysroot.rstrip("/"))
        _, out = dev.sh(MAX_FREQ_SCRIPT.format(root=root), timeout=20)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                tops[parts[0]] = int(parts[1])
    elif dev.kind == "local":
        for f in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq"):
            try:
                tops[f.parent.parent.name] = int(f.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    top = max(tops.values(), default=None)
    return {c for c, f in tops.items() if f == top}


def point_of(rep, t_s: float, big: set[str] | None = None) -> dict[str, Any]:
    """One soak point from a finished generation."""
    r = rep.result
    zones = rep.thermal_after or {}
    hot = max(zones, key=zones.get) if zones else None
    freqs = (r.extra.get("cpu_freq_mhz_after") if r is not None else None) or {}
    freqs = {c: f for c, f in freqs.items() if c in big} if big and big & set(freqs) else freqs
    return {"t_s": round(t_s, 3), "model": rep.model, "workload": rep.workload, "context": rep.context,
            "status": rep.outcome.status, "decode_tok_s": r.decode_tok_s if r else None,
            "prefill_tok_s": r.prefill_tok_s if r else None, "hottest_c": zones.get(hot) if hot else None,
            "hottest_zone": hot, "big_core_mhz": max(freqs.values()) if freqs else None}


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def verdict(points: list[dict[str, Any]]) -> dict[str, Any]:
    """{first_tok_s, last_tok_s, change_pct, throttled, onset_s, first/last hottest and big-core
    figures, sentence}: tok/s of the first minute against the last (the first and last third of a
    soak shorter than three minutes)."""
    pts = [p for p in points if p.get("decode_tok_s")]
    if not pts:
        return {"throttled": None, "sentence": "no soak generation finished"}
    end = pts[-1]["t_s"]
    window = 60.0 if end >= 180.0 else max(end / 3.0, 1e-9)
    first = [p for p in pts if p["t_s"] <= pts[0]["t_s"] + window] or pts[:1]
    last = [p for p in pts if p["t_s"] >= end - window] or pts[-1:]
    f, l_ = _median([p["decode_tok_s"] for p in first]), _median([p["decode_tok_s"] for p in last])
    change = (l_ / f - 1.0) * 100.0
    onset = None
    for i in range(len(pts)):
        if pts[i]["decode_tok_s"] < THROTTLE_SHARE * f and all(
                _median([p["decode_tok_s"] for p in pts[j:j + 3]]) < THROTTLE_SHARE * f for j in range(i, len(pts))):
            onset = pts[i]["t_s"]
            break
    throttled = l_ < THROTTLE_SHARE * f
    span = "first minute" if window == 60.0 else f"first {window:.0f} s"
    out: dict[str, Any] = {"first_tok_s": f, "last_tok_s": l_, "change_pct": round(change, 1), "throttled": throttled,
                           "onset_s": onset, "window_s": round(window, 1), "n": len(pts), "minutes": round(end / 60, 2)}
    for key in ("hottest_c", "big_core_mhz"):
        a = _median([p[key] for p in first if p.get(key) is not None])
        b = _median([p[key] for p in last if p.get(key) is not None])
        out[f"first_{key}"], out[f"last_{key}"] = a, b
    if throttled:
        s = (f"throttled from {onset:.0f} s: decode {f:.2f} → {l_:.2f} tok/s ({change:+.0f}%) from the {span} "
             "to the end" if onset is not None else
             f"throttled: decode {f:.2f} → {l_:.2f} tok/s ({change:+.0f}%) from the {span} to the end")
    else:
        s = f"no throttling: decode {l_:.2f} tok/s at the end, {change:+.0f}% against the {span} ({f:.2f})"
    if out["first_big_core_mhz"] and out["last_big_core_mhz"]:
        s += f"; big core {out['first_big_core_mhz']:.0f} → {out['last_big_core_mhz']:.0f} MHz"
    if out["first_hottest_c"] is not None and out["last_hottest_c"] is not None:
        s += f"; hottest zone {out['first_hottest_c']:.1f} → {out['last_hottest_c']:.1f} °C"
    elif not any(p.get("hottest_c") is not None for p in points):
        s += "; this device exposes no thermal zones"
    out["sentence"] = s
    return out
