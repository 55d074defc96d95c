"""GGUF export of a reference bundle: the same seeded weights, for llama.cpp (F32, Q8_0, Q4_0).

``build_gguf(spec, seed=0, weights="q4_0")`` builds (or reuses) the reference bundle of
(spec, seed) with :func:`devprof.refruntime.bundle.build_bundle`, then streams its weights.bin
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
loading the file and comparing logits with :mod:`devprof.refruntime.engine`, see
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
tokens other than the last never touch the last layer's experts; see devprof.llamarunner).
"""

from __future__ import annotations

import fcntl
import json
import math
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from devprof.catalog import ModelSpec
from devprof.errors import DevprofError, UsageError
from devprof.files import atomic_path, atomic_write

__all__ = [
    "EXPORT_VERSION",
    "WEIGHT_TYPES",
    "GATING_SOFTMAX_WEIGHT",
    "ROUTING_NOTE",
    "RMS_EPS",
    "arch_for",
    "build_gguf",
    "gguf_path",
    "export_plan",
    "expected_tensor_bytes",
    "read_metadata",
    "TensorSpec",
    "ExportPlan",
]

#: Bump when the bytes of an exported file change for the same bundle.
EXPORT_VERSION = 1
WEIGHT_TYPES = ("f32", "q8_0", "q4_0")
#: The reference engine's RMSNorm epsilon (devprof.refruntime.engine.EPS; not imported: torch).
RMS_EPS = 1e-6
#: llama.cpp's enum llama_expert_gating_func_type: 1 softmax, 2 sigmoid, 3 softmax over the
#: selected logits ("SOFTMAX_WEIGHT").
GATING_SOFTMAX_WEIGHT = 3
#: Attention sink logit of granite_swa's mandatory sinks: contributes exp(-1e30 - max) = 0.
SINK_LOGIT = -1e30
ROUTING_NOTE = (
    "llama.cpp glm4moe, expert_gating_func=3 (SOFTMAX_WEIGHT), exp_probs_b=router_bias: experts "
    "selected by top_k(logits + router_bias) exactly as the reference; gate weights are softmax(logits) "
    "over the k selected experts instead of the reference's sigmoid(logits) normalised over them"
)
_ALIGN = 32  # GGUF default data alignment (what llama.cpp's own converter writes)
_ROWS_PER_CHUNK_BYTES = 8 << 20  # f32 bytes of rows quantised per job
_RELEASE_BYTES = 64 << 20  # output bytes between drops of the mapping's resident pages


def _gguf():
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise DevprofError("the GGUF export needs the llamacpp extra: pip install -e '.[llamacpp]'") from None
    return gguf


