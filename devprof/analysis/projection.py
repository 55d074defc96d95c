"""From measured coverage to a full-size model: the weight residency MobileMoE-S/M/L would reach.

The assumption (stated with every figure, :data:`ASSUMPTION`):

- the full-size model's routing touches the same *fraction* of each layer's experts as the measured
  model did at the measured context; full-size layer j takes the fraction of the measured layer at
  the same relative depth (``floor(j * L_measured / L_full)``);
- resident weights = every non-routed weight (embeddings, attention, routers, shared experts: every
  token reads them) + the touched routed experts, nothing else: exact expert granularity, no
  readahead or large folios, nothing evicted;
- INT4 weights as the QAT checkpoints store them (4 bits + one fp16 scale per 32 weights = 4.5 bits a
  weight, the catalog's ``int4``); KV cache and activations are not included.

A trained router is not the reference runtime's seeded random one, and coverage grows with context:
the projection transfers the measured spread, it does not predict the trained model's routing.
"""

from __future__ import annotations

from dataclasses import dataclass

from devprof import stats
from devprof.catalog import BITS_PER_WEIGHT, get_model

TARGETS: tuple[str, ...] = ("mobilemoe-s", "mobilemoe-m", "mobilemoe-l")
GIB = 1024.0**3

ASSUMPTION = ("Projection: the full-size model touches the same fraction of each layer's routed experts as the "
              "measured model did at the measured context (full-size layer j takes the measured layer at the same "
              "relative depth); resident weights = all non-routed weights (embeddings, attention, routers, shared "
              "expert) + the touched routed experts, at INT4 (4.5 bits/weight with group-32 fp16 scales), with "
              "exact expert granularity (no readahead or large folios); KV cache and activations excluded. "
              "It transfers the measured spread of routing, not a trained router's.")


def layer_map(n_measured: int, n_full: int) -> list[int]:
    """For each full-size layer, the measured layer at the same relative depth."""
    return [min(n_measured - 1, (j * n_measured) // n_full) for j in range(n_full)]


def resident_bytes(target: str, fractions: list[float], dtype: str = "int4") -> float:
    """Weight bytes resident for ``target`` when layer j touches ``fractions[map(j)]`` of its experts."""
    spec = get_model(target)
    if not spec.is_moe or not fractions:
        raise ValueError(f"{target} is not a MoE model, or no coverage given")
    bits = BITS_PER_WEIGHT[dtype]
    routed = spec.n_layers * spec.n_experts * spec.expert_params
    dense = spec.total_params - routed
    touched = sum(fractions[m] for m in layer_map(len(fractions), spec.n_layers)) * spec.n_experts * spec.expert_params
    return (dense + touched) * bits / 8.0


def dense_bytes(target: str, dtype: str = "int4") -> float:
    spec = get_model(target)
    return (spec.total_params - spec.n_layers * spec.n_experts * spec.expert_params) * BITS_PER_WEIGHT[dtype] / 8.0


@dataclass
class Projection:
    target: str
    display: str
    workload: str
    context: int  # the measured context
    from_model: str
    coverage: float  # mean fraction of routed experts touched, over the full-size layers (median rep)
    resident_gib: stats.Metric  # over the measured repetitions
    dense_gib: float  # non-routed weights alone
    all_gib: float  # every weight (all experts resident)
    values: list[float]  # per repetition, GiB


def project(model: str, workload: str, context: int, per_layer: list[list[int]], n_experts: int,
            targets: tuple[str, ...] = TARGETS) -> list[Projection]:
    """Projections from the per-layer distinct-expert counts of each measured repetition."""
    if not per_layer or n_experts <= 0:
        return []
    out = []
    for target in targets:
        spec = get_model(target)
        vals, covs = [], []
        for counts in per_layer:
            fr = [min(1.0, c / n_experts) for c in counts]
            vals.append(resident_bytes(target, fr) / GIB)
            m = layer_map(len(fr), spec.n_layers)
            covs.append(sum(fr[i] for i in m) / len(m))
        met = stats.metric(vals)
        if met is None:
            continue
        out.append(Projection(target=target, display=spec.display, workload=workload, context=context,
                              from_model=model, coverage=stats.median(covs), resident_gib=met,
                              dense_gib=dense_bytes(target) / GIB, all_gib=spec.weight_bytes("int4") / GIB,
                              values=vals))
    return out
