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
from dataclasses import asdict, dataclass, field
from typing import Any

from devprof.errors import ParseError, UsageError
from devprof.results import RunResult
from devprof.runtimes.base import (
    Invocation,
    RuntimeAdapter,
    as_count,
    as_number,
    coerce_text,
    fmt_num,
    json_safe,
    register,
    require_int,
    require_path,
    safe_parse,
    snippet,
)

__all__ = [
    "LlamaCppAdapter",
    "parse_llama_perf",
    "parse_runner_lines",
    "LlamaBenchRecord",
    "parse_llama_bench",
]

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
# The adapter


@register
class LlamaCppAdapter(RuntimeAdapter):
    """``llama-completion`` (or a pre-2025-12 ``llama-cli``) run once over a prompt file.

    Default command: ``BINARY -m MODEL -f PROMPT_FILE -n N --temp 0 --ignore-eos -no-cnv
    --no-display-prompt [-t THREADS]``: greedy, exactly N tokens, no chat template or
    interactive mode, and the (long) prompt not echoed. ``inv.tokenizer_path`` is unused (the
    GGUF carries its tokenizer).

    ``extra`` keys read by :meth:`argv` (others are ignored): ``ctx_size`` (``-c``),
    ``batch_size`` (``-b``), ``ubatch_size`` (``-ub``), ``n_gpu_layers`` (``-ngl``), ``seed``
    (``-s``), ``warmup`` (default True; False adds ``--no-warmup``), ``mmap`` (default True;
    False adds ``--no-mmap``), ``ignore_eos`` (default True), ``conversation`` (default False:
    ``-no-cnv``; None leaves the flag out for builds that lack it), ``display_prompt`` (default
    False: ``--no-display-prompt``), ``temperature`` (default 0), ``extra_args`` (list of str).
    """

    name = "llamacpp"

    def argv(self, inv: Invocation) -> list[str]:
        ex = inv.extra or {}
        args = [
            require_path(inv.binary, "binary"),
            "-m", require_path(inv.model_path, "model_path"),
            "-f", require_path(inv.prompt_file, "prompt_file"),
            "-n", str(require_int(inv.max_new_tokens, "max_new_tokens", minimum=1)),
        ]
        threads = require_int(inv.threads, "threads", minimum=-1)
        temperature = ex.get("temperature", 0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature >= 0
        ):
            raise UsageError(f"temperature must be a number >= 0, got {temperature!r}")
        args += ["--temp", fmt_num(temperature)]
        if _flag(ex, "ignore_eos", True):
            args.append("--ignore-eos")
        conversation = ex.get("conversation", False)
        if conversation is not None:
            if not isinstance(conversation, bool):
                raise UsageError(f"conversation must be true, false or null, got {conversation!r}")
            args.append("-cnv" if conversation else "-no-cnv")
        if not _flag(ex, "display_prompt", False):
            args.append("--no-display-prompt")
        if threads > 0:
            args += ["-t", str(threads)]
        for key, flag, minimum in (
            ("ctx_size", "-c", 0),
            ("batch_size", "-b", 1),
            ("ubatch_size", "-ub", 1),
            ("n_gpu_layers", "-ngl", -1),
            ("seed", "-s", -1),
        ):
            if ex.get(key) is not None:
                args += [flag, str(require_int(ex[key], key, minimum=minimum))]
        if not _flag(ex, "warmup", True):
            args.append("--no-warmup")
        if not _flag(ex, "mmap", True):
            args.append("--no-mmap")
        extra = ex.get("extra_args") or []
        if isinstance(extra, str) or not all(isinstance(a, str) for a in extra):
            raise UsageError("extra_args must be a list of strings (one argv element each)")
        args += list(extra)
        return args

    def parse(self, stdout: str, stderr: str = "") -> RunResult:
        text = coerce_text(stdout, "stdout") + "\n" + coerce_text(stderr, "stderr")
        result = parse_llama_perf(text, runtime=self.name)
        return add_runner_lines(result, text)


