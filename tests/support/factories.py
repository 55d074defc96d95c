"""Builders of realistic run records for tests (no device, no runtime, deterministic).

The default run is what `devprof run` stores for two mini models (MoE subject, dense baseline) x two
workloads (templated, real) x one context x (1 warm-up + 3 measured repetitions), in the order the
session runs them. Every repetition has:

- a RunResult with ExecuTorch-style wall-clock timestamps (load, prefill, first token, decode end);
- a memory timeline sampled every ``sample_ms``: RssFile climbs as the weights are paged in (for the
  MoE model only as far as the routing has touched experts: templated prompts stop early), RssAnon
  grows with the KV cache, VmHWM is the running peak and also catches a short activation spike the
  samples miss, so the reported peak is above the largest sampled VmRSS;
- for the MoE model a RoutingSummary simulated from a skewed router (templated: a repeated period
  of tokens, real: diverse tokens), whose coverage curve also drives the RssFile curve;
- thermal readings before/after, artifacts, a cache state.

    meta, reps = make_run()            # RunMeta + list[Repetition]
    record = make_record()             # the same as a results.RunRecord
"""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from functools import lru_cache

import numpy as np

from devprof.catalog import get_model
from devprof.memory import PEAK_RULE
from devprof.results import (
    DeviceInfo, MemorySample, ProcessOutcome, Repetition, RoutingSummary, RunMeta, RunResult,
)

MOE = "mobilemoe-s-mini"
DENSE = "mobilellm-pro-mini"
BASE_EPOCH_MS = 1_790_000_000_000.0  # 2026-09-21

#: typical speeds on a phone's big cores for the mini shapes (tok/s)
SPEEDS = {MOE: {"prefill": 900.0, "decode": 62.0}, DENSE: {"prefill": 410.0, "decode": 26.0}}
#: how much weight data the runtime maps (kB): MoE = non-expert part + all experts; dense = all
FILE_KB = {MOE: {"base": 30_000, "experts": 90_000}, DENSE: {"base": 150_000, "experts": 0}}
ANON_BASE_KB = {MOE: 44_000, DENSE: 52_000}
LOAD_MS = 250.0
SPIKE_KB = 8_192  # the last prefill step's logits/scratch, freed between two samples: only VmHWM sees it

PROMPT_SOURCES = [
    {"id": "python-stdlib-docs", "category": "code", "title": "Python standard library documentation",
     "licence": "PSF-2.0", "licence_file": "workloads/licences/PSF-2.0.txt",
     "copyright": "Python Software Foundation", "url": "https://docs.python.org/3/library/",
     "origin": "docs.python.org", "path": "workloads/text/python-docs.txt", "exists": True, "sha256": "ab12cd34"},
    {"id": "wikipedia-algebra", "category": "prose", "title": "Wikipedia: Algebra",
     "licence": "CC BY-SA 4.0", "licence_file": "workloads/licences/CC-BY-SA-4.0.txt",
     "copyright": "Wikipedia contributors", "url": "https://en.wikipedia.org/wiki/Algebra",
     "origin": "en.wikipedia.org", "path": "workloads/text/algebra.txt", "exists": True, "sha256": "ef56ab78"},
]


def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def make_device(kind: str = "android") -> DeviceInfo:
    if kind == "ios":
        return DeviceInfo(kind="ios", serial="00008140-001A2B3C4D5E", name="iPhone 16 Pro", model="iPhone17,1",
                          os_version="18.5", memory_metric="physFootprint", extra={"ram_mb": 8192})
    if kind == "local":
        return DeviceInfo(kind="local", serial="local", name="build-host", model="x86_64", os_version="Linux 6.1",
                          extra={"machine": "x86_64", "mem_total_mb": 32000})
    return DeviceInfo(kind="android", serial="R5CY20ABCDE", name="Galaxy S25 (SM-S931B)", model="SM-S931B",
                      os_version="15", memory_metric="VmHWM",
                      extra={"abi": "arm64-v8a", "mem_total_mb": 11600, "soc": "SM8750"})


