"""The rows of a stored run that the export formats (CSV, JSON, Markdown) share.

One row per repetition (warm-ups and failed ones included, with their status) and one row per summary
(model, workload, context: median, 95% bootstrap interval, CV over the measured repetitions, from
``devprof.stats``). A repetition row has its value in ``<metric>`` and empty interval columns, a summary
row the median in ``<metric>`` and ``<metric>_ci_low``, ``<metric>_ci_high``, ``<metric>_cv``. Memory in
MiB, times in ms, speeds in tok/s; ``index`` is 0-based for measured repetitions and -1, -2... for
warm-ups, as the store keeps it.

After those columns, the memory a phone counts (``devprof.report.memory_rows``): ``peak_swap_mb``,
``peak_pss_mb``, ``major_faults``, ``minor_faults`` (each with its interval columns), the parts of the
device's peak (``peak_vmhwm_mb``, ``peak_rss_swap_mb``, ``peak_won``: which was larger; a summary row
says how many repetitions each won) and the device's headroom (MemTotal, SwapTotal, MemAvailable before
the repetition and at its peak, SwapFree at its peak, MemAvailable before - peak, peak ÷ MemAvailable).
A summary row's headroom is that of the HTML report's table: the smallest headroom and MemAvailable or
SwapFree at a peak, the largest share, of any repetition. Empty where the run did not record them.
"""

from __future__ import annotations

from typing import Any

from devprof import stats
from devprof.errors import UsageError
from devprof.report import memory_rows
from devprof.report.base import rounded
from devprof.results import RunRecord

ID_COLUMNS = ["kind", "run_id", "model", "workload", "context", "index", "warmup", "status", "cache_state",
              "memory_metric", "n", "n_failed"]
TAIL_COLUMNS = ["prompt_tokens", "generated_tokens", "wall_s", "n_samples", "exit_code", "device", "runtime", "note"]


def columns() -> list[str]:
    cols = list(ID_COLUMNS)
    for m in stats.METRICS:
        cols += [m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_cv"]
    cols += TAIL_COLUMNS
    for m in memory_rows.MEMORY_METRICS:
        cols += [m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_cv"]
    return cols + list(memory_rows.PEAK_KEYS + memory_rows.HEADROOM_KEYS)


def check_exportable(record: RunRecord) -> None:
    if not record.repetitions:
        raise UsageError(f"run {record.meta.run_id} has no repetitions ({record.meta.status}): nothing to export")


# ---- rows ---------------------------------------------------------------------------------------
def repetition_rows(record: RunRecord) -> list[dict[str, Any]]:
    m = record.meta
    out = []
    for rep in record.repetitions:
        res, o = rep.result, rep.outcome
        row: dict[str, Any] = dict.fromkeys(columns())
        row.update(kind="repetition", run_id=m.run_id, model=rep.model, workload=rep.workload, context=rep.context,
                   index=rep.index, warmup=rep.warmup, status=o.status, cache_state=rep.cache_state,
                   memory_metric=o.memory_metric)
        for name in stats.METRICS:
            row[name] = rounded(stats.rep_value(rep, name), stats.METRIC_INFO[name].decimals + 1)
        row.update(prompt_tokens=res.prompt_tokens if res else None,
                   generated_tokens=res.generated_tokens if res else None, wall_s=rounded(o.wall_ms / 1000.0, 3),
                   n_samples=len(o.samples), exit_code=o.exit_code, device=m.device.name or m.device.serial,
                   runtime=m.runtime, note=o.note)
        row.update({k: v if v is None or isinstance(v, (str, int)) else rounded(v, memory_rows.decimals(k) + 1)
                    for k, v in memory_rows.rep_fields(rep).items()})
        out.append(row)
    return out


def summary_rows(record: RunRecord, rows: list[stats.SummaryRow] | None = None) -> list[dict[str, Any]]:
    m = record.meta
    rows = rows if rows is not None else stats.summarize(record)
    mem = memory_rows.result_fields(record)
    out = []
    for s in rows:
        row: dict[str, Any] = dict.fromkeys(columns())
        row.update(kind="summary", run_id=m.run_id, model=s.model, workload=s.workload, context=s.context,
                   cache_state="/".join(s.cache_states), memory_metric=s.memory_metric, n=s.n, n_failed=s.n_failed,
                   device=m.device.name or m.device.serial, runtime=m.runtime)
        for name in stats.METRICS:
            met = s.metric(name)
            nd = stats.METRIC_INFO[name].decimals + 1
            if met is not None:
                row.update({name: rounded(met.median, nd), f"{name}_ci_low": rounded(met.ci_low, nd),
                            f"{name}_ci_high": rounded(met.ci_high, nd), f"{name}_cv": rounded(met.cv, 5)})
        _memory_summary(row, mem.get(s.key))
        out.append(row)
    return out


def _memory_summary(row: dict[str, Any], cell: dict[str, Any] | None) -> None:
    """A summary row's swap, PSS and faults (median, interval, CV), the peak's parts and the headroom."""
    if cell is None:
        return
    for name, met in cell["metrics"].items():
        nd = memory_rows.decimals(name) + 1
        if met is not None:
            row.update({name: rounded(met.median, nd), f"{name}_ci_low": rounded(met.ci_low, nd),
                        f"{name}_ci_high": rounded(met.ci_high, nd), f"{name}_cv": rounded(met.cv, 5)})
    row.update(cell["values"], peak_won=memory_rows.won_text(cell["values"]["peak_won"], cell["n"]) or None)
