"""How routing spreads over experts: coverage curves, expert load and its entropy, per-category coverage.

Plain functions over a :class:`~devprof.results.RoutingSummary` (what the store keeps) or a
:class:`~devprof.analysis.artifacts.Trace` (the per-token routing from the run folder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from devprof.analysis.artifacts import Trace
from devprof.routing import first_touch, log_points


def layer_coverage(trace: Trace, tokens: np.ndarray | list[int]) -> list[list[int]]:
    """Per layer, distinct experts touched within the first ``tokens[i]`` tokens."""
    T = trace.n_tokens
    ft = first_touch(trace.experts, trace.n_experts)  # [L, E]
    pts = np.asarray(tokens, dtype=np.int64)
    out = []
    for layer in range(trace.n_layers):
        f = np.sort(ft[layer])
        f = f[f < T]
        out.append([int(v) for v in np.searchsorted(f, pts, side="left")])
    return out


def overall_coverage(trace: Trace, tokens: np.ndarray | list[int]) -> list[int]:
    """Distinct (layer, expert) pairs touched within the first ``tokens[i]`` tokens."""
    per = np.asarray(layer_coverage(trace, tokens), dtype=np.int64)
    return [int(v) for v in per.sum(axis=0)] if per.size else [0] * len(tokens)


def coverage_points(n_tokens: int, points: int = 64) -> list[int]:
    return [int(v) for v in log_points(n_tokens, points)]


def coverage_at(tokens: list[int], distinct: list[int], n: int) -> float:
    """The coverage curve read at ``n`` tokens (linear between its points, 0 before the first)."""
    if not tokens:
        return 0.0
    return float(np.interp(n, [0, *tokens], [0, *distinct]))


@dataclass(frozen=True)
class LayerLoad:
    """How a layer's token-slots spread over its experts."""

    layer: int
    slots: int  # token-slots routed (tokens x top_k)
    touched: int  # experts with at least one slot
    entropy_bits: float  # Shannon entropy of the load distribution
    normalized: float  # entropy / log2(n_experts): 1 = perfectly even, 0 = one expert
    effective: float  # 2 ** entropy: the number of equally loaded experts with the same entropy
    top_share: float  # share of the slots that went to the busiest expert


def load_stats(expert_load: list[list[int]]) -> list[LayerLoad]:
    out = []
    for i, row in enumerate(expert_load):
        v = np.asarray(row, dtype=float)
        total = float(v.sum())
        E = len(row)
        if total <= 0 or E == 0:
            out.append(LayerLoad(i, 0, 0, 0.0, 0.0, 0.0, 0.0))
            continue
        p = v[v > 0] / total
        ent = float(-(p * np.log2(p)).sum())
        out.append(LayerLoad(layer=i, slots=int(total), touched=int((v > 0).sum()), entropy_bits=ent,
                             normalized=ent / math.log2(E) if E > 1 else 0.0, effective=2.0 ** ent,
                             top_share=float(v.max() / total)))
    return out


def load_shares(expert_load: list[list[int]], sort: bool = True) -> list[list[float]]:
    """Per layer, each expert's share of the layer's token-slots (busiest first when ``sort``)."""
    out = []
    for row in expert_load:
        v = np.asarray(row, dtype=float)
        total = v.sum()
        s = v / total if total > 0 else v
        out.append([float(x) for x in (np.sort(s)[::-1] if sort else s)])
    return out


@dataclass(frozen=True)
class CategoryCoverage:
    """Distinct (layer, expert) pairs touched by one category's prompt tokens."""

    category: str
    n_tokens: int
    distinct_pairs: int
    per_layer: list[int]


def category_coverage(trace: Trace, segments: list[tuple[int, int, str]]) -> list[CategoryCoverage]:
    """For a mixed real prompt: what the tokens of each category (code, math, prose) touch on their own.

    Prompt tokens only (the BOS and decode steps belong to no category). The categories' tokens are
    interleaved in the prompt, so these are sets of positions, not prefixes.
    """
    L, T, _ = trace.experts.shape
    E = trace.n_experts
    by_cat: dict[str, list[np.ndarray]] = {}
    for a, b, cat in segments:
        a, b = max(0, a), min(b, trace.n_prompt, T)
        if b > a:
            by_cat.setdefault(cat, []).append(np.arange(a, b))
    out = []
    for cat, parts in by_cat.items():
        idx = np.concatenate(parts)
        per = []
        for layer in range(L):
            ids = np.unique(trace.experts[layer, idx].ravel().astype(np.int64))
            per.append(int((ids < E).sum()))
        out.append(CategoryCoverage(category=cat, n_tokens=int(idx.size), distinct_pairs=sum(per), per_layer=per))
    order = {"code": 0, "math": 1, "prose": 2}
    return sorted(out, key=lambda c: (order.get(c.category, 9), c.category))