def make_meta(models: tuple[str, ...] = (MOE, DENSE), workloads: tuple[str, ...] = ("templated", "real"),
              contexts: tuple[int, ...] = (2048,), reps: int = 3, warmup: int = 1, new_tokens: int = 64,
              sample_ms: int = 10, run_id: str = "", created: str = "2026-09-21T14:05:07+00:00",
              device: DeviceInfo | None = None, settings: dict | None = None, status: str = "running",
              runtime: str = "reference") -> RunMeta:
    return RunMeta(
        run_id=run_id, created=created, device=device or make_device(), runtime=runtime, models=list(models),
        baseline=models[1] if len(models) > 1 else None, workloads=list(workloads), contexts=list(contexts),
        new_tokens=new_tokens, reps=reps, warmup=warmup, sample_ms=sample_ms,
        settings=settings if settings is not None else {
            "cache": "cold", "seed": 0, "threads": 4, "cpu_mask": "f0", "timeout_s": 900.0,
            "weights": "fp32", "prompt_sources": [dict(s) for s in PROMPT_SOURCES]},
        status=status,
    )


# ---- routing ---------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _simulate_routing(workload: str, n_tokens: int, n_layers: int, n_experts: int, top_k: int,
                      seed: int) -> RoutingSummary:
    rng = np.random.default_rng(_seed("routing", workload, seed))
    templated = workload.startswith("templated")
    skew = 1.6 if templated else 0.35
    # per layer a random order of expert popularity, weights ~ 1 / rank^skew
    logw = np.stack([-skew * np.log(1.0 + rng.permutation(n_experts)) for _ in range(n_layers)])
    period = 48 if templated else n_tokens
    gumbel = rng.gumbel(size=(period, n_layers, n_experts))
    chosen = np.argpartition(-(logw[None] + gumbel), top_k - 1, axis=2)[:, :, :top_k]  # (period, L, k)
    chosen = np.tile(chosen, (int(np.ceil(n_tokens / period)), 1, 1))[:n_tokens]
    first = np.full((n_layers, n_experts), n_tokens, dtype=np.int64)
    load = np.zeros((n_layers, n_experts), dtype=np.int64)
    for layer in range(n_layers):
        ex = chosen[:, layer, :]  # (T, k)
        np.add.at(load[layer], ex.ravel(), 1)
        tok = np.repeat(np.arange(n_tokens), top_k)
        order = np.argsort(tok, kind="stable")
        flat = ex.ravel()[order]
        for e in range(n_experts):
            hits = np.nonzero(flat == e)[0]
            if hits.size:
                first[layer, e] = tok[order][hits[0]]
    tokens = sorted({int(t) for t in np.linspace(1, n_tokens, 64).round()})
    firsts = np.sort(first.ravel())
    distinct = [int(np.searchsorted(firsts, t, side="left")) for t in tokens]
    per_layer = [int((first[layer] < n_tokens).sum()) for layer in range(n_layers)]
    return RoutingSummary(
        n_layers=n_layers, n_experts=n_experts, top_k=top_k, n_tokens=n_tokens, distinct_pairs=sum(per_layer),
        distinct_per_layer=per_layer, coverage_tokens=tokens, coverage_distinct=distinct,
        expert_load=load.tolist(),
    )


def make_routing(workload: str, n_tokens: int, model: str = MOE, seed: int = 0) -> RoutingSummary:
    spec = get_model(model)
    r = _simulate_routing(workload, n_tokens, spec.n_layers, spec.n_experts, spec.top_k, seed)
    return replace(r, distinct_per_layer=list(r.distinct_per_layer), coverage_tokens=list(r.coverage_tokens),
                   coverage_distinct=list(r.coverage_distinct), expert_load=[list(x) for x in r.expert_load])


# ---- one repetition --------------------------------------------------------------------------
def _coverage_fraction(routing: RoutingSummary | None, tokens_done: float) -> float:
    if routing is None:
        return 1.0 if tokens_done > 0 else 0.0
    total = routing.n_layers * routing.n_experts
    return float(np.interp(tokens_done, [0, *routing.coverage_tokens], [0, *routing.coverage_distinct])) / total


