"""`devprof compare`'s analysis: templated vs real with confidence intervals, coverage, load entropy,
per-category coverage, the join of routing and memory, the projection; the compare HTML in Chromium."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.support import factories as F
from tests.support.chromium import plot_divs, render_in_chromium
from devprof import routing as R
from devprof import stats
from devprof.analysis import compare as C
from devprof.analysis import coverage as cov
from devprof.analysis import projection as P
from devprof.analysis.artifacts import Trace, load_rep_trace, prompt_segments
from devprof.report.terminal_compare import compare_renderables, to_text
from devprof.analysis.join import WeightLayout, join, pair_times, weight_layout
from devprof.catalog import get_model
from devprof.errors import DevprofError, UsageError
from devprof.report.html import CompareHTMLRenderer
from devprof.results import MemorySample, RunRecord

EVIL = "<script>alert(1)</script>"


# ---- helpers --------------------------------------------------------------------------------------
def synthetic_experts(workload: str, n_tokens: int, n_layers: int = 6, n_experts: int = 60, k: int = 4,
                      seed: int = 0) -> np.ndarray:
    """Routing like a skewed router: templated repeats a short period of tokens, real does not."""
    rng = np.random.default_rng(seed + (0 if workload.startswith("templated") else 1000))
    skew = 1.5 if workload.startswith("templated") else 0.3
    period = 24 if workload.startswith("templated") else n_tokens
    logw = np.stack([-skew * np.log1p(rng.permutation(n_experts)) for _ in range(n_layers)])
    g = rng.gumbel(size=(period, n_layers, n_experts))
    chosen = np.argsort(-(logw[None] + g), axis=2)[:, :, :k]  # (period, L, k)
    chosen = np.tile(chosen, (int(np.ceil(n_tokens / period)), 1, 1))[:n_tokens]
    return np.ascontiguousarray(chosen.transpose(1, 0, 2)).astype(np.uint8)  # (L, T, k)


def with_traces(record: RunRecord, folder: Path, segments_for: str | None = None) -> RunRecord:
    """Give every MoE repetition a routing trace on disk (and a matching summary), as a real run has."""
    record.meta.artifacts_dir = str(folder)
    block = get_model(F.MOE).expert_params * 4
    for rep in record.repetitions:
        if rep.routing is None:
            continue
        n_prompt = rep.context
        T = rep.context + record.meta.new_tokens - 1
        ex = synthetic_experts(rep.workload, T, seed=0)
        rel = f"{rep.model}/{rep.workload}-c{rep.context}/{'w' if rep.warmup else 'r'}{rep.index}/routing.npz"
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, experts=ex, n_prompt=np.int64(n_prompt), n_experts=np.int64(60), top_k=np.int64(4),
                            layer_block_bytes=np.full(6, block, dtype=np.int64),
                            block_nbytes=np.full((6, 60), block, dtype=np.int64))
        rep.routing = R.summarize(path)
        rep.artifacts = {**rep.artifacts, "routing": rel}
    if segments_for:
        from devprof import workloads as wl

        ctx = record.contexts()[0]
        prompt = wl.build_prompt(segments_for, ctx, seed=0)
        (folder / "prompts").mkdir(parents=True, exist_ok=True)
        (folder / "prompts" / f"{segments_for}-c{ctx}.ids").write_text("\n".join(map(str, prompt.token_ids)) + "\n")
    return record


@pytest.fixture(scope="module")
def record() -> RunRecord:
    return F.make_record(contexts=(1024,), new_tokens=16)


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> RunRecord:
    rec = F.make_record(contexts=(1024,), new_tokens=16)
    return with_traces(rec, tmp_path_factory.mktemp("run"), segments_for="real")


@pytest.fixture(scope="module")
def report(traced):
    return C.compare(traced)


# ---- templated vs real ----------------------------------------------------------------------------
def test_headline_states_the_understatement_with_a_ci(record):
    rep = C.compare(record)
    assert [m.model for m in rep.models] == [F.MOE]  # the dense baseline is not compared
    mc = rep.models[0]
    assert mc.templated == "templated" and [p.real for p in mc.pairs] == ["real"]
    d = mc.primary.deltas["peak_rss_mb"]
    assert d.clear and d.pct > 0
    lo, hi = d.pct_ci
    assert lo <= d.pct <= hi and lo > 0
    # the same figure straight from the statistics module
    t_vals = [stats.rep_value(r, "peak_rss_mb") for r in record.measured(F.MOE, "templated")]
    r_vals = [stats.rep_value(r, "peak_rss_mb") for r in record.measured(F.MOE, "real")]
    assert d.pct == pytest.approx((1 - stats.ratio_ci(t_vals, r_vals).estimate) * 100)
    gm = lambda v: math.exp(sum(math.log(x) for x in v) / len(v))  # noqa: E731
    assert d.pct == pytest.approx((1 - gm(t_vals) / gm(r_vals)) * 100)  # ratio of the geometric means
    head = mc.headline
    assert head.startswith("templated prompts understate MobileMoE-S-mini's peak memory by ")
    assert f"{d.pct:.1f}% (95% CI {lo:.1f}–{hi:.1f}%)" in head
    assert "cache cold" in head and "1024 tokens" in head
    assert rep.headlines == [head]


def test_no_verdict_when_the_interval_includes_zero(record):
    reps = [replace(r) for r in record.repetitions]
    real = {r.index: r for r in reps if (r.model, r.workload, r.warmup) == (F.MOE, "real", False)}
    for r in reps:  # templated memory := the real memory of another repetition: no difference
        if (r.model, r.workload, r.warmup) == (F.MOE, "templated", False):
            r.outcome = real[(r.index + 1) % 3].outcome
    rec = RunRecord(meta=record.meta, repetitions=reps)
    mc = C.compare(rec).models[0]
    d = mc.primary.deltas["peak_rss_mb"]
    assert not d.clear
    assert "is not clear at n=3" in mc.headline and "understate" not in mc.headline.split("(")[0]
    text = to_text(compare_renderables(C.compare(rec)), width=200)
    assert "not clear" in text


def test_understatement_touching_zero_is_never_clear(record):
    # the bug report: "0.0%, 95% CI 0.0-2.7%, clear: yes". Templated peaks within a hair of real
    reps = [replace(r, outcome=replace(r.outcome)) for r in record.repetitions]
    real = {r.index: r for r in reps if (r.model, r.workload, r.warmup) == (F.MOE, "real", False)}
    peak = real[0].outcome.peak_rss_kb
    for r in reps:
        if (r.model, r.workload, r.warmup) == (F.MOE, "real", False):
            r.outcome.peak_rss_kb = peak + (r.index == 1)
        if (r.model, r.workload, r.warmup) == (F.MOE, "templated", False):
            r.outcome.peak_rss_kb = peak - 2 - (r.index == 1)  # a few kB lower: 0.00x%
    rec = RunRecord(meta=record.meta, repetitions=reps)
    d = C.compare(rec).models[0].primary.deltas["peak_rss_mb"]
    assert d.ratio.excludes(1.0)  # in floating point it does...
    assert d.pct_text() == "0.0%" and not d.clear  # ...but not as printed: no claim
    assert d.ci_text().startswith("0.0–")


def test_single_repetition_cannot_be_judged():
    rec = F.make_record(reps=1, warmup=0, contexts=(512,), new_tokens=8)
    mc = C.compare(rec).models[0]
    assert mc.primary.deltas["peak_rss_mb"].degenerate
    assert "cannot be judged at n=1" in mc.headline


def test_cv_above_five_percent_is_warned(record):
    reps = [replace(r, outcome=replace(r.outcome)) for r in record.repetitions]
    for r in reps:
        if r.model == F.MOE and r.workload == "real" and not r.warmup:
            r.outcome.peak_rss_kb = int(r.outcome.peak_rss_kb * (1.0, 1.3, 0.7)[r.index])
            r.result = replace(r.result, decode_tok_s=r.result.decode_tok_s * (1.0, 1.3, 0.7)[r.index])
    rep = C.compare(RunRecord(meta=record.meta, repetitions=reps))
    assert any("CV above 5%" in w and "peak RSS" in w and "· real ·" in w for w in rep.warnings)
    assert not any("decode" in w for w in rep.warnings)  # compare compares memory: speed's CV is diff's business
    assert not any("· templated ·" in w for w in rep.warnings)


def test_run_without_moe_or_reps_or_routing(record):
    meta, reps = F.make_run(models=(F.DENSE,), reps=2, warmup=0, contexts=(512,), new_tokens=8)
    dense_only = RunRecord(meta=meta, repetitions=reps)
    with pytest.raises(DevprofError, match="has no MoE model"):
        C.compare(dense_only)
    assert "has no MoE model" in C.compare(dense_only, strict=False).messages[0]
    empty = F.make_record(limit=0, status="interrupted")
    with pytest.raises(UsageError, match="no measured repetitions"):
        C.compare(empty)
    # a runtime that emits no routing: memory still compared, one line says what is missing
    reps = [replace(r, routing=None) for r in record.repetitions]
    meta = replace(record.meta, runtime="executorch")
    rep = C.compare(RunRecord(meta=meta, repetitions=reps))
    assert any(m.startswith("no routing data for MobileMoE-S-mini") for m in rep.messages)
    mc = rep.models[0]
    assert mc.pairs and not mc.routing and not mc.joins and not mc.projections
    assert mc.primary.deltas["distinct_experts"].ratio is None


def test_summary_only_routing_without_the_run_folder(record):
    rep = C.compare(record)  # factories' run has no artifacts on disk
    mc = rep.models[0]
    assert {v.workload: v.source for v in mc.routing} == {"templated": "summary", "real": "summary"}
    assert all(v.layer_curves is None and not v.categories for v in mc.routing)
    assert [j.source for j in mc.joins] == ["summary", "summary"]  # from the coverage curve x block size
    assert any("not in the run folder" in m for m in rep.messages)


# ---- routing from the traces ---------------------------------------------------------------------
def test_per_layer_coverage_from_the_trace(report, traced):
    mc = report.models[0]
    v = mc.routing_for("real")
    assert v.source == "trace" and v.layer_curves is not None and len(v.layer_curves) == 6
    rep = next(r for r in traced.measured(F.MOE, "real"))
    trace = load_rep_trace(traced.meta, rep)
    assert [c[-1] for c in v.layer_curves] == rep.routing.distinct_per_layer
    overall = R.coverage(trace.experts, 60, np.asarray(v.coverage_tokens))
    assert v.coverage_distinct == [int(x) for x in overall]
    for curve in v.layer_curves:
        assert curve == sorted(curve) and curve[-1] <= 60
    t = mc.routing_for("templated")
    assert t.distinct.median < v.distinct.median  # templated routes to fewer experts


def test_load_entropy():
    even = cov.load_stats([[5] * 8])[0]
    assert even.normalized == pytest.approx(1.0) and even.effective == pytest.approx(8.0)
    one = cov.load_stats([[0, 12, 0, 0]])[0]
    assert one.normalized == 0.0 and one.effective == pytest.approx(1.0) and one.top_share == 1.0
    half = cov.load_stats([[3, 3, 0, 0]])[0]
    assert half.entropy_bits == pytest.approx(1.0) and half.touched == 2
    assert cov.load_stats([[0, 0]])[0].slots == 0
    shares = cov.load_shares([[1, 3, 0, 4]])[0]
    assert shares == [0.5, 0.375, 0.125, 0.0]


def test_entropy_lower_for_templated(report):
    mc = report.models[0]
    assert mc.routing_for("templated").mean_normalized_entropy < mc.routing_for("real").mean_normalized_entropy


def test_per_category_coverage(report, traced):
    v = report.models[0].routing_for("real")
    assert [c.category for c in v.categories] == ["code", "math", "prose"]
    segs = prompt_segments(traced.meta, "real", 1024)
    assert sum(c.n_tokens for c in v.categories) == sum(min(b, 1024) - a for a, b, _ in segs)
    trace = load_rep_trace(traced.meta, traced.measured(F.MOE, "real")[0])
    for c in v.categories:
        idx = np.concatenate([np.arange(a, min(b, 1024)) for a, b, cat in segs if cat == c.category])
        assert c.per_layer == [len(np.unique(trace.experts[layer, idx])) for layer in range(6)]
    # ids that do not match the stored prompt: no segments rather than wrong ones
    bad = replace(traced.meta, settings={**traced.meta.settings, "seed": 7})
    assert prompt_segments(bad, "real", 1024) is None
    assert prompt_segments(traced.meta, "templated", 1024) is None


# ---- the join -------------------------------------------------------------------------------------
def _toy_trace() -> Trace:
    ex = np.zeros((2, 10, 1), dtype=np.uint8)
    ex[0, :, 0] = [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]  # layer 0 touches experts 0..3 at tokens 0, 2, 4, 6
    ex[1, :, 0] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # layer 1: expert 0 at token 0, expert 1 at token 9 (decode)
    mib = 1 << 20
    return Trace(experts=ex, n_prompt=8, n_experts=4, top_k=1, block_nbytes=np.full((2, 4), mib, dtype=np.int64),
                 path="toy")


def test_pair_times_layer_and_token_order():
    tr = _toy_trace()
    first = R.first_touch(tr.experts, 4)
    spans = [("prefill", 1.0, 9.0), ("decode", 9.0, 11.0)]
    tok = pair_times(first, spans, 8, 10, "tokens")
    lay = pair_times(first, spans, 8, 10, "layers")
    assert tok[0, 0] == pytest.approx(2.0)  # token 0 done at 1 + 1/8 * 8
    assert lay[0, 0] == pytest.approx(1.0 + 8 * (1 / 8) / 2)  # layer 0 takes the first half of prefill
    assert lay[1, 0] == pytest.approx(1.0 + 8 * (1 + 1 / 8) / 2)  # layer 1 the second
    assert lay[0, 3] < lay[1, 0]  # every layer-0 expert before any layer-1 one
    assert tok[1, 1] == lay[1, 1] == pytest.approx(9.0 + 2.0 * 2 / 2)  # decode: the 2nd of 2 steps
    assert math.isinf(tok[1, 2])  # never touched


def test_join_residency_equal_to_routing_reads_as_following_it():
    tr = _toy_trace()
    mib = 1 << 20
    layout = WeightLayout(dense_bytes=3 * mib, block_bytes=np.full((2, 4), mib, dtype=np.int64), source="toy",
                          layer_dense_bytes=[mib, mib], head_bytes=mib)
    rep = F.make_rep(F.MOE, "real", 8, 0, new_tokens=3)
    r = rep.result
    t0 = rep.outcome.start_wall_ms
    rep.result = replace(r, model_load_start_ms=t0, inference_start_ms=t0 + 1000, prompt_eval_end_ms=t0 + 9000,
                         first_token_ms=t0 + 9000, inference_end_ms=t0 + 11000)
    # RssFile: 50 MiB of libraries, then exactly what routing predicts, sampled every 100 ms
    base = 50 * 1024
    rep.outcome = replace(rep.outcome, wall_ms=12000)  # the spans must fall within the process's lifetime
    probe = join(rep, tr, layout, "rep 1", alignment="layers")
    ts, pred = probe.curves["layers"]
    samples = []
    for i in range(0, 121):
        t = i / 10.0
        k = int(np.searchsorted(ts, t, side="right"))
        grown = pred[k - 1] if k > 0 and t >= 1.0 else 0.0
        samples.append(MemorySample(t_ms=t * 1000, rss_kb=0, anon_kb=0, file_kb=int(base + grown * 1024)))
    rep.outcome = replace(rep.outcome, samples=samples, wall_ms=12000)
    j = join(rep, tr, layout, "rep 1", alignment="layers")
    assert j.alignment == "layers" and set(j.curves) == {"layers", "tokens"}
    assert j.baseline_mib == pytest.approx(50.0)
    assert j.experts_mib == pytest.approx(6.0) and j.all_experts_mib == pytest.approx(8.0)
    assert j.dense_mib == pytest.approx(3.0) and j.predicted_mib == pytest.approx(9.0)
    assert j.observed_mib == pytest.approx(9.0, abs=0.01) and j.ratio == pytest.approx(1.0, abs=0.01)
    assert j.verdict() == "residency follows routing"
    j.calibration_mib = 0.5
    assert j.verdict().startswith("residency follows routing (the +0 MiB")
    j.calibration_mib = -20.0
    assert "more than routing and the dense model's overhead explain" in j.verdict()
    assert max(abs(a - b) for a, b in zip(j.join_predicted_mib, j.join_growth_mib)) < 0.01


def test_join_on_stored_runs(report, record):
    mc = report.models[0]
    assert {j.workload for j in mc.joins} == {"templated", "real"}
    for j in mc.joins:
        assert j.source == "trace" and j.alignment == "layers" and j.cache_state == "cold"
        lay = weight_layout(F.MOE)
        assert j.dense_mib == pytest.approx(lay.dense_bytes / 2**20)
        assert j.all_experts_mib == pytest.approx(lay.block_bytes.sum() / 2**20)
        assert 0 < j.experts_mib <= j.all_experts_mib and j.observed_mib > 0
        assert j.calibration_mib is not None  # the dense baseline's RssFile growth beyond its weights
    templ, real = (next(j for j in mc.joins if j.workload == w) for w in ("templated", "real"))
    assert templ.experts_mib < real.experts_mib


# ---- projection ----------------------------------------------------------------------------------
def test_projection_arithmetic():
    spec = get_model("mobilemoe-s")
    assert P.resident_bytes("mobilemoe-s", [1.0] * 6) == pytest.approx(spec.weight_bytes("int4"), rel=1e-6)
    assert P.resident_bytes("mobilemoe-s", [0.0] * 6) == pytest.approx(P.dense_bytes("mobilemoe-s"))
    assert P.layer_map(6, 20) == [j * 6 // 20 for j in range(20)] and P.layer_map(6, 20)[-1] == 5
    half = P.resident_bytes("mobilemoe-l", [0.5] * 3)
    assert half == pytest.approx((P.dense_bytes("mobilemoe-l") + spec.weight_bytes("int4") * 0 +
                                  get_model("mobilemoe-l").weight_bytes("int4")) / 2, rel=1e-6)
    with pytest.raises(ValueError):
        P.resident_bytes("mobilellm-pro", [1.0])


def test_projection_in_the_report(report):
    mc = report.models[0]
    by = {(p.target, p.workload): p for p in mc.projections}
    assert {t for t, _ in by} == set(P.TARGETS)
    for target in P.TARGETS:
        t, r = by[(target, "templated")], by[(target, "real")]
        assert t.dense_gib < t.resident_gib.median < r.resident_gib.median <= r.all_gib + 1e-9
        assert t.coverage < r.coverage <= 1.0
    assert "same fraction of each layer's routed experts" in report.assumption and "INT4" in report.assumption


# ---- output ---------------------------------------------------------------------------------------
def test_terminal_output(report):
    text = to_text(compare_renderables(report), width=160)
    assert "MobileMoE-S-mini at 1024 tokens of context" in text
    assert "→ Templated prompts understate MobileMoE-S-mini's peak memory by" in text
    assert "page cache cold on both sides" in text  # the cache state with every memory figure
    assert "cache cold" in text.split("Join:")[1].split("Projection")[0]
    for part in ("Routing: distinct (layer, expert) pairs", "By category within the real prompt",
                 "Join: RssFile growth", "Projection: INT4 weights resident", "MobileMoE-L", "Per layer (of 60",
                 "Projection: the full-size model touches the same fraction"):
        assert part in text, part


def test_json_is_plain_and_complete(report):
    d = C.to_dict(report)
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["format"] == "devprof.compare/1"
    m = d["models"][0]
    assert list(m) == ["model", "display", "context", "templated", "headline", "pairs", "routing", "join",
                       "projection", "notes"]
    peak = m["pairs"][0]["metrics"]["peak_rss_mb"]
    assert peak["clear"] and peak["understatement_ci"][0] <= peak["understatement_pct"] <= peak["understatement_ci"][1]
    assert len(m["routing"][0]["coverage_per_layer"]) == 6 and m["routing"][1]["categories"]
    assert {p["target"] for p in m["projection"]} == set(P.TARGETS)
    assert m["join"][0]["alignment"] == "layers"


def test_compare_html_runs_in_chromium_and_escapes(traced, tmp_path):
    meta = replace(traced.meta, note=EVIL, device=replace(traced.meta.device, name="phone " + EVIL))
    rec = RunRecord(meta=meta, repetitions=traced.repetitions)
    page = CompareHTMLRenderer().render(C.compare(rec))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for text in ("Templated vs real prompts", "Coverage: MobileMoE-S-mini at 1024 tokens", "Expert load",
                 "Routing joined with memory", "projection-assumption", "Every measured repetition"):
        assert text in page, text
    path = tmp_path / "compare.html"
    path.write_text(page, encoding="utf-8")
    dom, errors = render_in_chromium(path)
    assert errors == []
    divs = plot_divs(dom)
    assert len(divs) == 4 and all(n >= 1 for n in divs.values()), divs


def test_mixed_cache_states_are_shown_per_figure(record):
    reps = [replace(r) for r in record.repetitions]
    for r in reps:
        if (r.model, r.workload, r.index, r.warmup) == (F.MOE, "real", 2, False):
            r.cache_state = "warm"
    rep = C.compare(RunRecord(meta=record.meta, repetitions=reps))
    p = rep.models[0].primary
    assert p.cache_real == ["cold", "warm"] and "cache cold/warm" in p.sentence()
    text = to_text(compare_renderables(rep), width=120)
    assert "page-cache state in brackets" in text and "(cold/warm)" in text and "(cold)" in text


def test_moe_without_measured_repetitions_says_so():
    rec = F.make_record(reps=2, warmup=0, contexts=(512,), new_tokens=8,
                        fail={(F.MOE, w, i) for w in ("templated", "real") for i in range(2)}, status="failed")
    rep = C.compare(rec)
    assert rep.models == [] and rep.messages[0].startswith("no measured repetitions of MobileMoE-S-mini")
    assert "nothing to compare" in to_text(compare_renderables(rep))
