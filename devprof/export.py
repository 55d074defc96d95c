"""`devprof export`: a stored run as CSV, JSON, Markdown or Perfetto (Chrome trace-event) files.

CSV, JSON and Markdown hold one row per repetition (warm-ups and failed ones included, with their
status) and one row per summary (model, workload, context: median, 95% bootstrap interval, CV over
the measured repetitions, from ``devprof.stats``). The CSV is one table with a ``kind`` column
(``repetition`` | ``summary``): a repetition row has its value in ``<metric>`` and empty interval
columns, a summary row the median in ``<metric>`` and ``<metric>_ci_low``, ``<metric>_ci_high``,
``<metric>_cv``. Memory in MiB, times in ms, speeds in tok/s; ``index`` is 0-based for measured
repetitions and -1, -2... for warm-ups, as the store keeps it.

Perfetto: one Chrome trace-event JSON per repetition (``{"traceEvents": [...]}``; open it in
ui.perfetto.dev or chrome://tracing). Times are microseconds since the runtime process started:

- ``M`` events name the process ("devprof · model · workload · context · rep") and its thread;
- ``X`` spans ``load``, ``prefill``, ``decode`` on the runtime thread, from the runtime's own
  timestamps (or placed from its durations, marked ``approximate``), and an ``i`` instant at the
  first token;
- ``C`` counters ``mem.rss``, ``mem.rss.anon``, ``mem.rss.file``, ``mem.rss.watermark`` (VmHWM) in
  MiB, one per memory sample (Perfetto's own names for these), and ``experts.distinct``: distinct
  (layer, expert) pairs touched, with ``experts.touched`` MiB of expert blocks when their sizes are
  known -- each (layer, expert) pair placed in time at its first token as the join does (an
  approximation, see ``devprof.analysis.join``).

:func:`validate_trace` checks a trace against the trace-event format (what the Perfetto UI's JSON
importer needs); the export runs it on every file before writing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from devprof import stats
from devprof.errors import DevprofError, UsageError, path_error
from devprof.report.base import phase_spans, phase_spans_from_durations, rep_label, when
from devprof.report.jsonout import finite_json
from devprof.results import Repetition
from devprof.store import RunRecord

FORMATS: tuple[str, ...] = ("csv", "json", "md", "perfetto")
FORMAT = "devprof.export/1"

ID_COLUMNS = ["kind", "run_id", "model", "workload", "context", "index", "warmup", "status", "cache_state",
              "memory_metric", "n", "n_failed"]
TAIL_COLUMNS = ["prompt_tokens", "generated_tokens", "wall_s", "n_samples", "exit_code", "device", "runtime", "note"]


def columns() -> list[str]:
    cols = list(ID_COLUMNS)
    for m in stats.METRICS:
        cols += [m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_cv"]
    return cols + TAIL_COLUMNS


def _r(x: float | None, nd: int) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


def _check(record: RunRecord) -> None:
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
            row[name] = _r(stats.rep_value(rep, name), stats.METRIC_INFO[name].decimals + 1)
        row.update(prompt_tokens=res.prompt_tokens if res else None,
                   generated_tokens=res.generated_tokens if res else None, wall_s=_r(o.wall_ms / 1000.0, 3),
                   n_samples=len(o.samples), exit_code=o.exit_code, device=m.device.name or m.device.serial,
                   runtime=m.runtime, note=o.note)
        out.append(row)
    return out


def summary_rows(record: RunRecord, rows: list[stats.SummaryRow] | None = None) -> list[dict[str, Any]]:
    m = record.meta
    rows = rows if rows is not None else stats.summarize(record)
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
                row.update({name: _r(met.median, nd), f"{name}_ci_low": _r(met.ci_low, nd),
                            f"{name}_ci_high": _r(met.ci_high, nd), f"{name}_cv": _r(met.cv, 5)})
        out.append(row)
    return out


# ---- csv / json / markdown ----------------------------------------------------------------------
def to_csv(record: RunRecord) -> str:
    _check(record)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(), lineterminator="\n")
    w.writeheader()
    for row in repetition_rows(record) + summary_rows(record):
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def to_json(record: RunRecord) -> str:
    from devprof.report.base import analyse
    from devprof.report.jsonout import ratio_dict, result_dict, run_dict

    _check(record)
    a = analyse(record)
    reps = []
    for rep, row in zip(record.repetitions, repetition_rows(record)):
        d = {k: v for k, v in row.items() if not k.endswith(("_ci_low", "_ci_high", "_cv")) and k not in ("n", "n_failed")}
        d.update(cache_note=rep.cache_note, thermal_before=rep.thermal_before, thermal_after=rep.thermal_after,
                 artifacts=rep.artifacts, conditions=rep.conditions, energy=rep.energy,
                 routing=None if rep.routing is None else {"n_tokens": rep.routing.n_tokens,
                                                           "distinct_pairs": rep.routing.distinct_pairs,
                                                           "distinct_per_layer": rep.routing.distinct_per_layer})
        reps.append(d)
    from devprof.report.soak_figures import json_sections

    doc = {"format": FORMAT, "run": run_dict(a), "repetitions": reps, "summary": [result_dict(r) for r in a.rows],
           "ratios": [ratio_dict(r) for r in a.ratios], **json_sections(record)}
    return json.dumps(finite_json(doc), indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, no line breaks, no HTML."""
    s = "—" if text is None or text == "" else str(text)
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(s.split())


