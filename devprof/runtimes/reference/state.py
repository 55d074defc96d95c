"""The reference engine's state: one block's weight views, the preallocated KV cache, the record of
one generation, and the thread and malloc settings the engine runs under."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from devprof.catalog import ModelSpec

__all__ = ["Layer", "KVCache", "Generation", "tune_malloc", "set_threads", "decode_threads"]


class Layer:
    """One transformer block's weights (views into the mapping) and its attention kind."""

    __slots__ = ("index", "is_global", "window", "attn_norm", "wqkv", "wo", "qk_norm", "ffn_norm",
                 "w13", "w2", "router", "router_bias", "shared", "experts_w13", "experts_w2",
                 # numpy views ([in, out]) for the decode path's GEMVs
                 "w2_t", "wqkv_n", "wo_n", "w13_n", "w2_n", "router_n",
                 "shared_n", "experts_w13_n", "experts_w2_n", "bias_n",
                 "attn_norm_n", "ffn_norm_n", "qk_norm_n")

    def __init__(self) -> None:
        self.shared: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.experts_w13: list[torch.Tensor] = []
        self.experts_w2: list[torch.Tensor] = []
        self.qk_norm: torch.Tensor | None = None
        self.qk_norm_n: np.ndarray | None = None
        self.w13 = self.w2 = self.router = self.router_bias = None


class KVCache:
    """Preallocated K/V per layer: ``[n_kv, capacity, hd]`` (global) or a ``[n_kv, ring, hd]``
    ring of the last ``window`` positions (local). Memory is allocated lazily by the OS
    (``torch.empty``), so RssAnon grows as positions are written."""

    def __init__(self, spec: ModelSpec, capacity: int):
        self.capacity = capacity
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.ring: list[int | None] = []
        for i in range(spec.n_layers):
            if spec.is_global(i):
                n, ring = capacity, None
            else:
                n = ring = min(spec.sliding_window, capacity)
            self.k.append(torch.empty(spec.n_kv_heads, n, spec.head_dim))
            self.v.append(torch.empty(spec.n_kv_heads, n, spec.head_dim))
            self.ring.append(ring)
        # [1, n_kv, n, hd] views for attention
        self.k4 = [t.unsqueeze(0) for t in self.k]
        self.v4 = [t.unsqueeze(0) for t in self.v]
        # numpy views of the same memory (decode writes its K and V rows through them)
        self.k_n = [t.numpy() for t in self.k]
        self.v_n = [t.numpy() for t in self.v]

    def nbytes(self) -> int:
        return sum(t.numel() * 4 for t in self.k + self.v)


@dataclass
class Generation:
    """What one :meth:`Engine.generate` did. Times are wall-clock ms since the epoch."""

    prompt_tokens: int
    tokens: list[int]  # the max_new_tokens generated ids (the first from the prefill logits)
    inference_start_ms: float
    prompt_eval_end_ms: float
    first_token_ms: float
    inference_end_ms: float
    aggregate_sampling_time_ms: float
    aggregate_model_execution_time_ms: float
    decode_steps: int
    extra: dict[str, Any] = field(default_factory=dict)


def tune_malloc() -> bool:
    """Keep freed activation memory in the heap (glibc ``mallopt``): no mmap/munmap, page
    faults and kernel zeroing for every large tensor of every layer.

    What it saves: docs/measurements.md, "Heap tuning". RssAnon then stays at its prefill high-water
    mark during decode, as a runtime with a statically planned activation arena (ExecuTorch) does.
    Returns False where libc is not glibc (no change).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def set_threads(n: int) -> None:
    """Threads for torch (prefill, element-wise ops) and for numpy's BLAS (decode's GEMVs)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


@contextlib.contextmanager
def decode_threads() -> Iterator[None]:
    """torch on one thread while decoding: the GEMVs run in numpy's BLAS, whose own threads
    would otherwise compete with torch's OpenMP threads spinning between their (tiny)
    element-wise ops (docs/measurements.md, "Decode threads")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
