"""The join of routing and memory: RssFile over time against the bytes of the expert blocks touched.

A runtime that memory-maps its weights brings an expert's block into RAM when the first token is
routed to it. From the routing trace (which experts each token went to, in order) and the bundle's
layout (the bytes of each expert block), :func:`devprof.routing.cumulative_expert_bytes` gives the
bytes a lazily paged runtime must have touched after each token. To set that beside RssFile, each
(layer, expert) pair is given the time at which it was first touched, in one of two alignments:

- ``layers`` (the reference runtime): it prefills the whole prompt in one pass, layer by layer
  (attention, then the experts over the tokens in order), so the prefill span is split into one
  equal slice per layer and within a layer's slice the tokens are spread linearly;
- ``tokens`` (any runtime): prefill tokens spread linearly over the prefill span -- token i of n
  done at ``start + (i + 1) / n * duration`` -- as a runtime that runs every layer for one token (or
  one small chunk) before the next would touch them.

Both are approximations (layers do not take equal time; a cold page cache makes the first touches
slow), and are said to be. Decode steps are spread linearly over the decode span in both (one
token per step, every layer: close to exact). The ratio of the end points (RssFile growth vs
routing's bytes) does not depend on the alignment.

Non-expert weights (embeddings, attention, norms, routers, shared experts) are read by every
token; they are counted as resident from the start of prefill (the tied embedding/LM head is
only read whole at the first logits, at the end of prefill: the line is early there).

The baseline is RssFile just before prefill starts: libraries (Python, torch) are already mapped
by then. Library code paged in on first use during inference, readahead, fault-around and large
folios all add to RssFile beyond what routing explains; a ratio near 1 means residency follows
routing, well above 1 means something else inflates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from devprof.analysis.artifacts import Trace
from devprof.analysis.phases import phase_spans, phase_spans_from_durations
from devprof.results import Repetition, RoutingSummary
from devprof.runtimes import base as rt

MIB = 1024.0 * 1024.0


@dataclass
class WeightLayout:
    """Bytes of a model's weights: everything but the routed experts, and each expert block."""

    dense_bytes: int  # non-expert tensors (embeddings, attention, norms, routers, shared experts)
    block_bytes: np.ndarray  # int64 [n_layers, n_experts]
    source: str  # where the figures come from
    layer_dense_bytes: list[int] = field(default_factory=list)  # per layer: its non-expert tensors
    head_bytes: int = 0  # embedding table / LM head and the final norm (read whole at the first logits)


def weight_layout(model: str, seed: int = 0, runtime: str = rt.DEFAULT_RUNTIME) -> WeightLayout | None:
    """The runtime's layout of a catalog MoE model's weights (its own record of the file, or the same plan
    computed without touching a file); None for models the catalog does not know, dense ones, or a
    runtime that does not say."""
    from devprof.catalog import MODELS

    spec = MODELS.get(model)
    adapter = rt.find_adapter(runtime)
    if spec is None or not spec.is_moe or adapter is None or (found := adapter.weights_layout(model, seed)) is None:
        return None
    layout, src = found
    per_layer = [0] * spec.n_layers
    head = 0
    for name, t in layout["tensors"].items():
        if ".experts." in name:
            continue
        if name.startswith("layers."):
            per_layer[int(name.split(".")[1])] += int(t["nbytes"])
        else:
            head += int(t["nbytes"])
    sizes = np.zeros((spec.n_layers, spec.n_experts), dtype=np.int64)
    for b in layout.get("expert_blocks", []):
        sizes[b["layer"], b["expert"]] = b["nbytes"]
    return WeightLayout(dense_bytes=sum(per_layer) + head, block_bytes=sizes, source=src,
                        layer_dense_bytes=per_layer, head_bytes=head)


