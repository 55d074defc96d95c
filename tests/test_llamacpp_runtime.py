"""The llama.cpp runtime: GGUF export of the seeded bundles, devprof's native runner (the
committed host build of devprof/runtimes/llamacpp/runner/runner.cpp) and how closely llama.cpp's
math follows the reference engine's.

Needs the ``llamacpp`` extra (gguf). Without it every test here FAILS (never skips) with the
install command. Everything runs on two-layer shapes of the minis (a few MB), so the file takes
well under a minute.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from devprof.catalog import get_model

INSTALL = "gguf is not installed: pip install -e '.[llamacpp]'"
REPO = Path(__file__).resolve().parent.parent
TEMPLATE = ("{binary} -m {model} --prompt-ids {prompt_ids_file} -n {max_new_tokens} -t {threads} "
            "--routing-trace {routing_trace}")


def need_llamacpp() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{INSTALL} ({exc})", pytrace=False)


@functools.lru_cache(maxsize=None)
def runner_path() -> str:
    from devprof.runtimes.llamacpp import host_runner

    return host_runner()


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
    from devprof.runtimes.llamacpp.gguf_export import build_gguf

    return build_gguf(tiny(kind), seed=0, weights=weights)


@functools.lru_cache(maxsize=None)
def prompt(n: int) -> tuple[int, ...]:
    from devprof import workloads as wl

    return tuple(wl.build_prompt("real", n, seed=0).token_ids)


def run_runner(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([runner_path(), *args], capture_output=True, text=True, timeout=timeout)


def runner_lines(stderr: str) -> dict:
    """The runner's devprof_<what>: {json} lines (residency: a list)."""
    out: dict = {}
    for line in stderr.splitlines():
        if line.startswith("devprof_"):
            key, _, body = line.partition(": ")
            val = json.loads(body)
            if key == "devprof_residency":
                out.setdefault("residency", []).append(val)
            else:
                out[key[len("devprof_"):]] = val
    return out


def reference_logits(spec, ids) -> np.ndarray:
    """Logits of every prompt position from the reference engine (one decode step per token)."""
    from devprof.runtimes.reference.bundle import build_bundle
    from devprof.runtimes.reference.engine import Engine

    eng = Engine(build_bundle(spec, 0))
    cache = eng.new_cache(len(ids))
    return np.stack([eng.decode(t, p, cache).numpy() for p, t in enumerate(ids)])