def host_runner() -> str:
    """Path of devprof's runner built for this host (the committed variant this CPU can run,
    chosen from /proc/cpuinfo flags and checked against its sha256)."""
    import platform
    from pathlib import Path

    from devprof import bins

    try:
        flags = bins.cpuinfo_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        flags = None
    b = bins.select("llamacpp", "host", platform.machine(), cpu_flags=flags)
    return str(b.verify())


def _flag(ex: dict, key: str, default: bool) -> bool:
    v = ex.get(key, default)
    if not isinstance(v, bool):
        raise UsageError(f"{key} must be true or false, got {v!r}")
    return v


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
    block = blocks[-1]
    if not any(k in block for k in _ESSENTIAL):
        raise ParseError(
            f"{runtime}: last perf block has neither a 'prompt eval time' nor an 'eval time' line "
            f"(output cut off?; found: {', '.join(sorted(block))})"
        )

    warnings: list[str] = []
    missing = [k for k in ("load time", "prompt eval time", "eval time", "total time") if k not in block]

    def value(kind: str, essential: bool) -> float | None:
        if kind not in block:
            return None
        raw = block[kind][1]
        if _NUM_RE.match(raw):
            v = float(raw)
            if math.isfinite(v) and v >= 0:
                return v
        msg = f"{runtime}: perf line '{kind}' has a non-numeric or impossible value {snippet(raw, 30)}"
        if essential:
            raise ParseError(msg)
        warnings.append(msg)
        return None

    def count(kind: str, essential: bool) -> int | None:
        if kind not in block:
            return None
        cm = _COUNT_RE.match(block[kind][2])
        if cm is None:
            msg = f"{runtime}: perf line '{kind}' lacks its '/ N tokens' count"
            if essential:
                raise ParseError(msg)
            warnings.append(msg)
            return None
        return int(cm.group(1))

    pe_ms, pe_n = value("prompt eval time", True), count("prompt eval time", True)
    ev_ms, ev_n = value("eval time", True), count("eval time", True)

    def rate(n: int | None, ms: float | None, label: str) -> float | None:
        if n is None or ms is None:
            return None
        if n == 0:
            warnings.append(f"{label}: 0 tokens, rate not computed")
            return None
        if ms == 0:
            warnings.append(f"{label}: 0 ms for {n} tokens (perf timings disabled?), rate not computed")
            return None
        return n / ms * 1000.0

    prefill_tok_s = rate(pe_n, pe_ms, "prompt eval")
    decode_tok_s = rate(ev_n, ev_ms, "eval")
    load_ms = value("load time", False)

    prefixes = sorted({v[0] for v in block.values() if v[0] != "llama_perf_sampler_print"})
    extra: dict[str, Any] = {
        "perf_prefix": prefixes[0] if len(prefixes) == 1 else prefixes,
        "perf_blocks": len(blocks),
        "generated_tokens_source": "eval 'runs' (decode calls; the first new token comes from the prompt pass)",
    }
    if pe_ms is not None:
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
            warnings.append(f"{runtime}: perf line 'graphs reused' has a non-numeric value {snippet(raw, 30)}")
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


# --------------------------------------------------------------------------------------------
# devprof's own runner (runner/runner.cpp): its "devprof_<what>: {json}" lines after the perf block

_RUNNER_RE = re.compile(r"^devprof_(tokens|status|residency):[ \t]*(\{[^\n]*\})[ \t]*$", re.M)
STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "VmSwap")


