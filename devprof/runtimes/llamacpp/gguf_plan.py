"""The plan of a GGUF export: which tensors (names, shapes, types, where their rows come from) and
which metadata keys the file of one catalog model gets (see :mod:`.gguf_export` for the mapping of
the reference model onto llama.cpp's architectures)."""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from devprof.catalog import ModelSpec
from devprof.errors import DevprofError, UsageError

__all__ = [
    "EXPORT_VERSION",
    "WEIGHT_TYPES",
    "GATING_SOFTMAX_WEIGHT",
    "ROUTING_NOTE",
    "RMS_EPS",
    "arch_for",
    "export_plan",
    "expected_tensor_bytes",
    "TensorSpec",
    "ExportPlan",
]

#: Bump when the bytes of an exported file change for the same bundle.
EXPORT_VERSION = 1
WEIGHT_TYPES = ("f32", "q8_0", "q4_0")
#: The reference engine's RMSNorm epsilon (devprof.runtimes.reference.engine.EPS; not imported: torch).
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
        from devprof.runtimes.reference.bundle import load_layout

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
    arch = arch_for(spec)
    tensors = _plan_tensors(spec, arch, _TensorList(qt, _qtype("f32"), source))
    notes: list[str] = []
    kv = _plan_kv(spec, arch, weights, notes)
    return ExportPlan(arch=arch, weights=weights, kv=kv, tensors=tensors, notes=notes)


class _TensorList:
    """The tensors of a plan in file order, and the row sources of the reference bundle."""

    def __init__(self, qt, f32, src: _Source | None) -> None:
        self.qt, self.f32, self.src = qt, f32, src
        self.tensors: list[TensorSpec] = []

    def add(self, name: str, shape: tuple[int, ...], quantised: bool, make: Callable[[], np.ndarray] | None = None,
            chunks: Callable[[], Iterator[np.ndarray]] | None = None) -> None:
        q = self.qt if quantised else self.f32
        if chunks is None and make is not None:
            chunks = _row_chunks(make)
        self.tensors.append(TensorSpec(name, tuple(shape), q, _nbytes(tuple(shape), q), chunks if self.src else None))

    def T(self, name: str) -> Callable[[], np.ndarray]:
        return lambda: self.src.t(name)  # type: ignore[union-attr]

    def rows(self, name: str, a: int, b: int, perm_heads: int = 0) -> Callable[[], np.ndarray]:
        def f() -> np.ndarray:
            w = self.src.t(name)[a:b]  # type: ignore[union-attr]
            return _permute_rows(w, perm_heads) if perm_heads else w
        return f


def _plan_tensors(spec: ModelSpec, arch: str, out: _TensorList) -> list[TensorSpec]:
    d = spec.hidden
    out.add("token_embd.weight", (spec.vocab, d), True, out.T("tok_embeddings"))
    for i in range(spec.n_layers):
        p, b = f"layers.{i}.", f"blk.{i}."
        _attention_tensors(spec, arch, out, p, b)
        if spec.is_moe:
            _moe_tensors(spec, out, p, b)
        else:
            f = spec.ffn
            out.add(b + "ffn_norm.weight", (d,), False, out.T(p + "ffn_norm"))
            out.add(b + "ffn_gate.weight", (f, d), True, out.rows(p + "ffn.w13", 0, f))
            out.add(b + "ffn_up.weight", (f, d), True, out.rows(p + "ffn.w13", f, 2 * f))
            out.add(b + "ffn_down.weight", (d, f), True, out.T(p + "ffn.w2"))
    out.add("output_norm.weight", (d,), False, out.T("norm"))
    if not spec.tied_embeddings:
        out.add("output.weight", (spec.vocab, d), True, out.T("output"))
    return out.tensors


def _attention_tensors(spec: ModelSpec, arch: str, out: _TensorList, p: str, b: str) -> None:
    d, H, KV, hd = spec.hidden, spec.n_heads, spec.n_kv_heads, spec.head_dim
    permute = _rope_permuted(arch)
    src = out.src
    out.add(b + "attn_norm.weight", (d,), False, out.T(p + "attn_norm"))
    nq, nk = H * hd, KV * hd
    out.add(b + "attn_q.weight", (nq, d), True, out.rows(p + "wqkv", 0, nq, H if permute else 0))
    out.add(b + "attn_k.weight", (nk, d), True, out.rows(p + "wqkv", nq, nq + nk, KV if permute else 0))
    out.add(b + "attn_v.weight", (nk, d), True, out.rows(p + "wqkv", nq + nk, nq + 2 * nk))
    out.add(b + "attn_output.weight", (d, nq), True, out.T(p + "wo"))
    if spec.qk_norm:
        for which in ("q", "k"):
            def norm_w(n: str = p + f"{which}_norm") -> np.ndarray:
                w = src.t(n)  # type: ignore[union-attr]
                return _permute_rows(w, 1) if permute else w
            out.add(b + f"attn_{which}_norm.weight", (hd,), False, norm_w)
    if arch == "granite_swa":
        out.add(b + "attn_sinks.weight", (H,), False, lambda: np.full(H, SINK_LOGIT, dtype=np.float32))


