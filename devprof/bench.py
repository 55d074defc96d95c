"""`devprof bench`: is the local runtime fast, and are the measurements exact? Measured, in one run.

Everything is a ratio measured in the same process run, because these machines are shared and
noisy and absolute times drift:

- the machine's own ceilings, before and after the runs (the better counts): fp32 GEMV read
  bandwidth (a 256 MB matrix, far beyond the caches; the fastest of torch's and numpy's BLAS,
  the matrix either way round) and fp32 GEMM rate, with the runtime's thread count;
- the reference runtime (torch fp32) on the MoE and the dense model: decode efficiency =
  (weight bytes a decode step reads, from the catalog, + KV-cache bytes read) ÷ time per step ÷
  GEMV bandwidth; prefill efficiency = catalog prefill FLOPs ÷ prefill time ÷ GEMM rate;
- MoE ÷ dense decode speed-up against the ratio of active weight bytes (what it should be if
  decode is bound by reading weights);
- llama.cpp (devprof's own runner on the pinned llama.cpp, host build; devprof's GGUF export of the same seeded weights): reference ÷
  llama.cpp decode at F32, MoE ÷ dense decode and prefill at Q4_0, and (devprof.bench_native)
  the runner against llama.cpp's own llama-bench and against the GEMV ceiling, Q4_0 and F32;
- the sampler: decode speed with 10 ms /proc sampling vs none, in interleaved pairs; the sampled
  peak vs the kernel's VmHWM vs `/usr/bin/time -v`'s maximum resident set size.

Each runtime process is started as a devprof session starts it (the local device: its own process,
sampled, reaped with wait4), with ``--warmup`` so the timed generation follows an untimed one in
the same process (weights mapped: steady-state kernels, which is what a roofline compares), and
repetitions of all configurations are interleaved. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from devprof import stats
from devprof.bench_native import LLAMA_BENCH_TARGET, NativeSection, ratio_keys
from devprof.catalog import ModelSpec, get_model
from devprof.devices.base import RunRequest
from devprof.devices.local import LocalDevice
from devprof.errors import DevprofError, RuntimeFailed, UsageError
from devprof.results import ProcessOutcome, RunResult

PAIRS = {"quick": ("mobilemoe-s-mini", "mobilellm-pro-mini"), "full": ("mobilemoe-s", "mobilellm-pro")}

TARGETS: dict[str, tuple[str, float]] = {
    "decode_efficiency_moe": (">=", 0.8),
    "decode_efficiency_dense": (">=", 0.8),
    "prefill_efficiency_moe": (">=", 0.6),
    "prefill_efficiency_dense": (">=", 0.6),
    "moe_decode_speedup_over_bytes_ratio": (">=", 0.9),
    "llamacpp_decode_ratio_moe": (">=", 1.0),
    "llamacpp_decode_ratio_dense": (">=", 1.0),
    **{k: LLAMA_BENCH_TARGET for k in ratio_keys()},
    "sampler_overhead": ("<=", 0.01),
    "sampler_cpu_share_of_runtime_cores": ("<=", 0.01),
    "samples_peak_over_vmhwm": (">=", 0.95),
    "vmhwm_over_time_v": ("~", 1.0),
}


@dataclass
class BenchConfig:
    quick: bool = True
    context: int = 1024
    new_tokens: int = 32
    reps: int = 3
    sampler_pairs: int = 5
    threads: int = 0  # 0: all cores
    seed: int = 0
    llamacpp: bool = True
    build_llama_bench: bool = False
    runner: str | None = None  # devprof's llama.cpp runner binary [default: the committed host build]

    @property
    def pair(self) -> tuple[ModelSpec, ModelSpec]:
        moe, dense = PAIRS["quick" if self.quick else "full"]
        return get_model(moe), get_model(dense)

    @property
    def n_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass
class Sample:
    result: RunResult
    outcome: ProcessOutcome


@dataclass
class BenchResult:
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # figure, value, target, verdict
    notes: list[str] = field(default_factory=list)


# -- the machine's ceilings ---------------------------------------------------------------
def machine_ceilings(threads: int, reps: int = 10) -> tuple[float, float]:
    """(fp32 GEMV read bandwidth in bytes/s, fp32 GEMM rate in FLOP/s): the best of ``reps``.

    The bandwidth is the fastest GEMV on a 256 MB matrix, far beyond the caches: torch's (MKL)
    and numpy's (OpenBLAS) with the matrix either way round (``W @ x`` reads rows, ``x @ W`` --
    what the reference runtime's decode does -- streams columns; OpenBLAS's ``x @ W`` kernel is
    the fastest here, ~1.2x its ``W @ x``); the rate is torch's GEMM (what prefill uses). Best,
    not median: a ceiling is what the machine can do, and noise on a shared machine only ever
    makes a run slower."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from devprof.runtimes.reference.engine import set_threads

    set_threads(threads)

    def best(fn: Callable[[], Any]) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    with torch.inference_mode():
        W, x = torch.randn(8192, 8192), torch.randn(1, 8192)
        Wn, xn = W.numpy(), x.numpy()
        t = min(best(lambda: F.linear(x, W)), best(lambda: np.matmul(Wn, xn[0])), best(lambda: np.matmul(xn, Wn)))
        bw = W.numel() * 4 / t
        A, B = torch.randn(2048, 1024), torch.randn(4096, 1024)
        rate = 2 * 2048 * 1024 * 4096 / best(lambda: F.linear(A, B))
    return bw, rate