def parse_runner_lines(text: str) -> dict[str, Any]:
    """The native runner's extra lines (``devprof_tokens:``, ``devprof_status:``,
    ``devprof_residency:``), as a dict; {} for output of other llama.cpp programs.

    Keys: ``token_ms`` (list, ms from the prefill start at which each new token was sampled),
    ``prefill_end_ms``, ``threads``, ``status`` ({VmHWM, VmRSS, RssAnon, RssFile, VmSwap} in kB,
    the runner's own /proc/self/status at exit), ``residency`` (list of {stage, resident_kb,
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
                    raise ParseError(f"llamacpp: runner status {k} is not a size in kB: {snippet(str(v), 20)}")
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


# --------------------------------------------------------------------------------------------
# llama-bench -o json | jsonl


@dataclass(frozen=True)
class LlamaBenchRecord:
    """One llama-bench test (one line of ``-o jsonl``, one array element of ``-o json``).

    A prefill test (``-p``) has ``n_gen == 0``, a decode test (``-n``) has ``n_prompt == 0``,
    a ``-pg`` test has both (``kind == "mixed"``: its rate mixes the two phases). ``n_depth`` is
    the KV-cache fill before the test (``-d``; 0 in versions without it). ``avg_ts`` is
    llama-bench's mean of per-repetition ``(n_prompt + n_gen) / t`` and excludes tokenization
    and sampling. ``use_mmap`` (bool) is printed by older versions, ``load_mode`` (string) by
    newer ones; the other is None. Every printed field, known or not, is kept in ``raw``.
    """

    n_prompt: int
    n_gen: int
    n_depth: int
    avg_ns: int
    stddev_ns: int
    avg_ts: float
    stddev_ts: float
    samples_ns: tuple[int, ...] = ()
    samples_ts: tuple[float, ...] = ()
    model_filename: str | None = None
    model_type: str | None = None
    model_size: int | None = None
    model_n_params: int | None = None
    n_threads: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    n_gpu_layers: int | None = None
    use_mmap: bool | None = None
    load_mode: str | None = None
    backends: str | None = None
    build_commit: str | None = None
    build_number: int | None = None
    cpu_info: str | None = None
    gpu_info: str | None = None
    test_time: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """"prefill" | "decode" | "mixed"."""
        if self.n_gen == 0:
            return "prefill"
        if self.n_prompt == 0:
            return "decode"
        return "mixed"

    @property
    def is_prefill(self) -> bool:
        return self.kind == "prefill"

    @property
    def is_decode(self) -> bool:
        return self.kind == "decode"

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen

    @property
    def avg_ms(self) -> float:
        return self.avg_ns / 1e6

    @property
    def label(self) -> str:
        """llama-bench's own test name: "pp512", "tg128", "pp512+tg128", with " @ d4096"."""
        name = {"prefill": f"pp{self.n_prompt}", "decode": f"tg{self.n_gen}"}.get(
            self.kind, f"pp{self.n_prompt}+tg{self.n_gen}"
        )
        return f"{name} @ d{self.n_depth}" if self.n_depth else name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind
        d["samples_ns"] = list(self.samples_ns)
        d["samples_ts"] = list(self.samples_ts)
        return d


def parse_llama_bench(text: str | bytes, fmt: str = "json", *, allow_partial: bool = False) -> list[LlamaBenchRecord]:
    """Parse ``llama-bench -o json`` (``fmt="json"``) or ``-o jsonl`` (``fmt="jsonl"``) output.

    ``fmt="auto"`` picks by the first non-blank character. Lines before the JSON (backend init
    messages that llama-bench prints on stdout, merged stderr) are skipped. Output cut off
    after some complete records (the process was killed) raises :class:`ParseError` unless
    ``allow_partial`` is true, in which case the complete records are returned. Empty output,
    an empty result list, a malformed record or one lacking ``n_prompt``/``n_gen``/timing
    raises :class:`ParseError`.
    """
    if fmt not in ("json", "jsonl", "auto"):
        raise UsageError(f"llama-bench format must be 'json', 'jsonl' or 'auto', got {fmt!r}")

    def body() -> list[LlamaBenchRecord]:
        t = coerce_text(text, "llama-bench output")
        f = fmt
        if f == "auto":
            first = next((ln.lstrip()[:1] for ln in t.splitlines() if ln.lstrip().startswith(("[", "{"))), "")
            f = "json" if first == "[" else "jsonl"
        objs = _bench_json(t, allow_partial) if f == "json" else _bench_jsonl(t, allow_partial)
        return [_bench_record(o, i) for i, o in enumerate(objs, 1)]

    try:
        return body()
    except ParseError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:  # pragma: no cover
        raise ParseError(f"llama-bench output could not be read ({type(exc).__name__}: {snippet(str(exc), 60)})") from exc


