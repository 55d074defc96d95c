"""ExecuTorch's LLM runner (``llama_main``, examples/models/llama/main.cpp) and its stats line.

What the runner prints (checked against pytorch/executorch sources):

* stdout, after a generation (never during ``--warmup``, which only logs "Warmup run
  finished!"), one line from ``extension/llm/runner/stats.h`` ``print_report``::

      PyTorchObserver {"prompt_tokens":31,"generated_tokens":96,"model_load_start_ms":...,
      "model_load_end_ms":...,"inference_start_ms":...,"inference_end_ms":...,
      "prompt_eval_end_ms":...,"first_token_ms":...,"aggregate_sampling_time_ms":71,
      "SCALING_FACTOR_UNITS_PER_SECOND":1000}

  built by ``stats_to_json_string`` with integer wall-clock milliseconds (``time_in_ms`` uses
  CLOCK_REALTIME, so only differences mean anything, and they can jump if the clock is set).
  Later versions add ``gpu_*`` keys (only when a GPU backend filled them) and, since
  pytorch/executorch#18501 (2026-03), ``prefill_token_per_sec``/``decode_token_per_sec``.
  We recompute the rates from the timestamps and keep the printed ones in ``extra``.
* stderr (``ET_LOG``, posix PAL; on an Android PAL build these go to logcat instead), from
  ``text_llm_runner.cpp``: "RSS after loading model: %f MiB (0 if unsupported)", "... after
  prompt prefill ...", "... after finishing text generation ...". The value is
  ``getrusage().ru_maxrss`` (peak RSS of the whole process so far, warm-up included), 0 on
  macOS/iOS and other platforms where it is not supported.

Token counts: ``generated_tokens`` counts the tokens of the decode loop; the first new token,
sampled from the prefill logits, is not in it (``TextTokenGenerator::generate`` returns
``pos - start_pos`` over ``max_new_tokens - 1`` steps). With ``--max_new_tokens N
--ignore_eos`` expect ``generated_tokens == N - 1``. The decode span
(``prompt_eval_end_ms`` .. ``inference_end_ms``) covers exactly those steps, so the decode rate
is consistent. ``prompt_eval_end_ms`` is taken after tokenization + prefill, and
``first_token_ms`` is set right beside it, so TTFT ~= prefill time (tokenization included).

The Android benchmark app's (``minibench``) ``benchmark_results.json`` is read by
:mod:`devprof.runtimes.executorch.benchmark_app`.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from devprof.errors import ParseError
from devprof.results import RunResult
from devprof.runtimes.base import as_count, as_number, coerce_text, json_safe, safe_parse, snippet, token_rate

__all__ = ["parse_pytorch_observer", "parse_rss_lines", "OBSERVER_TAG"]

OBSERVER_TAG = "PyTorchObserver"

_REQUIRED_KEYS = ("prompt_tokens", "generated_tokens", "inference_start_ms", "prompt_eval_end_ms", "inference_end_ms")

_RSS_RE = re.compile(
    r"RSS after (loading model|prompt prefill|finishing text generation):[ \t]*([^\s]+)[ \t]*MiB"
)
_RSS_KEYS = {
    "loading model": "rss_after_load_mib",
    "prompt prefill": "rss_after_prefill_mib",
    "finishing text generation": "rss_after_generation_mib",
}
# ET_LOG error lines of the posix PAL look like "E 00:00:01.234567 executorch:file.cpp:12] msg".
_ET_ERROR_RE = re.compile(r"(?m)^E \d{2}:\d{2}:\d{2}\.\d+ (.+)$")


# --------------------------------------------------------------------------------------------
# The PyTorchObserver line


def parse_pytorch_observer(text: str, *, runtime: str = "executorch") -> RunResult:
    """Parse the LAST ``PyTorchObserver {json}`` line of ``text`` (plus any "RSS after ..." lines).

    ``text`` is the whole output (stdout and stderr joined; bytes are decoded leniently). The
    tag may sit mid-line (merged streams put log fragments in front of it). Rates, spans and
    TTFT are computed from the timestamps and ``SCALING_FACTOR_UNITS_PER_SECOND``; the values
    the runner printed itself go to ``extra["reported_prefill_tok_s"]`` /
    ``extra["reported_decode_tok_s"]``. The whole JSON object is kept in
    ``extra["observer"]``, and ``extra["observer_lines"]`` counts the stats lines found (the
    runner prints one per generation; only the last is used).

    A span that is zero (below the 1 ms timer) or negative (clock set back) leaves that
    field's rate None and adds a note to ``extra["warnings"]``; everything else is still
    filled. Raises :class:`ParseError` when there is no stats line, the last one is cut off or
    not valid JSON, or a required key is missing or not a number.
    """
    return safe_parse(lambda: _parse_observer(coerce_text(text), runtime), runtime)


def _find_observer_lines(text: str) -> tuple[int, str]:
    """(number of stats tags followed by '{' or end of line, text after the last one up to EOL)."""
    n = len(text)
    count, last = 0, -1
    for m in re.finditer(OBSERVER_TAG, text):
        i = m.end()
        while i < n and text[i] in " \t\r":
            i += 1
        if i < n and text[i] not in "{\n":
            continue  # the word in prose or a log message, not the stats line
        count, last = count + 1, i
    if not count:
        return 0, ""
    end = text.find("\n", last)
    return count, text[last: end if end >= 0 else n].rstrip(" \t\r")


def _parse_observer(text: str, runtime: str) -> RunResult:
    where = f"{runtime} {OBSERVER_TAG}"
    n_lines, obj = _observer_object(text, runtime, where)
    warnings: list[str] = []
    prompt_tokens = as_count(obj["prompt_tokens"], "prompt_tokens", where)
    generated_tokens = as_count(obj["generated_tokens"], "generated_tokens", where)
    scale = _scaling_factor(obj, where, warnings)
    to_ms = 1000.0 / scale
    t = {key: as_number(obj[key], key, where) if key in obj else None for key in _STAMP_KEYS}
    timing = _timings(t, prompt_tokens, generated_tokens, scale, warnings)
    extra = _observer_extra(obj, n_lines, scale, where, warnings)
    reported_peak = _add_rss(text, extra, warnings)
    if warnings:
        extra["warnings"] = warnings

    def ms(v: float | None) -> float | None:
        return None if v is None else float(v) * to_ms

    return RunResult(
        runtime=runtime,
        prompt_tokens=prompt_tokens,
        generated_tokens=generated_tokens,
        **timing,
        model_load_start_ms=ms(t["model_load_start_ms"]),
        inference_start_ms=ms(t["inference_start_ms"]),
        prompt_eval_end_ms=ms(t["prompt_eval_end_ms"]),
        first_token_ms=ms(t["first_token_ms"]),
        inference_end_ms=ms(t["inference_end_ms"]),
        reported_peak_rss_mb=reported_peak,
        extra=extra,
    )


_STAMP_KEYS = ("inference_start_ms", "prompt_eval_end_ms", "inference_end_ms", "first_token_ms",
               "model_load_start_ms", "model_load_end_ms")


def _observer_object(text: str, runtime: str, where: str) -> tuple[int, dict[str, Any]]:
    """(number of stats lines, the last one's JSON object with every required key)."""
    n_lines, raw = _find_observer_lines(text)
    if not n_lines:
        hint = ""
        errors = _ET_ERROR_RE.findall(text)
        if errors:
            hint = f"; last runner error: {snippet(errors[-1], 80)}"
        raise ParseError(
            f"{runtime}: no '{OBSERVER_TAG} {{...}}' stats line in the output "
            f"({len(text.strip())} chars; the runner prints it only after a finished generation){hint}"
        )
    position = f"line {n_lines} of {n_lines}" if n_lines > 1 else "line"
    if not raw:
        raise ParseError(f"{where} {position} is cut off right after the tag (no JSON object)")
    try:
        obj, _end = json.JSONDecoder().raw_decode(raw)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(raw.rstrip()) - 1 or "Unterminated" in exc.msg:
            raise ParseError(
                f"{where} {position} is cut off: its JSON object ends early ({len(raw)} chars: {snippet(raw, 50)})"
            ) from None
        raise ParseError(f"{where} {position} is not valid JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:
        raise ParseError(f"{where} {position} is not a stats object (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ParseError(f"{where} {position} holds a JSON {type(obj).__name__}, not an object")
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise ParseError(f"{where} JSON lacks key(s): {', '.join(missing)}")
    return n_lines, obj


def _scaling_factor(obj: dict[str, Any], where: str, warnings: list[str]) -> float:
    """Timestamp units per second (1000 when the key is absent, with a warning)."""
    if "SCALING_FACTOR_UNITS_PER_SECOND" not in obj:
        warnings.append("no SCALING_FACTOR_UNITS_PER_SECOND key: timestamps taken as milliseconds")
        return 1000
    scale = as_number(obj["SCALING_FACTOR_UNITS_PER_SECOND"], "SCALING_FACTOR_UNITS_PER_SECOND", where)
    if scale <= 0:
        raise ParseError(f"{where}: SCALING_FACTOR_UNITS_PER_SECOND must be > 0, got {scale}")
    return scale


def _span(a: float | None, b: float | None, label: str, to_ms: float, warnings: list[str]) -> float | None:
    """b - a in ms; None (with a warning) when negative."""
    if a is None or b is None:
        return None
    d = (b - a) * to_ms
    if d < 0:
        warnings.append(f"{label} span is negative ({d:g} ms): timestamps out of order, value dropped")
        return None
    return float(d)


def _timings(t: dict[str, float | None], prompt_tokens: int, generated_tokens: int, scale: float,
             warnings: list[str]) -> dict[str, float | None]:
    """The RunResult's spans, rates, TTFT and load time from the timestamps ``t``."""
    to_ms = 1000.0 / scale
    t_inf0, t_pe, t_inf1 = t["inference_start_ms"], t["prompt_eval_end_ms"], t["inference_end_ms"]
    t_first, t_load0, t_load1 = t["first_token_ms"], t["model_load_start_ms"], t["model_load_end_ms"]

    def rate(tokens: int, span_units: float | None, label: str) -> float | None:
        return token_rate(tokens, span_units, scale, label,
                          f"{label} span is 0 ms (below the 1 ms timer resolution): rate not computed", warnings)

    prefill_ms = _span(t_inf0, t_pe, "prefill", to_ms, warnings)
    decode_ms = _span(t_pe, t_inf1, "decode", to_ms, warnings)
    prefill_tok_s = rate(prompt_tokens, None if prefill_ms is None else (t_pe - t_inf0), "prefill")
    decode_tok_s = rate(generated_tokens, None if decode_ms is None else (t_inf1 - t_pe), "decode")

    ttft_ms = None
    if t_first is None:
        warnings.append("no first_token_ms key: TTFT unknown")
    else:
        ttft_ms = _span(t_inf0, t_first, "time-to-first-token", to_ms, warnings)

    load_ms = None
    if t_load0 is not None and t_load1 is not None:
        if t_load0 == 0 and t_load1 == 0:
            warnings.append("model load timestamps are both 0 (stats reset after warm-up by this runner): load time unknown")
        else:
            load_ms = _span(t_load0, t_load1, "model load", to_ms, warnings)
    return {"prefill_tok_s": prefill_tok_s, "decode_tok_s": decode_tok_s, "ttft_ms": ttft_ms, "load_ms": load_ms,
            "prefill_ms": prefill_ms, "decode_ms": decode_ms}


def _observer_extra(obj: dict[str, Any], n_lines: int, scale: float, where: str,
                    warnings: list[str]) -> dict[str, Any]:
    """``extra``: the object itself, the sampling time and the rates the runner printed."""
    extra: dict[str, Any] = {
        "observer_lines": n_lines,
        "observer": json_safe(obj),
        "scaling_factor_units_per_second": scale,
        "ttft_source": "first_token_ms - inference_start_ms (includes tokenization)",
    }
    if "aggregate_sampling_time_ms" in obj:
        try:
            extra["sampling_ms"] = (as_number(obj["aggregate_sampling_time_ms"], "aggregate_sampling_time_ms", where)
                                    * (1000.0 / scale))
        except ParseError as exc:
            warnings.append(exc.message)
    for key, out in (("prefill_token_per_sec", "reported_prefill_tok_s"), ("decode_token_per_sec", "reported_decode_tok_s")):
        if key in obj:
            try:
                extra[out] = float(as_number(obj[key], key, where))
            except ParseError as exc:
                warnings.append(exc.message)
    return extra


def _add_rss(text: str, extra: dict[str, Any], warnings: list[str]) -> float | None:
    """Put the "RSS after ..." values into ``extra``; return the largest nonzero one."""
    rss = parse_rss_lines(text)
    extra.update(rss["values"])
    extra["rss_lines"] = rss["lines"]
    warnings.extend(rss["warnings"])
    nonzero = [v for v in rss["values"].values() if v > 0]
    reported_peak = max(nonzero) if nonzero else None
    if rss["values"] and not nonzero:
        warnings.append("runner reports RSS 0 MiB: ru_maxrss unsupported on this platform")
    if reported_peak is not None:
        extra["reported_peak_rss_unit"] = "MiB (getrusage ru_maxrss: process peak so far)"
    return reported_peak


def parse_rss_lines(text: str) -> dict[str, Any]:
    """The runner's "RSS after ...: X MiB" log lines (last value of each kind).

    Returns ``{"values": {"rss_after_load_mib": ..., ...}, "lines": n, "warnings": [...]}``;
    kinds that never appear are absent from ``values``. Matches mid-line, since merged
    stdout/stderr can glue a log line to generated text.
    """
    text = coerce_text(text)
    values: dict[str, float] = {}
    warnings: list[str] = []
    n = 0
    for m in _RSS_RE.finditer(text):
        n += 1
        try:
            v = float(m.group(2))
        except ValueError:
            warnings.append(f"RSS line with a non-numeric value {snippet(m.group(2), 20)} ignored")
            continue
        if not math.isfinite(v) or v < 0:
            warnings.append(f"RSS line with an impossible value {m.group(2)} ignored")
            continue
        values[_RSS_KEYS[m.group(1)]] = v
    return {"values": values, "lines": n, "warnings": warnings}