def _md_table(head: list[str], rows: list[list[Any]]) -> list[str]:
    right = ["---:" if h not in ("model", "workload", "status", "cache", "rep") else "---" for h in head]
    out = ["| " + " | ".join(_md(h) for h in head) + " |", "| " + " | ".join(right) + " |"]
    out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return out


def to_markdown(record: RunRecord) -> str:
    _check(record)
    m = record.meta
    d = m.device
    lines = [f"# devprof run {_md(m.run_id)}", "",
             f"- device: {_md(d.name or d.serial)} ({_md(d.kind)} {_md(d.os_version)}), peak memory = {_md(d.memory_metric)}",
             f"- {_md(when(m.created))} · status {_md(m.status)} · runtime {_md(m.runtime)}",
             f"- models: {_md(', '.join(m.models))} · workloads: {_md(', '.join(m.workloads))} · contexts: "
             f"{_md(', '.join(map(str, m.contexts)))} · {m.reps} reps + {m.warmup} warm-up · {m.new_tokens} new tokens",
             "", "## Summary", "",
             "Median over the measured repetitions, [95% bootstrap CI of the median], ±CV. Memory in MiB.", ""]
    head = ["model", "workload", "context", "n", "cache"] + [f"{stats.METRIC_INFO[x].label} {stats.METRIC_INFO[x].unit}"
                                                             for x in stats.METRICS]
    rows = []
    for s in summary_rows(record):
        cells = [s["model"], s["workload"], s["context"], s["n"], s["cache_state"]]
        for name in stats.METRICS:
            v = s[name]
            if v is None:
                cells.append("—")
                continue
            nd = 0 if name == "distinct_experts" else 2
            cv = s[f"{name}_cv"]
            cells.append(f"{v:.{nd}f} [{s[f'{name}_ci_low']:.{nd}f}–{s[f'{name}_ci_high']:.{nd}f}]"
                         + (f" ±{cv * 100:.1f}%" if cv is not None else ""))
        rows.append(cells)
    lines += _md_table(head, rows)
    lines += ["", "## Repetitions", ""]
    head = ["model", "workload", "context", "rep", "status", "cache"] + [
        f"{stats.METRIC_INFO[x].label} {stats.METRIC_INFO[x].unit}" for x in stats.METRICS] + ["wall s"]
    rows = []
    for rep, r in zip(record.repetitions, repetition_rows(record)):
        cells = [r["model"], r["workload"], r["context"], rep_label(rep), r["status"], r["cache_state"]]
        for name in stats.METRICS:
            v = r[name]
            cells.append("—" if v is None else (f"{v:.0f}" if name == "distinct_experts" else f"{v:.2f}"))
        cells.append(r["wall_s"])
        rows.append(cells)
    lines += _md_table(head, rows)
    return "\n".join(lines) + "\n"


