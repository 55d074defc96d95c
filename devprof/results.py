"""Plain measurement records that flow one way: devices -> runtimes -> store -> report.

Nothing here does I/O. Times are milliseconds, memory is kB (as /proc reports it) unless the
field name says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from collections.abc import Iterable
from typing import Any


@dataclass
class RunResult:
    """What one runtime adapter parsed from one generation's output."""

    runtime: str
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = None
    ttft_ms: float | None = None
    load_ms: float | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    # Wall-clock timestamps (ms since the epoch) where the runtime prints them (ExecuTorch's
    # PyTorchObserver line does); only differences mean anything. None where unknown.
    model_load_start_ms: float | None = None
    inference_start_ms: float | None = None
    prompt_eval_end_ms: float | None = None
    first_token_ms: float | None = None
    inference_end_ms: float | None = None
    # The runtime's own figure for peak memory where it prints one (ExecuTorch "RSS after ...").
    reported_peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MemorySample:
    """One reading of a process's memory. ``t_ms`` counts from the process's start."""

    t_ms: float
    rss_kb: int
    anon_kb: int | None = None
    file_kb: int | None = None
    hwm_kb: int | None = None
    footprint_kb: int | None = None  # iOS physFootprint (what Xcode's gauge and jetsam use)
    # /proc/PID/status: shared memory (tmpfs, ashmem, memfd) and swapped-out anonymous pages (zram on Android)
    shmem_kb: int | None = None
    swap_kb: int | None = None
    # /proc/PID/smaps_rollup (read every few samples, see devprof.memory): proportional set size and swap
    pss_kb: int | None = None
    pss_anon_kb: int | None = None
    pss_file_kb: int | None = None
    smaps_swap_kb: int | None = None
    swap_pss_kb: int | None = None
    # /proc/PID/stat: page faults so far (major: the faulting access found no page in the page cache;
    # a file pulled in by readahead or MAP_POPULATE is minor faults: docs/measurements.md)
    majflt: int | None = None
    minflt: int | None = None
    # the device's /proc/meminfo, read beside smaps_rollup
    mem_available_kb: int | None = None
    swap_free_kb: int | None = None
    # /proc/PID/io read_bytes so far (kB): what the process made the kernel read from storage
    read_kb: int | None = None


@dataclass
class ProcessOutcome:
    """What a device reports about one runtime process it ran and sampled."""

    exit_code: int | None  # None: killed by us (timeout / Ctrl-C); negative: killed by signal
    stdout: str
    stderr: str
    start_wall_ms: float  # wall clock (ms since the epoch) when the process was started
    wall_ms: float  # how long it ran
    samples: list[MemorySample] = field(default_factory=list)
    peak_rss_kb: int | None = None  # the kernel's VmHWM at exit (or physFootprint peak on iOS)
    memory_metric: str = "VmHWM"  # what peak_rss_kb means on this device
    status: str = "ok"  # ok | failed | timeout | interrupted | oom | lost
    note: str = ""
    sampler_cpu_s: float | None = None  # CPU seconds the host-side sampler spent (local device)
    cpu_s: float | None = None  # CPU seconds (user + system) the runtime process itself used, where known
    #: devprof.memory: "meminfo_before" (the device's /proc/meminfo), "peak" (the parts of Android's peak
    #: rule and which won), "exit" (the runtime's own status/smaps_rollup/faults at exit, where it prints them)
    memory: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoutingSummary:
    """What the routing trace of one repetition says, in numbers the store keeps."""

    n_layers: int
    n_experts: int
    top_k: int
    n_tokens: int
    distinct_pairs: int  # distinct (layer, expert) pairs touched
    distinct_per_layer: list[int]
    # coverage curve: after tokens[i] tokens processed, distinct[i] (layer, expert) pairs touched
    coverage_tokens: list[int]
    coverage_distinct: list[int]
    # per layer, how many token-slots went to each expert (n_layers x n_experts)
    expert_load: list[list[int]]


