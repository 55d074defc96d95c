"""Adaptive repetitions (``--reps auto``): measure until the answer is known well enough, or a cap.

Per (workload, context) cell the session runs at least ``min_reps`` interleaved rounds (one
repetition of every model, back to back), then keeps adding rounds until the interval of every
speed ratio (subject ÷ baseline decode and prefill, ``stats.paired_ratio_ci`` on the pairs so far)
lies within ±``target`` of its estimate, or ``max_reps`` rounds were run, or the cell has taken
``max_s`` seconds. Without a baseline the same rule holds for the interval of each model's own
speed (a t-interval on the logs of its repetitions). Which of the three ended a cell is stored with
the run (``settings["adaptive"]["cells"]``) and shown by the report.

Why these defaults (the default of ``devprof run``): 5 rounds is the least at which a t-interval's
coverage was checked (tests/test_stats.py) and what llama-bench runs; ±5% separates the MoE's 2-3×
speedups from one another; 12 rounds or 120 s a cell keep the default run (two workloads at 8192
tokens, two models) at about 3-5 minutes on a 2-core host, however noisy it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from devprof import stats
from devprof.results import Repetition

SPEED = ("decode_tok_s", "prefill_tok_s")


@dataclass
class Rule:
    min_reps: int = 5
    target: float = 0.05  # relative half-width: the interval within estimate × (1 ± target)
    max_reps: int = 12
    max_s: float = 120.0

    def to_dict(self) -> dict:
        return {"min_reps": self.min_reps, "target_pct": round(self.target * 100, 2), "max_reps": self.max_reps,
                "max_s": self.max_s}


def _rel_half_width(ci: stats.Interval) -> float:
    if ci.degenerate or ci.estimate <= 0 or ci.low <= 0:
        return math.inf
    return max(ci.high / ci.estimate - 1.0, 1.0 - ci.low / ci.estimate)


def widest(reps: list[Repetition], models: list[str]) -> tuple[float, str]:
    """The widest relative half-width among the cell's speed intervals, and which one it is."""
    ok = [r for r in reps if not r.warmup and r.outcome.status == "ok" and r.result is not None]
    worst, what = 0.0, ""
    for name in SPEED:
        def by_index(model: str) -> dict[int, float]:
            return {r.index: v for r in ok if r.model == model
                    and (v := stats.rep_value(r, name)) is not None and v > 0}

        if len(models) > 1:
            a, b = by_index(models[0]), by_index(models[1])
            common = sorted(set(a) & set(b))
            if not common:
                continue
            ci = stats.paired_ratio_ci([a[i] for i in common], [b[i] for i in common])
            label = f"{stats.ratio_name(name)}"
        else:
            vals = list(by_index(models[0]).values())
            if not vals:
                continue
            ci = stats.ratio_ci(vals, [1.0] * len(vals))  # the interval of the geometric mean itself
            label = stats.METRIC_INFO[name].label
        w = _rel_half_width(ci)
        if w > worst or not what:
            worst, what = w, label
    return worst, what


def stop_reason(rule: Rule, rounds: int, elapsed_s: float, reps: list[Repetition],
                models: list[str]) -> tuple[str | None, float, str]:
    """Why to stop now ("precise", "count cap", "time cap") or None to go on; and the widest interval."""
    w, what = widest(reps, models)
    if rounds < rule.min_reps:
        return None, w, what
    if w <= rule.target:
        return "precise", w, what
    if rounds >= rule.max_reps:
        return "count cap", w, what
    if elapsed_s >= rule.max_s:
        return "time cap", w, what
    return None, w, what


def describe_cell(cell: dict) -> str:
    """"real 8192: 7 rounds, decode speedup within ±4.1% (precise)"."""
    w = cell.get("widest_pct")
    width = "no interval" if w is None else f"±{w:.1f}%"
    why = {"precise": f"interval within ±{cell.get('target_pct', 5):g}%",
           "count cap": f"count cap of {cell.get('max_reps')} reached", "time cap": f"time cap of "
           f"{cell.get('max_s', 0):g} s reached"}.get(cell.get("stopped", ""), cell.get("stopped", "?"))
    return (f"{cell['workload']} {cell['context']}: {cell['rounds']} rounds, widest {cell.get('what') or 'interval'} "
            f"{width}; stopped: {why}")
