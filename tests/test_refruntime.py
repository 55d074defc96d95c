"""The reference runtime: bundles, engine correctness, lazy residency, the process entry.

Tiny shapes (dataclasses.replace of the minis) for the equivalences; the MoE mini itself only
for the subprocess tests (residency, end to end at 256 tokens).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from devprof import REPO_ROOT
from devprof.catalog import get_model
from devprof.runtimes.reference.bundle import (
    EXPERT_ALIGN,
    TENSOR_ALIGN,
    build_bundle,
    bundle_dir,
    load_config,
    spec_from_config,
    tensor_plan,
    verify_manifest,
)
from devprof.runtimes.reference.engine import EPS, Engine
from devprof.routing import summarize
from devprof.runtimes.base import Invocation, get_adapter

MOE_MINI = get_model("mobilemoe-s-mini")
DENSE_MINI = get_model("mobilellm-pro-mini")

TINY_MOE = dataclasses.replace(
    MOE_MINI, name="tiny-moe", n_layers=2, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16,
    vocab=512, max_context=256, n_experts=8, expert_ffn=32, top_k=2, shared_ffn=64,
)
TINY_MOE_SOFTMAX = dataclasses.replace(
    TINY_MOE, name="tiny-moe-softmax", gate="softmax", qk_norm=False, n_shared=0, shared_ffn=0,
    tied_embeddings=False, top_k=3,
)
TINY_DENSE = dataclasses.replace(
    DENSE_MINI, name="tiny-dense", n_layers=3, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16,
    vocab=512, ffn=96, max_context=256, sliding_window=8, global_layers=(2,),
)
TINY = {s.name: s for s in (TINY_MOE, TINY_MOE_SOFTMAX, TINY_DENSE)}

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def engines(cache) -> dict[str, Engine]:
    return {name: Engine(build_bundle(spec, 0, cache)) for name, spec in TINY.items()}


@pytest.fixture(scope="session")
def moe_mini(cache) -> Path:
    return build_bundle(MOE_MINI, 0, cache)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- bundles ---------------------------------------------------------------------------------


def test_bundle_is_deterministic_per_seed(cache, tmp_path):
    a = build_bundle(TINY_MOE, 0, cache)
    b = build_bundle(TINY_MOE, 0, tmp_path / "other")
    c = build_bundle(TINY_MOE, 1, cache)
    assert _sha(a / "weights.bin") == _sha(b / "weights.bin")
    assert _sha(a / "weights.bin") != _sha(c / "weights.bin")
    cfg = load_config(a)
    assert cfg["bundle_id"] == load_config(b)["bundle_id"] != load_config(c)["bundle_id"]
    assert spec_from_config(cfg) == TINY_MOE
    man = json.loads((a / "manifest.json").read_text())
    assert man["files"]["weights.bin"]["sha256"] == _sha(a / "weights.bin")
    assert set(man["files"]) == {"weights.bin", "layout.json", "config.json", "tokenizer.json"}
    assert verify_manifest(a) == []
    assert (a / "tokenizer.json").read_bytes() == (REPO_ROOT / "workloads" / "tokenizer.json").read_bytes()
    # the bytes are pinned: a change to layout or init must come with a new FORMAT_VERSION
    assert man["files"]["weights.bin"]["sha256"].startswith(GOLDEN_TINY_MOE_SHA[:16])


GOLDEN_TINY_MOE_SHA = "aa8f99cdc619cf34eeb5f097719ed8b468654c86e3927a5a58bb06c84e8fc1b2"


def test_bundle_is_cached_and_rebuilt_when_incomplete(cache):
    a = build_bundle(TINY_DENSE, 0, cache)
    mtime = (a / "weights.bin").stat().st_mtime_ns
    assert build_bundle(TINY_DENSE, 0, cache) == a
    assert (a / "weights.bin").stat().st_mtime_ns == mtime  # not rebuilt
    # an interrupted build leaves a .tmp-* folder; a half bundle has no manifest
    stale = a.parent / (a.name + ".tmp-dead")
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"junk")
    (a / "manifest.json").unlink()
    assert build_bundle(TINY_DENSE, 0, cache) == a
    assert not stale.exists()
    assert verify_manifest(a) == []
    # catalog shapes get the plain name; test shapes a hash suffix
    assert bundle_dir(MOE_MINI, 3, cache).name == "mobilemoe-s-mini-s3-v2"
    assert bundle_dir(TINY_DENSE, 0, cache).name.startswith("tiny-dense-s0-v2-")


@pytest.mark.parametrize("spec", [TINY_MOE, MOE_MINI, get_model("mobilemoe-s"), get_model("olmoe-1b-7b")],
                         ids=lambda s: s.name)
def test_every_expert_block_is_aligned_and_contiguous(spec):
    plan = tensor_plan(spec)
    tensors = plan["tensors"]
    assert all(t["offset"] % TENSOR_ALIGN == 0 for t in tensors.values())
    blocks = plan["expert_blocks"]
    assert len(blocks) == spec.n_layers * spec.n_experts
    ranges = sorted((t["offset"], t["offset"] + t["nbytes"], n) for n, t in tensors.items())
    for (s0, e0, n0), (s1, _, n1) in zip(ranges, ranges[1:]):
        assert e0 <= s1, f"{n0} overlaps {n1}"
    for b in blocks:
        p = f"layers.{b['layer']}.experts.{b['expert']}."
        w13, w2 = tensors[p + "w13"], tensors[p + "w2"]
        assert b["offset"] % EXPERT_ALIGN == 0 and b["span"] % EXPERT_ALIGN == 0
        assert w13["offset"] == b["offset"] and w2["offset"] == b["offset"] + w13["nbytes"]
        assert b["nbytes"] == w13["nbytes"] + w2["nbytes"] == 4 * spec.expert_params <= b["span"]
        # nothing else lives in the block's span (so residency is per expert)
        inside = [n for s, e, n in ranges if s < b["offset"] + b["span"] and e > b["offset"]]
        assert sorted(inside) == [p + "w13", p + "w2"]
    assert plan["file_size"] >= 4 * spec.total_params


# ---- engine correctness ----------------------------------------------------------------------


def naive_forward(eng: Engine, ids: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every position's logits, in float64, the plain way: explicit attention masks (causal and
    sliding window), K/V repeated per query head, rotate-half RoPE, every token through every
    expert with a dense gate matrix. Returns (logits [T, vocab], chosen experts per layer)."""
    sp = eng.spec
    f64 = torch.float64
    T = len(ids)
    H, KV, hd = sp.n_heads, sp.n_kv_heads, sp.head_dim

    def rms(t, w):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + EPS) * w

    ang = torch.arange(T, dtype=f64)[:, None] / sp.rope_theta ** (torch.arange(0, hd, 2, dtype=f64) / hd)
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]

    def rope(t):
        a, b = t[..., : hd // 2], t[..., hd // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    def ffn(h, w13, w2):
        f = w2.shape[1]
        g = h @ w13.to(f64).T
        return (torch.nn.functional.silu(g[:, :f]) * g[:, f:]) @ w2.to(f64).T

    x = eng.tok_embeddings.to(f64)[torch.tensor(ids)]
    t_idx, s_idx = torch.arange(T)[:, None], torch.arange(T)[None, :]
    chosen = []
    for i, L in enumerate(eng.layers):
        h = rms(x, L.attn_norm.to(f64))
        W = L.wqkv.to(f64)
        q = (h @ W[: H * hd].T).view(T, H, hd)
        k = (h @ W[H * hd:(H + KV) * hd].T).view(T, KV, hd)
        v = (h @ W[(H + KV) * hd:].T).view(T, KV, hd)
        if sp.qk_norm:
            q = rms(q, eng._t(f"layers.{i}.q_norm").to(f64))
            k = rms(k, eng._t(f"layers.{i}.k_norm").to(f64))
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
        allowed = s_idx <= t_idx
        if not sp.is_global(i):
            allowed &= s_idx > t_idx - sp.sliding_window
        p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
        o = torch.einsum("hts,shd->thd", p, v).reshape(T, H * hd)
        x = x + o @ L.wo.to(f64).T
        h = rms(x, L.ffn_norm.to(f64))
        if sp.is_moe:
            logits = h @ L.router.to(f64).T
            top = torch.topk(logits + L.router_bias.to(f64), sp.top_k, -1).indices
            chosen.append(top)
            if sp.gate == "sigmoid":
                w = torch.sigmoid(logits).gather(1, top)
                w = w / w.sum(-1, keepdim=True)
            else:
                w = torch.softmax(logits, -1).gather(1, top)
            gates = torch.zeros(T, sp.n_experts, dtype=f64).scatter(1, top, w)
            y = sum(gates[:, e:e + 1] * ffn(h, L.experts_w13[e], L.experts_w2[e]) for e in range(sp.n_experts))
            for w13, w2 in L.shared:
                y = y + ffn(h, w13, w2)
        else:
            y = ffn(h, L.w13, L.w2)
        x = x + y
    return rms(x, eng.norm.to(f64)) @ eng.lm_head.to(f64).T, chosen


def _ids(n: int, seed: int = 0, vocab: int = 512) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = b.abs().max().item()
    err = (a.double() - b.double()).abs().max().item()
    assert err <= 2e-5 * scale + 1e-5, f"max error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("chunk,block", [(None, None), (7, 3)], ids=["whole", "chunked"])
def test_grouped_prefill_equals_naive(engines, name, chunk, block):
    eng = engines[name]
    saved = eng.local_query_block, eng.ffn_chunk
    if block:  # small query blocks, FFN chunks and prompt chunks: every boundary case
        eng.local_query_block, eng.ffn_chunk = block, 5
    try:
        ids = _ids(40, seed=1)
        trace = np.zeros((eng.spec.n_layers, 40, eng.spec.top_k), np.uint8)
        got = eng.prefill(ids, eng.new_cache(40), trace=trace, chunk=chunk, all_logits=True)
    finally:
        eng.local_query_block, eng.ffn_chunk = saved
    want, chosen = naive_forward(eng, ids)
    _close(got, want)
    for layer, top in enumerate(chosen):  # same experts (as sets: topk order may differ)
        assert np.array_equal(np.sort(trace[layer], 1), np.sort(top.numpy(), 1))


@pytest.mark.parametrize("name", list(TINY))
def test_decode_with_cache_equals_prefill(engines, name):
    """Prefill 12 tokens, then decode 28 one by one (past the window of 8): every step's logits
    equal the naive full-sequence logits at that position, and the last equal the prefill's."""
    eng = engines[name]
    ids = _ids(40, seed=2)
    want, _ = naive_forward(eng, ids)
    cache = eng.new_cache(40)
    _close(eng.prefill(ids[:12], cache), want[11])
    for pos in range(12, 40):
        _close(eng.decode(ids[pos], pos, cache), want[pos])
    _close(eng.prefill(ids, eng.new_cache(40)), want[39])


def test_sliding_window_equals_explicit_mask(engines):
    """Local layers see exactly the last `window` positions: tokens further back change nothing
    in a model made only of local layers, and the result equals the naive explicit band mask."""
    base = engines["tiny-dense"]
    eng = Engine(base.folder)
    for L in eng.layers:  # make every layer local
        L.is_global, L.window = False, eng.spec.sliding_window
    eng.spec = dataclasses.replace(eng.spec, global_layers=())
    a, b = _ids(30, seed=3), _ids(30, seed=3)
    b[:10] = _ids(10, seed=4)  # differ only more than 3 x window back from the end
    la = eng.prefill(a, eng.new_cache(30), all_logits=True)
    lb = eng.prefill(b, eng.new_cache(30), all_logits=True)
    _close(la, naive_forward(eng, a)[0])
    n_layers, w = eng.spec.n_layers, eng.spec.sliding_window
    reach = n_layers * (w - 1)  # receptive field of n local layers
    assert not torch.allclose(la[10], lb[10])
    assert torch.equal(la[10 + reach:], lb[10 + reach:]) or torch.allclose(la[10 + reach:], lb[10 + reach:], atol=1e-5)
    # decode through the ring buffer, past the window
    cache = eng.new_cache(30)
    eng.prefill(a[:5], cache)
    for pos in range(5, 30):
        out = eng.decode(a[pos], pos, cache)
    _close(out, la[29])


def test_generate_is_greedy_and_counts_like_executorch(engines):
    eng = engines["tiny-moe"]
    ids = _ids(20, seed=5)
    trace = np.zeros((2, 20 + 6 - 1, 2), np.uint8)
    g = eng.generate(ids, 6, trace=trace)
    assert len(g.tokens) == 6 and g.decode_steps == 5 and g.prompt_tokens == 20
    # greedy: every token is the argmax of the naive logits of the sequence so far
    seq = list(ids)
    for t in g.tokens:
        want, _ = naive_forward(eng, seq)
        assert t == int(torch.argmax(want[-1]))
        seq.append(t)
    assert g.inference_start_ms <= g.prompt_eval_end_ms <= g.inference_end_ms
    assert trace[:, -1].any()  # the last decode step was traced


# ---- processes -------------------------------------------------------------------------------

RESIDENCY = r"""
import json, os, sys
folder = sys.argv[1]
w = os.path.join(folder, "weights.bin")
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
from devprof.files import mapped_rss_bytes
def mapping_rss():
    return mapped_rss_bytes(w)
fd = os.open(w, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # cold page cache
os.close(fd)
import numpy as np, torch
from devprof.runtimes.reference.engine import Engine
f0 = status("RssFile")
eng = Engine(folder)
f1, m1 = status("RssFile"), mapping_rss()
trace = np.zeros((eng.spec.n_layers, 4, eng.spec.top_k), np.uint8)
cache = eng.new_cache(4)
eng.prefill([5, 900, 4000, 12000], cache, trace=trace, all_logits=False)
f2, m2 = status("RssFile"), mapping_rss()
print(json.dumps(dict(f0=f0, f1=f1, m1=m1, f2=f2, m2=m2, trace=trace.tolist())))
"""


def test_weights_page_in_lazily_per_expert(moe_mini):
    out = subprocess.run([sys.executable, "-c", RESIDENCY, str(moe_mini)], capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    layout = json.loads((moe_mini / "layout.json").read_text())
    size = layout["file_size"]
    # loading maps the file and reads (almost) nothing: RssFile stays far below the file size
    # (RssFile also counts shared-library pages torch faults in on first use: a few MB)
    assert r["f1"] - r["f0"] < 0.05 * size
    assert r["m1"] < 0.01 * size
    # after 4 tokens: the dense weights + exactly the experts they were routed to
    trace = np.array(r["trace"], dtype=np.uint8)
    pairs = {(layer, int(e)) for layer in range(trace.shape[0]) for e in trace[layer].ravel()}
    block = layout["expert_block_bytes"]
    dense = sum(t["nbytes"] for n, t in layout["tensors"].items() if ".experts." not in n)
    experts = len(pairs) * block
    assert len(pairs) < 0.5 * MOE_MINI.n_layers * MOE_MINI.n_experts
    assert experts <= r["m2"] - r["m1"] <= experts + dense  # dense: at most all of it (head reads it)
    assert r["m2"] - r["m1"] >= experts + 0.5 * dense  # the LM head alone is half the dense bytes
    assert r["m2"] < 0.5 * size  # untouched experts stay out
    assert r["f2"] - r["f1"] >= experts


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devprof.refruntime", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout, cwd=REPO_ROOT)


def test_process_end_to_end_prints_an_observer_line(moe_mini, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(map(str, _ids(256, seed=6, vocab=16384))) + "\n")
    trace = tmp_path / "trace.npz"
    inv = Invocation(binary="python", model_path=str(moe_mini), tokenizer_path=None, prompt_file="",
                     max_new_tokens=8, extra={"prompt_ids_file": str(ids), "routing_trace": str(trace)})
    adapter = get_adapter("reference")
    argv = adapter.argv(inv)
    assert argv[:3] == [sys.executable, "-m", "devprof.refruntime"]
    out = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sum(line.startswith("PyTorchObserver {") for line in out.stdout.splitlines()) == 1
    res = adapter.parse(out.stdout, out.stderr)
    assert res.runtime == "reference"
    assert res.prompt_tokens == 256 and res.generated_tokens == 7
    assert res.prefill_tok_s > 0 and res.decode_tok_s > 0 and res.load_ms >= 0
    assert res.reported_peak_rss_mb > 0
    assert {"rss_after_load_mib", "rss_after_prefill_mib", "rss_after_generation_mib"} <= set(res.extra)
    obs = res.extra["observer"]
    for key in ("model_execution_start_ms", "model_execution_end_ms", "aggregate_model_execution_time_ms",
                "aggregate_sampling_time_ms", "first_token_ms", "model_load_start_ms", "model_load_end_ms"):
        assert key in obs
    assert obs["SCALING_FACTOR_UNITS_PER_SECOND"] == 1000
    # one wall time per decode step; together they are the decode span (within the clock's ms rounding)
    steps = obs["decode_token_ms"]
    assert len(steps) == 7 and all(v > 0 for v in steps)
    assert sum(steps) <= obs["inference_end_ms"] - obs["prompt_eval_end_ms"] + 2
    from devprof import stats
    from devprof.results import ProcessOutcome, Repetition

    rep = Repetition(model="m", workload="real", context=256, index=0, warmup=False, result=res,
                     outcome=ProcessOutcome(exit_code=0, stdout="", stderr="", start_wall_ms=0, wall_ms=1))
    assert stats.token_latencies(rep) == steps
    p = stats.percentiles([rep])
    assert p.n == 7 and min(steps) <= p.p50 <= p.p90 <= p.p99 <= max(steps)
    with np.load(trace) as z:
        assert z["experts"].shape == (6, 256 + 7, 4) and z["experts"].dtype == np.uint8
        assert int(z["n_prompt"]) == 256 and z["layer_block_bytes"].tolist() == [393216] * 6
    s = summarize(trace)
    assert s.n_tokens == 263 and 0 < s.distinct_pairs <= 360


def test_process_tokenizes_a_prompt_file(moe_mini, tmp_path):
    folder = moe_mini
    prompt = tmp_path / "p.txt"
    prompt.write_text("Once upon a time, there was a cat.")
    out = _run([f"--model_path={folder}", f"--prompt_file={prompt}", "--max_new_tokens=3", "--warmup"])
    assert out.returncode == 0, out.stderr[-2000:]
    res = get_adapter("reference").parse(out.stdout, out.stderr)
    assert res.generated_tokens == 2 and res.prompt_tokens > 5
    assert "Warmup run finished!" in out.stderr


@pytest.mark.parametrize("case", ["no-bundle", "bad-ids", "empty-ids", "id-range", "too-long", "temperature",
                                  "no-prompt-file", "bad-flag"])
def test_bad_input_exits_2_with_one_line(cache, tmp_path, case):
    folder = build_bundle(TINY_MOE, 0, cache)  # max_context 256, vocab 512
    good = tmp_path / "ids.txt"
    good.write_text("1\n2\n3\n")
    args = [f"--model_path={folder}", f"--prompt_ids_file={good}", "--max_new_tokens=2"]
    if case == "no-bundle":
        args[0] = f"--model_path={tmp_path / 'nope'}"
    elif case == "bad-ids":
        good.write_text("1\ntwo\n3\n")
    elif case == "empty-ids":
        good.write_text("\n")
    elif case == "id-range":
        good.write_text("1\n512\n")
    elif case == "too-long":
        good.write_text("1\n" * 257)
    elif case == "temperature":
        args.append("--temperature=0.8")
    elif case == "no-prompt-file":
        args[1] = f"--prompt_file={tmp_path / 'missing.txt'}"
    elif case == "bad-flag":
        args.append("--max_new_tokens=many")
    out = _run(args, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr and lines[0].startswith("refruntime: error: ")
    assert "PyTorchObserver" not in out.stdout