def _moe_tensors(spec: ModelSpec, out: _TensorList, p: str, b: str) -> None:
    d, E, fe = spec.hidden, spec.n_experts, spec.expert_ffn
    src, rows = out.src, out.rows
    out.add(b + "post_attention_norm.weight", (d,), False, out.T(p + "ffn_norm"))
    out.add(b + "ffn_gate_inp.weight", (E, d), False, out.T(p + "router"))
    out.add(b + "exp_probs_b.bias", (E,), False, out.T(p + "router_bias"))
    ex = [p + f"experts.{e}." for e in range(E)]
    out.add(b + "ffn_gate_exps.weight", (E, fe, d), True,
            chunks=_concat_chunks([rows(q + "w13", 0, fe) for q in ex]))
    out.add(b + "ffn_up_exps.weight", (E, fe, d), True,
            chunks=_concat_chunks([rows(q + "w13", fe, 2 * fe) for q in ex]))
    out.add(b + "ffn_down_exps.weight", (E, d, fe), True, chunks=_concat_chunks([out.T(q + "w2") for q in ex]))
    if spec.n_shared:
        fs, ns = spec.shared_ffn, spec.n_shared
        sh = [p + f"shared.{j}." for j in range(ns)]
        out.add(b + "ffn_gate_shexp.weight", (ns * fs, d), True,
                chunks=_concat_chunks([rows(q + "w13", 0, fs) for q in sh]))
        out.add(b + "ffn_up_shexp.weight", (ns * fs, d), True,
                chunks=_concat_chunks([rows(q + "w13", fs, 2 * fs) for q in sh]))

        def down_shexp(names: list[str] = sh) -> np.ndarray:
            ws = [src.t(q + "w2") for q in names]  # type: ignore[union-attr]
            return ws[0] if len(ws) == 1 else np.concatenate(ws, axis=1)
        out.add(b + "ffn_down_shexp.weight", (d, ns * fs), True, down_shexp)


def _plan_kv(spec: ModelSpec, arch: str, weights: str, notes: list[str]) -> list[tuple[str, Any, str]]:
    """The metadata keys (name, value, GGUF kind); notes on what differs from the reference go to ``notes``."""
    kv: list[tuple[str, Any, str]] = []
    hd, L = spec.head_dim, spec.n_layers

    def k(key: str, value: Any, kind: str) -> None:
        kv.append((key.format(arch=arch), value, kind))

    k("general.name", spec.display, "str")
    k("general.file_type", _file_type(weights), "u32")
    k("general.quantization_version", 2, "u32")
    k("{arch}.context_length", spec.max_context, "u32")
    k("{arch}.embedding_length", spec.hidden, "u32")
    k("{arch}.block_count", L, "u32")
    k("{arch}.attention.head_count", spec.n_heads, "u32")
    k("{arch}.attention.head_count_kv", spec.n_kv_heads, "u32")
    k("{arch}.attention.key_length", hd, "u32")
    k("{arch}.attention.value_length", hd, "u32")
    k("{arch}.attention.layer_norm_rms_epsilon", RMS_EPS, "f32")
    k("{arch}.rope.freq_base", float(spec.rope_theta), "f32")
    k("{arch}.rope.dimension_count", hd, "u32")
    k("{arch}.vocab_size", spec.vocab, "u32")
    if spec.is_moe:
        _moe_kv(spec, k, notes)
    else:
        k("{arch}.feed_forward_length", spec.ffn, "u32")
    if arch == "granite_swa":
        k("{arch}.attention.sliding_window", int(spec.sliding_window or 0), "u32")
        k("{arch}.attention.sliding_window_pattern", [not spec.is_global(i) for i in range(L)], "arr_bool")
        k("{arch}.rope.freq_base_swa", float(spec.rope_theta), "f32")
        k("{arch}.logit_scale", 1.0, "f32")
        notes.append("granite_swa: per-layer sliding windows as in the reference; logit_scale 1; "
                     "attention sinks -1e30 (inert)")
    return kv


def _moe_kv(spec: ModelSpec, k: Callable[[str, Any, str], None], notes: list[str]) -> None:
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


def expected_tensor_bytes(spec: ModelSpec, weights: str = "q4_0") -> int:
    """Bytes of tensor data (without padding) in the GGUF of ``spec``."""
    return export_plan(spec, weights).tensor_bytes
