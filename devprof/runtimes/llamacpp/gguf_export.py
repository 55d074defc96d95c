"""GGUF export of a reference bundle: the same seeded weights, for llama.cpp (F32, Q8_0, Q4_0).

``build_gguf(spec, seed=0, weights="q4_0")`` builds (or reuses) the reference bundle of
(spec, seed) with :func:`devprof.runtimes.reference.bundle.build_bundle`, then streams its weights.bin
(a numpy memmap read tensor by tensor, expert by expert, in row chunks that are quantised on a
small thread pool and written in order; mapped pages are dropped after each large tensor, so
the export holds a few chunks, never the model) into a GGUF file that llama.cpp (as vendored
by llama-cpp-python 0.3.36) loads. Matrices the bundle stores transposed (layout.json
``"transposed": true``) are read back in their logical [out, in] shape. The file is cached
beside the bundle, ``<cache>/bundles/<bundle folder>-<weights>-e<EXPORT_VERSION>-<bundle
id[:12]>.gguf``, with a sidecar ``.gguf.json`` recording the bundle id, the sha256 of the
weights.bin it came from (from the bundle's manifest) and the export version: a cached file is
reused only if all three still match. It is written to a temporary file and renamed, under a
lock file that serialises concurrent builders.

Architectures (chosen by :func:`arch_for`; every choice was checked against that llama.cpp by
loading the file and comparing logits with :mod:`devprof.runtimes.reference.engine`, see
tests/test_llamacpp_runtime.py):

- MoE (MobileMoE-*): ``glm4moe``. It has everything the reference MoE block has: GQA attention
  with optional QK-norm (``attn_q_norm``/``attn_k_norm``, RMS over the head dim), NeoX RoPE
  (``rotate_half``, the reference's convention, so no weight permutation), a pre-FFN RMSNorm
  (``post_attention_norm``), routed experts stacked in ``ffn_{gate,up,down}_exps``, an
  un-gated shared expert (``ffn_{gate,up,down}_shexp``; ``n_shared`` shared experts of width
  ``shared_ffn`` become one of width ``n_shared * shared_ffn``, which is exact), a per-expert
  selection bias (``exp_probs_b``), tied embeddings, and reads ``expert_gating_func`` from the
  file. qwen2moe was not used: its shared expert is sigmoid-gated (``ffn_gate_inp_shexp``) and
  its router is a softmax, neither of which the reference has.

  Routing: the reference selects experts by ``top_k(logits + router_bias)`` and weights them
  by ``sigmoid(logit) / sum(sigmoid(logit))`` over the chosen k. llama.cpp computes
  ``probs = gating(logits)``, selects by ``top_k(probs + exp_probs_b)`` and weights by
  ``probs`` of the chosen (then softmax over them for gating 3 ``SOFTMAX_WEIGHT``, then
  ``/ sum`` if ``expert_weights_norm``). No gating function gives both the reference's
  selection and its weights (the bias would have to act before the sigmoid for selection and
  not at all for the weights). The file uses gating 3 (``SOFTMAX_WEIGHT``) with
  ``exp_probs_b = router_bias``, so llama.cpp selects ``top_k(logits + router_bias)``, the
  reference's selection exactly, and weights the k chosen experts by ``softmax(logits)`` over
  them instead of normalised sigmoids. Gating 3 keeps more of the reference's
  expert choices than exact sigmoid weights do (docs/measurements.md, "GGUF gating"), and which
  experts a token touches is what drives file-backed memory.
  The tests check that with top_k = 1 (both weightings are then 1) llama.cpp's logits equal
  the reference engine's to float32 rounding (~3e-7 relative): attention, QK-norm, RoPE, the
  stacked and shared experts, router and bias are the same math.
- Dense with sliding-window layers (MobileLLM-Pro): ``granite_swa``, the one llama-style
  architecture in that llama.cpp that takes a per-layer sliding-window pattern (a bool array,
  ``attention.sliding_window_pattern``, True = local) with a window size
  (``attention.sliding_window``; llama.cpp's "standard" SWA masks keys ``pos_q - pos_k >=
  window``, the reference's band exactly). Its extra parts are set to be inert:
  ``logit_scale`` 1, no residual/embedding scales, and per-head attention sinks of -1e30
  (``attn_sinks``, 4 bytes per head per layer: exp(-1e30 - max) = 0). Plain ``llama`` and
  ``mistral3`` ignore the sliding-window keys in that version (checked). RoPE there is the
  interleaved ("normal") kind, so Q and K rows are permuted per head from the reference's
  ``rotate_half`` layout (the same permutation convert_hf_to_gguf.py applies); attention
  scores are unchanged by it.
- Dense without local layers: ``llama`` (same permutation).

Tensors: F32 for norms, router (``ffn_gate_inp``), selection bias and sinks; every 2-D weight
matrix (embedding, attention, FFN, shared and routed experts) is F32, Q8_0 or Q4_0
(``gguf.quants.quantize``, row by row, so chunking never changes the bytes). The tied
embedding is stored once (``token_embd``; llama.cpp reuses it as the output head).

Tokenizer: the bundle's tokenizer.json (byte-level BPE, GPT-2 pre-tokenizer regex) as a
``gpt2`` vocabulary with pre-tokenizer ``gpt-2``; ids beyond its 16384 tokens (full-size
models keep their own vocabulary size) are filled with unused placeholder tokens.

Differences from the reference left in the file: the routing weights above, and nothing else
in the math (RMSNorm eps 1e-6, RoPE theta, QK-norm, GQA, SwiGLU, windows, tied head are the
same; with an F32 KV cache and flash attention off llama.cpp F32 matches the reference to
~3e-7 relative). How llama.cpp computes by default differs: an F16 KV cache, and its CPU flash
attention rounds Q to F16 (~2e-4 relative on the logits); Q8_0/Q4_0 weights; the last
layer's attention output and FFN run only for tokens whose logits are wanted (so a prompt's
tokens other than the last never touch the last layer's experts; see runner/runner.cpp).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from devprof.catalog import ModelSpec
from devprof.errors import DevprofError
from devprof.files import atomic_path, atomic_write
import devprof.runtimes.llamacpp.gguf_plan as gguf_plan
from devprof.runtimes.llamacpp.gguf_plan import (EXPORT_VERSION, GATING_SOFTMAX_WEIGHT, RMS_EPS, ROUTING_NOTE,
                                                 WEIGHT_TYPES, ExportPlan, TensorSpec, _ALIGN, _RELEASE_BYTES, _Source,
                                                 _gguf, _qtype, arch_for, expected_tensor_bytes, export_plan)

__all__ = [*gguf_plan.__all__, "build_gguf", "gguf_path", "read_metadata"]


# ---- tokenizer ------------------------------------------------------------------------------


def _tokenizer_kv(tok_path: Path, n_vocab: int) -> list[tuple[str, Any, str]]:
    """A gpt2-style BPE vocabulary from a byte-level BPE tokenizer.json, padded to n_vocab."""
    t = json.loads(tok_path.read_text(encoding="utf-8"))
    model = t.get("model") or {}
    if model.get("type") != "BPE":
        raise DevprofError(f"{tok_path}: expected a BPE tokenizer, got {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    added = {a["id"]: a for a in t.get("added_tokens", [])}
    size = max(max(vocab.values()), max(added, default=-1)) + 1
    if size > n_vocab:
        raise DevprofError(f"{tok_path}: {size} tokens do not fit the model's vocabulary of {n_vocab}")
    tokens = [f"<|devprof_unused_{i}|>" for i in range(n_vocab)]
    types = [5] * n_vocab  # llama_token_type: 1 normal, 3 control, 5 unused
    for s, i in vocab.items():
        tokens[i] = s
        types[i] = 1
    for i, a in added.items():
        tokens[i] = a["content"]
        types[i] = 3 if a.get("special") else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    def find(*names: str) -> int | None:
        for n in names:
            for i, a in added.items():
                if a["content"] == n:
                    return i
        return None

    bos = find("<|bos|>", "<s>", "<|begin_of_text|>")
    eos = find("<|eos|>", "</s>", "<|end_of_text|>", "<|endoftext|>")
    pad = find("<|pad|>", "<pad>")
    pp = t.get("post_processor") or {}
    add_bos = bos is not None and "<|bos|>" in json.dumps(pp.get("single", ""))
    out: list[tuple[str, Any, str]] = [
        ("tokenizer.ggml.model", "gpt2", "str"),
        ("tokenizer.ggml.pre", "gpt-2", "str"),
        ("tokenizer.ggml.tokens", tokens, "arr_str"),
        ("tokenizer.ggml.token_type", types, "arr_i32"),
        ("tokenizer.ggml.merges", merges, "arr_str"),
        ("tokenizer.ggml.add_bos_token", bool(add_bos), "bool"),
        ("tokenizer.ggml.add_eos_token", False, "bool"),
    ]
    for key, v in (("bos", bos), ("eos", eos), ("padding", pad)):
        if v is not None:
            out.append((f"tokenizer.ggml.{key}_token_id", v, "u32"))
    return out


# ---- paths and building ---------------------------------------------------------------------


def gguf_path(spec: ModelSpec, seed: int = 0, weights: str = "f32", cache_dir: Path | None = None) -> Path:
    """Where the GGUF of (spec, seed, weights) lives (beside the bundle folder; not built)."""
    from devprof.runtimes.reference.bundle import bundle_dir, bundle_id

    _qtype(weights)
    folder = bundle_dir(spec, seed, cache_dir)
    bid = bundle_id(spec, seed)
    return folder.parent / f"{folder.name}-{weights}-e{EXPORT_VERSION}-{bid[:12]}.gguf"


def build_gguf(spec: ModelSpec, seed: int = 0, weights: str = "f32", cache_dir: Path | None = None, *,
               workers: int | None = None) -> Path:
    """The GGUF of (spec, seed) at ``weights`` ("f32" | "q8_0" | "q4_0"), built once and cached.

    ``cache_dir`` is the bundles folder (as for :func:`~devprof.runtimes.reference.bundle.build_bundle`;
    default ``$DEVPROF_CACHE/bundles`` or ``~/.cache/devprof/bundles``). The bundle is built
    (or found) first; a cached GGUF is reused only if its sidecar ``<file>.json`` names the
    bundle's current weights.bin sha256 (from the bundle's manifest.json, so nothing is
    re-hashed), bundle id and this export version, and the file has the recorded size. Stale
    exports of the same bundle name and weight type are removed.
    """
    from devprof.runtimes.reference.bundle import build_bundle, load_config

    gguf = _gguf()
    final = gguf_path(spec, seed, weights, cache_dir)
    bundle = build_bundle(spec, seed, cache_dir)
    config = load_config(bundle)
    want = _provenance(bundle, config, weights)
    if _is_current(final, want):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / (final.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_current(final, want):
            return final
        stem = f"{bundle.name}-{weights}-e"
        for old in final.parent.glob(stem + "*"):
            if old != final and (old.name.endswith((".gguf", ".gguf.json")) or ".gguf.tmp-" in old.name):
                old.unlink(missing_ok=True)
        sidecar = final.parent / (final.name + ".json")
        sidecar.unlink(missing_ok=True)
        with atomic_path(final, prefix=final.name + ".tmp-", mode=0o644) as tmp:
            _write(tmp, spec, weights, bundle, config, gguf, workers)
        # the sidecar last: a GGUF without one (an interrupted build) is never reused
        atomic_write(sidecar, json.dumps(dict(want, size=final.stat().st_size), indent=1, sort_keys=True))
    return final


def _provenance(bundle: Path, config: dict[str, Any], weights: str) -> dict[str, Any]:
    try:
        man = json.loads((bundle / "manifest.json").read_text())
        wsha = man["files"]["weights.bin"]["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise DevprofError(f"bundle {bundle} has no usable manifest.json ({exc})") from None
    return {"bundle_id": config.get("bundle_id"), "weights_sha256": wsha, "weights": weights,
            "export_version": EXPORT_VERSION}


def _is_current(final: Path, want: dict[str, Any]) -> bool:
    try:
        rec = json.loads((final.parent / (final.name + ".json")).read_text())
        size = final.stat().st_size
    except (OSError, ValueError):
        return False
    return all(rec.get(k) == v for k, v in want.items()) and rec.get("size") == size


def _write(path: Path, spec: ModelSpec, weights: str, bundle: Path, config: dict[str, Any], gguf: Any,
           workers: int | None) -> None:
    src = _Source(bundle)
    plan = export_plan(spec, weights, src)
    tok = bundle / config.get("tokenizer", "tokenizer.json")
    w = gguf.GGUFWriter(str(path), plan.arch)
    kv = plan.kv + _tokenizer_kv(tok, spec.vocab) + [
        ("devprof.bundle_id", config.get("bundle_id", ""), "str"),
        ("devprof.model", spec.name, "str"),
        ("devprof.seed", int(config.get("seed", 0)), "u32"),
        ("devprof.weights", weights, "str"),
        ("devprof.export_version", EXPORT_VERSION, "u32"),
        ("devprof.notes", list(plan.notes) or ["none"], "arr_str"),
    ]
    for key, value, kind in kv:
        _add_kv(w, gguf.GGUFValueType, key, value, kind)
    F32 = gguf.GGMLQuantizationType.F32
    for t in plan.tensors:
        if t.qtype == F32:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
            w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None and len(w.fout) == 1
    f = w.fout[0]
    _pad(f)
    _write_tensor_data(f, plan, src, gguf, workers)
    f.flush()
    os.fsync(f.fileno())
    w.close()


def _add_kv(w: Any, VT: Any, key: str, value: Any, kind: str) -> None:
    if kind == "u32":
        w.add_uint32(key, int(value))
    elif kind == "f32":
        w.add_float32(key, float(value))
    elif kind == "bool":
        w.add_bool(key, bool(value))
    elif kind == "str":
        w.add_string(key, str(value))
    elif kind == "arr_str":
        w.add_key_value(key, list(value), VT.ARRAY, sub_type=VT.STRING)
    elif kind == "arr_i32":
        w.add_key_value(key, [int(v) for v in value], VT.ARRAY, sub_type=VT.INT32)
    elif kind == "arr_bool":
        w.add_key_value(key, [bool(v) for v in value], VT.ARRAY, sub_type=VT.BOOL)
    else:  # pragma: no cover - programming error
        raise AssertionError(kind)


def _write_tensor_data(f: Any, plan: ExportPlan, src: _Source, gguf: Any, workers: int | None) -> None:
    """Every tensor's (quantised) bytes, padded, encoded on ``workers`` threads in file order."""
    nworkers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=nworkers) as pool:
        for t in plan.tensors:
            assert t.chunks is not None
            written = since_release = 0
            for data in _ordered(pool, (lambda c, q=t.qtype: _encode(c, q, gguf)), t.chunks(), nworkers * 2):
                f.write(data)
                written += len(data)
                since_release += len(data)
                if since_release >= _RELEASE_BYTES:  # a big tensor: drop what it faulted in so far
                    src.release()
                    since_release = 0
            if written != t.nbytes:
                raise AssertionError(f"{t.name}: wrote {written} bytes, planned {t.nbytes}")
            _pad(f)
            if t.nbytes >= 1 << 22:
                src.release()