def make_samples(model: str, context: int, new_tokens: int, prefill_ms: float, decode_ms: float,
                 sample_ms: int, routing: RoutingSummary | None, seed: int = 0) -> tuple[list[MemorySample], int]:
    """A memory timeline and the VmHWM the kernel would report at exit."""
    rng = np.random.default_rng(_seed("samples", model, context, seed))
    spec = get_model(model)
    fk = FILE_KB[model]
    kv_kb = spec.kv_cache_bytes(context + new_tokens) / 1024
    anon_base = ANON_BASE_KB[model]
    t_prefill, t_decode = LOAD_MS, LOAD_MS + prefill_ms
    t_end = t_decode + decode_ms
    wall = t_end + 20.0
    spike_t = t_decode - 0.5 * sample_ms
    out: list[MemorySample] = []
    hwm = 0
    spiked = False
    for t in np.arange(0.0, wall, float(sample_ms)):
        if t < t_prefill:
            p = t / LOAD_MS
            file_kb = 2_000 + p * (fk["base"] - 2_000) * (0.3 if fk["experts"] else 0.25)
            anon = 4_000 + p * (anon_base - 4_000)
        elif t < t_decode:
            p = (t - t_prefill) / prefill_ms
            if fk["experts"]:
                file_kb = fk["base"] + fk["experts"] * _coverage_fraction(routing, p * context)
            else:  # a dense model touches all its weights in the first forward pass
                file_kb = fk["base"] * min(1.0, 0.25 + 0.75 * p / 0.05)
            anon = anon_base + kv_kb * p * context / (context + new_tokens) + 6_000
        elif t < t_end:
            p = (t - t_decode) / decode_ms
            file_kb = fk["base"] + fk["experts"] * _coverage_fraction(routing, context + p * new_tokens)
            anon = anon_base + kv_kb * (context + p * new_tokens) / (context + new_tokens) + 2_000
        else:
            file_kb, anon = file_kb * 0.98, anon * 0.6
        file_kb = int(file_kb + rng.integers(0, 64))
        anon = int(anon + rng.integers(0, 256))
        rss = file_kb + anon + 1_500
        hwm = max(hwm, rss)
        if not spiked and t >= spike_t:
            hwm = max(hwm, rss + SPIKE_KB)
            spiked = True
        out.append(MemorySample(t_ms=float(t), rss_kb=rss, anon_kb=anon, file_kb=file_kb, hwm_kb=hwm))
    return out, hwm


