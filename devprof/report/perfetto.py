"""`devprof export --format perfetto`: one Chrome trace-event JSON per repetition (``{"traceEvents": [...]}``;
open it in ui.perfetto.dev or chrome://tracing). Times are microseconds since the runtime process started:

- ``M`` events name the process ("devprof · model · workload · context · rep") and its thread;
- ``X`` spans ``load``, ``prefill``, ``decode`` on the runtime thread, from the runtime's own
  timestamps (or placed from its durations, marked ``approximate``), and an ``i`` instant at the
  first token;
- ``C`` counters ``mem.rss``, ``mem.rss.anon``, ``mem.rss.file``, ``mem.rss.watermark`` (VmHWM) in
  MiB, one per memory sample (Perfetto's own names for these); where the samples have them
  ``mem.swap`` (VmSwap) and ``mem.pss`` (smaps_rollup's Pss, every few samples) in MiB and
  ``faults.major``, the major page faults so far (cumulative); and ``experts.distinct``: distinct
  (layer, expert) pairs touched, with ``experts.touched`` MiB of expert blocks when their sizes are
  known -- each (layer, expert) pair placed in time at its first token as the join does (an
  approximation, see ``devprof.analysis.join``).

:func:`validate_trace` checks a trace against the trace-event format (what the Perfetto UI's JSON
importer needs); :meth:`PerfettoRenderer.files` runs it on every trace before it is written.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from devprof import stats
from devprof.errors import DevprofError
from devprof.report.base import Renderer, phase_spans, phase_spans_from_durations, rep_label, rounded
from devprof.report.rows import check_exportable
from devprof.results import Repetition
from devprof.results import RunRecord


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
            args.update(tokens=res.prompt_tokens, tok_s=rounded(res.prefill_tok_s, 3))
        elif name == "decode" and res is not None:
            args.update(tokens=res.generated_tokens, tok_s=rounded(res.decode_tok_s, 3))
        ev.append({"ph": "X", "name": name, "cat": "phase", "pid": pid, "tid": tid, "ts": _us(a),
                   "dur": round(max(0.0, b - a) * 1e6, 1), "args": args})
    if res is not None and res.first_token_ms is not None and res.inference_start_ms is not None and not approx:
        t = (res.first_token_ms - o.start_wall_ms) / 1000.0
        if spans and 0 <= t <= max(b for _, _, b in spans) + 1:
            ev.append({"ph": "i", "name": "first token", "cat": "phase", "pid": pid, "tid": tid, "ts": _us(t),
                       "s": "t", "args": {"ttft_ms": rounded(res.ttft_ms, 3)}})
    for s in o.samples:
        ts = _us(s.t_ms / 1000.0)
        for name, v in (("mem.rss", s.rss_kb), ("mem.rss.anon", s.anon_kb), ("mem.rss.file", s.file_kb),
                        ("mem.rss.watermark", s.hwm_kb), ("mem.swap", s.swap_kb), ("mem.pss", s.pss_kb)):
            if v is not None:
                ev.append({"ph": "C", "name": name, "pid": pid, "ts": ts, "args": {"MiB": round(v / 1024.0, 3)}})
        if s.majflt is not None:
            ev.append({"ph": "C", "name": "faults.major", "pid": pid, "ts": ts, "args": {"faults": s.majflt}})
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
    check_exportable(record)
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
        errs += _event_problems(f"event {i}", e, spans, last_counter)
    return errs + _overlaps(spans)


def _event_problems(where: str, e: Any, spans: dict, last_counter: dict) -> list[str]:
    """One event's problems; its span goes into ``spans``, a counter's time into ``last_counter``."""
    if not isinstance(e, dict):
        return [f"{where}: not an object"]
    ph = e.get("ph")
    if ph not in _PHASES:
        return [f"{where}: unknown phase {ph!r}"]
    errs = []
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
        return errs
    if not _num(e.get("ts")) or e["ts"] < 0:
        return errs + [f"{where}: ts must be a finite number >= 0 (µs)"]
    if ph == "X":
        if not _num(e.get("dur")) or e["dur"] < 0:
            return errs + [f"{where}: X needs a finite dur >= 0"]
        if not isinstance(e.get("tid"), int):
            return errs + [f"{where}: X needs an integer tid"]
        spans.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"], e["name"]))
    elif ph == "C":
        args = e.get("args")
        if not isinstance(args, dict) or not args or not all(_num(v) for v in args.values()):
            return errs + [f"{where}: C needs numeric args"]
        key = (e["pid"], e["name"], e.get("id"))
        if e["ts"] < last_counter.get(key, -1.0):
            errs.append(f"{where}: counter {e['name']} goes back in time")
        last_counter[key] = e["ts"]
    elif ph in ("i", "I") and e.get("s", "t") not in ("g", "p", "t"):
        errs.append(f"{where}: instant scope must be g, p or t")
    return errs


def _overlaps(spans: dict[tuple, list[tuple[float, float, str]]]) -> list[str]:
    """Spans on one thread must nest: one that starts inside another ends inside it."""
    errs = []
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


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class PerfettoRenderer(Renderer):
    """A folder of traces, one file per repetition (:meth:`files`); ``render`` gives the same events as one
    trace, every repetition a process of its own."""

    name = "perfetto"
    output_file_extension = "json"
    writes_folder = True

    def files(self, record: RunRecord) -> list[tuple[str, str]]:
        """(file name, text) of every repetition's trace, each checked by :func:`validate_trace`."""
        out = []
        for name, doc in perfetto_traces(record):
            problems = validate_trace(doc)
            if problems:  # a bug here, not the user's: say what
                raise DevprofError(f"trace {name} is malformed: {problems[0]}")
            out.append((name, _dumps(doc)))
        return out

    def render(self, record: RunRecord) -> str:
        traces = perfetto_traces(record)
        events = [e for _, doc in traces for e in doc["traceEvents"]]
        events.sort(key=lambda e: (e["ph"] != "M", e.get("ts", 0.0)))
        doc = {"traceEvents": events, "displayTimeUnit": "ms",
               "otherData": {"devprof_format": "devprof.perfetto/1", "run_id": record.meta.run_id,
                             "repetitions": [d["otherData"] for _, d in traces]}}
        problems = validate_trace(doc)
        if problems:
            raise DevprofError(f"the trace of run {record.meta.run_id} is malformed: {problems[0]}")
        return _dumps(doc)
