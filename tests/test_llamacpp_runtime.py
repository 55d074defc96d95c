"""The llama.cpp runtime: GGUF export of the seeded bundles, the llamarunner process, and how
closely llama.cpp's math follows the reference engine's.

Needs the ``llamacpp`` extra (llama-cpp-python, gguf). Without it every test here FAILS (never
skips) with the install command. Everything runs on two-layer shapes of the minis (a few MB),
so the file takes well under a minute.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devprof.catalog import get_model

INSTALL = "llama-cpp-python/gguf are not installed: pip install -e '.[llamacpp]'"
REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "device_bins" / "host" / "devprof-llamarunner.sh"
TEMPLATE = ("{binary} -m {model} --prompt-ids {prompt_ids_file} -n {max_new_tokens} -t {threads} "
            "--routing-trace {routing_trace}")


def need_llamacpp() -> None:
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{INSTALL} ({exc})", pytrace=False)


# ---- tiny shapes ----------------------------------------------------------------------------


def tiny(kind: str, **kw):
    """Two-layer versions of the minis (full vocabulary and widths, so the runtime paths are real).

    The dense one keeps a local and a global layer, with a 16-token window so a short prompt
    crosses it.
    """
    if kind == "moe":
        spec = dataclasses.replace(get_model("mobilemoe-s-mini"), n_layers=2, name="llamacpp-test-moe")
    else:
        spec = dataclasses.replace(get_model("mobilellm-pro-mini"), n_layers=2, name="llamacpp-test-dense",
                                   sliding_window=16, global_layers=(1,))
    return dataclasses.replace(spec, **kw) if kw else spec


@functools.lru_cache(maxsize=None)
def gguf_file(kind: str, weights: str) -> Path:
    from devprof.gguf_export import build_gguf

    return build_gguf(tiny(kind), seed=0, weights=weights)


@functools.lru_cache(maxsize=None)
def prompt(n: int) -> tuple[int, ...]:
    from devprof import workloads as wl

    return tuple(wl.build_prompt("real", n, seed=0).token_ids)


def run_runner(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEVPROF_PYTHON=sys.executable)
    return subprocess.run([str(LAUNCHER), *args], capture_output=True, text=True, timeout=timeout, env=env)


def reference_logits(spec, ids) -> np.ndarray:
    """Logits of every prompt position from the reference engine (one decode step per token)."""
    from devprof.refruntime.bundle import build_bundle
    from devprof.refruntime.engine import Engine

    eng = Engine(build_bundle(spec, 0))
    cache = eng.new_cache(len(ids))
    return np.stack([eng.decode(t, p, cache).numpy() for p, t in enumerate(ids)])


def llamacpp_logits(path: Path, ids) -> np.ndarray:
    """Logits of every prompt position from llama.cpp, F32 KV cache, no flash attention (whose
    CPU kernel rounds Q to F16: ~2e-4 relative, measured), so only the model's math differs."""
    from devprof.llamarunner import Runner

    r = Runner(str(path)).open(len(ids) + 4, threads=2, kv_type="f32", flash_attn="off")
    try:
        return r.prompt_logits(list(ids))
    finally:
        r.close()


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---- export ---------------------------------------------------------------------------------


