"""``llama-bench -o json`` / ``-o jsonl``: one :class:`LlamaBenchRecord` per test."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from devprof.errors import ParseError, UsageError
from devprof.runtimes.base import as_count, as_number, coerce_text, json_safe, snippet

__all__ = ["LlamaBenchRecord", "parse_llama_bench"]


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
    timing = _bench_timing(o, where, n_prompt + n_gen)

    def opt_int(key: str, minimum: int = 0) -> int | None:
        return _opt_int(o.get(key), minimum)

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
        **timing,
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


def _bench_timing(o: dict, where: str, n_tokens: int) -> dict[str, Any]:
    """avg/stddev in ns and tokens/s and the samples of one record; averages from the samples when absent."""
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
        avg_ts = n_tokens * 1e9 / avg_ns
    if avg_ts < 0:
        raise ParseError(f"{where}: avg_ts is negative ({avg_ts})")
    stddev_ts = float(as_number(o.get("stddev_ts", 0.0), "stddev_ts", where))
    return {"avg_ns": avg_ns, "stddev_ns": stddev_ns, "avg_ts": avg_ts, "stddev_ts": stddev_ts,
            "samples_ns": tuple(int(x) for x in samples_ns), "samples_ts": tuple(float(x) for x in samples_ts)}


def _opt_int(v: Any, minimum: int = 0) -> int | None:
    """An integral number at least ``minimum``, else None."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        return None
    return int(v) if int(v) >= minimum else None


def _num_list(v: Any, key: str, where: str, *, integral: bool) -> list[float]:
    if not isinstance(v, list):
        raise ParseError(f"{where}: {key} is not a list")
    out = []
    for x in v:
        out.append(as_count(x, key, where) if integral else as_number(x, key, where))
    return out