def _encode(chunk: np.ndarray, qtype: Any, gguf: Any) -> memoryview:
    a = np.ascontiguousarray(chunk, dtype="<f4")
    if qtype != gguf.GGMLQuantizationType.F32:
        a = gguf.quants.quantize(a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1), qtype)
    return memoryview(np.ascontiguousarray(a)).cast("B")


def _ordered(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterator[Any], window: int) -> Iterator[Any]:
    """pool.map with a bounded number of jobs in flight (chunks are produced lazily)."""
    pending: list[Any] = []
    for it in items:
        pending.append(pool.submit(fn, it))
        if len(pending) >= window:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()


def _pad(f: Any) -> None:
    pos = f.tell()
    gap = (-pos) % _ALIGN
    if gap:
        f.write(bytes(gap))


# ---- reading back ---------------------------------------------------------------------------

_lock = threading.Lock()


def read_metadata(path: Path) -> dict[str, Any]:
    """Scalar and short-array KV metadata of a GGUF file plus its tensors {name: (shape, type)}.

    ``shape`` is in numpy (row-major) order; tokenizer arrays are left out.
    """
    gguf = _gguf()
    with _lock:
        r = gguf.GGUFReader(str(path), "r")
    meta: dict[str, Any] = {}
    for name, fld in r.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            if name.endswith("_id") or name.startswith("tokenizer.ggml.add_"):
                meta[name] = fld.contents()
            continue
        if name.startswith("GGUF."):
            continue
        try:
            meta[name] = fld.contents()
        except Exception:  # noqa: BLE001 - exotic types are skipped
            continue
    meta["tensors"] = {t.name: (tuple(int(x) for x in reversed(t.shape.tolist())), t.tensor_type.name, int(t.n_bytes),
                                int(t.data_offset))
                       for t in r.tensors}
    return meta