def _expected_bytes(spec, weights: str) -> int:
    """Tensor bytes from the catalog's own parameter arithmetic (not from the exporter's plan):
    every 2-D weight at the format's bytes per weight, norms/router/bias/sinks in F32."""
    per = {"f32": 4.0, "q8_0": 34 / 32, "q4_0": 18 / 32}[weights]
    d, L = spec.hidden, spec.n_layers
    matrices = spec.total_params - L * spec.router_params  # embedding (once, tied) + attention + FFNs
    f32 = d * (1 + 2 * L)  # final norm + two norms per layer
    if spec.is_moe:
        f32 += L * (spec.router_params + spec.n_experts)  # router + selection bias
    if spec.qk_norm:
        f32 += L * 2 * spec.head_dim
    if spec.n_local_layers:
        f32 += L * spec.n_heads  # granite_swa's (inert) attention sinks
    return int(matrices * per) + 4 * f32


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_export_loads_with_expected_shapes_types_and_metadata(kind):
    need_llamacpp()
    from devprof.gguf_export import ROUTING_NOTE, read_metadata
    from devprof.llamarunner import Runner

    spec = tiny(kind)
    d, E, fe = spec.hidden, spec.n_experts, spec.expert_ffn
    for weights, qname in (("f32", "F32"), ("q4_0", "Q4_0")) + ((("q8_0", "Q8_0"),) if kind == "moe" else ()):
        path = gguf_file(kind, weights)
        meta = read_metadata(path)
        t = meta["tensors"]
        arch = meta["general.architecture"]
        assert meta["devprof.weights"] == weights and meta["devprof.model"] == spec.name
        assert meta[f"{arch}.block_count"] == spec.n_layers
        assert meta[f"{arch}.embedding_length"] == d
        assert meta[f"{arch}.attention.head_count_kv"] == spec.n_kv_heads
        assert math.isclose(meta[f"{arch}.rope.freq_base"], spec.rope_theta)
        assert t["token_embd.weight"][:2] == ((spec.vocab, d), qname)
        assert "output.weight" not in t  # tied: llama.cpp reuses token_embd
        assert t["output_norm.weight"][1] == "F32"
        assert t["blk.0.attn_q.weight"][:2] == ((spec.n_heads * spec.head_dim, d), qname)
        assert t["blk.1.attn_k.weight"][:2] == ((spec.n_kv_heads * spec.head_dim, d), qname)
        if kind == "moe":
            assert arch == "glm4moe"
            assert meta["glm4moe.expert_count"] == E and meta["glm4moe.expert_used_count"] == spec.top_k
            assert meta["glm4moe.expert_gating_func"] == 3 and meta["glm4moe.expert_weights_norm"] is True
            assert meta["glm4moe.expert_shared_count"] * fe == spec.n_shared * spec.shared_ffn
            assert ROUTING_NOTE in meta["devprof.notes"]
            assert t["blk.0.ffn_gate_exps.weight"][:2] == ((E, fe, d), qname)
            assert t["blk.0.ffn_down_exps.weight"][:2] == ((E, d, fe), qname)
            assert t["blk.1.ffn_up_shexp.weight"][:2] == ((spec.n_shared * spec.shared_ffn, d), qname)
            assert t["blk.0.ffn_gate_inp.weight"][:2] == ((E, d), "F32")  # the router stays F32
            assert t["blk.0.exp_probs_b.bias"][:2] == ((E,), "F32")
            assert t["blk.0.attn_q_norm.weight"][:2] == ((spec.head_dim,), "F32")
        else:
            assert arch == "granite_swa"
            assert meta["granite_swa.attention.sliding_window"] == 16
            assert list(meta["granite_swa.attention.sliding_window_pattern"]) == [True, False]
            assert t["blk.0.ffn_gate.weight"][:2] == ((spec.ffn, d), qname)
            assert t["blk.0.ffn_down.weight"][:2] == ((d, spec.ffn), qname)
            assert t["blk.0.attn_norm.weight"][1] == "F32"
        data = sum(v[2] for v in t.values())
        assert data == _expected_bytes(spec, weights)
        size = path.stat().st_size
        # the rest is header, metadata (the 16384-token vocabulary and its merges: ~0.6 MB) and
        # 32-byte alignment padding
        assert 0 < size - data < 1_000_000, (weights, size, data)
        r = Runner(str(path))
        try:
            assert (r.n_vocab, r.n_layers, r.n_experts, r.arch) == (spec.vocab, spec.n_layers, E, arch)
        finally:
            r.close()


def test_export_is_cached_streamed_from_the_bundle_and_atomic():
    need_llamacpp()
    from devprof.gguf_export import build_gguf, gguf_path
    from devprof.refruntime.bundle import bundle_dir

    spec = tiny("moe")
    p = gguf_file("moe", "q4_0")
    assert p == gguf_path(spec, 0, "q4_0") and p.parent == bundle_dir(spec, 0).parent
    mtime = p.stat().st_mtime_ns
    assert build_gguf(spec, 0, "q4_0") == p and p.stat().st_mtime_ns == mtime  # cached
    assert not list(p.parent.glob(p.name + ".tmp-*"))


def test_engine_constants_match():
    need_llamacpp()
    from devprof.gguf_export import RMS_EPS
    from devprof.refruntime.engine import EPS

    assert RMS_EPS == EPS