# ---- perfetto -----------------------------------------------------------------------------------
def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"


def trace_filename(record: RunRecord, rep: Repetition) -> str:
    label = f"warmup{-rep.index}" if rep.warmup else f"rep{rep.index + 1}"
    return f"{_safe(record.meta.run_id)}__{_safe(rep.model)}__{_safe(rep.workload)}-c{rep.context}__{label}.json"


def _us(seconds: float) -> float:
    return round(max(0.0, seconds) * 1e6, 1)


def _expert_counter(record: RunRecord, rep: Repetition,
                    spans: list[tuple[str, float, float]]) -> list[tuple[float, int, float | None]]:
    """(time s, distinct pairs, expert MiB touched or None) over the generation, at most ~500 points.

    Each (layer, expert) pair is placed at its first token, aligned to time as the join does
    (``devprof.analysis.join``: layer by layer for the reference runtime, else token by token)."""
    from devprof.analysis.artifacts import load_rep_trace
    from devprof.analysis.join import MIB, _downsample_idx, _token_times, default_alignment, pair_times
    from devprof.routing import first_touch

    g = rep.routing
    if g is None:
        return []
    trace = load_rep_trace(record.meta, rep)
    if trace is not None:
        first = first_touch(trace.experts, trace.n_experts)
        times = pair_times(first, spans, trace.n_prompt, trace.n_tokens, default_alignment(record.meta.runtime))
        if times is None:
            return []
        ok = np.isfinite(times)
        order = np.argsort(times[ok], kind="stable")
        t = times[ok][order]
        distinct = np.arange(1, len(t) + 1)
        mib = None
        if trace.block_nbytes is not None:
            mib = np.cumsum(trace.block_nbytes[ok][order].astype(float)) / MIB
    else:
        T = g.n_tokens
        toks = np.arange(1, T + 1)
        n_prompt = min(T, rep.result.prompt_tokens if rep.result and rep.result.prompt_tokens else rep.context)
        tt = _token_times(spans, n_prompt, T)
        if tt is None:
            return []
        t = tt
        distinct = np.rint(np.interp(toks, [0, *g.coverage_tokens], [0, *g.coverage_distinct])).astype(np.int64)
        mib = None
    return [(float(t[i]), int(distinct[i]), None if mib is None else float(mib[i]))
            for i in _downsample_idx(len(t), 500)]