@dataclass
class DeviceInfo:
    """Who ran it. ``extra`` holds platform details (ABI, RAM, Android version, ProductType...)."""

    kind: str  # local | android | ios
    serial: str
    name: str  # human name: hostname, "Galaxy S25 (SM-S931B)", "iPhone 16 Pro"
    model: str = ""  # ro.product.model / ProductType / CPU model
    os_version: str = ""
    memory_metric: str = "VmHWM"  # what peak memory means on it: VmHWM (Linux/Android) or physFootprint (iOS)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunMeta:
    """One `devprof run` invocation on one device."""

    run_id: str
    created: str  # ISO-8601 UTC
    device: DeviceInfo
    runtime: str  # reference | executorch | llamacpp
    models: list[str]  # e.g. ["mobilemoe-s-mini", "mobilellm-pro-mini"]; models[0] is the subject
    baseline: str | None
    workloads: list[str]
    contexts: list[int]
    new_tokens: int
    reps: int
    warmup: int
    sample_ms: int
    settings: dict[str, Any] = field(default_factory=dict)  # weights dtype, threads, cpu mask, ...
    status: str = "running"  # running | complete | interrupted | failed | lost
    note: str = ""
    artifacts_dir: str = ""


@dataclass
class Repetition:
    """One measured (or warm-up) generation of one model on one workload at one context."""

    model: str
    workload: str
    context: int
    index: int  # 0-based among measured repetitions; warm-ups are -1, -2, ...
    warmup: bool
    result: RunResult | None  # None when the process failed before printing stats
    outcome: ProcessOutcome
    cache_state: str = "unknown"  # cold | warm | unknown: the weights file's page cache before the run
    cache_note: str = ""  # how the state was obtained (e.g. "posix_fadvise DONTNEED")
    routing: RoutingSummary | None = None
    thermal_before: dict[str, float] = field(default_factory=dict)  # zone -> degrees C
    thermal_after: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path relative to the run's folder
    #: the state of the device around the repetition (devprof.interference): other processes' CPU share and
    #: steal during it, load before it, hottest zone and fastest core before/after, the readiness wait
    conditions: dict[str, Any] = field(default_factory=dict)
    #: battery energy (devprof.energy.rep_energy): J/token per phase, or {"refused": why}; {} when off
    energy: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_file_kb(self) -> int | None:
        vals = [s.file_kb for s in self.outcome.samples if s.file_kb is not None]
        return max(vals) if vals else None

    @property
    def peak_anon_kb(self) -> int | None:
        vals = [s.anon_kb for s in self.outcome.samples if s.anon_kb is not None]
        return max(vals) if vals else None


@dataclass
class RunRecord:
    """A run as the report sees it: its meta and every repetition (warm-ups and failures too)."""

    meta: RunMeta
    repetitions: list[Repetition]
    soak: list[dict[str, Any]] = field(default_factory=list)  # --soak points (devprof.soak), in time order

    def measured(self, model: str | None = None, workload: str | None = None,
                 context: int | None = None) -> list[Repetition]:
        """Measured repetitions (not warm-up, status ok), optionally of one model/workload/context."""
        return [r for r in self.repetitions
                if not r.warmup and r.outcome.status == "ok"
                and (model is None or r.model == model)
                and (workload is None or r.workload == workload)
                and (context is None or r.context == context)]

    def models(self) -> list[str]:
        return _ordered(self.meta.models, (r.model for r in self.repetitions))

    def workloads(self) -> list[str]:
        return _ordered(self.meta.workloads, (r.workload for r in self.repetitions))

    def contexts(self) -> list[int]:
        return _ordered(self.meta.contexts, (r.context for r in self.repetitions))

    @property
    def planned_reps(self) -> int:
        """Measured repetitions the run set out to do."""
        m = self.meta
        return len(m.models) * len(m.workloads) * len(m.contexts) * m.reps

    @property
    def failed_reps(self) -> list[Repetition]:
        """Non-warm-up repetitions that did not finish ok."""
        return [r for r in self.repetitions if not r.warmup and r.outcome.status != "ok"]

    @property
    def missing_reps(self) -> int:
        """Planned measured repetitions without an ok result (never run, or failed)."""
        return max(0, self.planned_reps - len(self.measured()))


def _ordered(first: Iterable, then: Iterable) -> list:
    out: list = []
    for v in list(first) + list(then):
        if v not in out:
            out.append(v)
    return out
