"""Routing traces: the format (written by :func:`write_trace`, read by :func:`load_trace`) and its
numbers: distinct (layer, expert) pairs, coverage, load, expert bytes.

A routing trace (``python -m devprof.refruntime --routing_trace PATH.npz`` writes one) holds

    experts            uint8 [n_layers, n_tokens, top_k]: the experts each processed token went
                       to in each layer (prompt tokens first, then decode steps)
    n_prompt           how many of the tokens are the prompt
    n_experts, top_k   routed experts per layer, experts per token
    layer_block_bytes  int64 [n_layers]: bytes of one expert's block (gate, up, down) per layer
    block_offsets, block_nbytes   int64 [n_layers, n_experts]: where each block is in weights.bin
    n_decode, model, bundle_id    decode steps (tokens - n_prompt); the model and its bundle id

:func:`summarize` turns one into the :class:`~devprof.results.RoutingSummary` the store keeps;
:func:`cumulative_expert_bytes` gives, after each token, the bytes of the distinct expert blocks
touched so far, to set beside RssFile over time. Both also accept plain arrays (tests,
other runtimes' traces): a mapping with at least ``experts``, or the ``experts`` array itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from devprof.errors import UsageError
from devprof.files import atomic_path
from devprof.results import RoutingSummary

__all__ = ["load_trace", "write_trace", "summarize", "coverage", "first_touch", "cumulative_expert_bytes", "log_points"]


def load_trace(src: Any, n_experts: int | None = None) -> dict[str, Any]:
    """A trace as a dict of numpy values, from an .npz path, a mapping, or an ``experts`` array.

    ``n_experts`` overrides (or, for bare arrays, supplies) the number of routed experts;
    without it a bare array is taken to have ``max id + 1`` experts.
    """
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        try:
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read routing trace {p}: {exc}") from None
    elif isinstance(src, Mapping):
        d = dict(src)
    else:
        d = {"experts": src}
    if "experts" not in d:
        raise UsageError("routing trace has no 'experts' array")
    ex = np.asarray(d["experts"])
    if ex.ndim != 3:
        raise UsageError(f"routing trace 'experts' must be [layers, tokens, top_k], got shape {ex.shape}")
    if ex.size and (ex.dtype.kind not in "iu" or ex.min() < 0):
        raise UsageError("routing trace 'experts' must hold non-negative integer ids")
    d["experts"] = ex
    if n_experts is not None:
        d["n_experts"] = n_experts
    elif "n_experts" not in d:
        d["n_experts"] = int(ex.max()) + 1 if ex.size else 0
    d["n_experts"] = int(d["n_experts"])
    if ex.size and int(ex.max()) >= d["n_experts"]:
        raise UsageError(f"routing trace names expert {int(ex.max())} but has only {d['n_experts']} experts")
    d.setdefault("top_k", ex.shape[2])
    d["top_k"] = int(d["top_k"])
    d.setdefault("n_prompt", ex.shape[1])
    d["n_prompt"] = int(d["n_prompt"])
    return d


def write_trace(path: str | os.PathLike, experts: np.ndarray, n_prompt: int, n_experts: int, top_k: int,
                block_offsets: np.ndarray, block_nbytes: np.ndarray, block_bytes: int,
                model: str = "", bundle_id: str = "") -> None:
    """Write a trace (the format above) as .npz, atomically: a reader never sees half a file."""
    n_layers = experts.shape[0]
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp,
            experts=experts,
            n_prompt=np.int64(n_prompt),
            n_decode=np.int64(experts.shape[1] - n_prompt),
            n_experts=np.int64(n_experts),
            top_k=np.int64(top_k),
            layer_block_bytes=np.full(n_layers, block_bytes, dtype=np.int64),
            block_offsets=block_offsets,
            block_nbytes=block_nbytes,
            model=np.str_(model),
            bundle_id=np.str_(bundle_id),
        )


def log_points(n: int, points: int = 64) -> np.ndarray:
    """About ``points`` log-spaced token counts in 1..n, always including 1 and n (unique, sorted)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n <= points:
        return np.arange(1, n + 1, dtype=np.int64)
    pts = np.unique(np.rint(np.logspace(0.0, np.log10(n), points)).astype(np.int64))
    pts[-1] = n
    return pts


