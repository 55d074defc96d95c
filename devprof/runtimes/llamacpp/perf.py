"""llama.cpp: ``llama-completion``/``llama-cli`` end-of-run perf lines, and ``llama-bench`` JSON.

The perf block (checked against ggml-org/llama.cpp ``src/llama-context.cpp``
``llama_perf_context_print`` and ``common/sampling.cpp`` ``common_perf_print``) is logged at INFO
level (stderr by default), one line per figure, under a prefix that depends on the version:
``llama_print_timings:`` (2023 - mid 2024), ``llama_perf_context_print:`` (+
``llama_perf_sampler_print:``) and, since late 2025, ``common_perf_print:``::

    llama_perf_sampler_print:    sampling time =     170.97 ms /   136 runs   (    1.26 ms per token,   795.48 tokens per second)
    llama_perf_context_print:        load time =    4450.58 ms
    llama_perf_context_print: prompt eval time =    4245.68 ms /     8 tokens (  530.71 ms per token,     1.88 tokens per second)
    llama_perf_context_print:        eval time =  124973.60 ms /   127 runs   (  984.04 ms per token,     1.02 tokens per second)
    llama_perf_context_print:       total time =  129561.47 ms /   135 tokens

``common_perf_print`` adds ``sampling time = X ms`` (no count), ``samplers time = X ms / N
tokens``, ``unaccounted time = X ms / P %`` and ``graphs reused = N``; newer
``llama_perf_context_print`` also prints ``graphs reused``. Old ``llama_print_timings`` has
``sample time = X ms / N runs`` and a ``total time`` with or without ``/ N tokens``.

"eval time ... runs" counts single-token decode calls; the first generated token is sampled
from the prompt pass, so a ``-n 128`` run shows ``127 runs``. ``generated_tokens`` in the
RunResult is that run count, which is also what the decode rate divides by (same convention as
the ExecuTorch adapter). llama.cpp prints no first-token timestamp: ``ttft_ms`` is the prompt
eval time (tokenization and the first sampling step excluded), as ``extra["ttft_source"]`` says.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from devprof.errors import ParseError
from devprof.results import RunResult
from devprof.runtimes.base import coerce_text, safe_parse, snippet, token_rate

__all__ = ["parse_llama_perf", "parse_runner_lines", "add_runner_lines", "token_intervals_ms"]

PERF_PREFIXES = ("llama_perf_context_print", "common_perf_print", "llama_print_timings", "llama_perf_sampler_print")

_PERF_RE = re.compile(
    r"(?P<prefix>" + "|".join(PERF_PREFIXES) + r")[ \t]*:[ \t]*"
    r"(?P<kind>prompt eval time|eval time|load time|total time|sampling time|samplers time|sample time"
    r"|unaccounted time|graphs reused)[ \t]*=[ \t]*(?P<value>[^\s]*)(?P<tail>[^\n]*)"
)
_NUM_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\Z")
_COUNT_RE = re.compile(r"[ \t]*ms[ \t]*/[ \t]*(\d+)[ \t]*(tokens|runs)")

_ESSENTIAL = ("prompt eval time", "eval time")


# --------------------------------------------------------------------------------------------
# The perf block


def parse_llama_perf(text: str, *, runtime: str = "llamacpp") -> RunResult:
    """Parse the last llama.cpp perf block in ``text`` (any of the three prefixes).

    Lines may carry log prefixes (timestamps) in front. A new block starts whenever a figure
    repeats, and only the last block is used (``extra["perf_blocks"]`` counts them). A block
    without an ``eval time`` line gives ``decode_*`` None (and the reverse for ``prompt eval
    time``), named in ``extra["missing"]``; a block with neither, or no block at all, raises
    :class:`ParseError`, as does a non-numeric value on one of those two lines.
    """
    return safe_parse(lambda: _parse_perf(coerce_text(text), runtime), runtime)


def _parse_perf(text: str, runtime: str) -> RunResult:
    blocks = _perf_blocks(text, runtime)
    block = blocks[-1]
    if not any(k in block for k in _ESSENTIAL):
        raise ParseError(
            f"{runtime}: last perf block has neither a 'prompt eval time' nor an 'eval time' line "
            f"(output cut off?; found: {', '.join(sorted(block))})"
        )

    warnings: list[str] = []
    missing = [k for k in ("load time", "prompt eval time", "eval time", "total time") if k not in block]
    perf = _PerfBlock(block, runtime, warnings)
    pe_ms, pe_n = perf.value("prompt eval time", True), perf.count("prompt eval time", True)
    ev_ms, ev_n = perf.value("eval time", True), perf.count("eval time", True)

    def rate(n: int | None, ms: float | None, label: str) -> float | None:
        return token_rate(n, ms, 1000.0, label, f"{label}: 0 ms for {n} tokens (perf timings disabled?), rate not computed",
                          warnings)

    prefill_tok_s = rate(pe_n, pe_ms, "prompt eval")
    decode_tok_s = rate(ev_n, ev_ms, "eval")
    load_ms = perf.value("load time", False)
    extra = _perf_extra(perf, len(blocks), pe_ms is not None)
    if missing:
        extra["missing"] = missing
    if warnings:
        extra["warnings"] = warnings

    return RunResult(
        runtime=runtime,
        prompt_tokens=pe_n,
        generated_tokens=ev_n,
        prefill_tok_s=prefill_tok_s,
        decode_tok_s=decode_tok_s,
        ttft_ms=pe_ms,
        load_ms=load_ms,
        prefill_ms=pe_ms,
        decode_ms=ev_ms,
        extra=extra,
    )


def _perf_blocks(text: str, runtime: str) -> list[dict[str, tuple[str, str, str]]]:
    """The perf blocks of ``text`` ({figure: (prefix, value, tail)}); a repeated figure starts a new one."""
    blocks: list[dict[str, tuple[str, str, str]]] = []
    current: dict[str, tuple[str, str, str]] = {}
    for m in _PERF_RE.finditer(text):
        kind = m.group("kind")
        if kind in current:
            blocks.append(current)
            current = {}
        current[kind] = (m.group("prefix"), m.group("value"), m.group("tail"))
    if current:
        blocks.append(current)
    if not blocks:
        raise ParseError(
            f"{runtime}: no llama.cpp perf lines ('llama_perf_context_print: prompt eval time = ...' or "
            f"'common_perf_print:'/'llama_print_timings:') in the output ({len(text.strip())} chars)"
        )
    return blocks


class _PerfBlock:
    """The figures of one perf block; a bad essential figure raises, a bad other one adds a warning."""

    def __init__(self, block: dict[str, tuple[str, str, str]], runtime: str, warnings: list[str]) -> None:
        self.block, self.runtime, self.warnings = block, runtime, warnings

    def value(self, kind: str, essential: bool) -> float | None:
        if kind not in self.block:
            return None
        raw = self.block[kind][1]
        if _NUM_RE.match(raw):
            v = float(raw)
            if math.isfinite(v) and v >= 0:
                return v
        msg = f"{self.runtime}: perf line '{kind}' has a non-numeric or impossible value {snippet(raw, 30)}"
        if essential:
            raise ParseError(msg)
        self.warnings.append(msg)
        return None

    def count(self, kind: str, essential: bool) -> int | None:
        if kind not in self.block:
            return None
        cm = _COUNT_RE.match(self.block[kind][2])
        if cm is None:
            msg = f"{self.runtime}: perf line '{kind}' lacks its '/ N tokens' count"
            if essential:
                raise ParseError(msg)
            self.warnings.append(msg)
            return None
        return int(cm.group(1))


def _perf_extra(perf: _PerfBlock, n_blocks: int, has_prompt_eval: bool) -> dict[str, Any]:
    """``extra``: the line prefix, block count, total/sampling/unaccounted times, graphs reused."""
    block, value = perf.block, perf.value
    prefixes = sorted({v[0] for v in block.values() if v[0] != "llama_perf_sampler_print"})
    extra: dict[str, Any] = {
        "perf_prefix": prefixes[0] if len(prefixes) == 1 else prefixes,
        "perf_blocks": n_blocks,
        "generated_tokens_source": "eval 'runs' (decode calls; the first new token comes from the prompt pass)",
    }
    if has_prompt_eval:
        extra["ttft_source"] = "approximation: prompt eval time (no first-token timestamp in llama.cpp output)"
    total_ms = value("total time", False)
    if total_ms is not None:
        extra["total_ms"] = total_ms
        tm = _COUNT_RE.match(block["total time"][2])
        if tm:
            extra["total_tokens"] = int(tm.group(1))
    for kind, key in (("sampling time", "sampling_ms"), ("samplers time", "samplers_ms"), ("sample time", "sampling_ms")):
        v = value(kind, False)
        if v is not None:
            extra[key] = v
            sm = _COUNT_RE.match(block[kind][2])
            if sm:
                extra[key.replace("_ms", "_runs")] = int(sm.group(1))
    un = value("unaccounted time", False)
    if un is not None:
        extra["unaccounted_ms"] = un
    if "graphs reused" in block:
        raw = block["graphs reused"][1]
        if raw.isdigit():
            extra["graphs_reused"] = int(raw)
        else:
            perf.warnings.append(f"{perf.runtime}: perf line 'graphs reused' has a non-numeric value {snippet(raw, 30)}")
    return extra


# --------------------------------------------------------------------------------------------
# devprof's own runner (runner/runner.cpp): its "devprof_<what>: {json}" lines after the perf block

_RUNNER_RE = re.compile(r"^devprof_(tokens|status|residency):[ \t]*(\{[^\n]*\})[ \t]*$", re.M)
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap",  # /proc/self/status, kB
               "Pss", "Pss_Anon", "Pss_File", "Swap", "SwapPss",  # /proc/self/smaps_rollup, kB
               "majflt", "minflt")  # getrusage: page faults


def parse_runner_lines(text: str) -> dict[str, Any]:
    """The native runner's extra lines (``devprof_tokens:``, ``devprof_status:``,
    ``devprof_residency:``), as a dict; {} for output of other llama.cpp programs.

    Keys: ``token_ms`` (list, ms from the prefill start at which each new token was sampled),
    ``prefill_end_ms``, ``threads``, ``status`` (:data:`STATUS_KEYS`: the runner's own
    /proc/self/status and smaps_rollup at exit in kB, and its page faults), ``residency`` (list of {stage, resident_kb,
    file_kb, evicted}: the model file in the page cache before load, after prefill, at exit).
    A line that is not valid JSON or has impossible values raises :class:`ParseError`.
    """
    out: dict[str, Any] = {}
    for m in _RUNNER_RE.finditer(coerce_text(text)):
        kind = m.group(1)
        try:
            obj = json.loads(m.group(2))
        except ValueError:
            raise ParseError(f"llamacpp: runner line devprof_{kind} is not valid JSON: {snippet(m.group(2), 40)}") from None
        if not isinstance(obj, dict):
            raise ParseError(f"llamacpp: runner line devprof_{kind} is not a JSON object")
        if kind == "tokens":
            ts = obj.get("token_ms")
            if not isinstance(ts, list) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0 for t in ts
            ):
                raise ParseError("llamacpp: runner line devprof_tokens has no valid token_ms list")
            if any(b < a for a, b in zip(ts, ts[1:])):
                raise ParseError("llamacpp: runner token timestamps go backwards")
            out["token_ms"] = [float(t) for t in ts]
            pe = obj.get("prefill_end_ms")
            if isinstance(pe, (int, float)) and not isinstance(pe, bool) and math.isfinite(pe) and pe >= 0:
                out["prefill_end_ms"] = float(pe)
            if isinstance(obj.get("threads"), int):
                out["threads"] = obj["threads"]
        elif kind == "status":
            st = {}
            for k in STATUS_KEYS:
                v = obj.get(k)
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ParseError(f"llamacpp: runner status {k} is not a count or a size in kB: {snippet(str(v), 20)}")
                st[k] = v
            out["status"] = st
        else:
            out.setdefault("residency", []).append(
                {k: obj.get(k) for k in ("stage", "resident_kb", "file_kb", "evicted")})
    return out


def token_intervals_ms(token_ms: list[float]) -> list[float]:
    """Per-token decode latencies: the gaps between consecutive token timestamps (the first token
    comes from the prompt pass and is not a decode step)."""
    return [round(b - a, 3) for a, b in zip(token_ms, token_ms[1:])]


def _percentile(vals: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without numpy."""
    v = sorted(vals)
    pos = (len(v) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return round(v[lo] + (v[hi] - v[lo]) * (pos - lo), 3)


def add_runner_lines(result: RunResult, text: str) -> RunResult:
    """Fold the native runner's lines into ``result``: the real first-token time as ``ttft_ms``,
    the runner's own VmHWM as ``reported_peak_rss_mb``, the rest under ``extra``."""
    r = parse_runner_lines(text)
    if not r:
        return result
    result.extra["runner"] = "devprof-llamarunner"
    if "token_ms" in r:
        ts = r["token_ms"]
        result.extra["token_stamp_ms"] = ts  # the runner's timestamps: ms from the prefill start per sampled token
        gaps = token_intervals_ms(ts)
        # extra["token_ms"] is the inter-token latency per decode step, the key the statistics and the
        # report read (devprof.stats.token_latencies), as the reference runtime fills it
        result.extra["token_ms"] = gaps
        if gaps:
            result.extra["token_latency_ms"] = {f"p{q}": _percentile(gaps, q) for q in (50, 90, 99)}
        if ts:
            result.ttft_ms = ts[0]
            result.extra["ttft_source"] = "runner timestamp: prefill start to the first sampled token"
        if "prefill_end_ms" in r:
            result.extra["prefill_wall_ms"] = r["prefill_end_ms"]
        if "threads" in r:  # the threads the runner used (its default when -t was not given)
            result.extra["threads"] = result.extra["n_threads"] = r["threads"]
    if "status" in r:
        result.extra["runner_status_kb"] = r["status"]
        if "VmHWM" in r["status"]:
            result.reported_peak_rss_mb = r["status"]["VmHWM"] / 1024.0
    if "residency" in r:
        result.extra["residency"] = r["residency"]
    return result
