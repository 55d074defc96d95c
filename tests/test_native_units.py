"""Unit tests for the native runner's glue: its output lines, CPU-variant choice, cpuinfo parsing."""

from __future__ import annotations

import pytest

from devprof import bins
from devprof.errors import ParseError, UsageError
from devprof.runtimes.llamacpp import add_runner_lines, parse_llama_perf, parse_runner_lines

PERF = """llama_perf_context_print:        load time =      10.00 ms
llama_perf_context_print: prompt eval time =      20.00 ms /    40 tokens (    0.50 ms per token,  2000.00 tokens per second)
llama_perf_context_print:        eval time =      30.00 ms /     3 runs   (   10.00 ms per token,   100.00 tokens per second)
"""
LINES = """devprof_residency: {"stage": "before_load", "resident_kb": 0, "file_kb": 100, "evicted": true}
devprof_tokens: {"prefill_start_ms": 0, "prefill_end_ms": 20.5, "threads": 2, "token_ms": [21.0, 31.0, 41.5, 52.0]}
devprof_residency: {"stage": "exit", "resident_kb": 100, "file_kb": 100, "evicted": true}
devprof_status: {"VmHWM": 2048, "VmRSS": 1024, "RssAnon": 512, "RssFile": 512, "VmSwap": 0}
"""


def test_runner_lines_fold_into_the_result():
    r = add_runner_lines(parse_llama_perf(PERF + LINES), PERF + LINES)
    assert r.ttft_ms == 21.0 and r.extra["token_stamp_ms"] == [21.0, 31.0, 41.5, 52.0]
    assert r.extra["token_ms"] == [10.0, 10.5, 10.5]  # inter-token ms per decode step: what stats read
    assert r.extra["token_latency_ms"] == {"p50": 10.5, "p90": 10.5, "p99": 10.5}
    import numpy as np

    from devprof.runtimes.llamacpp import _percentile

    gaps = [3.0, 1.0, 7.5, 2.0, 9.0, 4.0]
    for q in (50, 90, 99):
        assert _percentile(gaps, q) == round(float(np.percentile(gaps, q)), 3)
    assert r.reported_peak_rss_mb == 2.0 and r.extra["runner_status_kb"]["RssFile"] == 512
    assert [x["stage"] for x in r.extra["residency"]] == ["before_load", "exit"]
    assert r.extra["threads"] == 2 and r.extra["prefill_wall_ms"] == 20.5
    # other llama.cpp programs print none of these: the result is untouched
    plain = parse_llama_perf(PERF)
    assert add_runner_lines(plain, PERF).extra == parse_llama_perf(PERF).extra and plain.ttft_ms == 20.0


@pytest.mark.parametrize("bad", [
    'devprof_tokens: {"token_ms": [3, 2]}',
    'devprof_tokens: {"token_ms": "x"}',
    'devprof_tokens: {"token_ms": [1, -1]}',
    'devprof_status: {"VmHWM": -5}',
    'devprof_status: {"VmHWM": "12 kB"}',
    'devprof_status: {"VmHWM": 1',
])
def test_bad_runner_lines_are_parse_errors(bad):
    if bad.endswith("1"):  # not a complete JSON object: not a runner line at all
        assert parse_runner_lines(bad) == {}
        return
    with pytest.raises(ParseError):
        parse_runner_lines(bad)


def test_cpuinfo_flags_arm_and_x86():
    arm = "processor\t: 0\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm aes crc32 asimdhp asimddp i8mm fphp\n"
    x86 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f\n"
    assert {"asimddp", "i8mm"} <= bins.cpuinfo_flags(arm)
    assert "avx512f" in bins.cpuinfo_flags(x86)
    assert bins.cpuinfo_flags(x86, ("features",)) is None  # an x86 cpuinfo says nothing about arm64
    assert bins.cpuinfo_flags("") is None


def _manifest(tmp_path):
    m = tmp_path / "manifest.toml"
    for name, feats in (("base", "asimd"), ("best", "asimd asimddp i8mm fphp asimdhp")):
        f = tmp_path / name
        f.write_bytes(name.encode())
        bins.add(f, "llamacpp", "android", "arm64-v8a", name=name, manifest=m)
        e = bins.load(m)
        for b in e:
            if b.name == name:
                b.cpu_features = feats
        bins.save(e, m)
    return m


def test_variant_choice_by_cpu_features(tmp_path):
    m = _manifest(tmp_path)
    pick = lambda flags: bins.select("llamacpp", "android", "arm64-v8a", manifest=m, cpu_flags=flags).name  # noqa: E731
    assert pick({"fp", "asimd", "asimddp", "i8mm", "fphp", "asimdhp"}) == "best"  # an S25 core
    assert pick({"fp", "asimd"}) == "base"  # a Cortex-A53 phone
    assert pick(None) == "best"  # unknown features: the most capable
    with pytest.raises(UsageError, match="runs on this CPU"):
        pick({"fp"})
