"""The model catalog: architectures and their arithmetic (parameters, bytes, FLOPs, KV cache).

Shapes come from ../shared/REFERENCE.md. A field whose source is a third-party summary of the
paper rather than a primary source is listed in ``ModelSpec.third_party`` and shown with "(3rd)".

Counting conventions (they reproduce the published totals within 3%, see tests/test_catalog.py):
- attention: Wq (d x H*hd), Wk, Wv (d x KV*hd), Wo (H*hd x d); no biases;
- a SwiGLU FFN of width f has 3*d*f weights (gate, up, down); experts likewise;
- the router is d x E (counted as active: every token evaluates it);
- norms are ignored (< 0.01%); the embedding is counted once when tied, twice when not;
- "active" parameters = attention + router + top_k routed experts + shared experts + embeddings
  (the published active counts include the embedding matrix).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from devprof.errors import UsageError

GIB = 1024**3

#: bits per weight for each storage format, including quantisation scales:
#: int8 per-channel (scales negligible), int4 with one fp16 scale per group of 32 weights (QAT INT4).
BITS_PER_WEIGHT = {"fp32": 32.0, "fp16": 16.0, "int8": 8.0, "int4": 4.0 + 16.0 / 32.0}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    display: str
    kind: str  # "moe" | "dense"
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    max_context: int
    ffn: int = 0  # dense FFN width (dense models)
    n_experts: int = 0  # routed experts per layer (MoE)
    expert_ffn: int = 0
    top_k: int = 0
    n_shared: int = 0
    shared_ffn: int = 0
    tied_embeddings: bool = True
    sliding_window: int | None = None  # window of the local-attention layers
    global_layers: tuple[int, ...] | None = None  # indices of full-attention layers; None = all
    gate: str = "softmax"  # router gate: "sigmoid" (normalised top-k) or "softmax"
    qk_norm: bool = False
    rope_theta: float = 10000.0
    mini: bool = False
    notes: str = ""
    third_party: tuple[str, ...] = ()  # fields whose figure comes from a third-party summary
    published: dict[str, float] = field(default_factory=dict)  # published totals, for checks

    # ---- structure -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.kind == "moe"

    def is_global(self, layer: int) -> bool:
        """Whether ``layer`` attends to the whole context (False: sliding window)."""
        if self.sliding_window is None or self.global_layers is None:
            return True
        return layer in self.global_layers

    @property
    def n_local_layers(self) -> int:
        return sum(not self.is_global(i) for i in range(self.n_layers))

    # ---- parameters ------------------------------------------------------------------
    @property
    def attn_params(self) -> int:
        d, q, kv = self.hidden, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return d * q + 2 * d * kv + q * d

    @property
    def expert_params(self) -> int:
        """Weights of one routed expert (SwiGLU)."""
        return 3 * self.hidden * self.expert_ffn

    @property
    def shared_params(self) -> int:
        return self.n_shared * 3 * self.hidden * self.shared_ffn

    @property
    def router_params(self) -> int:
        return self.hidden * self.n_experts

    @property
    def ffn_params(self) -> int:
        """FFN weights of one layer (all experts for MoE)."""
        if self.is_moe:
            return self.n_experts * self.expert_params + self.shared_params + self.router_params
        return 3 * self.hidden * self.ffn

    @property
    def active_ffn_params(self) -> int:
        if self.is_moe:
            return self.top_k * self.expert_params + self.shared_params + self.router_params
        return self.ffn_params

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def total_params(self) -> int:
        return self.n_layers * (self.attn_params + self.ffn_params) + self.embedding_params

    @property
    def active_params(self) -> int:
        return self.n_layers * (self.attn_params + self.active_ffn_params) + self.embedding_params

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def matmul_params_per_token(self) -> int:
        """Weights multiplied per token (active, excluding the embedding lookup, including the head)."""
        return self.n_layers * (self.attn_params + self.active_ffn_params) + self.lm_head_params

    # ---- bytes -----------------------------------------------------------------------
    def weight_bytes(self, dtype: str = "int4", active: bool = False) -> int:
        bits = _bits(dtype)
        n = self.active_params if active else self.total_params
        return int(n * bits / 8)

    def weight_bytes_read_per_token(self, dtype: str = "fp32") -> int:
        """Weight bytes a decode step reads: active layers plus the LM head (not the lookup)."""
        return int(self.matmul_params_per_token * _bits(dtype) / 8)

    def attended(self, layer: int, position: int) -> int:
        """How many positions token ``position`` (1-based count) attends to in ``layer``."""
        if self.is_global(layer):
            return position
        return min(position, self.sliding_window or position)

    def kv_cache_bytes(self, context: int, bytes_per_elem: int = 4) -> int:
        """K and V for ``context`` tokens; local layers keep only their window."""
        per_tok = 2 * self.n_kv_heads * self.head_dim * bytes_per_elem
        return sum(per_tok * self.attended(i, context) for i in range(self.n_layers))

    # ---- FLOPs -----------------------------------------------------------------------
    def _attn_flops_at(self, position: int) -> int:
        # QK^T and AV: 2 matmuls x 2 flops x heads x head_dim x attended positions, per layer
        per = 4 * self.n_heads * self.head_dim
        return sum(per * self.attended(i, position) for i in range(self.n_layers))

    def decode_flops_per_token(self, context: int) -> int:
        """FLOPs of one decode step with ``context`` tokens already in the cache."""
        return 2 * self.matmul_params_per_token + self._attn_flops_at(context + 1)

    def prefill_flops(self, context: int, lm_head: str = "last") -> int:
        """FLOPs of prefilling a ``context``-token prompt (causal attention counted exactly).

        ``lm_head``: "last" computes logits for the last position only (what runtimes do),
        "all" for every position.
        """
        body = self.matmul_params_per_token - self.lm_head_params
        n_head = 1 if lm_head == "last" else context
        attn = 0
        per = 4 * self.n_heads * self.head_dim
        for i in range(self.n_layers):
            w = None if self.is_global(i) else self.sliding_window
            attn += per * _sum_min(context, w)
        return 2 * body * context + 2 * self.lm_head_params * n_head + attn

    def prefill_flops_per_token(self, context: int) -> float:
        return self.prefill_flops(context) / context

    # ---- presentation ----------------------------------------------------------------
    def summary(self, context: int = 8192) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("published",)}
        d["global_layers"] = list(self.global_layers) if self.global_layers else None
        d["third_party"] = list(self.third_party)
        d.update(
            total_params=self.total_params,
            active_params=self.active_params,
            weight_bytes={t: self.weight_bytes(t) for t in ("fp32", "int8", "int4")},
            active_weight_bytes={t: self.weight_bytes(t, active=True) for t in ("fp32", "int8", "int4")},
            context=context,
            kv_cache_bytes_fp32=self.kv_cache_bytes(context, 4),
            kv_cache_bytes_fp16=self.kv_cache_bytes(context, 2),
            prefill_flops=self.prefill_flops(context),
            decode_flops_per_token=self.decode_flops_per_token(context),
            published=dict(self.published),
        )
        return d


def _bits(dtype: str) -> float:
    try:
        return BITS_PER_WEIGHT[dtype]
    except KeyError:
        raise UsageError(f"unknown weight type {dtype!r}; known: {', '.join(BITS_PER_WEIGHT)}") from None


def _sum_min(n: int, w: int | None) -> int:
    """sum_{t=1..n} min(t, w)."""
    if w is None or w >= n:
        return n * (n + 1) // 2
    return w * (w + 1) // 2 + (n - w) * w


def _pro_globals(n_layers: int, n_global: int) -> tuple[int, ...]:
    """Evenly spread global layers, the last layer always global (placement assumed)."""
    step = n_layers / n_global
    return tuple(sorted({n_layers - 1 - int(i * step) for i in range(n_global)}))


_MOE_COMMON = dict(
    kind="moe", n_experts=60, top_k=4, n_shared=1, gate="sigmoid", qk_norm=True,
    rope_theta=5e5, tied_embeddings=True,
)

MODELS: dict[str, ModelSpec] = {}


def _add(spec: ModelSpec) -> None:
    MODELS[spec.name] = spec


_add(ModelSpec(
    name="mobilemoe-s", display="MobileMoE-S", n_layers=20, hidden=768, n_heads=12, n_kv_heads=4,
    head_dim=64, vocab=128256, max_context=8192, expert_ffn=384, shared_ffn=1536, **_MOE_COMMON,
    third_party=("n_layers", "total_params", "active_params", "int4_gib"),
    published={"total_params": 1.3e9, "active_params": 272e6, "int4_gib": 0.68},
))
_add(ModelSpec(
    name="mobilemoe-m", display="MobileMoE-M", n_layers=26, hidden=1024, n_heads=16, n_kv_heads=4,
    head_dim=64, vocab=128256, max_context=8192, expert_ffn=512, shared_ffn=2048, **_MOE_COMMON,
    notes="layer count inferred from the published totals",
    third_party=("total_params", "active_params", "int4_gib"),
    published={"total_params": 2.8e9, "active_params": 528e6, "int4_gib": 1.48},
))
_add(ModelSpec(
    name="mobilemoe-l", display="MobileMoE-L", n_layers=32, hidden=1280, n_heads=20, n_kv_heads=4,
    head_dim=64, vocab=128256, max_context=8192, expert_ffn=640, shared_ffn=2560, **_MOE_COMMON,
    third_party=("int4_gib",),
    published={"total_params": 5.3e9, "active_params": 922e6, "int4_gib": 2.75},
))
_add(ModelSpec(
    name="mobilellm-pro", display="MobileLLM-Pro", kind="dense", n_layers=30, hidden=1280, n_heads=20,
    n_kv_heads=4, head_dim=64, vocab=202048, max_context=131072, ffn=6144, tied_embeddings=True,
    sliding_window=512, global_layers=_pro_globals(30, 9), rope_theta=5e5,
    notes="21 local (window 512) + 9 global attention layers; global placement assumed evenly spread",
    published={"total_params": 1.08e9, "active_params": 1.08e9},
))
_add(ModelSpec(
    name="olmoe-1b-7b", display="OLMoE-1B-7B", kind="moe", n_layers=16, hidden=2048, n_heads=16,
    n_kv_heads=16, head_dim=128, vocab=50304, max_context=4096, n_experts=64, expert_ffn=1024,
    top_k=8, n_shared=0, shared_ffn=0, tied_embeddings=False, gate="softmax", qk_norm=True,
    published={"total_params": 6.92e9, "active_params": 1.28e9},
))
# Quick shapes for runs of a few minutes on a laptop CPU. The MoE mini keeps MobileMoE's
# proportions (60 routed experts of width d/2, top-4, one shared expert four experts wide); the
# dense mini is wider and deeper, like MobileLLM-Pro next to MobileMoE-S, with its local/global
# attention pattern, and is sized so both minis hold about the same INT4 weight memory.
_add(ModelSpec(
    name="mobilemoe-s-mini", display="MobileMoE-S-mini", n_layers=6, hidden=256, n_heads=4,
    n_kv_heads=2, head_dim=64, vocab=16384, max_context=8192, expert_ffn=128, shared_ffn=512,
    mini=True, notes="quick shape: MobileMoE-S proportions at 1/3 width", **_MOE_COMMON,
))
_add(ModelSpec(
    name="mobilellm-pro-mini", display="MobileLLM-Pro-mini", kind="dense", n_layers=12, hidden=384,
    n_heads=6, n_kv_heads=2, head_dim=64, vocab=16384, max_context=32768, ffn=2304,
    tied_embeddings=True, sliding_window=512, global_layers=_pro_globals(12, 4), rope_theta=5e5,
    mini=True, notes="quick shape: same INT4 weight memory as mobilemoe-s-mini; 8 local + 4 global layers",
))


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def check_context(spec: ModelSpec, context: int) -> None:
    if context < 2:
        raise UsageError(f"context must be at least 2 tokens, got {context}")
    if context > spec.max_context:
        raise UsageError(
            f"context {context} is larger than {spec.display} allows ({spec.max_context} tokens)"
        )
