"""The ExecuTorch Android benchmark app (``minibench``): its ``benchmark_results.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from devprof.errors import ParseError, RuntimeFailed, UsageError
from devprof.results import RunResult
from devprof.runtimes.base import as_number, coerce_text, fmt_num, json_safe

__all__ = ["BenchmarkAppMetric", "parse_benchmark_results", "benchmark_app_run_result"]


@dataclass(frozen=True)
class BenchmarkAppMetric:
    """One entry of the app's ``benchmark_results.json`` (a Gson dump of ``BenchmarkMetric``).

    ``model``/``backend``/``quantization`` come from the app splitting the .pte file name
    ``NAME_BACKEND_QUANT``; both are "" when the name did not match that pattern.
    ``device`` is the app's ``deviceInfo`` (``device`` = Build.BRAND, ``arch`` = Build.MODEL,
    ``os``, ``totalMem``/``availMem``: read from an unfilled MemoryInfo, so usually 0).
    """

    model: str
    backend: str
    quantization: str
    metric: str
    actual_value: float
    target_value: float
    device: dict[str, Any] = field(default_factory=dict)


def parse_benchmark_results(text: str | bytes) -> list[BenchmarkAppMetric]:
    """Parse ``benchmark_results.json`` into a list of :class:`BenchmarkAppMetric`.

    Accepts the current shape (``benchmarkModel``, ``metric``, ``actualValue``,
    ``targetValue``, ``deviceInfo``) and the first one (pytorch/executorch#5332: ``actual``,
    ``target``, ``device``, ``arch`` at top level). A list of metrics comes back rather than a
    RunResult because the file mixes models and metric kinds; use
    :func:`benchmark_app_run_result` to fold one model's metrics into a RunResult.
    """
    try:
        return _read_metrics(coerce_text(text, "benchmark_results.json"))
    except ParseError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError) as exc:  # pragma: no cover - defensive
        raise ParseError(f"benchmark_results.json could not be read ({type(exc).__name__})") from exc


def _read_metrics(text: str) -> list[BenchmarkAppMetric]:
    raw = text.strip().lstrip("\ufeff")
    where = "benchmark_results.json"
    if not raw:
        raise ParseError(f"{where} is empty")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        cut = exc.pos >= len(raw) - 1 or "Unterminated" in exc.msg
        raise ParseError(
            f"{where} is {'cut off' if cut else 'not valid JSON'} ({exc.msg} at char {exc.pos})"
        ) from None
    except RecursionError:
        raise ParseError(f"{where} is nested too deeply to be a metric list") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ParseError(f"{where} holds a JSON {type(data).__name__}, not a list of metrics")
    if not data:
        raise ParseError(f"{where} holds no metrics (the app writes it even when the run failed)")
    return [_metric(item, f"{where} entry {i}") for i, item in enumerate(data, 1)]


def _metric(item: Any, w: str) -> BenchmarkAppMetric:
    """One entry of the file, in either shape."""
    if not isinstance(item, dict):
        raise ParseError(f"{w} is a JSON {type(item).__name__}, not an object")
    bm = item.get("benchmarkModel")
    if not isinstance(bm, dict):
        raise ParseError(f"{w} lacks a benchmarkModel object")
    if not isinstance(item.get("metric"), str) or not item["metric"]:
        raise ParseError(f"{w} lacks a metric name")
    if "actualValue" in item:
        actual = as_number(item["actualValue"], "actualValue", w)
        target = as_number(item.get("targetValue", 0), "targetValue", w)
        device = item.get("deviceInfo") if isinstance(item.get("deviceInfo"), dict) else {}
    elif "actual" in item:
        actual = as_number(item["actual"], "actual", w)
        target = as_number(item.get("target", 0), "target", w)
        device = {k: item[k] for k in ("device", "arch", "os") if k in item}
    else:
        raise ParseError(f"{w} ({item['metric']}) lacks actualValue")
    return BenchmarkAppMetric(
        model=str(bm.get("name", "")),
        backend=str(bm.get("backend", "") or ""),
        quantization=str(bm.get("quantization", "") or ""),
        metric=item["metric"],
        actual_value=float(actual),
        target_value=float(target),
        device=json_safe(dict(device)),
    )


def benchmark_app_run_result(metrics: list[BenchmarkAppMetric], model: str | None = None) -> RunResult:
    """Fold one model's app metrics into a RunResult (runtime "executorch").

    ``token_per_sec`` is the app's decode rate (generated_tokens / (inference_end_ms -
    prompt_eval_end_ms) from the observer stats) and fills ``decode_tok_s``;
    ``llm_model_load_time(ms)`` (or ``model_load_time(ms)``) fills ``load_ms`` (measured by the
    app around module load). The app reports nothing for prefill, TTFT or token counts.
    ``generate_time(ms)`` and every other metric go to ``extra["app_metrics"]``. A nonzero
    ``load_status`` raises :class:`RuntimeFailed`. With metrics of several models in the list,
    ``model`` must name one.
    """
    models = sorted({m.model for m in metrics})
    if not metrics:
        raise ParseError("benchmark_results.json: no metrics to fold")
    if model is None:
        if len(models) > 1:
            raise UsageError(f"benchmark results hold several models ({', '.join(models)}); name one")
        model = models[0]
    chosen = [m for m in metrics if m.model == model]
    if not chosen:
        raise UsageError(f"benchmark results have no model {model!r}; they have: {', '.join(models)}")
    values = {m.metric: m.actual_value for m in chosen}
    status = values.get("load_status")
    if status is not None and status != 0:
        raise RuntimeFailed(f"benchmark app: model {model!r} failed to load (load_status {fmt_num(status)})")
    load = values.get("llm_model_load_time(ms)", values.get("model_load_time(ms)"))
    tps = values.get("token_per_sec")
    extra: dict[str, Any] = {
        "source": "benchmark_results.json (Android benchmark app)",
        "model": model,
        "backend": chosen[0].backend,
        "quantization": chosen[0].quantization,
        "device_info": chosen[0].device,
        "app_metrics": values,
    }
    if tps is not None and tps <= 0:
        extra["warnings"] = [f"token_per_sec is {tps}: no decode rate (the app leaves 0 when it saw no stats)"]
        tps = None
    return RunResult(runtime="executorch", decode_tok_s=tps, load_ms=load, extra=extra)
