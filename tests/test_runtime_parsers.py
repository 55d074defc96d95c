"""Runtime adapters: argv builders, output parsers, registry, and garbled-input behaviour.

Fixtures live in tests/data/runtime_output/ (their provenance is in the README there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devprof.errors import ParseError, RuntimeFailed, UsageError
from devprof.results import RunResult
from devprof.runtimes import Invocation, RuntimeAdapter, get_adapter, known_runtimes, register
from devprof.runtimes import base as rt_base
from devprof.runtimes.executorch import (
    BenchmarkAppMetric,
    ExecuTorchAdapter,
    benchmark_app_run_result,
    parse_benchmark_results,
    parse_pytorch_observer,
    parse_rss_lines,
)
from devprof.runtimes.llamacpp import LlamaBenchRecord, LlamaCppAdapter, parse_llama_bench, parse_llama_perf

DATA = Path(__file__).parent / "data" / "runtime_output"


def fixture(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def one_line_error(exc_info) -> str:
    msg = exc_info.value.message
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# A well-formed stats line (current stats.h key order) used to build garbled variants.
GOOD = {
    "prompt_tokens": 100,
    "generated_tokens": 50,
    "model_load_start_ms": 1_000_000,
    "model_load_end_ms": 1_000_400,
    "inference_start_ms": 1_001_000,
    "inference_end_ms": 1_001_700,
    "prompt_eval_end_ms": 1_001_200,
    "first_token_ms": 1_001_210,
    "aggregate_sampling_time_ms": 5,
    "SCALING_FACTOR_UNITS_PER_SECOND": 1000,
}


def observer(**changes) -> str:
    d = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return "PyTorchObserver " + json.dumps(d, separators=(",", ":")) + "\n"


_DROP = object()


# ============================================================================================
# Registry


def test_registry_knows_builtin_adapters():
    assert {"executorch", "llamacpp"} <= set(known_runtimes())
    assert isinstance(get_adapter("executorch"), ExecuTorchAdapter)
    assert isinstance(get_adapter("llamacpp"), LlamaCppAdapter)
    assert isinstance(get_adapter(" ExecuTorch "), ExecuTorchAdapter)  # forgiving spelling
    assert get_adapter("executorch") is not get_adapter("executorch")  # fresh, stateless instances


def test_unknown_runtime_is_usage_error_listing_known_ones():
    with pytest.raises(UsageError) as ei:
        get_adapter("mlc")
    msg = one_line_error(ei)
    assert "'mlc'" in msg and "executorch" in msg and "llamacpp" in msg
    assert ei.value.exit_code == 2


def test_register_custom_adapter_and_reject_clashes():
    @register
    class Dummy(RuntimeAdapter):
        name = "dummy-test"

        def argv(self, inv):
            return [inv.binary]

        def parse(self, stdout, stderr=""):
            return RunResult(runtime=self.name)

    try:
        assert isinstance(get_adapter("dummy-test"), Dummy)
        assert register(Dummy) is Dummy  # re-registering the same class is harmless

        class Other(Dummy):
            name = "dummy-test"

        with pytest.raises(ValueError):
            register(Other)
    finally:
        rt_base._REGISTRY.pop("dummy-test", None)
    with pytest.raises(TypeError):
        register(object)  # type: ignore[arg-type]

    class Nameless(Dummy):
        name = ""

    with pytest.raises(ValueError):
        register(Nameless)


# ============================================================================================
# ExecuTorch argv


def et_inv(**kw) -> Invocation:
    base = dict(
        binary="/data/local/tmp/devprof/bin/llama_main",
        model_path="/data/local/tmp/devprof/models/Mobile MoE S/model.pte",
        tokenizer_path="/data/local/tmp/devprof/models/Mobile MoE S/tokenizer.model",
        prompt_file="/data/local/tmp/devprof/prompts/real 8192.txt",
        max_new_tokens=128,
        threads=4,
    )
    base.update(kw)
    return Invocation(**base)


def test_executorch_argv_default():
    argv = ExecuTorchAdapter().argv(et_inv())
    assert argv == [
        "/data/local/tmp/devprof/bin/llama_main",
        "--model_path=/data/local/tmp/devprof/models/Mobile MoE S/model.pte",
        "--tokenizer_path=/data/local/tmp/devprof/models/Mobile MoE S/tokenizer.model",
        "--prompt_file=/data/local/tmp/devprof/prompts/real 8192.txt",
        "--max_new_tokens=128",
        "--temperature=0",
        "--cpu_threads=4",
        "--ignore_eos",
    ]
    # each path with spaces is inside exactly one element
    assert sum("Mobile MoE S/model.pte" in a for a in argv) == 1
    assert all(isinstance(a, str) for a in argv)


def test_executorch_argv_options():
    argv = ExecuTorchAdapter().argv(
        et_inv(
            threads=-1,
            extra={
                "warmup": True,
                "data_paths": ["/d/a.ptd", "/d/b b.ptd"],
                "num_bos": 1,
                "num_eos": 0,
                "seq_len": 8320,
                "etdump_path": "/d/run.etdump",
                "method_name": "forward",
                "temperature": 0.7,
                "extra_args": ["--some_new_flag=1"],
                "unrelated_key": "ignored",
            },
        )
    )
    assert "--cpu_threads=-1" not in argv and not any(a.startswith("--cpu_threads") for a in argv)
    assert argv[5:] == [
        "--temperature=0.7",
        "--ignore_eos",
        "--warmup",
        "--data_paths=/d/a.ptd,/d/b b.ptd",
        "--num_bos=1",
        "--num_eos=0",
        "--seq_len=8320",
        "--etdump_path=/d/run.etdump",
        "--method_name=forward",
        "--some_new_flag=1",
    ]
    assert "--ignore_eos" not in ExecuTorchAdapter().argv(et_inv(extra={"ignore_eos": False}))


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(tokenizer_path=None), "tokenizer"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=True), "max_new_tokens"),
        (dict(threads=-2), "threads"),
        (dict(model_path=""), "model_path"),
        (dict(prompt_file="/a\nb"), "prompt_file"),
        (dict(extra={"data_paths": "/d/a,b.ptd"}), "comma"),
        (dict(extra={"warmup": "yes"}), "warmup"),
        (dict(extra={"num_bos": -1}), "num_bos"),
        (dict(extra={"temperature": -1}), "temperature"),
        (dict(extra={"extra_args": "--x --y"}), "extra_args"),
    ],
)
def test_executorch_argv_rejects_nonsense(kw, word):
    with pytest.raises(UsageError) as ei:
        ExecuTorchAdapter().argv(et_inv(**kw))
    assert word in one_line_error(ei)


# ============================================================================================
# ExecuTorch stats line: real and composed fixtures


def test_executorch_qnn_fixture_arithmetic():
    r = ExecuTorchAdapter().parse(fixture("executorch/qnn_llama32_pr7175.txt"))
    assert r.runtime == "executorch"
    assert (r.prompt_tokens, r.generated_tokens) == (31, 96)
    assert r.prefill_ms == 56.0 and r.decode_ms == 1778.0
    assert r.prefill_tok_s == 31 / 56 * 1000  # the runner's own log line says 553.571429
    assert r.decode_tok_s == 96 / 1778 * 1000  # ... and 53.993251
    assert round(r.prefill_tok_s, 6) == 553.571429 and round(r.decode_tok_s, 6) == 53.993251
    assert r.ttft_ms == 56.0 and r.load_ms == 887.0
    assert r.model_load_start_ms == 1736230916307.0
    assert r.inference_start_ms == 1736230917194.0
    assert r.prompt_eval_end_ms == 1736230917250.0
    assert r.first_token_ms == 1736230917250.0
    assert r.inference_end_ms == 1736230919028.0
    assert r.reported_peak_rss_mb is None and r.extra["rss_lines"] == 0
    assert r.extra["observer_lines"] == 1
    assert r.extra["sampling_ms"] == 71.0
    assert r.extra["observer"]["SCALING_FACTOR_UNITS_PER_SECOND"] == 1000
    assert "warnings" not in r.extra
    json.dumps(r.to_dict())  # the store can serialise it


def test_executorch_ci_fixture_two_lines_last_wins():
    r = parse_pytorch_observer(fixture("executorch/ci_stories110m_pr2776.txt"))
    assert r.extra["observer_lines"] == 2  # one inside the echo'd string, one printed
    assert (r.prompt_tokens, r.generated_tokens) == (2, 7)
    assert r.prefill_tok_s == 2 / 13 * 1000
    assert r.decode_tok_s == 7 / 153 * 1000
    assert r.ttft_ms == 25.0 and r.load_ms == 190.0


def test_executorch_composed_split_streams_with_rss():
    r = ExecuTorchAdapter().parse(
        fixture("executorch/xnnpack_warmup.stdout.txt"), fixture("executorch/xnnpack_warmup.stderr.txt")
    )
    assert (r.prompt_tokens, r.generated_tokens) == (1024, 127)
    assert r.prefill_ms == 1280.0 and r.prefill_tok_s == 800.0
    assert r.decode_ms == 1270.0 and r.decode_tok_s == 100.0
    assert r.ttft_ms == 1280.0 and r.load_ms == 912.0
    assert r.extra["reported_prefill_tok_s"] == 800.0 and r.extra["reported_decode_tok_s"] == 100.0
    assert r.extra["rss_after_load_mib"] == 1187.4375
    assert r.extra["rss_after_prefill_mib"] == 1402.5
    assert r.extra["rss_after_generation_mib"] == 1410.25
    assert r.reported_peak_rss_mb == 1410.25
    assert r.extra["rss_lines"] == 3


def test_rss_lines_glued_to_generated_text():
    text = fixture("executorch/rss_lora_base_model.txt")
    rss = parse_rss_lines(text)
    assert rss["lines"] == 3
    assert rss["values"] == {
        "rss_after_load_mib": 2227.761719,
        "rss_after_prefill_mib": 2227.761719,
        "rss_after_generation_mib": 2227.761719,
    }
    with pytest.raises(ParseError) as ei:  # RSS lines alone are not a result
        ExecuTorchAdapter().parse("", text)
    assert "PyTorchObserver" in one_line_error(ei)


def test_rss_zero_means_unsupported():
    text = observer() + "I 00:00:01.000000 executorch:text_llm_runner.cpp:92] RSS after loading model: 0.000000 MiB (0 if unsupported)\n"
    r = parse_pytorch_observer(text)
    assert r.reported_peak_rss_mb is None
    assert r.extra["rss_after_load_mib"] == 0.0
    assert any("unsupported" in w for w in r.extra["warnings"])


def test_reference_runtime_can_reuse_the_line_parser():
    # the reference runtime prints the same line; python's json.dumps spacing must parse too
    text = "generated text\nPyTorchObserver " + json.dumps(GOOD) + "\n"
    r = parse_pytorch_observer(text, runtime="reference")
    assert r.runtime == "reference"
    assert r.prefill_tok_s == 100 / 200 * 1000 and r.decode_tok_s == 50 / 500 * 1000
    assert r.ttft_ms == 210.0 and r.load_ms == 400.0


def test_observer_scaling_factor_other_than_ms():
    # timestamps in microseconds, SCALING_FACTOR_UNITS_PER_SECOND = 1e6
    us = {k: v * 1000 for k, v in GOOD.items() if k.endswith("_ms")}
    text = observer(**us, SCALING_FACTOR_UNITS_PER_SECOND=1_000_000)
    r = parse_pytorch_observer(text)
    assert r.prefill_ms == 200.0 and r.decode_ms == 500.0 and r.ttft_ms == 210.0 and r.load_ms == 400.0
    assert r.prefill_tok_s == 100 / 200_000 * 1_000_000
    assert r.inference_start_ms == 1_001_000.0


def test_observer_crlf_and_mid_line_tag():
    text = "tokens tokens I 00:00:01.0 executorch:x] log PyTorchObserver " + json.dumps(GOOD) + "\r\n"
    r = parse_pytorch_observer(text)
    assert r.prompt_tokens == 100


# ============================================================================================
# ExecuTorch: garbled / truncated


@pytest.mark.parametrize("text", ["", "   \n\n", "Once upon a time there was a little", b"", None])
def test_observer_missing_line(text):
    with pytest.raises(ParseError) as ei:
        ExecuTorchAdapter().parse(text)
    assert "no 'PyTorchObserver" in one_line_error(ei)


def test_observer_missing_line_names_last_runner_error():
    text = (
        "I 00:00:00.001000 executorch:main.cpp:100] Resetting threadpool with num threads = 4\n"
        "E 00:00:00.210000 executorch:main.cpp:130] Failed to create llama runner\n"
    )
    with pytest.raises(ParseError) as ei:
        ExecuTorchAdapter().parse("", text)
    assert "Failed to create llama runner" in one_line_error(ei)


def test_observer_tag_in_prose_is_not_a_stats_line():
    with pytest.raises(ParseError):
        parse_pytorch_observer("the PyTorchObserver line is printed at the end\n")


def test_observer_json_cut_in_the_middle():
    line = observer()
    with pytest.raises(ParseError) as ei:
        parse_pytorch_observer(line[: len(line) // 2])
    assert "cut off" in one_line_error(ei)
    with pytest.raises(ParseError) as ei:
        parse_pytorch_observer("PyTorchObserver \n")
    assert "cut off right after the tag" in one_line_error(ei)


def test_observer_last_of_several_cut_is_an_error_not_a_fallback():
    line = observer()
    with pytest.raises(ParseError) as ei:
        parse_pytorch_observer(line + line[:40])
    assert "line 2 of 2" in one_line_error(ei)


def test_observer_invalid_json():
    with pytest.raises(ParseError) as ei:
        parse_pytorch_observer('PyTorchObserver {"prompt_tokens":12,,"x":1} trailing\n')
    assert "not valid JSON" in one_line_error(ei)


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(prompt_tokens="abc"), ["prompt_tokens", "not a number"]),
        (dict(generated_tokens=True), ["generated_tokens", "not a number"]),
        (dict(generated_tokens=3.5), ["generated_tokens", "whole"]),
        (dict(prompt_tokens=-3), ["prompt_tokens", "negative"]),
        (dict(inference_end_ms=None), ["inference_end_ms", "not a number"]),
        (dict(SCALING_FACTOR_UNITS_PER_SECOND=0), ["SCALING_FACTOR_UNITS_PER_SECOND"]),
        (dict(inference_start_ms=_DROP, prompt_eval_end_ms=_DROP), ["inference_start_ms", "prompt_eval_end_ms"]),
    ],
)
def test_observer_bad_values_name_the_key(changes, words):
    with pytest.raises(ParseError) as ei:
        parse_pytorch_observer(observer(**changes))
    msg = one_line_error(ei)
    for w in words:
        assert w in msg


def test_observer_non_finite_value():
    text = observer().replace('"inference_end_ms":1001700', '"inference_end_ms":NaN')
    with pytest.raises(ParseError) as ei:
        parse_pytorch_observer(text)
    assert "inference_end_ms" in one_line_error(ei)


def test_observer_negative_spans_give_partial_result():
    # decode ends before it starts (wall clock set back): decode fields dropped, prefill kept
    r = parse_pytorch_observer(observer(inference_end_ms=1_001_100, first_token_ms=1_000_900))
    assert r.decode_ms is None and r.decode_tok_s is None
    assert r.ttft_ms is None
    assert r.prefill_ms == 200.0 and r.prefill_tok_s == 500.0
    assert sum("negative" in w for w in r.extra["warnings"]) == 2


def test_observer_zero_spans_and_zero_tokens():
    r = parse_pytorch_observer(observer(prompt_eval_end_ms=1_001_000, generated_tokens=0))
    assert r.prefill_ms == 0.0 and r.prefill_tok_s is None
    assert r.decode_ms == 700.0 and r.decode_tok_s is None
    ws = " | ".join(r.extra["warnings"])
    assert "0 ms" in ws and "0 tokens" in ws


def test_observer_load_timestamps_reset_after_warmup():
    r = parse_pytorch_observer(observer(model_load_start_ms=0, model_load_end_ms=0))
    assert r.load_ms is None
    assert any("load" in w for w in r.extra["warnings"])
    r = parse_pytorch_observer(observer(model_load_start_ms=_DROP, model_load_end_ms=_DROP, first_token_ms=_DROP))
    assert r.load_ms is None and r.ttft_ms is None and r.model_load_start_ms is None
    assert r.prefill_tok_s == 500.0


def test_observer_missing_scaling_factor_assumes_ms():
    r = parse_pytorch_observer(observer(SCALING_FACTOR_UNITS_PER_SECOND=_DROP))
    assert r.prefill_tok_s == 500.0
    assert any("SCALING_FACTOR" in w for w in r.extra["warnings"])


def test_observer_binary_junk():
    junk = bytes(range(256)) * 4
    with pytest.raises(ParseError):
        ExecuTorchAdapter().parse(junk, junk)
    # junk around a good line does not hide it
    r = ExecuTorchAdapter().parse(junk + observer().encode() + junk)
    assert r.prompt_tokens == 100


def test_observer_rejects_non_text():
    with pytest.raises(ParseError):
        parse_pytorch_observer(12345)  # type: ignore[arg-type]


# ============================================================================================
# Android benchmark app


def test_benchmark_app_results():
    metrics = parse_benchmark_results(fixture("executorch/benchmark_results.json"))
    assert len(metrics) == 9
    assert all(isinstance(m, BenchmarkAppMetric) for m in metrics)
    m = metrics[-1]
    assert (m.model, m.backend, m.quantization, m.metric, m.actual_value) == (
        "llama3_2", "xnnpack", "8da4w", "token_per_sec", 41.25,
    )
    assert m.device["arch"] == "SM-S931B"
    r = benchmark_app_run_result(metrics)
    assert r.runtime == "executorch"
    assert r.decode_tok_s == 41.25
    assert r.load_ms == 2411.5  # the LLM load time, not the first pass's model_load_time(ms)
    assert r.prefill_tok_s is None and r.prompt_tokens is None
    assert r.extra["app_metrics"]["generate_time(ms)"] == 9120.25
    assert r.extra["device_info"]["os"] == "Android 15"


def test_benchmark_app_results_first_shape():
    metrics = parse_benchmark_results(fixture("executorch/benchmark_results_v0.json").encode())
    assert [m.metric for m in metrics] == ["model_load_time(ms)", "generate_time(ms)"]
    assert metrics[0].device == {"device": "samsung", "arch": "SM-S901U1 / 12"}
    r = benchmark_app_run_result(metrics)
    assert r.load_ms == 247.0 and r.decode_tok_s is None


def test_benchmark_app_failures():
    def entry(model, metric, value):
        return {"benchmarkModel": {"name": model, "backend": "", "quantization": ""}, "metric": metric,
                "actualValue": value, "targetValue": 0, "deviceInfo": {}}

    failed = parse_benchmark_results(json.dumps([entry("m", "load_status", 18.0)]))
    with pytest.raises(RuntimeFailed) as ei:
        benchmark_app_run_result(failed)
    assert "load_status 18" in one_line_error(ei)
    two = parse_benchmark_results(json.dumps([entry("a", "token_per_sec", 5), entry("b", "token_per_sec", 7)]))
    with pytest.raises(UsageError):
        benchmark_app_run_result(two)
    assert benchmark_app_run_result(two, model="b").decode_tok_s == 7
    with pytest.raises(UsageError):
        benchmark_app_run_result(two, model="c")
    zero = benchmark_app_run_result(parse_benchmark_results(json.dumps([entry("a", "token_per_sec", 0)])))
    assert zero.decode_tok_s is None and zero.extra["warnings"]


@pytest.mark.parametrize(
    "text, word",
    [
        ("", "empty"),
        ("[]", "no metrics"),
        ('[{"benchmarkModel": {"name": "x"}, "metric": "token_per_sec", "actualValue": 4', "cut off"),
        ('[{"metric": "token_per_sec", "actualValue": 4}]', "benchmarkModel"),
        ('[{"benchmarkModel": {}, "metric": "token_per_sec", "actualValue": "fast"}]', "actualValue"),
        ('[{"benchmarkModel": {}, "metric": "token_per_sec"}]', "actualValue"),
        ('"hello"', "not a list"),
        ("\x00\x01garbage", "not valid JSON"),
    ],
)
def test_benchmark_app_garbled(text, word):
    with pytest.raises(ParseError) as ei:
        parse_benchmark_results(text)
    assert word in one_line_error(ei)


# ============================================================================================
# llama.cpp argv


def ll_inv(**kw) -> Invocation:
    base = dict(
        binary="/data/local/tmp/devprof/bin/llama-completion",
        model_path="/sdcard/My Models/olmoe 1b-7b q4_0.gguf",
        tokenizer_path=None,
        prompt_file="/data/local/tmp/devprof/prompts/templated 8192.txt",
        max_new_tokens=256,
        threads=4,
    )
    base.update(kw)
    return Invocation(**base)


def test_llamacpp_argv_default():
    argv = LlamaCppAdapter().argv(ll_inv())
    assert argv == [
        "/data/local/tmp/devprof/bin/llama-completion",
        "-m", "/sdcard/My Models/olmoe 1b-7b q4_0.gguf",
        "-f", "/data/local/tmp/devprof/prompts/templated 8192.txt",
        "-n", "256",
        "--temp", "0",
        "--ignore-eos",
        "-no-cnv",
        "--no-display-prompt",
        "-t", "4",
    ]


def test_llamacpp_argv_options():
    argv = LlamaCppAdapter().argv(
        ll_inv(
            threads=-1,
            tokenizer_path="/ignored/tokenizer.json",
            extra={"ctx_size": 8448, "batch_size": 512, "ubatch_size": 128, "n_gpu_layers": 0, "seed": 42,
                   "warmup": False, "mmap": False, "conversation": None, "display_prompt": True,
                   "extra_args": ["--mlock"]},
        )
    )
    assert "-t" not in argv and "/ignored/tokenizer.json" not in argv
    assert argv[7:] == [
        "--temp", "0", "--ignore-eos",
        "-c", "8448", "-b", "512", "-ub", "128", "-ngl", "0", "-s", "42",
        "--no-warmup", "--no-mmap", "--mlock",
    ]


@pytest.mark.parametrize(
    "kw",
    [dict(max_new_tokens=-1), dict(binary=""), dict(extra={"ctx_size": "8k"}), dict(extra={"conversation": "no"}),
     dict(extra={"mmap": 0}), dict(extra={"extra_args": [1]})],
)
def test_llamacpp_argv_rejects_nonsense(kw):
    with pytest.raises(UsageError):
        LlamaCppAdapter().argv(ll_inv(**kw))


# ============================================================================================
# llama.cpp perf block


def test_llamacpp_perf_context_fixture():
    r = LlamaCppAdapter().parse("", fixture("llamacpp/perf_context_orangepi_issue34.txt"))
    assert r.runtime == "llamacpp"
    assert (r.prompt_tokens, r.generated_tokens) == (8, 127)
    assert r.prefill_ms == 4245.68 and r.decode_ms == 124973.60
    assert r.prefill_tok_s == 8 / 4245.68 * 1000
    assert r.decode_tok_s == 127 / 124973.60 * 1000
    assert round(r.prefill_tok_s, 2) == 1.88 and round(r.decode_tok_s, 2) == 1.02  # what llama.cpp printed
    assert r.ttft_ms == 4245.68 and "approximation" in r.extra["ttft_source"]
    assert r.load_ms == 4450.58
    assert r.extra["total_ms"] == 129561.47 and r.extra["total_tokens"] == 135
    assert r.extra["sampling_ms"] == 170.97 and r.extra["sampling_runs"] == 136
    assert r.extra["perf_prefix"] == "llama_perf_context_print"
    assert "missing" not in r.extra and "warnings" not in r.extra
    assert r.inference_start_ms is None  # llama.cpp prints no timestamps


def test_llamacpp_perf_interrupted_fixture_on_stdout():
    r = LlamaCppAdapter().parse(fixture("llamacpp/perf_context_interrupted_issue9013.txt"))
    assert (r.prompt_tokens, r.generated_tokens) == (49, 178)
    assert r.decode_tok_s == 178 / 14085.85 * 1000


def test_llamacpp_common_perf_print_fixture():
    r = parse_llama_perf(fixture("llamacpp/common_perf_pr17382.txt"))
    assert r.extra["perf_prefix"] == "common_perf_print"
    assert (r.prompt_tokens, r.generated_tokens) == (8, 511)
    assert r.prefill_tok_s == 8 / 19.04 * 1000 and r.decode_tok_s == 511 / 4852.86 * 1000
    assert r.load_ms == 1226.89
    assert r.extra["sampling_ms"] == 70.90 and "sampling_runs" not in r.extra
    assert r.extra["samplers_ms"] == 45.40 and r.extra["samplers_runs"] == 520
    assert r.extra["unaccounted_ms"] == 3.18 and r.extra["graphs_reused"] == 508
    assert r.extra["total_tokens"] == 519


def test_llamacpp_print_timings_fixtures():
    r = parse_llama_perf(fixture("llamacpp/print_timings_issue2237.txt"))
    assert r.extra["perf_prefix"] == "llama_print_timings"
    assert (r.prompt_tokens, r.generated_tokens) == (271, 510)
    assert r.load_ms == 907.71 and r.extra["total_ms"] == 121963.55 and "total_tokens" not in r.extra
    assert r.extra["sampling_ms"] == 301.80 and r.extra["sampling_runs"] == 512
    r = parse_llama_perf(fixture("llamacpp/print_timings_llama_cpp_python_issue1830.txt"))
    assert r.load_ms is None and r.extra["missing"] == ["load time"]
    assert r.prefill_tok_s == 13 / 14805.69 * 1000 and r.decode_tok_s == 32 / 3430.58 * 1000


def test_llamacpp_zero_prompt_time_and_missing_eval_line():
    r = parse_llama_perf(fixture("llamacpp/perf_zero_prompt_time_cut_issue1830.txt"))
    assert r.prompt_tokens == 13 and r.prefill_ms == 0.0 and r.prefill_tok_s is None
    assert r.decode_tok_s is None and r.decode_ms is None and r.generated_tokens is None
    assert r.load_ms == 14788.07
    assert r.extra["missing"] == ["eval time", "total time"]
    assert any("0 ms for 13 tokens" in w for w in r.extra["warnings"])


def test_llamacpp_log_prefixes_and_two_blocks():
    first = fixture("llamacpp/perf_context_orangepi_issue34.txt")
    second = "".join(
        f"0.05.{i:03d}.000 I {line}\n" for i, line in enumerate(fixture("llamacpp/common_perf_pr17382.txt").splitlines())
    )
    r = parse_llama_perf("generated text\n" + first + "more text\n" + second)
    assert r.extra["perf_blocks"] == 2
    assert (r.prompt_tokens, r.generated_tokens) == (8, 511)  # the last block


@pytest.mark.parametrize("text", ["", "\n", "hello world\n", "prompt eval time = 12.0 ms / 3 tokens\n", b"\xff\xfe\x00"])
def test_llamacpp_no_perf_block(text):
    with pytest.raises(ParseError) as ei:
        LlamaCppAdapter().parse(text)
    assert "no llama.cpp perf lines" in one_line_error(ei)


def test_llamacpp_block_with_only_sampler_line():
    with pytest.raises(ParseError) as ei:
        parse_llama_perf("llama_perf_sampler_print:    sampling time =      24.62 ms /   227 runs\n")
    assert "neither" in one_line_error(ei)


def test_llamacpp_non_numeric_values():
    text = fixture("llamacpp/perf_context_orangepi_issue34.txt")
    with pytest.raises(ParseError) as ei:
        parse_llama_perf(text.replace("4245.68 ms", "4,245.68 ms"))
    assert "prompt eval time" in one_line_error(ei)
    with pytest.raises(ParseError) as ei:
        parse_llama_perf(text.replace("/   127 runs", "/   many runs"))
    assert "eval time" in one_line_error(ei)
    # a garbled non-essential line only warns
    r = parse_llama_perf(text.replace("4450.58 ms", "n/a ms"))
    assert r.load_ms is None and any("load time" in w for w in r.extra["warnings"])


def test_llamacpp_missing_prompt_eval_line():
    text = "\n".join(ln for ln in fixture("llamacpp/perf_context_orangepi_issue34.txt").splitlines() if "prompt eval" not in ln)
    r = parse_llama_perf(text)
    assert r.prefill_tok_s is None and r.prompt_tokens is None and r.ttft_ms is None
    assert r.decode_tok_s == 127 / 124973.60 * 1000
    assert r.extra["missing"] == ["prompt eval time"]


# ============================================================================================
# llama-bench


def check_b5163(records: list[LlamaBenchRecord], pp_avg_ns: int, tg_avg_ts: float) -> None:
    assert len(records) == 2
    pp, tg = records
    assert pp.kind == "prefill" and pp.is_prefill and not pp.is_decode and pp.label == "pp512"
    assert tg.kind == "decode" and tg.is_decode and tg.label == "tg128"
    assert (pp.n_prompt, pp.n_gen, pp.n_depth) == (512, 0, 0)
    assert pp.avg_ns == pp_avg_ns and tg.avg_ts == tg_avg_ts
    assert len(pp.samples_ns) == 5 and len(tg.samples_ts) == 5
    assert pp.model_size == 4677120000 and pp.model_n_params == 7615616512
    assert pp.n_threads == 8 and pp.use_mmap is True and pp.load_mode is None
    assert pp.build_commit == "8cf427ff" and pp.build_number == 5163
    assert pp.cpu_info == "AMD Ryzen 7 7800X3D 8-Core Processor" and pp.backends == "CUDA"
    assert pp.raw["split_mode"] == "layer"


def test_llama_bench_json_fixture():
    recs = parse_llama_bench(fixture("llamacpp/bench_readme_b5163.json"), "json")
    check_b5163(recs, 72135640, 118.881588)
    pp = recs[0]
    assert pp.avg_ms == 72.13564 and pp.test_time == "2025-04-24T11:58:50Z"
    assert pp.samples_ns[0] == 74601900 and pp.samples_ts[-1] == 7237.21
    d = pp.to_dict()
    assert d["kind"] == "prefill" and d["samples_ns"][0] == 74601900
    json.dumps(d)


def test_llama_bench_jsonl_fixture_and_auto():
    text = fixture("llamacpp/bench_readme_b5163.jsonl")
    check_b5163(parse_llama_bench(text, "jsonl"), 70497220, 119.844681)
    check_b5163(parse_llama_bench(text, "auto"), 70497220, 119.844681)
    check_b5163(parse_llama_bench(fixture("llamacpp/bench_readme_b5163.json"), "auto"), 72135640, 118.881588)


def test_llama_bench_current_schema_with_noise_line():
    recs = parse_llama_bench(fixture("llamacpp/bench_android_load_mode.json"))
    pp, tg = recs
    assert pp.load_mode == "mmap" and pp.use_mmap is None
    assert pp.label == "pp512 @ d4096" and tg.label == "tg128 @ d4096"
    assert pp.n_depth == 4096 and pp.n_gpu_layers == -1
    assert tg.avg_ts == 25.265617 and tg.samples_ns == (5120000000, 5000000000, 5080000000)
    assert pp.raw["tensor_buft_overrides"] == "none"


def test_llama_bench_mixed_and_derived_values():
    rec = {"n_prompt": 64, "n_gen": 16, "samples_ns": [1_000_000_000, 3_000_000_000], "future_field": float("nan")}
    (r,) = parse_llama_bench(json.dumps(rec) + "\n", "jsonl")
    assert r.raw["future_field"] is None  # kept, but strict-JSON safe
    json.dumps(r.to_dict(), allow_nan=False)
    assert r.kind == "mixed" and r.label == "pp64+tg16"
    assert r.avg_ns == 2_000_000_000 and r.n_depth == 0
    assert r.avg_ts == 80 * 1e9 / 2_000_000_000  # from avg_ns when no samples_ts
    assert r.model_size is None and r.build_commit is None


def test_llama_bench_truncated():
    text = fixture("llamacpp/bench_readme_b5163.json")
    cut = text[: text.index('"n_gen": 128')]
    with pytest.raises(ParseError) as ei:
        parse_llama_bench(cut, "json")
    assert "cut off" in one_line_error(ei)
    assert [r.label for r in parse_llama_bench(cut, "json", allow_partial=True)] == ["pp512"]
    no_close = text.rstrip()[:-1]  # complete records, missing only the closing bracket
    with pytest.raises(ParseError):
        parse_llama_bench(no_close, "json")
    assert len(parse_llama_bench(no_close, "json", allow_partial=True)) == 2
    with pytest.raises(ParseError) as ei:
        parse_llama_bench(text[:200], "json", allow_partial=True)  # nothing complete
    assert "no record is complete" in one_line_error(ei)

    lines = fixture("llamacpp/bench_readme_b5163.jsonl")
    cut = lines[: len(lines) - 100]
    with pytest.raises(ParseError) as ei:
        parse_llama_bench(cut, "jsonl")
    assert "cut off" in one_line_error(ei)
    assert len(parse_llama_bench(cut, "jsonl", allow_partial=True)) == 1


@pytest.mark.parametrize(
    "text, fmt, word",
    [
        ("", "json", "empty"),
        ("", "jsonl", "empty"),
        ("ggml_vulkan: Found 1 Vulkan devices:\n", "json", "no JSON array"),
        ("ggml_vulkan: Found 1 Vulkan devices:\n", "jsonl", "no JSON record"),
        ("[\n\n]\n", "json", "empty"),
        ('[\n  {"n_prompt": 512, "n_gen": 0, "avg_ns": 5}\n  {"n_prompt": 0}\n]', "json", "expected ','"),
        ('{"n_prompt": 512, "n_gen": 0, "avg_ns": 5, }\n{"n_prompt": 1, "n_gen": 0, "avg_ns": 5}\n', "jsonl", "line 1"),
        ('{"n_prompt": 512, "avg_ns": 5}\n', "jsonl", "n_gen"),
        ('{"n_prompt": 512, "n_gen": 0, "avg_ns": "slow"}\n', "jsonl", "avg_ns"),
        ('{"n_prompt": 512, "n_gen": 0, "avg_ns": 0}\n', "jsonl", "avg_ns"),
        ('{"n_prompt": 512, "n_gen": 0}\n', "jsonl", "no timing"),
        ('{"n_prompt": 0, "n_gen": 0, "avg_ns": 5}\n', "jsonl", "not a test"),
        ('{"n_prompt": 8, "n_gen": 0, "avg_ns": 5, "samples_ns": "x"}\n', "jsonl", "samples_ns"),
        ('{"n_prompt": 8, "n_gen": 0, "avg_ns": 5, "avg_ts": -1}\n', "jsonl", "negative"),
    ],
)
def test_llama_bench_garbled(text, fmt, word):
    with pytest.raises(ParseError) as ei:
        parse_llama_bench(text, fmt)
    assert word in one_line_error(ei)


def test_llama_bench_bad_format_name():
    with pytest.raises(UsageError):
        parse_llama_bench("[]", "csv")


# ============================================================================================
# Fuzz: no parser may raise anything but ParseError (or return a well-typed result)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text_or_bytes = st.one_of(st.text(max_size=400), st.binary(max_size=400))


def _fixture_mutations():
    texts = [
        observer(),
        fixture("executorch/qnn_llama32_pr7175.txt"),
        fixture("llamacpp/perf_context_orangepi_issue34.txt"),
        fixture("llamacpp/common_perf_pr17382.txt"),
        fixture("llamacpp/bench_readme_b5163.jsonl"),
        fixture("llamacpp/bench_android_load_mode.json"),
        fixture("executorch/benchmark_results.json"),
    ]
    return st.tuples(
        st.sampled_from(texts), st.integers(0, 5000), st.integers(0, 5000), st.text(max_size=8)
    ).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[3] + t[0][t[2] % (len(t[0]) + 1):])


fuzz_input = st.one_of(text_or_bytes, _fixture_mutations())


def _run_all_parsers(data):
    for fn in (
        lambda d: ExecuTorchAdapter().parse(d, d),
        lambda d: parse_pytorch_observer(d, runtime="reference"),
        lambda d: LlamaCppAdapter().parse(d),
        parse_llama_perf,
    ):
        try:
            r = fn(data)
        except ParseError as exc:
            assert "\n" not in exc.message
        else:
            assert isinstance(r, RunResult)
            json.dumps(r.to_dict(), allow_nan=False)
    for fmt in ("json", "jsonl", "auto"):
        for partial in (False, True):
            try:
                recs = parse_llama_bench(data, fmt, allow_partial=partial)
            except ParseError as exc:
                assert "\n" not in exc.message
            else:
                assert recs and all(isinstance(r, LlamaBenchRecord) for r in recs)
    try:
        metrics = parse_benchmark_results(data)
    except ParseError as exc:
        assert "\n" not in exc.message
    else:
        assert metrics and all(isinstance(m, BenchmarkAppMetric) for m in metrics)
    assert isinstance(parse_rss_lines(data)["values"], dict)


@FUZZ
@given(fuzz_input)
def test_fuzz_parsers_never_crash(data):
    _run_all_parsers(data)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(sorted(GOOD) + ["prefill_token_per_sec", "gpu_total_bytes"]),
        st.one_of(st.integers(-10**12, 10**15), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                  st.booleans(), st.none(), st.lists(st.integers(), max_size=2)),
    )
)
def test_fuzz_observer_json_values(d):
    line = "PyTorchObserver " + json.dumps(d) + "\n"
    try:
        r = parse_pytorch_observer(line)
    except ParseError as exc:
        assert "\n" not in exc.message
    else:
        for v in (r.prefill_tok_s, r.decode_tok_s, r.prefill_ms, r.decode_ms, r.ttft_ms, r.load_ms):
            assert v is None or v >= 0
        json.dumps(r.to_dict(), allow_nan=False)
