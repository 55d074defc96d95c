"""`devprof bench`: the figures it prints, end to end on the minis, and their arithmetic."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from devprof.bench import TARGETS, _time_v_maxrss, table_rows, verdict
from devprof.cli import cli

ISSUE_KEYS = ["decode_efficiency_moe", "decode_efficiency_dense", "prefill_efficiency_moe",
              "prefill_efficiency_dense", "moe_decode_speedup", "active_bytes_ratio",
              "llamacpp_decode_ratio_moe", "llamacpp_decode_ratio_dense", "q4_moe_decode_speedup",
              "q4_prefill_speedup", "sampler_overhead", "samples_peak_over_vmhwm", "vmhwm_over_time_v"]


def test_verdicts_say_by_how_much():
    assert verdict(0.82, ">=", 0.8) == "met"
    assert verdict(0.6, ">=", 0.8) == "missed by 25%"
    assert verdict(0.004, "<=", 0.01) == "met"
    assert verdict(0.03, "<=", 0.01) == "missed: 0.030 > 0.01"
    assert verdict(1.01, "~", 1.0) == "met" and verdict(1.2, "~", 1.0) == "off by 20.0%"
    assert verdict(None, ">=", 0.8) == "not measured" and verdict(2.9, "", None) == ""
    rows = {r[0]: r for r in table_rows({"decode_efficiency_moe": 0.4, "moe_decode_speedup": 2.5,
                                         "vmhwm_over_time_v": None})}
    assert rows["decode_efficiency_moe"] == ("decode_efficiency_moe", "0.400", ">= 0.8", "missed by 50%")
    assert rows["moe_decode_speedup"][2:] == ("", "")
    assert rows["vmhwm_over_time_v"][1:] == ("n/a", "~ 1", "not measured")
    assert set(TARGETS) <= set(ISSUE_KEYS) | {"moe_decode_speedup_over_bytes_ratio", "sampler_cpu_share_of_runtime_cores"}


def test_a_figure_whose_ci_spans_its_target_says_so():
    rows = {r[0]: r for r in table_rows({"sampler_overhead": 0.035, "sampler_overhead_ci": [-0.08, 0.15],
                                         "samples_peak_over_vmhwm": 1.0})}
    assert rows["sampler_overhead"][3] == "missed: 0.035 > 0.01; 95% CI -0.080…0.150 spans the target"
    assert rows["samples_peak_over_vmhwm"][3] == "met"
    tight = table_rows({"sampler_overhead": 0.035, "sampler_overhead_ci": [0.02, 0.05]})
    assert tight[0][3] == "missed: 0.035 > 0.01"


def test_time_v_parser():
    err = "\tCommand being timed: \"x\"\n\tMaximum resident set size (kbytes): 438252\n\tExit status: 0\n"
    assert _time_v_maxrss(err) == 438252
    assert _time_v_maxrss("Maximum resident set size (kbytes): lots") is None
    assert _time_v_maxrss("") is None


@pytest.mark.timeout(900)
def test_bench_quick_prints_every_figure_then_one_json_line():
    pytest.importorskip("gguf")  # the llamacpp extra: devprof's GGUF export for its native runner
    # one thread: the native llama.cpp runner is built without OpenMP, and ggml's spinning barrier
    # collapses when its threads outnumber the idle cores of this shared 2-core machine (README)
    res = CliRunner().invoke(cli, ["bench", "--quick", "--context", "64", "--new-tokens", "8", "--reps", "1",
                                   "--sampler-pairs", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    fig = json.loads(lines[-1])
    for key in ISSUE_KEYS:
        assert key in fig, key
        assert "│ " + key in res.output or key in ("moe_decode_speedup", "active_bytes_ratio")
    for key in ("decode_efficiency_moe", "decode_efficiency_dense", "prefill_efficiency_moe",
                "prefill_efficiency_dense", "llamacpp_decode_ratio_moe", "q4_moe_decode_speedup"):
        assert 0.0 < fig[key] < 10.0, (key, fig[key])
    assert fig["gemv_read_gb_s"] > 0 and fig["gemm_gflop_s"] > 0
    assert fig["active_bytes_ratio"] == pytest.approx(4.2, abs=0.1)  # catalog arithmetic, minis
    # the measurements must agree with the kernel: the sampled peak reaches VmHWM, and the VmHWM
    # devprof reports is what /usr/bin/time -v reports for the same command
    assert 0.9 <= fig["samples_peak_over_vmhwm"] <= 1.01
    if os.path.exists("/usr/bin/time"):
        assert 0.95 <= fig["vmhwm_over_time_v"] <= 1.05, (fig["vmhwm_runs_kb"], fig["time_v_runs_kb"])
    assert len(fig["sampler_overhead_pairs"]) == 2
    # the sampler thread's own CPU: a few tens of microseconds per 10 ms sample
    assert 0.0 < fig["sampler_cpu_share_of_runtime_cores"] < 0.05


def test_bench_refuses_a_context_the_models_do_not_have():
    res = CliRunner().invoke(cli, ["bench", "--quick", "--context", "10000000", "--no-llamacpp"])
    assert res.exit_code != 0
    assert "--context 10000000" in res.output and "Traceback" not in res.output
