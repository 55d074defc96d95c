"""`devprof show --json`: the figures of a run as stable, machine-readable JSON.

Shape (format 1)::

    {"format": "devprof.show/1",
     "run": {run_id, created, status, note, device{...}, runtime, models, baseline, workloads,
             contexts, new_tokens, reps, warmup, sample_ms, settings, artifacts_dir,
             planned_reps, measured_reps, failed_reps, missing_reps},
     "results": [{model, display, kind, workload, context, n, n_failed, cache_states, memory_metric,
                  <metric>, <metric>_ci: [lo, hi], <metric>_cv, <metric>_min, <metric>_max
                  for metric in prefill_tok_s, decode_tok_s, ttft_ms, peak_rss_mb,
                  peak_rss_file_mb, peak_rss_anon_mb, distinct_experts, then inter_token_ms, then the
                  same five for peak_swap_mb, peak_pss_mb, major_faults, minor_faults, then
                  peak_vmhwm_mb, peak_rss_swap_mb, peak_won: {VmHWM|RSS+swap: n} (the parts of the
                  device's peak and how many repetitions each won), mem_total_mb, swap_total_mb,
                  mem_available_before_mb, mem_available_at_peak_mb, swap_free_at_peak_mb,
                  headroom_mb, peak_share (the HTML's headroom table)}],
     "ratios": [{subject, baseline, workload, context, metric, label, ratio, ci: [lo, hi],
                 n_subject, n_baseline, verdict}],
     "energy": {state: measured|refused|unavailable|off, why, source, battery, update_ms, refused_reps,
                rows: [{model, workload, context, phase, n, j_per_token, ci: [lo, hi], min, max, slow_gauge}]},
     "soak": null | {points: [{t_s, model, workload, context, status, decode_tok_s, prefill_tok_s,
                               hottest_c, hottest_zone, big_core_mhz}], verdict: {..., sentence}}}

Every key is always present; unknown values are null. Memory is in MiB (kB / 1024), times in ms,
speeds in tok/s; ``_ci`` is the 95% interval of the median (order statistics; up to n = 5 the range), ``_cv`` the coefficient of
variation (a fraction).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from devprof import stats
from devprof.report import memory_rows
from devprof.report.base import Analysis, Renderer, analyse, rounded
from devprof.report.soak_figures import json_sections
from devprof.results import RunRecord

FORMAT = "devprof.show/1"


def result_dict(row: stats.SummaryRow, mem: dict[str, Any] | None) -> dict[str, Any]:
    """One summary row; ``mem`` is its cell of ``memory_rows.result_fields`` (None: a cell without
    measured repetitions, whose memory keys are then null)."""
    d: dict[str, Any] = {
        "model": row.model, "display": row.display, "kind": row.kind, "workload": row.workload,
        "context": row.context, "n": row.n, "n_failed": row.n_failed, "cache_states": list(row.cache_states),
        "memory_metric": row.memory_metric,
    }
    for name in stats.METRICS:
        m = row.metric(name)
        nd = stats.METRIC_INFO[name].decimals
        d[name] = rounded(m.median, nd) if m else None
        d[f"{name}_ci"] = [rounded(m.ci_low, nd), rounded(m.ci_high, nd)] if m else None
        d[f"{name}_cv"] = rounded(m.cv, 4) if m else None
        d[f"{name}_min"] = rounded(m.min, nd) if m else None
        d[f"{name}_max"] = rounded(m.max, nd) if m else None
    d["inter_token_ms"] = row.itl.to_dict() if row.itl is not None else None
    for name in memory_rows.MEMORY_METRICS:
        m = mem["metrics"][name] if mem else None
        nd = memory_rows.decimals(name)
        d[name] = rounded(m.median, nd) if m else None
        d[f"{name}_ci"] = [rounded(m.ci_low, nd), rounded(m.ci_high, nd)] if m else None
        d[f"{name}_cv"] = rounded(m.cv, 4) if m else None
        d[f"{name}_min"] = rounded(m.min, nd) if m else None
        d[f"{name}_max"] = rounded(m.max, nd) if m else None
    d.update(mem["values"] if mem else dict.fromkeys(memory_rows.PEAK_KEYS + memory_rows.HEADROOM_KEYS))
    return d


def result_dicts(a: Analysis) -> list[dict[str, Any]]:
    """Every summary row of the analysis, with its swap, PSS, faults, peak parts and headroom."""
    mem = memory_rows.result_fields(a.record)
    return [result_dict(r, mem.get(r.key)) for r in a.rows]


def ratio_dict(r: stats.RatioRow) -> dict[str, Any]:
    return {
        "subject": r.subject, "baseline": r.baseline, "workload": r.workload, "context": r.context,
        "metric": r.metric, "label": r.label, "ratio": rounded(r.ratio, 4),
        "ci": [rounded(r.ci_low, 4), rounded(r.ci_high, 4)], "n_subject": r.n_subject,
        "n_baseline": r.n_baseline, "verdict": r.verdict,
        "ci_method": r.method, "n_pairs": r.n_pairs, "clear": r.clear, "finding": r.finding,
    }


def run_dict(a: Analysis) -> dict[str, Any]:
    d = asdict(a.record.meta)
    d.update(planned_reps=a.planned, measured_reps=a.measured, failed_reps=a.failed, missing_reps=a.missing)
    return d


class JSONRenderer(Renderer):
    """The summary and ratios of a run as JSON (no samples: those stay in the store)."""

    name = "json"
    output_file_extension = "json"

    def __init__(self, indent: int | None = 2) -> None:
        self.indent = indent

    def data(self, record: RunRecord | Analysis) -> dict[str, Any]:
        a = record if isinstance(record, Analysis) else analyse(record)
        return {
            "format": FORMAT,
            "run": run_dict(a),
            "results": result_dicts(a),
            "ratios": [ratio_dict(r) for r in a.ratios],
            "verdict": a.headline,
            "noise": a.noise.to_dict() if a.noise is not None else None,
            **json_sections(a.record),  # "energy" (always) and "soak" (null without --soak)
        }

    def render(self, record: RunRecord | Analysis) -> str:
        return json.dumps(finite_json(self.data(record)), indent=self.indent, ensure_ascii=False, allow_nan=False,
                          default=str)


def finite_json(obj: Any) -> Any:
    """Non-finite floats (from settings or extras) become null: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


JsonRenderer = JSONRenderer