# ---- numerical agreement with the reference engine ------------------------------------------


def test_f32_dense_matches_reference_including_sliding_window():
    need_llamacpp()
    spec = tiny("dense")
    ids = prompt(40)  # crosses the 16-token window of layer 0
    got = llamacpp_logits(gguf_file("dense", "f32"), ids)
    ref = reference_logits(spec, ids)
    assert rel(got, ref) < 1e-5, rel(got, ref)
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).all()
    # the window is really applied: a reference that attends globally differs past position 16
    glob = reference_logits(dataclasses.replace(spec, sliding_window=None, global_layers=None), ids)
    assert rel(got[:16], glob[:16]) < 1e-5
    assert rel(got[16:], glob[16:]) > 100 * rel(got[16:], ref[16:])


def test_f32_moe_matches_reference_exactly_at_top1_and_up_to_gate_weights_at_top4():
    """llama.cpp selects experts by the reference's rule (top_k of logits + router_bias) but
    weights the chosen k by softmax(logits) over them, not by normalised sigmoids. With one
    expert per token both weights are 1: then every other part (attention, QK-norm, RoPE, the
    stacked experts, the shared expert, the router and its bias) must agree to float32 rounding."""
    need_llamacpp()
    from devprof.gguf_export import build_gguf

    ids = prompt(40)
    top1 = tiny("moe", top_k=1, name="llamacpp-test-moe-top1")
    got = llamacpp_logits(build_gguf(top1, 0, "f32"), ids)
    ref = reference_logits(top1, ids)
    assert rel(got, ref) < 1e-5, rel(got, ref)
    assert (got.argmax(1) == ref.argmax(1)).all()
    # top-4 (the real shape): only the gate weights differ: visible and bounded (measured
    # ~0.1 relative on this shape)
    spec = tiny("moe")
    got = llamacpp_logits(gguf_file("moe", "f32"), ids)
    ref = reference_logits(spec, ids)
    assert 1e-4 < rel(got, ref) < 0.3, rel(got, ref)


def test_layer0_expert_selection_is_the_reference_selection(tmp_path):
    """Selection is exact: layer 0's router sees the same hidden state in both runtimes."""
    need_llamacpp()
    from devprof.refruntime.bundle import build_bundle
    from devprof.refruntime.engine import Engine

    spec = tiny("moe")
    ids = list(prompt(40))
    eng = Engine(build_bundle(spec, 0))
    ref = np.zeros((spec.n_layers, len(ids) + 4, spec.top_k), dtype=np.uint8)
    eng.generate(ids, 5, trace=ref)
    ids_file = tmp_path / "p.ids"
    ids_file.write_text("\n".join(map(str, ids)) + "\n")
    trace = tmp_path / "t.npz"
    # several llama_decode calls (-b) of several ubatches (-ub): most reach the last layer empty
    out = run_runner(["-m", str(gguf_file("moe", "f32")), "--prompt-ids", str(ids_file), "-n", "5", "-t", "2",
                      "-b", "16", "-ub", "8", "--routing-trace", str(trace)])
    assert out.returncode == 0, out.stderr
    with np.load(trace) as z:
        got, computed = z["experts"], z["computed"]
    assert got.shape == ref.shape
    same = (np.sort(got[0, :len(ids)], 1) == np.sort(ref[0, :len(ids)], 1)).all(1)
    assert same.all(), np.flatnonzero(~same)
    # last layer: llama.cpp runs its FFN only for the last prompt token and the decode steps
    assert computed[0].all() and computed[1].sum() == 1 + 4 and computed[1, len(ids) - 1:].all()


# ---- the runner process ---------------------------------------------------------------------