def _qtype(weights: str):
    gguf = _gguf()
    T = gguf.GGMLQuantizationType
    try:
        return {"f32": T.F32, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[weights]
    except KeyError:
        raise UsageError(f"unknown GGUF weight type {weights!r}; known: {', '.join(WEIGHT_TYPES)}") from None


def _file_type(weights: str) -> int:
    # llama_ftype: ALL_F32 = 0, MOSTLY_Q4_0 = 2, MOSTLY_Q8_0 = 7
    return {"f32": 0, "q4_0": 2, "q8_0": 7}[weights]


# ---- architecture ---------------------------------------------------------------------------


def arch_for(spec: ModelSpec) -> str:
    """The llama.cpp architecture a spec is exported as (see the module docstring)."""
    if spec.is_moe:
        return "glm4moe"
    if spec.qk_norm:
        raise UsageError(f"{spec.display}: a dense model with QK-norm has no llama.cpp architecture here")
    if spec.n_local_layers:
        return "granite_swa"
    return "llama"


def _rope_permuted(arch: str) -> bool:
    """True for archs with interleaved ("normal") RoPE: Q/K rows are permuted from rotate_half."""
    return arch in ("llama", "granite_swa")


def _permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """rotate_half (NeoX) head layout -> interleaved pairs, per head (convert_hf_to_gguf's permute)."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---- the plan -------------------------------------------------------------------------------


@dataclass
class TensorSpec:
    """One GGUF tensor: numpy (row-major) shape, ggml type, byte size and its chunk producer.

    ``chunks()`` yields float32 arrays whose concatenation (in row-major order) is the tensor;
    each chunk holds whole rows, so quantising chunk by chunk gives the tensor's exact bytes.
    """

    name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    nbytes: int
    chunks: Callable[[], Iterator[np.ndarray]] | None = None


@dataclass
class ExportPlan:
    arch: str
    weights: str
    kv: list[tuple[str, Any, str]]  # (key, value, kind): kind in u32 f32 bool str arr_str arr_i32 arr_bool arr_f32
    tensors: list[TensorSpec]
    notes: list[str] = field(default_factory=list)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    gguf = _gguf()
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise UsageError(f"row length {shape[-1]} is not a multiple of the {qtype.name} block ({block})")
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


class _Source:
    """weights.bin mapped read-only; ``t(name)`` is a float32 view (no copy) in logical shape."""

    def __init__(self, bundle: Path):
        from devprof.refruntime.bundle import load_layout

        self.layout = load_layout(bundle)
        self.mm = np.memmap(bundle / "weights.bin", dtype=np.uint8, mode="r")
        if self.mm.size != self.layout["file_size"]:
            raise DevprofError(f"{bundle}/weights.bin has {self.mm.size} bytes, layout.json says "
                               f"{self.layout['file_size']}")

    def t(self, name: str) -> np.ndarray:
        """The tensor in its logical shape ([out, in] for a matrix): a matrix the bundle stores
        transposed (layout.json ``"transposed": true``, stored [in, out]) comes back as a
        transposed view; chunks of its rows are copied out column-wise."""
        info = self.layout["tensors"][name]
        n = math.prod(info["shape"])
        a = self.mm[info["offset"]:info["offset"] + 4 * n].view("<f4").reshape(info["shape"])
        return a.T if info.get("transposed") else a

    def release(self) -> None:
        """Drop the mapping's resident pages (read ones are clean: the kernel drops them, the
        file stays in the page cache), so the export's RSS stays at the chunks in flight."""
        mm = getattr(self.mm, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)