def perfetto_trace(record: RunRecord, rep: Repetition, pid: int = 1) -> dict[str, Any]:
    """One repetition as a Chrome trace-event document."""
    from devprof.analysis.join import default_alignment
    from devprof.catalog import MODELS

    m = record.meta
    o, res = rep.outcome, rep.result
    spec = MODELS.get(rep.model)
    display = spec.display if spec else rep.model
    label = rep_label(rep)
    tid = 1
    ev: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid,
         "args": {"name": f"devprof · {display} · {rep.workload} · {rep.context} tokens · {label} "
                          f"(cache {rep.cache_state})"}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": f"{m.runtime} runtime"}},
    ]
    spans, approx = phase_spans(rep), False
    if not spans:
        spans, approx = phase_spans_from_durations(rep), True
    for name, a, b in spans:
        args: dict[str, Any] = {"approximate": approx}
        if name == "prefill" and res is not None:
            args.update(tokens=res.prompt_tokens, tok_s=_r(res.prefill_tok_s, 3))
        elif name == "decode" and res is not None:
            args.update(tokens=res.generated_tokens, tok_s=_r(res.decode_tok_s, 3))
        ev.append({"ph": "X", "name": name, "cat": "phase", "pid": pid, "tid": tid, "ts": _us(a),
                   "dur": round(max(0.0, b - a) * 1e6, 1), "args": args})
    if res is not None and res.first_token_ms is not None and res.inference_start_ms is not None and not approx:
        t = (res.first_token_ms - o.start_wall_ms) / 1000.0
        if spans and 0 <= t <= max(b for _, _, b in spans) + 1:
            ev.append({"ph": "i", "name": "first token", "cat": "phase", "pid": pid, "tid": tid, "ts": _us(t),
                       "s": "t", "args": {"ttft_ms": _r(res.ttft_ms, 3)}})
    for s in o.samples:
        ts = _us(s.t_ms / 1000.0)
        for name, v in (("mem.rss", s.rss_kb), ("mem.rss.anon", s.anon_kb), ("mem.rss.file", s.file_kb),
                        ("mem.rss.watermark", s.hwm_kb)):
            if v is not None:
                ev.append({"ph": "C", "name": name, "pid": pid, "ts": ts, "args": {"MiB": round(v / 1024.0, 3)}})
    for t, n, mib in _expert_counter(record, rep, spans):
        ev.append({"ph": "C", "name": "experts.distinct", "pid": pid, "ts": _us(t), "args": {"pairs": n}})
        if mib is not None:
            ev.append({"ph": "C", "name": "experts.touched", "pid": pid, "ts": _us(t), "args": {"MiB": round(mib, 3)}})
    ev.sort(key=lambda e: (e["ph"] != "M", e.get("ts", 0.0)))
    peak = stats.peak_rss_kb(rep)
    other = {"devprof_format": "devprof.perfetto/1", "run_id": m.run_id, "device": m.device.name or m.device.serial,
             "device_kind": m.device.kind, "runtime": m.runtime, "model": rep.model, "workload": rep.workload,
             "context": rep.context, "repetition": label, "status": o.status, "cache_state": rep.cache_state,
             "memory_metric": o.memory_metric, "peak_mib": None if peak is None else round(peak / 1024.0, 3),
             "distinct_pairs": rep.routing.distinct_pairs if rep.routing else None,
             "time_origin": "the runtime process's start", "spans_approximate": approx,
             "expert_times": "each (layer, expert) pair at its first token, placed "
                             + {"layers": "layer by layer", "tokens": "token by token"}[default_alignment(m.runtime)]
                             + " within prefill, linearly within decode (approximate)"}
    return {"traceEvents": ev, "displayTimeUnit": "ms", "otherData": other}


def perfetto_traces(record: RunRecord) -> list[tuple[str, dict[str, Any]]]:
    _check(record)
    return [(trace_filename(record, rep), perfetto_trace(record, rep, pid=i + 1))
            for i, rep in enumerate(record.repetitions)]