# -- running one process ------------------------------------------------------------------
class Runner:
    """Starts runtime processes on the local device and parses what they print."""

    def __init__(self, cfg: BenchConfig, workdir: Path) -> None:
        self.cfg, self.workdir = cfg, workdir
        self.dev = LocalDevice(scratch_dir=workdir / "scratch")
        ids = _prompt_ids(cfg.context, cfg.seed)
        self.ids_file = workdir / f"real-{cfg.context}.ids"
        self.ids_file.write_text("\n".join(map(str, ids)) + "\n")

    def reference_argv(self, spec: ModelSpec) -> list[str]:
        from devprof.runtimes.reference.bundle import build_bundle
        from devprof.runtimes.base import Invocation, get_adapter

        inv = Invocation(binary="", model_path=str(build_bundle(spec, seed=self.cfg.seed)), tokenizer_path=None,
                         prompt_file="", max_new_tokens=self.cfg.new_tokens, threads=self.cfg.n_threads,
                         extra={"prompt_ids_file": str(self.ids_file), "warmup": True})
        return get_adapter("reference").argv(inv)

    def llamacpp_argv(self, path: Path) -> list[str]:
        from devprof.runtimes.llamacpp import host_runner

        return [self.cfg.runner or host_runner(), "-m", str(path), "--prompt-ids", str(self.ids_file),
                "-n", str(self.cfg.new_tokens), "-t", str(self.cfg.n_threads), "--warmup"]

    def run(self, argv: list[str], parser: str, sample_ms: int = 10, prefix: list[str] | None = None) -> Sample:
        from devprof.runtimes.base import get_adapter

        out = self.dev.run(RunRequest(argv=[*(prefix or []), *argv], sample_ms=sample_ms, timeout_s=3600))
        if out.status != "ok":
            tail = (out.stderr.strip().splitlines() or [out.note])[-1]
            raise RuntimeFailed(f"{parser} runtime failed ({out.status}): {tail[:300]}")
        return Sample(get_adapter(parser).parse(out.stdout, out.stderr), out)


def _prompt_ids(context: int, seed: int) -> list[int]:
    from devprof.workloads import build_prompt

    return build_prompt("real", context, seed=seed).token_ids