def _row_chunks(arr_fn: Callable[[], np.ndarray]) -> Callable[[], Iterator[np.ndarray]]:
    """Chunks of whole rows of a 2-D (or 1-D) array, about _ROWS_PER_CHUNK_BYTES each."""

    def gen() -> Iterator[np.ndarray]:
        a = arr_fn()
        if a.ndim == 1:
            yield a
            return
        rows = max(1, _ROWS_PER_CHUNK_BYTES // (4 * a.shape[-1]))
        for s in range(0, a.shape[0], rows):
            yield a[s:s + rows]

    return gen


def _concat_chunks(parts: list[Callable[[], np.ndarray]]) -> Callable[[], Iterator[np.ndarray]]:
    """One tensor made of several row blocks (stacked experts, concatenated shared experts)."""

    def gen() -> Iterator[np.ndarray]:
        for p in parts:
            yield from _row_chunks(p)()

    return gen


def export_plan(spec: ModelSpec, weights: str = "f32", source: _Source | None = None) -> ExportPlan:
    """Every KV pair and tensor of the GGUF of ``spec`` (no tensor data without ``source``)."""
    qt = _qtype(weights)
    F32 = _qtype("f32")
    arch = arch_for(spec)
    d, H, KV, hd, L = spec.hidden, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.n_layers
    permute = _rope_permuted(arch)
    src = source
    tensors: list[TensorSpec] = []
    notes: list[str] = []

    def add(name: str, shape: tuple[int, ...], quantised: bool, make: Callable[[], np.ndarray] | None = None,
            chunks: Callable[[], Iterator[np.ndarray]] | None = None) -> None:
        q = qt if quantised else F32
        if chunks is None and make is not None:
            chunks = _row_chunks(make)
        tensors.append(TensorSpec(name, tuple(shape), q, _nbytes(tuple(shape), q), chunks if src else None))

    def T(name: str) -> Callable[[], np.ndarray]:
        return lambda: src.t(name)  # type: ignore[union-attr]

    def rows(name: str, a: int, b: int, perm_heads: int = 0) -> Callable[[], np.ndarray]:
        def f() -> np.ndarray:
            w = src.t(name)[a:b]  # type: ignore[union-attr]
            return _permute_rows(w, perm_heads) if perm_heads else w
        return f

    add("token_embd.weight", (spec.vocab, d), True, T("tok_embeddings"))
    for i in range(L):
        p, b = f"layers.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", (d,), False, T(p + "attn_norm"))
        nq, nk = H * hd, KV * hd
        add(b + "attn_q.weight", (nq, d), True, rows(p + "wqkv", 0, nq, H if permute else 0))
        add(b + "attn_k.weight", (nk, d), True, rows(p + "wqkv", nq, nq + nk, KV if permute else 0))
        add(b + "attn_v.weight", (nk, d), True, rows(p + "wqkv", nq + nk, nq + 2 * nk))
        add(b + "attn_output.weight", (d, nq), True, T(p + "wo"))
        if spec.qk_norm:
            for which in ("q", "k"):
                def norm_w(n: str = p + f"{which}_norm") -> np.ndarray:
                    w = src.t(n)  # type: ignore[union-attr]
                    return _permute_rows(w, 1) if permute else w
                add(b + f"attn_{which}_norm.weight", (hd,), False, norm_w)
        if arch == "granite_swa":
            add(b + "attn_sinks.weight", (H,), False, lambda: np.full(H, SINK_LOGIT, dtype=np.float32))
        if not spec.is_moe:
            f = spec.ffn
            add(b + "ffn_norm.weight", (d,), False, T(p + "ffn_norm"))
            add(b + "ffn_gate.weight", (f, d), True, rows(p + "ffn.w13", 0, f))
            add(b + "ffn_up.weight", (f, d), True, rows(p + "ffn.w13", f, 2 * f))
            add(b + "ffn_down.weight", (d, f), True, T(p + "ffn.w2"))
            continue
        E, fe = spec.n_experts, spec.expert_ffn
        add(b + "post_attention_norm.weight", (d,), False, T(p + "ffn_norm"))
        add(b + "ffn_gate_inp.weight", (E, d), False, T(p + "router"))
        add(b + "exp_probs_b.bias", (E,), False, T(p + "router_bias"))
        ex = [p + f"experts.{e}." for e in range(E)]
        add(b + "ffn_gate_exps.weight", (E, fe, d), True,
            chunks=_concat_chunks([rows(q + "w13", 0, fe) for q in ex]))
        add(b + "ffn_up_exps.weight", (E, fe, d), True,
            chunks=_concat_chunks([rows(q + "w13", fe, 2 * fe) for q in ex]))
        add(b + "ffn_down_exps.weight", (E, d, fe), True, chunks=_concat_chunks([T(q + "w2") for q in ex]))
        if spec.n_shared:
            fs, ns = spec.shared_ffn, spec.n_shared
            sh = [p + f"shared.{j}." for j in range(ns)]
            add(b + "ffn_gate_shexp.weight", (ns * fs, d), True,
                chunks=_concat_chunks([rows(q + "w13", 0, fs) for q in sh]))
            add(b + "ffn_up_shexp.weight", (ns * fs, d), True,
                chunks=_concat_chunks([rows(q + "w13", fs, 2 * fs) for q in sh]))

            def down_shexp(names: list[str] = sh) -> np.ndarray:
                ws = [src.t(q + "w2") for q in names]  # type: ignore[union-attr]
                return ws[0] if len(ws) == 1 else np.concatenate(ws, axis=1)
            add(b + "ffn_down_shexp.weight", (d, ns * fs), True, down_shexp)
    add("output_norm.weight", (d,), False, T("norm"))
    if not spec.tied_embeddings:
        add("output.weight", (spec.vocab, d), True, T("output"))

    kv: list[tuple[str, Any, str]] = []

    def k(key: str, value: Any, kind: str) -> None:
        kv.append((key.format(arch=arch), value, kind))

    k("general.name", spec.display, "str")
    k("general.file_type", _file_type(weights), "u32")
    k("general.quantization_version", 2, "u32")
    k("{arch}.context_length", spec.max_context, "u32")
    k("{arch}.embedding_length", d, "u32")
    k("{arch}.block_count", L, "u32")
    k("{arch}.attention.head_count", H, "u32")
    k("{arch}.attention.head_count_kv", KV, "u32")
    k("{arch}.attention.key_length", hd, "u32")
    k("{arch}.attention.value_length", hd, "u32")
    k("{arch}.attention.layer_norm_rms_epsilon", RMS_EPS, "f32")
    k("{arch}.rope.freq_base", float(spec.rope_theta), "f32")
    k("{arch}.rope.dimension_count", hd, "u32")
    k("{arch}.vocab_size", spec.vocab, "u32")
    if spec.is_moe:
        shared_total = spec.n_shared * spec.shared_ffn
        if shared_total % spec.expert_ffn:
            raise UsageError(f"{spec.display}: glm4moe needs the shared expert width ({shared_total}) to be a "
                             f"multiple of the expert width ({spec.expert_ffn})")
        k("{arch}.feed_forward_length", shared_total or spec.expert_ffn, "u32")
        k("{arch}.expert_count", spec.n_experts, "u32")
        k("{arch}.expert_used_count", spec.top_k, "u32")
        k("{arch}.expert_feed_forward_length", spec.expert_ffn, "u32")
        k("{arch}.expert_shared_count", shared_total // spec.expert_ffn, "u32")
        k("{arch}.leading_dense_block_count", 0, "u32")
        k("{arch}.expert_weights_norm", True, "bool")
        k("{arch}.expert_weights_scale", 1.0, "f32")
        k("{arch}.expert_gating_func", GATING_SOFTMAX_WEIGHT, "u32")
        k("{arch}.nextn_predict_layers", 0, "u32")
        notes.append(ROUTING_NOTE)
        if spec.gate != "sigmoid":
            notes.append(f"reference gate {spec.gate!r}: weights there are softmax over all experts; "
                         "here softmax over the selected ones")
        if spec.n_local_layers:
            notes.append("glm4moe has no sliding-window attention: every layer is global here")
    else:
        k("{arch}.feed_forward_length", spec.ffn, "u32")
    if arch == "granite_swa":
        k("{arch}.attention.sliding_window", int(spec.sliding_window or 0), "u32")
        k("{arch}.attention.sliding_window_pattern", [not spec.is_global(i) for i in range(L)], "arr_bool")
        k("{arch}.rope.freq_base_swa", float(spec.rope_theta), "f32")
        k("{arch}.logit_scale", 1.0, "f32")
        notes.append("granite_swa: per-layer sliding windows as in the reference; logit_scale 1; "
                     "attention sinks -1e30 (inert)")
    return ExportPlan(arch=arch, weights=weights, kv=kv, tensors=tensors, notes=notes)


def expected_tensor_bytes(spec: ModelSpec, weights: str = "q4_0") -> int:
    """Bytes of tensor data (without padding) in the GGUF of ``spec``."""
    return export_plan(spec, weights).tensor_bytes


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
    from devprof.refruntime.bundle import bundle_dir, bundle_id

    _qtype(weights)
    folder = bundle_dir(spec, seed, cache_dir)
    bid = bundle_id(spec, seed)
    return folder.parent / f"{folder.name}-{weights}-e{EXPORT_VERSION}-{bid[:12]}.gguf"


def build_gguf(spec: ModelSpec, seed: int = 0, weights: str = "f32", cache_dir: Path | None = None, *,
               workers: int | None = None) -> Path:
    """The GGUF of (spec, seed) at ``weights`` ("f32" | "q8_0" | "q4_0"), built once and cached.

    ``cache_dir`` is the bundles folder (as for :func:`~devprof.refruntime.bundle.build_bundle`;
    default ``$DEVPROF_CACHE/bundles`` or ``~/.cache/devprof/bundles``). The bundle is built
    (or found) first; a cached GGUF is reused only if its sidecar ``<file>.json`` names the
    bundle's current weights.bin sha256 (from the bundle's manifest.json, so nothing is
    re-hashed), bundle id and this export version, and the file has the recorded size. Stale
    exports of the same bundle name and weight type are removed.
    """
    from devprof.refruntime.bundle import build_bundle, load_config

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
    VT = gguf.GGUFValueType
    kv = plan.kv + _tokenizer_kv(tok, spec.vocab) + [
        ("devprof.bundle_id", config.get("bundle_id", ""), "str"),
        ("devprof.model", spec.name, "str"),
        ("devprof.seed", int(config.get("seed", 0)), "u32"),
        ("devprof.weights", weights, "str"),
        ("devprof.export_version", EXPORT_VERSION, "u32"),
        ("devprof.notes", list(plan.notes) or ["none"], "arr_str"),
    ]
    for key, value, kind in kv:
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
    f.flush()
    os.fsync(f.fileno())
    w.close()


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
