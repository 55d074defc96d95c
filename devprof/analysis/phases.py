"""The parts of one repetition every view places in time: its label, the representative of a cell, and
the load / prefill / decode spans (relative to the runtime process's start)."""

from __future__ import annotations

from devprof import stats
from devprof.results import Repetition


def rep_label(rep) -> str:
    return f"warm-up {-rep.index}" if rep.warmup else f"rep {rep.index + 1}"


def representative(reps: list[Repetition]) -> Repetition:
    """The repetition with the median peak memory (the lower one for an even count)."""
    keyed = sorted(reps, key=lambda r: (stats.peak_rss_kb(r) or 0, r.index))
    return keyed[(len(keyed) - 1) // 2]


def phase_spans(rep: Repetition) -> list[tuple[str, float, float]]:
    """(name, start s, end s) of load / prefill / decode relative to the process start.

    From the runtime's wall-clock timestamps minus ``outcome.start_wall_ms`` (both must come from the
    device's clock). Empty when the runtime printed none, or when they do not fall within the
    process's lifetime (clocks that disagree): better no shading than shading in the wrong place.
    """
    r, o = rep.result, rep.outcome
    if r is None or not o.start_wall_ms:
        return []
    marks = [("load", r.model_load_start_ms, r.inference_start_ms),
             ("prefill", r.inference_start_ms, r.prompt_eval_end_ms),
             ("decode", r.prompt_eval_end_ms, r.inference_end_ms)]
    out = []
    for name, a, b in marks:
        if a is None or b is None or b <= a:
            continue
        out.append((name, (a - o.start_wall_ms) / 1000.0, (b - o.start_wall_ms) / 1000.0))
    lifetime = max(o.wall_ms, o.samples[-1].t_ms if o.samples else 0.0) / 1000.0
    slack = 0.5 + 0.05 * lifetime
    if any(a < -slack or b > lifetime + slack for _, a, b in out):
        return []
    return out


def phase_spans_from_durations(rep: Repetition) -> list[tuple[str, float, float]]:
    """Approximate spans from durations alone (llama.cpp prints no timestamps): load from the start."""
    r = rep.result
    if r is None or not r.prefill_ms or not r.decode_ms:
        return []
    t0 = (r.load_ms or 0.0) / 1000.0
    spans = [("load", 0.0, t0)] if t0 > 0 else []
    t1 = t0 + r.prefill_ms / 1000.0
    return spans + [("prefill", t0, t1), ("decode", t1, t1 + r.decode_ms / 1000.0)]