@dataclass
class Join:
    """RssFile of one repetition over time beside the weight bytes its routing touched."""

    model: str
    workload: str
    context: int
    rep_label: str
    cache_state: str
    source: str  # "trace" (per-token routing) or "summary" (coverage curve x block size: approximate)
    alignment: str  # the primary alignment of routing to time: "layers" or "tokens"
    spans: list[tuple[str, float, float]]  # (name, start s, end s) since the process started
    spans_approx: bool  # spans placed from durations, not timestamps
    # memory samples in seconds since the process started
    t_s: list[float]
    file_mib: list[float]
    baseline_mib: float  # RssFile just before prefill
    # alignment -> (times s, MiB routing says must be resident by then: non-expert weights as their layer is
    # reached + expert blocks touched), ~400 points each; the primary alignment first
    curves: dict[str, tuple[list[float], list[float]]]
    dense_mib: float | None  # non-expert weights, resident from prefill on
    # the join at sample times within inference (primary alignment): MiB routing predicts by then, RssFile growth
    join_predicted_mib: list[float] = field(default_factory=list)
    join_growth_mib: list[float] = field(default_factory=list)
    observed_mib: float = 0.0  # peak RssFile during inference - baseline
    predicted_mib: float = 0.0  # dense + every expert block touched (0: layout unknown)
    experts_mib: float = 0.0  # every expert block touched
    all_experts_mib: float = 0.0  # every expert block of the model

    #: RssFile growth of the dense baseline beyond its weights in the same run (file pages that are not
    #: weights: library code paged in on first use, page granularity), when known: the yardstick for the excess
    calibration_mib: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.observed_mib / self.predicted_mib if self.predicted_mib > 0 else None

    @property
    def excess_mib(self) -> float | None:
        """RssFile growth beyond what routing explains (negative: less)."""
        return self.observed_mib - self.predicted_mib if self.predicted_mib > 0 else None

    def verdict(self) -> str:
        r, ex = self.ratio, self.excess_mib
        if r is None or ex is None:
            return "no prediction (unknown weight layout)"
        if self.calibration_mib is not None:
            rest = ex - self.calibration_mib
            if abs(rest) <= max(0.1 * self.predicted_mib, 4.0):
                return (f"residency follows routing (the {ex:+.0f} MiB beyond it is like the dense model's "
                        f"{self.calibration_mib:+.0f} MiB beyond its weights)")
            if rest > 0:
                return (f"RssFile grew {rest:.0f} MiB more than routing and the dense model's overhead explain "
                        "(readahead, large folios)")
            return f"RssFile grew {-rest:.0f} MiB less than routing predicts (pages mapped before prefill, or reclaimed)"
        if 0.85 <= r <= 1.15:
            return "residency follows routing"
        if r > 1.15:
            return "RssFile grew more than routing explains (readahead, large folios, libraries paged in)"
        return "RssFile grew less than routing predicts (pages mapped before prefill, or reclaimed)"


def file_growth(rep: Repetition) -> tuple[float, float] | None:
    """(RssFile just before prefill, its peak during prefill+decode minus that), MiB; None when unknown."""
    samples = [s for s in rep.outcome.samples if s.file_kb is not None]
    spans = phase_spans(rep) or phase_spans_from_durations(rep)
    pre = _span(spans, "prefill") if spans else None
    if not samples or pre is None:
        return None
    end = max(b for _, _, b in spans)
    before = [s.file_kb for s in samples if s.t_ms / 1000.0 < pre[0]]
    base = (before[-1] if before else samples[0].file_kb) / 1024.0
    inside = [s.file_kb for s in samples if pre[0] <= s.t_ms / 1000.0 <= end + 0.05]
    if not inside:
        return None
    return base, max(inside) / 1024.0 - base


def weight_bytes(model: str, runtime: str = rt.DEFAULT_RUNTIME) -> int | None:
    """All weight bytes of a catalog model in the runtime's weights file (computed, no file read); None
    when the runtime does not say."""
    adapter = rt.find_adapter(runtime)
    found = adapter.weights_layout(model, from_file=False) if adapter is not None else None
    return sum(int(t["nbytes"]) for t in found[0]["tensors"].values()) if found else None


ALIGNMENT_WORDS = {
    "layers": "layer by layer (the reference runtime prefills the whole prompt one layer at a time: prefill split "
              "into equal slices per layer, tokens linear within a slice)",
    "tokens": "token by token (prefill tokens spread linearly over the prefill span)",
}


def _span(spans: list[tuple[str, float, float]], name: str) -> tuple[float, float] | None:
    return next(((a, b) for n, a, b in spans if n == name), None)


