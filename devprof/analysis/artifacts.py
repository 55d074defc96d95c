"""What the store does not hold but a run's folder does: routing traces and the prompts.

The store keeps one :class:`~devprof.results.RoutingSummary` per repetition (overall coverage curve,
distinct experts per layer, expert load). The per-token routing itself -- needed for per-layer
coverage curves, the per-category breakdown and the exact join with memory -- stays in the
repetition's ``routing.npz`` under the run's artifacts folder
(``runs/<run_id>/<model>/<workload>-c<ctx>/<rep>/routing.npz``; ``Repetition.artifacts`` holds the
path relative to ``meta.artifacts_dir``). Everything here returns None when a file is missing or
unreadable: a run copied without its folder, or from a runtime that emits no traces, still analyses
from the stored summaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from devprof.errors import DevprofError
from devprof.results import Repetition, RunMeta


def artifact_path(meta: RunMeta, rep: Repetition, name: str) -> Path | None:
    """The absolute path of one of a repetition's artifacts, or None when it is not on disk."""
    rel = rep.artifacts.get(name)
    if not rel:
        return None
    p = Path(rel)
    if not p.is_absolute():
        if not meta.artifacts_dir:
            return None
        p = Path(meta.artifacts_dir) / p
    return p if p.is_file() else None


@dataclass(frozen=True)
class Trace:
    """One repetition's routing trace (prompt tokens first, then decode steps)."""

    experts: np.ndarray  # uint8/int [n_layers, n_tokens, top_k]
    n_prompt: int
    n_experts: int
    top_k: int
    block_nbytes: np.ndarray | None  # int64 [n_layers, n_experts] bytes of each expert block, if known
    path: str

    @property
    def n_layers(self) -> int:
        return int(self.experts.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.experts.shape[1])

    def as_mapping(self) -> dict:
        d = {"experts": self.experts, "n_prompt": self.n_prompt, "n_experts": self.n_experts, "top_k": self.top_k}
        if self.block_nbytes is not None:
            d["block_nbytes"] = self.block_nbytes
        return d


@lru_cache(maxsize=64)
def _load_trace(path: str, mtime_ns: int) -> Trace | None:
    from devprof.routing import load_trace

    try:
        d = load_trace(path)
    except (DevprofError, OSError, ValueError, KeyError):
        return None
    ex = d["experts"]
    sizes = None
    if "block_nbytes" in d and np.asarray(d["block_nbytes"]).shape == (ex.shape[0], d["n_experts"]):
        sizes = np.asarray(d["block_nbytes"], dtype=np.int64)
        if not sizes.any():
            sizes = None
    if sizes is None and "layer_block_bytes" in d:
        per = np.asarray(d["layer_block_bytes"], dtype=np.int64).reshape(-1)
        if per.size == ex.shape[0] and per.any():
            sizes = np.repeat(per[:, None], d["n_experts"], axis=1)
    ex.setflags(write=False)
    return Trace(experts=ex, n_prompt=min(int(d["n_prompt"]), ex.shape[1]), n_experts=int(d["n_experts"]),
                 top_k=int(d["top_k"]), block_nbytes=sizes, path=path)


def load_rep_trace(meta: RunMeta, rep: Repetition) -> Trace | None:
    """The repetition's routing trace from its run folder, or None (missing, unreadable)."""
    p = artifact_path(meta, rep, "routing")
    if p is None:
        return None
    try:
        mtime = p.stat().st_mtime_ns
    except OSError:
        return None
    return _load_trace(str(p), mtime)


def prompt_segments(meta: RunMeta, workload: str, context: int) -> list[tuple[int, int, str]] | None:
    """The (start, end, category) token ranges of a mixed real prompt, or None.

    The session stores the prompt's ids (``prompts/<workload>-c<ctx>.ids``) but not its segments;
    they are rebuilt from (workload, context, seed) -- prompts are deterministic -- and used only when
    the rebuilt ids equal the stored ones (the text on this machine may differ from the run's).
    """
    if not workload.startswith("real") or not meta.artifacts_dir:
        return None
    ids_file = Path(meta.artifacts_dir) / "prompts" / f"{workload.replace(':', '-')}-c{context}.ids"
    try:
        stored = [int(x) for x in ids_file.read_text().split()]
    except (OSError, ValueError):
        return None
    try:
        from devprof import workloads as wl

        prompt = wl.build_prompt(workload, context, seed=int(meta.settings.get("seed") or 0))
    except (DevprofError, OSError, ValueError):
        return None
    if list(prompt.token_ids) != stored or not prompt.segments:
        return None
    return [(int(a), int(b), str(c)) for a, b, c in prompt.segments]
