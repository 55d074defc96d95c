"""One verdict first: the sentence the report and `devprof show` open with.

On real prompts (the workload "real", else the first real:* one) at the largest context measured:
the subject's decode and prefill speed and peak memory against the baseline, each with its interval
(``stats.ratios``: the interleaved pairs), and how much templated prompts understate the subject's
peak (``stats.ratio_ci``, templated ÷ real). A ratio whose interval touches 1 is said to be "not
clearly different"; below ``stats.MIN_N`` repetitions, "too few repetitions to judge".
"""

from __future__ import annotations

from typing import Callable

from devprof import stats


def _real_workload(workloads: list[str]) -> str | None:
    if "real" in workloads:
        return "real"
    return next((w for w in workloads if w.startswith("real")), None)


def _judged(r: stats.RatioRow, lead: str, clear: Callable[[], str]) -> str:
    """``lead`` with the interval and why it cannot be judged, or ``clear()`` with the interval."""
    ci = f"{r.level_text} {r.ci_text()}" if not r.degenerate else r.ci_text()
    if r.degenerate:
        return f"{lead} ({ci}: too few repetitions to judge)"
    if not r.clear:
        return f"{lead}, not clearly different ({ci})"
    return f"{clear()} ({ci})"


def _speed(r: stats.RatioRow | None, verb: str) -> str | None:
    if r is None:
        return None
    return _judged(r, f"{verb} at {r.ratio:.2f}× the speed",
                   lambda: f"{verb} {r.ratio:.2f}× faster" if r.ratio >= 1 else f"{verb} {1 / r.ratio:.2f}× slower")


def _memory(r: stats.RatioRow | None) -> str | None:
    if r is None:
        return None
    lead = f"peaks at {r.ratio:.2f}× its memory"
    return _judged(r, lead, lambda: lead)


def understatement(rows: list[stats.SummaryRow], model: str, real: str, context: int,
                   level: float = 0.95) -> tuple[stats.Interval, str] | None:
    """templated ÷ real peak memory of ``model`` at ``context`` and the words for it."""
    by = {r.key: r for r in rows}
    t = next((by[k] for k in by if k[0] == model and k[1].startswith("templated") and k[2] == context), None)
    r = by.get((model, real, context))
    if t is None or r is None:
        return None
    a, b = t.values.get("peak_rss_mb", []), r.values.get("peak_rss_mb", [])
    if not a or not b or min(b) <= 0:
        return None
    ci = stats.ratio_ci(a, b, level=level)
    pct = (1 - ci.estimate) * 100
    lo, hi = (1 - ci.high) * 100, (1 - ci.low) * 100
    who = f"{r.display}'s peak"
    if ci.degenerate:
        return ci, (f"templated prompts {'understate' if pct >= 0 else 'overstate'} {who} by {abs(pct):.1f}% "
                    f"({stats.ci_text(lo, hi, True, ci.n, 1, '%')}: too few repetitions to judge)")
    if not ci.clear_of(1.0, 1, scale=100.0):
        return ci, (f"templated and real prompts give {who} not clearly different "
                    f"({pct:.1f}%, {level:.0%} CI {lo:.1f}–{hi:.1f}%)")
    if pct > 0:
        return ci, f"templated prompts understate {who} by {pct:.1f}% ({level:.0%} CI {lo:.1f}–{hi:.1f}%)"
    return ci, f"templated prompts overstate {who} by {-pct:.1f}% ({level:.0%} CI {-hi:.1f}–{-lo:.1f}%)"


def headline(rows: list[stats.SummaryRow], ratios: list[stats.RatioRow], workloads: list[str],
             level: float = 0.95) -> str | None:
    """The one sentence on real prompts, or None when the run has no real workload with a baseline."""
    real = _real_workload(workloads)
    if real is None or not ratios:
        return None
    on_real = [r for r in ratios if r.workload == real]
    if not on_real:
        return None
    ctx = max(r.context for r in on_real)
    by = {r.metric: r for r in on_real if r.context == ctx}
    s_name, b_name = stats.model_info(on_real[0].subject)[0], stats.model_info(on_real[0].baseline)[0]
    speed = [x for x in (_speed(by.get("decode_tok_s"), "decodes"), _speed(by.get("prefill_tok_s"), "prefills"))
             if x]
    mem = _memory(by.get("peak_rss_mb"))
    if not speed and not mem:
        return None
    clauses = speed + ([mem] if mem else [])
    body = ", ".join(clauses[:-1]) + (" and " if len(clauses) > 1 else "") + clauses[-1]
    text = f"On {real} prompts at {ctx} tokens {s_name} against {b_name}: {body}"
    u = understatement(rows, on_real[0].subject, real, ctx, level)
    if u is not None:
        text += f"; {u[1]}"
    return text + "."