def _token_times(spans: list[tuple[str, float, float]], n_prompt: int, n_tokens: int) -> np.ndarray | None:
    """When each token was done, prefill and decode tokens each spread linearly over their span."""
    pre = _span(spans, "prefill")
    if pre is None or n_prompt <= 0:
        return None
    a, b = pre
    t = np.empty(n_tokens, dtype=float)
    k = min(n_prompt, n_tokens)
    t[:k] = a + (np.arange(1, k + 1) / n_prompt) * (b - a)
    n_dec = n_tokens - k
    if n_dec > 0:
        da, db = _span(spans, "decode") or (b, b)
        t[k:] = da + (np.arange(1, n_dec + 1) / n_dec) * (db - da)
    return t


def pair_times(first: np.ndarray, spans: list[tuple[str, float, float]], n_prompt: int, n_tokens: int,
               alignment: str) -> np.ndarray | None:
    """float [L, E]: when each (layer, expert) pair was first touched (inf: never), from its first token."""
    tt = _token_times(spans, n_prompt, n_tokens)
    if tt is None:
        return None
    L = first.shape[0]
    out = np.full(first.shape, np.inf)
    touched = first < n_tokens
    out[touched] = tt[first[touched]]
    if alignment == "layers":
        a, b = _span(spans, "prefill")
        in_prompt = first < n_prompt
        layer = np.broadcast_to(np.arange(L)[:, None], first.shape)
        frac = (layer + (first + 1) / n_prompt) / L
        out[in_prompt] = (a + frac * (b - a))[in_prompt]
    return out


