"""How long a plan will take, said before it starts.

Every (model, workload, context) cell runs ``warmup + reps`` runtime processes. The time of one is
taken, in order of preference, from

* the store's history: earlier repetitions of the same model with the same runtime, weights and
  device (warm-ups too: they take as long), rescaled to this plan's context and new tokens through
  their own prefill and decode rates, with their start-up cost (everything but prefill and decode:
  interpreter, load, page-cache eviction) kept as measured;
* catalog arithmetic otherwise: the model's prefill and decode FLOPs (devprof.catalog) at a rate,
  plus a start-up cost, both measured for each runtime on a 2-core x86-64 host (the machine devprof is
  developed on; see ``CATALOG_RATES``). A rough figure, and for a phone only an order of magnitude.

The estimate says which of the two it used. Bundle and GGUF builds on first use (cached afterwards)
are not counted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devprof.catalog import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from devprof.session import Plan
    from devprof.store import Store

#: (start-up seconds per runtime process, effective GFLOP/s) per (runtime, weights), measured with
#: `devprof run` on the development host (2 cores, x86-64, shared with other work): the reference
#: runtime's process start (python, torch import, bundle load, routing trace) and its prefill + decode
#: rate on the minis at 8192 tokens. Other runtimes have no figure yet and use the reference runtime's
#: (llama.cpp's quantised kernels are faster: the estimate errs long).
CATALOG_RATES: dict[tuple[str, str], tuple[float, float]] = {
    ("reference", "fp32"): (6.5, 13.0),
}
_DEFAULT_RATE = CATALOG_RATES[("reference", "fp32")]
#: Seconds outside the runtime process per repetition (page-cache eviction, thermal and frequency reads,
#: saving outputs): small on this host, more over adb.
PER_REP_OVERHEAD_S = {"local": 0.3, "android": 1.5, "ios": 2.0}
#: `devprof run` prints the estimate before a plan longer than this.
ANNOUNCE_ABOVE_S = 60.0


@dataclass
class Cell:
    model: str
    workload: str
    context: int
    runs: int  # warm-up + measured repetitions
    seconds_per_run: float
    source: str  # "history" | "catalog"
    n_history: int = 0  # earlier repetitions it was taken from


@dataclass
class Estimate:
    seconds: float
    runs: int  # runtime processes, warm-ups included
    cells: list[Cell] = field(default_factory=list)
    history_reps: int = 0  # distinct earlier repetitions the history cells came from

    @property
    def source(self) -> str:
        kinds = {c.source for c in self.cells}
        if kinds == {"history"}:
            return f"from {self.history_reps} similar earlier repetitions in the store"
        if kinds == {"catalog"}:
            return "from catalog arithmetic (FLOPs at this host's measured rate; no similar runs in the store yet)"
        k = sum(1 for c in self.cells if c.source == "history")
        return (f"from the store's history for {k} of {len(self.cells)} (model, workload, context) cells, "
                "catalog arithmetic for the rest")

    def words(self) -> str:
        return f"about {duration(self.seconds)} for {self.runs} runtime runs, {self.source}"


def duration(seconds: float) -> str:
    """60 -> '1 min', 95 -> '1.5 min', 3900 -> '1 h 5 min', 40 -> '40 s'."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = seconds / 60
    if minutes < 10:
        return f"{minutes:.1f} min".replace(".0 min", " min")
    if round(minutes) < 60:
        return f"{round(minutes)} min"
    h, m = divmod(round(minutes), 60)
    return f"{h} h {m} min" if m else f"{h} h"


def catalog_seconds(spec: ModelSpec, context: int, new_tokens: int, runtime: str, weights: str) -> float:
    """One runtime process by catalog arithmetic: start-up + (prefill + decode FLOPs) / rate."""
    startup, gflops = CATALOG_RATES.get((runtime, weights), _DEFAULT_RATE)
    # decode: every step attends to the cache so far; the step halfway through stands for the average one
    work = spec.prefill_flops(context) + new_tokens * spec.decode_flops_per_token(context + new_tokens // 2)
    return startup + work / (gflops * 1e9)


def history_seconds(rows: list[dict], context: int, new_tokens: int) -> float | None:
    """One runtime process from earlier ones (``Store.rep_timings`` rows) of the same model and setup.

    Each row's prefill time is rescaled linearly to ``context`` and its decode time to ``new_tokens`` at
    its own rates; what it spent besides (start-up, load) is kept. The median over the rows, rows at the
    same context preferred.
    """
    usable = [r for r in rows if r.get("wall_ms") and r.get("prefill_tok_s") and r.get("decode_tok_s")]
    same = [r for r in usable if r["context"] == context]
    preds = []
    for r in same or usable:
        prefill_s = r["context"] / r["prefill_tok_s"]
        decode_s = r["new_tokens"] / r["decode_tok_s"] if r.get("new_tokens") else 0.0
        rest = max(0.0, r["wall_ms"] / 1000 - prefill_s - decode_s)
        preds.append(rest + prefill_s * context / r["context"] + new_tokens / r["decode_tok_s"])
    return statistics.median(preds) if preds else None


def estimate(plan: Plan, store: Store | None = None, device_serial: str = "local",
             device_kind: str = "local") -> Estimate:
    """How long ``plan`` takes on one device (devices of ``--device all`` run side by side)."""
    per_cell = plan.warmup + plan.reps
    overhead = PER_REP_OVERHEAD_S.get(device_kind, 1.0)
    cells, used = [], 0
    for spec in plan.models:
        rows = store.rep_timings(device_serial, plan.runtime, spec.name, plan.weights) if store is not None else []
        rows = [r for r in rows if r.get("wall_ms") and r.get("prefill_tok_s") and r.get("decode_tok_s")]
        taken: set[int] = set()  # which of the rows the history cells of this model came from
        for context in plan.contexts:
            hist = history_seconds(rows, context, plan.new_tokens) if rows else None
            same = {i for i, r in enumerate(rows) if r["context"] == context} or set(range(len(rows)))
            if hist is not None:
                taken |= same
            for workload in plan.workloads:
                if hist is not None:
                    cells.append(Cell(spec.name, workload, context, per_cell, hist + overhead, "history", len(same)))
                else:
                    s = catalog_seconds(spec, context, plan.new_tokens, plan.runtime, plan.weights)
                    cells.append(Cell(spec.name, workload, context, per_cell, s + overhead, "catalog"))
        used += len(taken)
    total = sum(c.runs * c.seconds_per_run for c in cells)
    total += plan.soak_min * 60.0  # --soak runs that long after the plan
    if device_kind == "android" and plan.energy is not False:  # the battery's idle window per measured repetition
        total += plan.reps * len(cells) * plan.energy_baseline_s
    return Estimate(seconds=total, runs=sum(c.runs for c in cells), cells=cells, history_reps=used)


__all__ = ["ANNOUNCE_ABOVE_S", "CATALOG_RATES", "Cell", "Estimate", "catalog_seconds", "duration", "estimate",
           "history_seconds"]