_WS = " \t\r\n"


def _skip_ws(t: str, pos: int) -> int:
    while pos < len(t) and t[pos] in _WS:
        pos += 1
    return pos


def _bench_json(t: str, allow_partial: bool) -> list[dict]:
    where = "llama-bench json"
    start = None
    for m in re.finditer(r"(?m)^[ \t]*\[", t):
        nxt = _skip_ws(t, m.end())
        if nxt >= len(t) or t[nxt] in "{]":
            start = m.end()
            break
    if start is None:
        if not t.strip():
            raise ParseError(f"{where}: output is empty")
        raise ParseError(f"{where}: no JSON array of test results in the output ({len(t.strip())} chars)")
    dec = json.JSONDecoder()
    objs: list[dict] = []
    pos = start
    while True:
        pos = _skip_ws(t, pos)
        if pos >= len(t):
            return _cut(objs, f"{where}: array is cut off after {len(objs)} complete record(s)", allow_partial)
        if t[pos] == "]":
            break
        if t[pos] != "{":
            raise ParseError(f"{where}: expected a record at char {pos}, found {snippet(t[pos:pos + 20], 24)}")
        try:
            obj, pos = dec.raw_decode(t, pos)
        except json.JSONDecodeError as exc:
            if exc.pos >= len(t.rstrip()) - 1 or "Unterminated" in exc.msg:
                return _cut(objs, f"{where}: record {len(objs) + 1} is cut off ({exc.msg})", allow_partial)
            raise ParseError(f"{where}: record {len(objs) + 1} is not valid JSON ({exc.msg} at char {exc.pos})") from None
        except RecursionError:
            raise ParseError(f"{where}: record {len(objs) + 1} is nested too deeply") from None
        objs.append(obj)
        pos = _skip_ws(t, pos)
        if pos >= len(t):
            return _cut(objs, f"{where}: array is cut off after {len(objs)} complete record(s)", allow_partial)
        if t[pos] == ",":
            pos += 1
        elif t[pos] != "]":
            raise ParseError(f"{where}: expected ',' or ']' after record {len(objs)}, found {snippet(t[pos:pos + 20], 24)}")
    if not objs:
        raise ParseError(f"{where}: the result list is empty (no test ran)")
    return objs


def _bench_jsonl(t: str, allow_partial: bool) -> list[dict]:
    where = "llama-bench jsonl"
    lines = [(i, ln.strip()) for i, ln in enumerate(t.splitlines(), 1) if ln.strip().startswith("{")]
    if not lines:
        if not t.strip():
            raise ParseError(f"{where}: output is empty")
        raise ParseError(f"{where}: no JSON record lines in the output ({len(t.strip())} chars)")
    objs: list[dict] = []
    for k, (lineno, ln) in enumerate(lines):
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as exc:
            if k == len(lines) - 1 and (exc.pos >= len(ln) - 1 or "Unterminated" in exc.msg):
                return _cut(objs, f"{where}: last record (line {lineno}) is cut off ({exc.msg})", allow_partial)
            raise ParseError(f"{where}: line {lineno} is not valid JSON ({exc.msg} at char {exc.pos})") from None
        except RecursionError:
            raise ParseError(f"{where}: line {lineno} is nested too deeply") from None
        if not isinstance(obj, dict):
            raise ParseError(f"{where}: line {lineno} is a JSON {type(obj).__name__}, not a record")
        objs.append(obj)
    return objs


def _cut(objs: list[dict], msg: str, allow_partial: bool) -> list[dict]:
    if allow_partial and objs:
        return objs
    raise ParseError(msg + ("" if objs else " and no record is complete"))