def _curve(times: np.ndarray, sizes: np.ndarray, extra: list[tuple[float, float]],
           points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(sorted times, cumulative bytes) of the touched pairs plus ``extra`` (time, bytes) events."""
    ok = np.isfinite(times)
    t = np.concatenate([times[ok], np.array([e[0] for e in extra], dtype=float)])
    b = np.concatenate([sizes[ok].astype(float), np.array([e[1] for e in extra], dtype=float)])
    order = np.argsort(t, kind="stable")
    t, c = t[order], np.cumsum(b[order])
    idx = _downsample_idx(len(t), points)
    return t[idx], c[idx]


def _dense_events(layout: WeightLayout | None, spans: list[tuple[str, float, float]], n_layers: int,
                  alignment: str) -> list[tuple[float, float]]:
    """When the non-expert weights are first read: each layer's as the layer is reached (all at the start of
    prefill in token order), the embedding table / LM head and final norm at the end of prefill (first logits)."""
    if layout is None:
        return []
    a, b = _span(spans, "prefill")
    per = layout.layer_dense_bytes or [layout.dense_bytes - layout.head_bytes]
    L = len(per)
    if alignment == "layers" and L == n_layers:
        ev = [(a + (b - a) * i / L, float(x)) for i, x in enumerate(per)]
    else:
        ev = [(a, float(sum(per)))]
    return ev + [(b, float(layout.head_bytes))]


def _downsample_idx(n: int, points: int = 400) -> np.ndarray:
    if n <= points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, points).round().astype(int))


def default_alignment(runtime: str) -> str:
    adapter = rt.find_adapter(runtime)
    return adapter.prefill_order if adapter is not None else "tokens"


_Curves = dict[str, tuple[np.ndarray, np.ndarray]]


def _trace_curves(trace: Trace, layout: WeightLayout | None, spans: list, alignment: str
                  ) -> tuple[_Curves, float, float] | None:
    """(curve per alignment, bytes of the experts touched, bytes of all experts) from a per-token trace."""
    from devprof.routing import first_touch

    sizes = trace.block_nbytes
    if sizes is None and layout is not None and layout.block_bytes.shape == (trace.n_layers, trace.n_experts):
        sizes = layout.block_bytes
    if sizes is None:
        return None
    curves: _Curves = {}
    first = first_touch(trace.experts, trace.n_experts)
    order = [alignment] + [x for x in ("layers", "tokens") if x != alignment]
    for al in order:
        pt = pair_times(first, spans, trace.n_prompt, trace.n_tokens, al)
        if pt is None:
            return None
        curves[al] = _curve(pt, sizes, _dense_events(layout, spans, trace.n_layers, al))
    return curves, float(sizes[first < trace.n_tokens].sum()), float(sizes.sum())


def _summary_curves(rep: Repetition, routing: RoutingSummary, layout: WeightLayout | None, spans: list
                    ) -> tuple[_Curves, float, float] | None:
    """The "tokens" curve from the stored coverage curve and the mean expert block (no trace)."""
    if layout is None or layout.block_bytes.shape != (routing.n_layers, routing.n_experts):
        return None
    n_tokens = routing.n_tokens
    n_prompt = int(rep.result.prompt_tokens) if rep.result and rep.result.prompt_tokens else rep.context
    n_prompt = min(n_prompt, n_tokens)
    times = _token_times(spans, n_prompt, n_tokens)
    if times is None:
        return None
    mean_block = float(layout.block_bytes.mean())
    toks = np.arange(1, n_tokens + 1)
    cum = np.interp(toks, [0, *routing.coverage_tokens], [0, *routing.coverage_distinct]) * mean_block
    steps = np.diff(np.concatenate([[0.0], cum]))
    curves: _Curves = {"tokens": _curve(times, steps, _dense_events(layout, spans, routing.n_layers, "tokens"))}
    return curves, float(cum[-1]) if len(cum) else 0.0, float(layout.block_bytes.sum())


def join(rep: Repetition, trace: Trace | None, layout: WeightLayout | None, rep_label: str,
         alignment: str = "tokens") -> Join | None:
    """The join for one repetition; None without RssFile samples, a prefill span or routing.

    ``alignment``: "layers" or "tokens" (see the module docstring); without a per-token trace only
    "tokens" is possible (from the stored coverage curve).
    """
    o = rep.outcome
    samples = [s for s in o.samples if s.file_kb is not None]
    routing: RoutingSummary | None = rep.routing
    if not samples or (trace is None and routing is None):
        return None
    spans, approx = phase_spans(rep), False
    if not spans:
        spans, approx = phase_spans_from_durations(rep), True
    pre = _span(spans, "prefill")
    if pre is None:
        return None
    if trace is not None:
        built = _trace_curves(trace, layout, spans, alignment)
        source = "trace"
    else:
        built = _summary_curves(rep, routing, layout, spans)
        alignment, source = "tokens", "summary"
    if built is None:
        return None
    curves, experts_total, all_bytes = built
    t_s = np.array([s.t_ms / 1000.0 for s in samples])
    file_mib = np.array([s.file_kb / 1024.0 for s in samples])
    p0 = pre[0]
    end = max(b for _, _, b in spans)
    before = np.nonzero(t_s < p0)[0]
    baseline = float(file_mib[before[-1]]) if before.size else float(file_mib[0])
    inside = (t_s >= p0) & (t_s <= end + 0.05)
    observed = float(file_mib[inside].max() - baseline) if inside.any() else 0.0  # as file_growth() has it
    dense_mib = layout.dense_bytes / MIB if layout is not None else None
    for al, (ct, cb) in list(curves.items()):  # hold the last value to the end of the generation
        if len(ct) and ct[-1] < end:
            curves[al] = (np.append(ct, end), np.append(cb, cb[-1]))
    ct, cb = curves[alignment]
    k = np.searchsorted(ct, t_s[inside], side="right")  # events done by the time of each sample
    at = (np.where(k > 0, cb[np.clip(k - 1, 0, len(cb) - 1)], 0.0) if len(cb) else np.zeros(int(inside.sum()))) / MIB
    experts_mib = experts_total / MIB
    return Join(
        model=rep.model, workload=rep.workload, context=rep.context, rep_label=rep_label,
        cache_state=rep.cache_state, source=source, alignment=alignment, spans=spans, spans_approx=approx,
        t_s=[float(x) for x in t_s], file_mib=[float(x) for x in file_mib], baseline_mib=baseline,
        curves={al: ([float(x) for x in t], [float(x) / MIB for x in c]) for al, (t, c) in curves.items()},
        dense_mib=dense_mib, join_predicted_mib=[float(x) for x in at],
        join_growth_mib=[float(x - baseline) for x in file_mib[inside]], observed_mib=observed,
        predicted_mib=dense_mib + experts_mib if dense_mib is not None else 0.0,
        experts_mib=experts_mib, all_experts_mib=all_bytes / MIB,
    )