def add_phone_memory(samples: list[MemorySample], model: str, sample_ms: int, seed: int = 0) -> dict:
    """Fill in what the Android sampler reads beside VmRSS, and return the outcome's ``memory``.

    zram takes a growing share of the anonymous pages (more for the dense model's larger KV cache), so
    for it RSS + swap outgrows VmHWM; RssShmem is a small constant; faults are cumulative: a major one
    per 128 kB of weights paged in from storage (readahead), a minor one per anonymous or cached page
    mapped; smaps_rollup (PSS, Swap, SwapPss) and /proc/meminfo are read every fifth sample, PSS a
    little below RSS (the page cache shares the file pages), MemAvailable falling as the process grows.
    """
    rng = np.random.default_rng(_seed("phone", model, seed))
    zram = 0.16 if model == DENSE else 0.04
    total, avail0, swap_total, swap_free0 = 11_878_400, 5_312_000 + int(rng.integers(0, 40_000)), 4_194_300, 3_950_000
    rss0 = samples[0].rss_kb
    top_file = top_anon = 0
    for i, s in enumerate(samples):
        frac = zram * min(1.0, s.t_ms / max(samples[-1].t_ms, 1.0))
        s.swap_kb = int(s.anon_kb * frac)
        s.shmem_kb = 1_024
        top_file, top_anon = max(top_file, s.file_kb), max(top_anon, s.anon_kb)
        s.majflt = max(0, (top_file - 2_000) // 128)
        s.minflt = 3_000 + top_anon // 4 + top_file // 16
        if i % 5 == 0:
            s.pss_file_kb = int(s.file_kb * 0.97)
            s.pss_anon_kb = s.anon_kb
            s.pss_kb = s.pss_file_kb + s.pss_anon_kb + 512
            s.smaps_swap_kb = s.swap_pss_kb = s.swap_kb
            s.mem_available_kb = avail0 - (s.rss_kb - rss0) - s.swap_kb // 3
            s.swap_free_kb = swap_free0 - s.swap_kb // 3
    from devprof.memory import android_peak

    _, parts = android_peak(samples)
    return {"meminfo_before": {"MemTotal": total, "MemAvailable": avail0, "SwapTotal": swap_total,
                               "SwapFree": swap_free0}, "peak": parts}


def make_rep(model: str = MOE, workload: str = "real", context: int = 2048, index: int = 0, *,
             warmup: bool = False, new_tokens: int = 64, sample_ms: int = 10,
             start_wall_ms: float = BASE_EPOCH_MS, seed: int = 0, cache_state: str = "cold",
             status: str = "ok", memory_metric: str = "VmHWM", phone_memory: bool = False) -> Repetition:
    """One repetition of ``model`` on ``workload``; ``status`` other than ok makes a failed one.
    ``phone_memory`` adds what an Android phone's sampler records (:func:`add_phone_memory`)."""
    rng = np.random.default_rng(_seed("rep", model, workload, context, index, warmup, seed))
    speed = SPEEDS.get(model, SPEEDS[DENSE])
    wl_factor = 0.93 if workload.startswith("real") and get_model(model).is_moe else 1.0
    prefill_tok_s = speed["prefill"] * wl_factor * (1 + 0.02 * rng.standard_normal())
    decode_tok_s = speed["decode"] * wl_factor * (1 + 0.02 * rng.standard_normal())
    prefill_ms = context / prefill_tok_s * 1000
    decode_ms = new_tokens / decode_tok_s * 1000
    spec = get_model(model)
    routing = make_routing(workload, context + new_tokens, model, seed) if spec.is_moe else None
    samples, hwm = make_samples(model, context, new_tokens, prefill_ms, decode_ms, sample_ms, routing,
                                seed=_seed(index, warmup, workload, seed))
    phone = add_phone_memory(samples, model, sample_ms, seed=_seed("phone", index, warmup, workload, seed)) \
        if phone_memory else {}
    if phone:
        hwm = max(hwm, phone["peak"]["RSS+swap"])
    s0 = start_wall_ms
    inf_start = s0 + LOAD_MS
    pe_end = inf_start + prefill_ms
    first_tok = pe_end + decode_ms / new_tokens
    inf_end = pe_end + decode_ms
    label = f"warmup{-index}" if warmup else f"rep{index}"
    where = f"{model}/{workload}-c{context}/{label}"
    thermal_before = {"cpu-big": round(37.5 + 0.6 * max(index, 0) + rng.uniform(0, 0.5), 1),
                      "battery": round(29.0 + 0.2 * max(index, 0), 1)}
    thermal_after = {k: round(v + (5.5 if k == "cpu-big" else 0.8) + rng.uniform(0, 0.4), 1)
                     for k, v in thermal_before.items()}
    if status != "ok":
        cut = samples[: max(1, len(samples) // 3)]
        outcome = ProcessOutcome(
            exit_code=-9 if status == "oom" else 139, stdout="", stderr="Segmentation fault (core dumped)\n",
            start_wall_ms=s0, wall_ms=cut[-1].t_ms + 5, samples=cut, peak_rss_kb=cut[-1].hwm_kb,
            memory_metric=memory_metric, status=status, note=f"runtime {status} after {cut[-1].t_ms:.0f} ms",
            memory={"meminfo_before": phone["meminfo_before"]} if phone else {})
        return Repetition(model=model, workload=workload, context=context, index=index, warmup=warmup,
                          result=None, outcome=outcome, cache_state=cache_state,
                          cache_note="posix_fadvise(DONTNEED) on weights.bin", routing=None,
                          thermal_before=thermal_before, thermal_after={},
                          artifacts={"stderr": f"{where}/stderr.txt"})
    observer = {
        "prefill_token_per_sec": round(prefill_tok_s, 3), "decode_token_per_sec": round(decode_tok_s, 3),
        "prompt_tokens": context, "generated_tokens": new_tokens, "model_load_start_ms": s0 + 15,
        "model_load_end_ms": inf_start, "inference_start_ms": inf_start, "prompt_eval_end_ms": pe_end,
        "first_token_ms": first_tok, "inference_end_ms": inf_end, "SCALING_FACTOR_UNITS_PER_SECOND": 1000,
    }
    result = RunResult(
        runtime="reference", prompt_tokens=context, generated_tokens=new_tokens, prefill_tok_s=prefill_tok_s,
        decode_tok_s=decode_tok_s, ttft_ms=first_tok - inf_start, load_ms=LOAD_MS - 15, prefill_ms=prefill_ms,
        decode_ms=decode_ms, model_load_start_ms=s0 + 15, inference_start_ms=inf_start,
        prompt_eval_end_ms=pe_end, first_token_ms=first_tok, inference_end_ms=inf_end,
        extra={"cpu_freq_mhz_before": {"cpu7": 4320}, "cpu_freq_mhz_after": {"cpu7": 3916}},
    )
    outcome = ProcessOutcome(
        exit_code=0, stdout="PyTorchObserver " + json.dumps(observer) + "\n",
        stderr=f"I loaded {model} in {LOAD_MS - 15:.0f} ms\n", start_wall_ms=s0, wall_ms=samples[-1].t_ms + 10,
        samples=samples, peak_rss_kb=hwm, memory_metric=memory_metric, status="ok", memory=phone,
    )
    return Repetition(
        model=model, workload=workload, context=context, index=index, warmup=warmup, result=result,
        outcome=outcome, cache_state=cache_state, cache_note="posix_fadvise(DONTNEED) on weights.bin",
        routing=routing, thermal_before=thermal_before, thermal_after=thermal_after,
        artifacts={"stdout": f"{where}/stdout.txt", "stderr": f"{where}/stderr.txt",
                   "stats": f"{where}/stats.json", **({"routing": f"{where}/routing.npz"} if routing else {})},
    )


def make_reps(meta: RunMeta, seed: int = 0, limit: int | None = None, fail: set[tuple] | None = None,
              phone_memory: bool = False) -> list[Repetition]:
    """The repetitions of ``meta`` in session order (per context, per workload: warm-ups, then reps).

    ``limit`` stops after that many (an interrupted run); ``fail`` holds (model, workload, index)
    keys of repetitions that crash.
    """
    reps: list[Repetition] = []
    clock = BASE_EPOCH_MS
    metric = meta.device.memory_metric
    for context in meta.contexts:
        for workload in meta.workloads:
            schedule = [(m, -(w + 1), True) for w in range(meta.warmup) for m in meta.models]
            schedule += [(m, i, False) for i in range(meta.reps) for m in meta.models]
            for model, index, warm in schedule:
                if limit is not None and len(reps) >= limit:
                    return reps
                status = "failed" if fail and (model, workload, index) in fail else "ok"
                rep = make_rep(model, workload, context, index, warmup=warm, new_tokens=meta.new_tokens,
                               sample_ms=meta.sample_ms, start_wall_ms=clock, seed=seed, status=status,
                               memory_metric=metric, phone_memory=phone_memory)
                reps.append(rep)
                clock += rep.outcome.wall_ms + 2_000  # cool-down
    return reps


def make_run(seed: int = 0, limit: int | None = None, fail: set[tuple] | None = None, phone_memory: bool = False,
             **meta_kw) -> tuple[RunMeta, list[Repetition]]:
    if phone_memory and "device" not in meta_kw:
        meta_kw["device"] = replace(make_device(), memory_metric=PEAK_RULE)
    meta = make_meta(**meta_kw)
    return meta, make_reps(meta, seed=seed, limit=limit, fail=fail, phone_memory=phone_memory)


def make_record(seed: int = 0, limit: int | None = None, fail: set[tuple] | None = None, status: str = "complete",
                run_id: str = "20260921-140507-beef", phone_memory: bool = False, **meta_kw):
    """A RunRecord as Store.load_run returns it (no store involved); ``phone_memory``: a current Android
    run (peak = max(VmHWM, RSS+swap), with swap, PSS, page faults and the device's meminfo)."""
    from devprof.results import RunRecord

    meta, reps = make_run(seed=seed, limit=limit, fail=fail, status=status, run_id=run_id,
                          phone_memory=phone_memory, **meta_kw)
    return RunRecord(meta=meta, repetitions=reps)