def _bench_record(o: Any, i: int) -> LlamaBenchRecord:
    where = f"llama-bench record {i}"
    if not isinstance(o, dict):
        raise ParseError(f"{where} is a JSON {type(o).__name__}, not an object")
    missing = [k for k in ("n_prompt", "n_gen") if k not in o]
    if missing:
        raise ParseError(f"{where} lacks key(s): {', '.join(missing)}")
    n_prompt = as_count(o["n_prompt"], "n_prompt", where)
    n_gen = as_count(o["n_gen"], "n_gen", where)
    if n_prompt == 0 and n_gen == 0:
        raise ParseError(f"{where} has n_prompt == n_gen == 0 (not a test)")
    n_depth = as_count(o.get("n_depth", 0), "n_depth", where)

    samples_ns = _num_list(o.get("samples_ns", []), "samples_ns", where, integral=True)
    samples_ts = _num_list(o.get("samples_ts", []), "samples_ts", where, integral=False)
    if "avg_ns" in o:
        avg_ns = as_count(o["avg_ns"], "avg_ns", where)
    elif samples_ns:
        avg_ns = round(sum(samples_ns) / len(samples_ns))
    else:
        raise ParseError(f"{where} lacks avg_ns and samples_ns (no timing)")
    if avg_ns <= 0:
        raise ParseError(f"{where}: avg_ns is {avg_ns} (a test cannot take no time)")
    stddev_ns = as_count(o.get("stddev_ns", 0), "stddev_ns", where)
    if "avg_ts" in o:
        avg_ts = float(as_number(o["avg_ts"], "avg_ts", where))
    elif samples_ts:
        avg_ts = sum(samples_ts) / len(samples_ts)
    else:
        avg_ts = (n_prompt + n_gen) * 1e9 / avg_ns
    if avg_ts < 0:
        raise ParseError(f"{where}: avg_ts is negative ({avg_ts})")
    stddev_ts = float(as_number(o.get("stddev_ts", 0.0), "stddev_ts", where))

    def opt_int(key: str, minimum: int = 0) -> int | None:
        v = o.get(key)
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            return None
        return int(v) if int(v) >= minimum else None

    def opt_str(key: str) -> str | None:
        v = o.get(key)
        return v if isinstance(v, str) else None

    use_mmap = o.get("use_mmap")
    if not isinstance(use_mmap, bool):
        use_mmap = None if use_mmap is None or isinstance(use_mmap, (dict, list, str)) else bool(use_mmap)
    return LlamaBenchRecord(
        n_prompt=n_prompt,
        n_gen=n_gen,
        n_depth=n_depth,
        avg_ns=avg_ns,
        stddev_ns=stddev_ns,
        avg_ts=avg_ts,
        stddev_ts=stddev_ts,
        samples_ns=tuple(int(x) for x in samples_ns),
        samples_ts=tuple(float(x) for x in samples_ts),
        model_filename=opt_str("model_filename"),
        model_type=opt_str("model_type"),
        model_size=opt_int("model_size"),
        model_n_params=opt_int("model_n_params"),
        n_threads=opt_int("n_threads"),
        n_batch=opt_int("n_batch"),
        n_ubatch=opt_int("n_ubatch"),
        n_gpu_layers=opt_int("n_gpu_layers", minimum=-1),
        use_mmap=use_mmap,
        load_mode=opt_str("load_mode"),
        backends=opt_str("backends"),
        build_commit=opt_str("build_commit"),
        build_number=opt_int("build_number"),
        cpu_info=opt_str("cpu_info").strip() if opt_str("cpu_info") else opt_str("cpu_info"),
        gpu_info=opt_str("gpu_info"),
        test_time=opt_str("test_time"),
        raw=json_safe(o),
    )


def _num_list(v: Any, key: str, where: str, *, integral: bool) -> list[float]:
    if not isinstance(v, list):
        raise ParseError(f"{where}: {key} is not a list")
    out = []
    for x in v:
        out.append(as_count(x, key, where) if integral else as_number(x, key, where))
    return out