def llamacpp_logits(path: Path, ids, tmp: Path | None = None) -> np.ndarray:
    """Logits of every prompt position from llama.cpp (the runner's --prompt-logits), F32 KV
    cache, no flash attention (whose CPU kernel rounds Q to F16: ~2e-4 relative, measured), so
    only the model's math differs."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ids_file, out = Path(d) / "p.ids", Path(d) / "logits.npy"
        ids_file.write_text("\n".join(map(str, ids)) + "\n")
        r = run_runner(["-m", str(path), "--prompt-ids", str(ids_file), "-n", "1", "-t", "2", "--kv-type", "f32",
                        "-fa", "off", "--prompt-logits", str(out)])
        assert r.returncode == 0, r.stderr
        return np.load(out)


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
def test_export_loads_with_expected_shapes_types_and_metadata(kind, tmp_path):
    need_llamacpp()
    from devprof.runtimes.llamacpp.gguf_export import ROUTING_NOTE, read_metadata

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
    # llama.cpp loads it (the runner's tokenizer round trip and a generation)
    ids = tmp_path / "p.ids"
    ids.write_text("1\n2\n3\n")
    trace = tmp_path / "t.npz"
    out = run_runner(["-m", str(gguf_file(kind, "q4_0")), "--prompt-ids", str(ids), "-n", "2", "-t", "2",
                      "--routing-trace", str(trace)])
    assert out.returncode == 0, out.stderr
    with np.load(trace) as z:
        assert z["experts"].shape == (spec.n_layers, 3 + 1, spec.top_k if kind == "moe" else 0)
        assert int(z["n_experts"]) == E


def test_export_is_cached_streamed_from_the_bundle_and_atomic():
    need_llamacpp()
    from devprof.runtimes.llamacpp.gguf_export import build_gguf, gguf_path
    from devprof.runtimes.reference.bundle import bundle_dir

    spec = tiny("moe")
    p = gguf_file("moe", "q4_0")
    assert p == gguf_path(spec, 0, "q4_0") and p.parent == bundle_dir(spec, 0).parent
    mtime = p.stat().st_mtime_ns
    assert build_gguf(spec, 0, "q4_0") == p and p.stat().st_mtime_ns == mtime  # cached
    assert not list(p.parent.glob(p.name + ".tmp-*"))


def test_engine_constants_match():
    need_llamacpp()
    from devprof.runtimes.llamacpp.gguf_export import RMS_EPS
    from devprof.runtimes.reference.engine import EPS

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
    from devprof.runtimes.llamacpp.gguf_export import build_gguf

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
    from devprof.runtimes.reference.bundle import build_bundle
    from devprof.runtimes.reference.engine import Engine

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
    # the runner asks for every prompt token's output when tracing, so llama.cpp runs the last
    # layer's FFN for every token too and the trace is complete
    assert computed.all()
    same1 = (np.sort(got[1, :len(ids)], 1) == np.sort(ref[1, :len(ids)], 1)).mean()
    assert same1 > 0.5, same1  # layer 1's router sees llama.cpp's (gate-weighted) layer 0 output


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
    argv = Binary("t", "llamacpp", "host", "any", runner_path(), "", command=TEMPLATE).argv(
        {"binary": runner_path(), "model": str(model), "prompt_ids_file": str(ids_file), "max_new_tokens": 6,
         "threads": 2, "routing_trace": str(trace)})
    out = subprocess.run(argv + ["--evict"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 6  # exactly N ids, EOS ignored
    assert "llama_perf_context_print:" in out.stderr
    r = get_adapter("llamacpp").parse(out.stdout, out.stderr)
    assert r.prompt_tokens == len(ids)
    assert r.generated_tokens == 5  # llama.cpp's "eval ... runs": decode calls after the prompt pass
    assert r.prefill_tok_s > 0 and r.decode_tok_s > 0 and r.load_ms is not None
    # the runner's own lines: a timestamp per token, its VmHWM, the model file's residency
    ts = r.extra["token_stamp_ms"]
    assert len(ts) == 6 and ts == sorted(ts) and r.ttft_ms == ts[0] > 0
    assert len(r.extra["token_ms"]) == 5 and all(v >= 0 for v in r.extra["token_ms"])
    st = r.extra["runner_status_kb"]
    assert set(st) == {"VmHWM", "VmRSS", "RssAnon", "RssFile", "VmSwap"} and st["VmHWM"] >= st["VmRSS"] > 0
    assert r.reported_peak_rss_mb == st["VmHWM"] / 1024
    stages = {x["stage"]: x for x in r.extra["residency"]}
    assert list(stages) == ["before_load", "after_prefill", "exit"] and all(x["evicted"] for x in stages.values())
    size_kb = model.stat().st_size // 1024
    assert stages["before_load"]["file_kb"] == size_kb
    # dropped before the load, read back by the run
    assert stages["before_load"]["resident_kb"] < 0.2 * size_kb < stages["exit"]["resident_kb"]
    s = summarize(trace)
    spec = tiny("moe")
    assert (s.n_layers, s.n_experts, s.top_k, s.n_tokens) == (2, spec.n_experts, spec.top_k, len(ids) + 5)
    with np.load(trace) as z:
        assert int(z["n_prompt"]) == len(ids) and str(z["runtime"]) == "llamacpp"
        assert str(z["model"]) == spec.name and z["computed"].all()
        ranges = z["block_ranges"]
        assert (ranges[..., 1] > 0).all() and (z["block_nbytes"] == ranges[..., 1].sum(-1)).all()
        from gguf import GGUFReader

        t = {x.name: x for x in GGUFReader(str(model)).tensors}["blk.1.ffn_down_exps.weight"]
        assert ranges[1, 0, 2, 0] == t.data_offset and ranges[1, 1, 2, 0] == t.data_offset + t.n_bytes // spec.n_experts
    # the adapter's own llama-cli command line is accepted too (text prompt, llama-cli flags)
    txt = tmp_path / "prompt.txt"
    txt.write_text("def add(a, b):\n    return a + b\n")
    from devprof.runtimes import Invocation

    argv = get_adapter("llamacpp").argv(Invocation(binary=runner_path(), model_path=str(gguf_file("dense", "q4_0")),
                                                   tokenizer_path=None, prompt_file=str(txt), max_new_tokens=3,
                                                   threads=2, extra={"warmup": False}))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = get_adapter("llamacpp").parse(out.stdout, out.stderr)
    assert r.generated_tokens == 2 and r.prompt_tokens > 5


@pytest.mark.parametrize("weights", ["q4_0", "q8_0", "f32"])
@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_quantized_weights_run_with_and_without_repack(kind, weights, tmp_path):
    """Q4_0/Q8_0 with llama.cpp's CPU repack on (the default) must not crash on this host (an
    AVX-512/AMX Xeon crashed llama-cpp-python's native build): the runner is built for
    x86-64-v3/v2 only, so no AVX-512 kernel is in it. --no-repack gives the same tokens."""
    need_llamacpp()
    ids = tmp_path / "p.ids"
    ids.write_text("\n".join(map(str, prompt(40))) + "\n")
    base = ["-m", str(gguf_file(kind, weights)), "--prompt-ids", str(ids), "-n", "4", "-t", "2"]
    a = run_runner(base)
    b = run_runner(base + ["--no-repack"])
    assert a.returncode == 0 and b.returncode == 0, (a.returncode, a.stderr[-500:], b.returncode, b.stderr[-500:])
    assert len(a.stdout.split()) == 4
    if weights != "q4_0":  # Q4_0's repacked kernels quantize activations differently: tokens may differ
        assert a.stdout == b.stdout


def test_runner_tokenizes_like_the_reference_tokenizer(tmp_path):
    need_llamacpp()
    from tokenizers import Tokenizer

    from devprof.workloads import TOKENIZER_PATH

    text = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 'quoted' ÄÖ 123\n\n"
    f = tmp_path / "p.txt"
    f.write_text(text, encoding="utf-8")
    out = run_runner(["-m", str(gguf_file("dense", "q4_0")), "-f", str(f), "--tokenize-only"])
    assert out.returncode == 0, out.stderr
    assert [int(x) for x in out.stdout.split()] == Tokenizer.from_file(str(TOKENIZER_PATH)).encode(text).ids


@pytest.mark.parametrize("case", ["no-model", "not-gguf", "bad-id", "id-out-of-vocab", "n-zero", "no-prompt",
                                  "truncated", "missing-ids", "temp", "context-too-large", "bad-flag",
                                  "no-trace-folder"])
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
    elif case == "context-too-large":
        args += ["-c", "4"]  # 3 prompt ids + 2 new tokens
    elif case == "bad-flag":
        args += ["--bogus"]
    elif case == "no-trace-folder":
        args += ["--routing-trace", str(tmp_path / "missing" / "t.npz")]
    out = run_runner(args)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("devprof-llamarunner: error: "), out.stderr
    assert out.stdout == ""


def test_committed_runners_are_static_and_listed():
    """Every committed runner is a static ELF (no program interpreter: runs on any Linux of its
    architecture, Android included), stripped, with its sha256, ABI and CPU features in the
    manifest; `devprof bins list` shows them."""
    from click.testing import CliRunner

    from devprof import bins
    from devprof.cli import cli

    entries = [b for b in bins.load() if b.name.startswith("devprof-llamarunner-")]
    assert {b.abi for b in entries} == {"arm64-v8a", "x86_64"}
    for b in entries:
        f = b.verify()
        data = f.read_bytes()
        assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
        machine = struct.unpack("<H", data[18:20])[0]
        assert machine == {"arm64-v8a": 183, "x86_64": 62}[b.abi]
        phoff, phentsize, phnum = struct.unpack("<Q", data[32:40])[0], *struct.unpack("<HH", data[54:58])
        types = [struct.unpack("<I", data[phoff + i * phentsize:phoff + i * phentsize + 4])[0] for i in range(phnum)]
        assert 3 not in types, f"{b.name} has a PT_INTERP: not static"
        assert b.variant and b.source and "sha256" in b.source
        assert b".symtab" not in data  # stripped (-s)
    out = CliRunner().invoke(cli, ["bins", "list", "--json"])
    assert out.exit_code == 0, out.output
    listed = {d["name"]: d for d in json.loads(out.output)}
    for b in entries:
        assert listed[b.name]["sha256"] == b.sha256 and listed[b.name]["cpu_features"] == b.cpu_features
    table = CliRunner().invoke(cli, ["bins", "list"], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "asimddp" in table.output and "yes" in table.output


def test_x86_variants_need_what_the_manifest_says(tmp_path):
    """On a CPU without AVX (qemu-x86_64-static -cpu Nehalem: SSE4.2) the x86-64-v2 runner works
    and the v3 one dies with SIGILL; the variant choice picks v2 from such a CPU's flags."""
    import shutil

    from devprof import bins

    qemu = shutil.which("qemu-x86_64-static")
    if not qemu:
        pytest.fail("qemu-x86_64-static is not installed: run scripts/test-setup (qemu-user-static)", pytrace=False)
    need_llamacpp()
    e = {b.variant: b for b in bins.load() if b.abi == "x86_64" and b.variant}
    nehalem = {"fpu", "sse", "sse2", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16"}
    assert bins.select("llamacpp", "host", "x86_64", cpu_flags=nehalem).name == e["x86_64-v2"].name
    ids = tmp_path / "p.ids"
    ids.write_text("1\n2\n3\n4\n")
    args = ["-m", str(gguf_file("dense", "q4_0")), "--prompt-ids", str(ids), "-n", "2", "-t", "1"]
    ok = subprocess.run([qemu, "-cpu", "Nehalem", str(e["x86_64-v2"].verify()), *args], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and len(ok.stdout.split()) == 2, ok.stderr[-500:]
    bad = subprocess.run([qemu, "-cpu", "Nehalem", str(e["x86_64-v3"].verify()), *args], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode in (-4, 132), (bad.returncode, bad.stderr[-300:])  # SIGILL
