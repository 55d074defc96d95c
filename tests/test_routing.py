"""devprof.routing on hand-made traces: every number checked exactly."""

import json

import numpy as np
import pytest

from devprof.errors import UsageError
from devprof.routing import cumulative_expert_bytes, first_touch, load_trace, log_points, summarize

# 2 layers, 5 tokens, top-2, 4 experts
EXPERTS = np.array(
    [
        [[0, 1], [0, 1], [2, 0], [0, 1], [3, 2]],
        [[1, 2], [1, 2], [1, 2], [2, 1], [1, 2]],
    ],
    dtype=np.uint8,
)


def trace(**extra):
    return {"experts": EXPERTS, "n_experts": 4, "n_prompt": 3, **extra}


def test_summary_counts_exactly():
    s = summarize(trace())
    assert (s.n_layers, s.n_experts, s.top_k, s.n_tokens) == (2, 4, 2, 5)
    assert s.distinct_per_layer == [4, 2]
    assert s.distinct_pairs == 6
    assert s.expert_load == [[4, 3, 2, 1], [0, 5, 5, 0]]
    assert s.coverage_tokens == [1, 2, 3, 4, 5]
    assert s.coverage_distinct == [4, 4, 5, 5, 6]


def test_first_touch_marks_untouched_pairs_with_n_tokens():
    ft = first_touch(EXPERTS, 4)
    assert ft.tolist() == [[0, 0, 2, 4], [5, 0, 0, 5]]


def test_summary_from_npz_file_and_bare_array(tmp_path):
    p = tmp_path / "t.npz"
    np.savez_compressed(p, **trace(layer_block_bytes=np.array([100, 1000])))
    assert summarize(p) == summarize(trace())
    # a bare array: experts taken as max id + 1 unless told
    assert summarize(EXPERTS).n_experts == 4
    assert summarize(EXPERTS, n_experts=8).expert_load[0] == [4, 3, 2, 1, 0, 0, 0, 0]


def test_coverage_points_are_log_spaced_and_end_at_n_tokens():
    pts = log_points(8320, 64)
    assert pts[0] == 1 and pts[-1] == 8320
    assert np.all(np.diff(pts) > 0)
    assert 50 <= len(pts) <= 64
    ratios = pts[1:] / pts[:-1]
    assert ratios[-10:].max() < 1.2  # evenly spaced in log at the top end
    assert log_points(5).tolist() == [1, 2, 3, 4, 5]
    assert log_points(0).tolist() == []
    # a long trace: coverage evaluated at those points, monotone, ending at the total
    rng = np.random.default_rng(0)
    ex = rng.integers(0, 60, size=(3, 5000, 4)).astype(np.uint8)
    s = summarize({"experts": ex, "n_experts": 60}, points=64)
    assert s.coverage_tokens[-1] == 5000
    assert s.coverage_distinct[-1] == s.distinct_pairs
    assert all(a <= b for a, b in zip(s.coverage_distinct, s.coverage_distinct[1:]))


def test_cumulative_expert_bytes_from_trace_block_sizes():
    tokens, b = cumulative_expert_bytes(trace(layer_block_bytes=np.array([100, 1000])))
    assert tokens.tolist() == [1, 2, 3, 4, 5]
    # token 1: layer 0 experts 0, 1 (2 x 100) + layer 1 experts 1, 2 (2 x 1000)
    assert b.tolist() == [2200, 2200, 2300, 2300, 2400]


def test_cumulative_expert_bytes_from_layout(tmp_path):
    blocks = [
        {"layer": layer, "expert": e, "offset": 65536 * (4 * layer + e), "nbytes": 10 * (layer + 1) * (e + 1), "span": 65536}
        for layer in range(2)
        for e in range(4)
    ]
    layout = {"expert_blocks": blocks}
    _, b = cumulative_expert_bytes(trace(), layout)
    # layer 0: e0 10, e1 20 at t1; e2 30 at t3; e3 40 at t5. layer 1: e1 40, e2 60 at t1
    assert b.tolist() == [130, 130, 160, 160, 200]
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    assert cumulative_expert_bytes(trace(), tmp_path)[1].tolist() == b.tolist()  # a bundle folder
    with pytest.raises(UsageError):
        cumulative_expert_bytes(trace())  # no sizes anywhere


def test_bad_traces_are_usage_errors(tmp_path):
    with pytest.raises(UsageError):
        load_trace({"experts": EXPERTS, "n_experts": 3})  # id 3 with 3 experts
    with pytest.raises(UsageError):
        load_trace({"experts": EXPERTS[0]})  # 2-D
    with pytest.raises(UsageError):
        load_trace({"n_prompt": 3})
    with pytest.raises(UsageError):
        load_trace(tmp_path / "missing.npz")


def test_dense_trace_summarizes_to_zeros():
    s = summarize({"experts": np.zeros((3, 10, 0), np.uint8), "n_experts": 0})
    assert s.distinct_pairs == 0 and s.distinct_per_layer == [0, 0, 0]
    assert s.coverage_distinct == [0] * 10
    tokens, b = cumulative_expert_bytes({"experts": np.zeros((3, 10, 0), np.uint8), "n_experts": 0})
    assert len(tokens) == 10 and b.sum() == 0