def first_touch(experts: np.ndarray, n_experts: int) -> np.ndarray:
    """int64 [n_layers, n_experts]: index of the first token routed to each (layer, expert),
    or ``n_tokens`` for pairs never touched."""
    L, T, k = experts.shape
    first = np.full((L, n_experts), T, dtype=np.int64)
    for layer in range(L):
        flat = experts[layer].reshape(-1).astype(np.int64)  # token-major: slot i is token i // k
        if flat.size == 0:
            continue
        ids, idx = np.unique(flat, return_index=True)
        first[layer, ids] = idx // k
    return first


def coverage(experts: np.ndarray, n_experts: int, tokens: np.ndarray) -> np.ndarray:
    """Distinct (layer, expert) pairs touched within the first ``tokens[i]`` tokens."""
    T = experts.shape[1]
    ft = np.sort(first_touch(experts, n_experts).ravel())
    ft = ft[ft < T]
    return np.searchsorted(ft, np.asarray(tokens, dtype=np.int64), side="left").astype(np.int64)


def summarize(src: Any, points: int = 64, n_experts: int | None = None) -> RoutingSummary:
    """The :class:`RoutingSummary` of a trace (path, mapping or array; see :func:`load_trace`)."""
    d = load_trace(src, n_experts)
    ex = d["experts"]
    E = d["n_experts"]
    L, T, k = ex.shape
    load = np.zeros((L, E), dtype=np.int64)
    for layer in range(L):
        if ex[layer].size:
            load[layer] = np.bincount(ex[layer].ravel().astype(np.int64), minlength=E)
    per_layer = (load > 0).sum(1)
    tokens = log_points(T, points)
    cov = coverage(ex, E, tokens) if T and E else np.zeros(len(tokens), dtype=np.int64)
    return RoutingSummary(
        n_layers=int(L),
        n_experts=int(E),
        top_k=int(k),
        n_tokens=int(T),
        distinct_pairs=int(per_layer.sum()),
        distinct_per_layer=[int(v) for v in per_layer],
        coverage_tokens=[int(v) for v in tokens],
        coverage_distinct=[int(v) for v in cov],
        expert_load=[[int(v) for v in row] for row in load],
    )


def _block_bytes(d: Mapping[str, Any], layout: Any, L: int, E: int) -> np.ndarray:
    """int64 [L, E]: bytes of each expert block, from the layout if given, else the trace."""
    if layout is not None:
        if isinstance(layout, (str, os.PathLike)):
            p = Path(layout)
            p = p / "layout.json" if p.is_dir() else p
            layout = json.loads(p.read_text())
        out = np.zeros((L, E), dtype=np.int64)
        blocks = layout.get("expert_blocks", [])
        if not blocks:
            raise UsageError("layout has no expert blocks (a dense model?)")
        for b in blocks:
            if b["layer"] < L and b["expert"] < E:
                out[b["layer"], b["expert"]] = b["nbytes"]
        return out
    if "block_nbytes" in d and np.asarray(d["block_nbytes"]).shape == (L, E):
        return np.asarray(d["block_nbytes"], dtype=np.int64)
    if "layer_block_bytes" in d:
        per = np.broadcast_to(np.asarray(d["layer_block_bytes"], dtype=np.int64).reshape(-1), (L,))
        return np.repeat(per[:, None], E, axis=1)
    raise UsageError("no expert block sizes: pass the bundle's layout or a trace with layer_block_bytes")


def cumulative_expert_bytes(trace: Any, layout: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of the distinct expert blocks touched after each token.

    ``trace``: path, mapping or array (see :func:`load_trace`); ``layout``: the bundle's
    layout.json (dict, file or bundle folder), or None to use the trace's ``block_nbytes`` /
    ``layer_block_bytes``. Returns ``(tokens, bytes)``: ``tokens = 1..n_tokens`` and
    ``bytes[i]`` = sum of the blocks of every (layer, expert) first touched by token <= tokens[i]
    -- the weight bytes a lazily paged runtime must have brought in by then (for a cold page
    cache; page granularity and readahead can only add to it).
    """
    d = load_trace(trace)
    ex = d["experts"]
    L, T, _ = ex.shape
    E = d["n_experts"]
    tokens = np.arange(1, T + 1, dtype=np.int64)
    if T == 0 or E == 0:
        return tokens, np.zeros(T, dtype=np.int64)
    sizes = _block_bytes(d, layout, L, E)
    first = first_touch(ex, E)
    per_token = np.zeros(T + 1, dtype=np.int64)
    np.add.at(per_token, first.ravel(), sizes.ravel())
    return tokens, np.cumsum(per_token[:T])