def _best(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return max(v) if v else None


def _med(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


# -- the benchmark ------------------------------------------------------------------------
def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> BenchResult:
    res = BenchResult()
    fig = res.figures
    moe, dense = cfg.pair
    for spec in (moe, dense):
        if cfg.context > spec.max_context:
            raise UsageError(f"--context {cfg.context} is larger than {spec.display} allows")
    from devprof.session import threads_warning

    if warn := threads_warning(cfg.n_threads, os.cpu_count(), "this host"):
        log(warn)
        res.notes.append(warn)
    work = Path(tempfile.mkdtemp(prefix="devprof-bench-"))
    try:
        runner = Runner(cfg, work)
        log(f"measuring this machine's fp32 GEMV bandwidth and GEMM rate ({cfg.n_threads} threads)")
        bw0, rate0 = machine_ceilings(cfg.n_threads)
        configs, native = _configs(cfg, runner, log)
        samples = _repetitions(cfg, runner, native, configs, log)
        log("measuring the ceilings again (the better of the two counts)")
        bw1, rate1 = machine_ceilings(cfg.n_threads)
        bw, rate = max(bw0, bw1), max(rate0, rate1)
        if native:
            native.measure_ceilings()
        fig.update(gemv_read_gb_s=round(bw / 1e9, 2), gemm_gflop_s=round(rate / 1e9, 1), threads=cfg.n_threads,
                   context=cfg.context, new_tokens=cfg.new_tokens, models=[moe.name, dense.name])
        _reference_figures(fig, cfg, samples, bw, rate)
        if native:
            _native_figures(fig, native, samples)
            res.notes += native.notes
        # On the MoE (the faster model: more pairs in the time), in interleaved pairs.
        argv = configs["ref-moe"][0]
        hwms = _sampler_figures(fig, cfg, runner, argv, log)
        _time_v_figures(res, runner, argv, hwms, log)
        fig["load_average_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.rows = table_rows(fig)
    return res


def _configs(cfg: BenchConfig, runner: Runner,
             log: Callable[[str], None]) -> tuple[dict[str, tuple[list[str], str]], NativeSection | None]:
    """Every configuration measured (key -> argv, parser), and the llama.cpp section if asked for."""
    moe, dense = cfg.pair
    configs: dict[str, tuple[list[str], str]] = {}
    log("building bundles (seeded random weights, cached)")
    configs["ref-moe"] = (runner.reference_argv(moe), "reference")
    configs["ref-dense"] = (runner.reference_argv(dense), "reference")
    native = None
    if cfg.llamacpp:
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise DevprofError("devprof bench writes GGUF files for devprof's llama.cpp runner: install "
                               "`pip install -e '.[llamacpp]'` (or pass --no-llamacpp)") from None
        log("writing GGUF files (F32 and Q4_0) from the same weights")
        native = NativeSection(cfg, runner, {"moe": moe, "dense": dense}, log)
        configs.update(native.configs())
        log(f"GEMV read rate on matrices the size of the GGUFs ({cfg.n_threads} threads)")
        native.measure_ceilings()
    return configs, native


def _repetitions(cfg: BenchConfig, runner: Runner, native: NativeSection | None,
                 configs: dict[str, tuple[list[str], str]], log: Callable[[str], None]) -> dict[str, list[Sample]]:
    # Every process times a generation that follows an untimed one (--warmup), so the page
    # cache is warm for what is timed even in the first repetition.
    samples: dict[str, list[Sample]] = {k: [] for k in configs}
    for rep in range(1, cfg.reps + 1):
        for key, (argv, parser) in configs.items():
            s = Sample(*native.run_llama_bench(argv[0])) if native and parser == "llama-bench" else runner.run(argv, parser)
            samples[key].append(s)
            log(f"rep {rep}/{cfg.reps} {key}: prefill {s.result.prefill_tok_s or 0:.1f} tok/s, "
                f"decode {s.result.decode_tok_s or 0:.2f} tok/s")
    return samples


def _dec(samples: dict[str, list[Sample]], k: str) -> float | None:
    return _med([s.result.decode_tok_s for s in samples[k]])


def _pre(samples: dict[str, list[Sample]], k: str) -> float | None:
    return _med([s.result.prefill_tok_s for s in samples[k]])


def _reference_figures(fig: dict[str, Any], cfg: BenchConfig, samples: dict[str, list[Sample]], bw: float,
                       rate: float) -> None:
    """The reference runtime against the ceilings, and MoE over dense against the bytes ratio."""
    moe, dense = cfg.pair
    kv_tokens = cfg.context + cfg.new_tokens // 2
    for spec, tag in ((moe, "moe"), (dense, "dense")):
        read = spec.weight_bytes_read_per_token("fp32") + spec.kv_cache_bytes(kv_tokens, 4)
        d, p = _dec(samples, f"ref-{tag}"), _pre(samples, f"ref-{tag}")
        fig[f"decode_tok_s_{tag}"] = _r(d)
        fig[f"prefill_tok_s_{tag}"] = _r(p)
        fig[f"decode_bytes_per_token_{tag}"] = read
        fig[f"decode_efficiency_{tag}"] = _r(read * d / bw if d else None, 3)
        fig[f"prefill_efficiency_{tag}"] = _r(spec.prefill_flops(cfg.context) / cfg.context * p / rate if p else None, 3)
    fig["moe_decode_speedup"] = _r(_div(_dec(samples, "ref-moe"), _dec(samples, "ref-dense")), 3)
    fig["active_bytes_ratio"] = _r(dense.weight_bytes_read_per_token("fp32") / moe.weight_bytes_read_per_token("fp32"), 3)
    fig["moe_decode_speedup_over_bytes_ratio"] = _r(_div(fig["moe_decode_speedup"], fig["active_bytes_ratio"]), 3)


def _native_figures(fig: dict[str, Any], native: NativeSection, samples: dict[str, list[Sample]]) -> None:
    for tag in ("moe", "dense"):
        fig[f"llamacpp_f32_decode_tok_s_{tag}"] = _r(_dec(samples, f"f32-{tag}"))
        fig[f"llamacpp_q4_0_decode_tok_s_{tag}"] = _r(_dec(samples, f"q4_0-{tag}"))
        fig[f"llamacpp_q4_0_prefill_tok_s_{tag}"] = _r(_pre(samples, f"q4_0-{tag}"))
        fig[f"llamacpp_decode_ratio_{tag}"] = _r(_div(_dec(samples, f"ref-{tag}"), _dec(samples, f"f32-{tag}")), 3)
    fig.update(native.figures(lambda k: _best([s.result.decode_tok_s for s in samples[k]]),
                              lambda k: _best([s.result.prefill_tok_s for s in samples[k]])))
    fig["q4_moe_decode_speedup"] = _r(_div(_dec(samples, "q4_0-moe"), _dec(samples, "q4_0-dense")), 3)
    fig["q4_prefill_speedup"] = _r(_div(_pre(samples, "q4_0-moe"), _pre(samples, "q4_0-dense")), 3)


def _sampler_figures(fig: dict[str, Any], cfg: BenchConfig, runner: Runner, argv: list[str],
                     log: Callable[[str], None]) -> list[int]:
    """The sampler's overhead, and its peak against the kernel's; returns the runs' VmHWMs."""
    log(f"sampler overhead: {cfg.sampler_pairs} interleaved pairs, 10 ms sampling vs none")
    fracs, peaks, hwms, cpu = [], [], [], []
    for i in range(cfg.sampler_pairs):
        order = (10, 0) if i % 2 == 0 else (0, 10)  # alternate which goes first
        got = {ms: runner.run(argv, "reference", sample_ms=ms) for ms in order}
        on, off = got[10].result.decode_tok_s, got[0].result.decode_tok_s
        if on and off:
            fracs.append(1.0 - on / off)
        o = got[10].outcome
        if o.sampler_cpu_s is not None and o.wall_ms:
            cpu.append(o.sampler_cpu_s / (o.wall_ms / 1000.0))
        if o.samples and o.peak_rss_kb:
            peaks.append(max(s.rss_kb for s in o.samples) / o.peak_rss_kb)
        hwms += [g.outcome.peak_rss_kb for g in got.values() if g.outcome.peak_rss_kb]
        log(f"pair {i + 1}: decode {on or 0:.2f} tok/s sampled, {off or 0:.2f} unsampled")
    fig["sampler_overhead"] = _r(_med(fracs), 4)
    fig["sampler_overhead_pairs"] = [round(f, 4) for f in fracs]
    if len(fracs) >= 2:  # how well the pairs pin the median down on this machine
        ci = stats.bootstrap_ci(fracs)
        fig["sampler_overhead_ci"] = [round(ci.low, 4), round(ci.high, 4)]
    # The sampler's own CPU time over the run's wall time: what it can take from the
    # runtime at most (a fraction of one core, against all the cores the runtime uses),
    # exact where the pairs above are bounded by the machine's run-to-run noise.
    fig["sampler_cpu_share"] = _r(_med(cpu), 5)
    fig["sampler_cpu_share_of_runtime_cores"] = _r(_div(fig["sampler_cpu_share"], cfg.n_threads), 5)
    fig["samples_peak_over_vmhwm"] = _r(_med(peaks), 4)
    return hwms


def _time_v_figures(res: BenchResult, runner: Runner, argv: list[str], hwms: list[int],
                    log: Callable[[str], None]) -> None:
    fig = res.figures
    time_v = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
    if not time_v:
        res.notes.append("/usr/bin/time is not installed (Debian package `time`): vmhwm_over_time_v not measured")
        fig["vmhwm_over_time_v"] = None
        return
    # The same command under `/usr/bin/time -v`: its maximum resident set size against
    # the VmHWM devprof reported for the runs above (medians: the peak of one command
    # varies by a few percent from run to run with the page cache's state).
    tvs = []
    for i in range(3):
        timed = runner.run(argv, "reference", sample_ms=0, prefix=[time_v, "-v"])
        tv_kb = _time_v_maxrss(timed.outcome.stderr)
        if tv_kb:
            tvs.append(tv_kb)
        log(f"/usr/bin/time -v run {i + 1}: maximum resident set size {tv_kb or 0} kB")
    fig["vmhwm_kb"] = _med(hwms)
    fig["time_v_maxrss_kb"] = _med(tvs)
    fig["vmhwm_runs_kb"], fig["time_v_runs_kb"] = hwms, tvs
    fig["vmhwm_over_time_v"] = _r(_div(fig["vmhwm_kb"], fig["time_v_maxrss_kb"]), 4)


def table_rows(fig: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for key in ("decode_efficiency_moe", "decode_efficiency_dense", "prefill_efficiency_moe",
                "prefill_efficiency_dense", "moe_decode_speedup", "active_bytes_ratio",
                "moe_decode_speedup_over_bytes_ratio", "llamacpp_decode_ratio_moe", "llamacpp_decode_ratio_dense",
                "q4_moe_decode_speedup", "q4_prefill_speedup", *ratio_keys(), "sampler_overhead",
                "sampler_cpu_share_of_runtime_cores", "samples_peak_over_vmhwm",
                "vmhwm_over_time_v"):
        if key not in fig:
            continue
        v = fig[key]
        op, goal = TARGETS.get(key, ("", None))
        said = verdict(v, op, goal)
        ci = fig.get(f"{key}_ci")
        if ci and goal is not None and ci[0] <= goal <= ci[1]:
            said += f"; 95% CI {ci[0]:.3f}…{ci[1]:.3f} spans the target"
        rows.append((key, "n/a" if v is None else f"{v:.3f}", f"{op} {goal:g}" if goal is not None else "", said))
    return rows


def verdict(v: float | None, op: str, goal: float | None) -> str:
    if goal is None:
        return ""
    if v is None:
        return "not measured"
    if op == ">=":
        return "met" if v >= goal else f"missed by {(goal - v) / goal:.0%}"
    if op == "<=":
        return "met" if v <= goal else f"missed: {v:.3f} > {goal:g}"
    return "met" if abs(v - goal) <= 0.02 else f"off by {abs(v - goal):.1%}"


def _time_v_maxrss(stderr: str) -> int | None:
    for line in stderr.splitlines():
        if "Maximum resident set size" in line:
            try:
                return int(line.rsplit(":", 1)[1].strip())
            except ValueError:
                return None
    return None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _r(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def to_json(res: BenchResult) -> str:
    return json.dumps({**res.figures, "notes": res.notes}, sort_keys=False)