_PHASES = set("BEXiICMbenstfPOND") | {"(", ")"}
_META_NAMES = {"process_name", "process_labels", "process_sort_index", "thread_name", "thread_sort_index"}


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_trace(doc: Any) -> list[str]:
    """Problems with a Chrome trace-event document (empty: well formed). Checks what the Perfetto UI's
    JSON importer relies on: the object form with a ``traceEvents`` list; every event a phase, a name
    and an integer pid; timestamps finite and >= 0 in µs; ``X`` with a duration and a tid, spans on one
    thread nested, never overlapping; ``C`` with numeric args; ``M`` of a known kind with its argument;
    counter samples in time order per track; and the whole document JSON without NaN."""
    errs: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return ["not a JSON object with a traceEvents list"]
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as e:
        errs.append(f"not plain JSON: {e}")
    if doc.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        errs.append(f"displayTimeUnit must be ms or ns, got {doc.get('displayTimeUnit')!r}")
    spans: dict[tuple, list[tuple[float, float, str]]] = {}
    last_counter: dict[tuple, float] = {}
    for i, e in enumerate(doc["traceEvents"]):
        where = f"event {i}"
        if not isinstance(e, dict):
            errs.append(f"{where}: not an object")
            continue
        ph = e.get("ph")
        if ph not in _PHASES:
            errs.append(f"{where}: unknown phase {ph!r}")
            continue
        if not isinstance(e.get("name"), str) or not e["name"]:
            errs.append(f"{where}: no name")
        if not isinstance(e.get("pid"), int) or isinstance(e.get("pid"), bool):
            errs.append(f"{where}: pid must be an integer")
        if "args" in e and not isinstance(e["args"], dict):
            errs.append(f"{where}: args must be an object")
        if ph == "M":
            if e.get("name") not in _META_NAMES:
                errs.append(f"{where}: unknown metadata event {e.get('name')!r}")
            elif e["name"].endswith("_name") and not isinstance((e.get("args") or {}).get("name"), str):
                errs.append(f"{where}: {e['name']} needs args.name")
            if e.get("name", "").startswith("thread_") and not isinstance(e.get("tid"), int):
                errs.append(f"{where}: {e.get('name')} needs a tid")
            continue
        if not _num(e.get("ts")) or e["ts"] < 0:
            errs.append(f"{where}: ts must be a finite number >= 0 (µs)")
            continue
        if ph == "X":
            if not _num(e.get("dur")) or e["dur"] < 0:
                errs.append(f"{where}: X needs a finite dur >= 0")
                continue
            if not isinstance(e.get("tid"), int):
                errs.append(f"{where}: X needs an integer tid")
                continue
            spans.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"], e["name"]))
        elif ph == "C":
            args = e.get("args")
            if not isinstance(args, dict) or not args or not all(_num(v) for v in args.values()):
                errs.append(f"{where}: C needs numeric args")
                continue
            key = (e["pid"], e["name"], e.get("id"))
            if e["ts"] < last_counter.get(key, -1.0):
                errs.append(f"{where}: counter {e['name']} goes back in time")
            last_counter[key] = e["ts"]
        elif ph in ("i", "I") and e.get("s", "t") not in ("g", "p", "t"):
            errs.append(f"{where}: instant scope must be g, p or t")
    for key, items in spans.items():
        items.sort(key=lambda s: (s[0], -s[1]))
        stack: list[tuple[float, float, str]] = []
        for a, b, name in items:
            while stack and stack[-1][1] <= a:
                stack.pop()
            if stack and b > stack[-1][1]:
                errs.append(f"spans {stack[-1][2]!r} and {name!r} overlap on pid/tid {key} without nesting")
            stack.append((a, b, name))
    return errs


# ---- writing ------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file renamed into place, with the permissions a plain write would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, what: str) -> Path:
    """Write a user-named file atomically; a folder or an OS error is one clear DevprofError."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write the {what} to {path}: it is a folder (give a file name)")
    try:
        _atomic_write(path, text)
    except OSError as e:
        raise path_error(f"cannot write to {path} (the {what}): {e.strerror or e}", e) from None
    return path


def render(record: RunRecord, fmt: str) -> str:
    """csv, json or md as text."""
    if fmt == "csv":
        return to_csv(record)
    if fmt == "json":
        return to_json(record)
    if fmt == "md":
        return to_markdown(record)
    raise UsageError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")


def write_perfetto(record: RunRecord, folder: Path) -> list[Path]:
    """One validated trace file per repetition in ``folder``; returns their paths."""
    docs = perfetto_traces(record)
    written = []
    try:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"cannot write Perfetto traces into {folder}: it is a file (give a folder)")
        for name, doc in docs:
            problems = validate_trace(doc)
            if problems:  # a bug here, not the user's: say what
                raise DevprofError(f"trace {name} is malformed: {problems[0]}")
            path = folder / name
            _atomic_write(path, json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False))
            written.append(path)
    except OSError as e:
        raise path_error(f"cannot write to {e.filename or folder}: {e.strerror or e}", e) from None
    return written


def write(record: RunRecord, fmt: str, out: Path) -> list[Path]:
    if fmt == "perfetto":
        return write_perfetto(record, out)
    return [write_text(out, render(record, fmt), f"{fmt} export")]


__all__ = ["FORMATS", "columns", "perfetto_trace", "perfetto_traces", "render", "repetition_rows", "summary_rows",
           "to_csv", "to_json", "to_markdown", "validate_trace", "write", "write_perfetto"]