def test_runner_output_parses_into_a_run_result(tmp_path):
    need_llamacpp()
    from devprof.bins import Binary
    from devprof.routing import summarize
    from devprof.runtimes import get_adapter

    ids = prompt(48)
    ids_file = tmp_path / "prompt.ids"
    ids_file.write_text("\n".join(map(str, ids)) + "\n")
    trace = tmp_path / "trace.npz"
    model = gguf_file("moe", "q4_0")
    argv = Binary("t", "llamacpp", "host", "any", str(LAUNCHER), "", command=TEMPLATE).argv(
        {"binary": str(LAUNCHER), "model": str(model), "prompt_ids_file": str(ids_file), "max_new_tokens": 6,
         "threads": 2, "routing_trace": str(trace)})
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, DEVPROF_PYTHON=sys.executable))
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 6  # exactly N ids, EOS ignored
    assert "llama_perf_context_print:" in out.stderr
    r = get_adapter("llamacpp").parse(out.stdout, out.stderr)
    assert r.prompt_tokens == len(ids)
    assert r.generated_tokens == 5  # llama.cpp's "eval ... runs": decode calls after the prompt pass
    assert r.prefill_tok_s > 0 and r.decode_tok_s > 0 and r.load_ms is not None
    s = summarize(trace)
    spec = tiny("moe")
    assert (s.n_layers, s.n_experts, s.top_k, s.n_tokens) == (2, spec.n_experts, spec.top_k, len(ids) + 5)
    with np.load(trace) as z:
        assert int(z["n_prompt"]) == len(ids) and str(z["runtime"]) == "llamacpp"
        ranges = z["block_ranges"]
        assert (ranges[..., 1] > 0).all() and (z["block_nbytes"] == ranges[..., 1].sum(-1)).all()
    # the adapter's own llama-cli command line is accepted too (text prompt, llama-cli flags)
    txt = tmp_path / "prompt.txt"
    txt.write_text("def add(a, b):\n    return a + b\n")
    from devprof.runtimes import Invocation

    argv = get_adapter("llamacpp").argv(Invocation(binary=str(LAUNCHER), model_path=str(gguf_file("dense", "q4_0")),
                                                   tokenizer_path=None, prompt_file=str(txt), max_new_tokens=3,
                                                   threads=2, extra={"warmup": False}))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, DEVPROF_PYTHON=sys.executable))
    assert out.returncode == 0, out.stderr
    r = get_adapter("llamacpp").parse(out.stdout, out.stderr)
    assert r.generated_tokens == 2 and r.prompt_tokens > 5


def test_runner_tokenizes_like_the_reference_tokenizer():
    need_llamacpp()
    from tokenizers import Tokenizer

    from devprof.llamarunner import Runner
    from devprof.workloads import TOKENIZER_PATH

    text = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 'quoted' ÄÖ 123\n\n"
    r = Runner(str(gguf_file("dense", "q4_0")))
    try:
        assert r.tokenize(text) == Tokenizer.from_file(str(TOKENIZER_PATH)).encode(text).ids
    finally:
        r.close()


@pytest.mark.parametrize("case", ["no-model", "not-gguf", "bad-id", "id-out-of-vocab", "n-zero", "no-prompt",
                                  "truncated", "missing-ids", "temp"])
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    need_llamacpp()
    model = gguf_file("dense", "q4_0")
    good = tmp_path / "ok.ids"
    good.write_text("0\n5\n7\n")
    args = ["-m", str(model), "--prompt-ids", str(good), "-n", "2"]
    if case == "no-model":
        args[1] = str(tmp_path / "none.gguf")
    elif case == "not-gguf":
        args[1] = str(good)
    elif case == "bad-id":
        (tmp_path / "b.ids").write_text("1\nfoo\n")
        args[3] = str(tmp_path / "b.ids")
    elif case == "id-out-of-vocab":
        (tmp_path / "b.ids").write_text("1\n16384\n")
        args[3] = str(tmp_path / "b.ids")
    elif case == "n-zero":
        args[5] = "0"
    elif case == "no-prompt":
        args = args[:2]
    elif case == "truncated":
        cut = tmp_path / "cut.gguf"
        cut.write_bytes(model.read_bytes()[:200_000])
        args[1] = str(cut)
    elif case == "missing-ids":
        args[3] = str(tmp_path / "nope.ids")
    elif case == "temp":
        args += ["--temp", "0.7"]
    out = run_runner(args)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llamarunner: error: "), out.stderr
    assert out.stdout == ""


def test_runner_does_not_import_torch(tmp_path):
    need_llamacpp()
    ids = tmp_path / "p.ids"
    ids.write_text("0\n10\n11\n")
    code = ("import sys; from devprof import llamarunner; "
            f"rc = llamarunner.main(['-m', {str(gguf_file('dense', 'q4_0'))!r}, '--prompt-ids', {str(ids)!r}, '-n', '2']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH 0", out.stderr
