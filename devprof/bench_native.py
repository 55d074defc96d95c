"""`devprof bench`'s native-runner section: devprof's llama.cpp runner against llama.cpp's own
``llama-bench`` and against this host's GEMV ceiling, at Q4_0 and F32, on the MoE and the dense model.

- Runner ÷ llama-bench, prefill and decode, on the same GGUF with the same threads, in the same
  interleaved repetitions as the rest of the bench (target: the runner adds under 2%, i.e. a ratio
  >= 0.98). Each side's best repetition counts (as for the machine's ceilings: on a shared machine
  other processes only ever slow a run down, and the medians of a few runs of 0.1-1 s swing by
  ±30% here when the load is several times the cores). llama-bench is built from the same pinned llama.cpp source and the same ggml/llama
  libraries as the runner (``scripts/build-device-bins --llama-bench``, into devprof's build cache,
  not committed); without it the section prints the one line that builds it and the rest runs.
  llama-bench's prefill is ``-p C -n 0`` (C random ids); its decode is ``-p 0 -n N-1 -d C`` (N-1
  steps after a C-token KV cache, each step feeding a random id). The runner's decode steps are fed
  random ids too (``--decode-ids``): greedy decoding on seeded random weights repeats one token, so
  an MoE would route every step to the same few experts (MoE-mini: 1-4 distinct expert sets per
  layer over 32 steps), a different workload from llama-bench's.
- Decode efficiency against the GEMV ceiling: the bytes a decode step reads, from the GGUF's own
  tensor sizes (every tensor but the embedding lookup; routed experts ``top_k / n_experts`` of
  theirs) plus the F16 KV cache, times the runner's decode tok/s, over the best fp32 GEMV read
  rate numpy's BLAS reaches on a matrix as large as the GGUF's weights (the working set decode
  cycles through; a small model's sits in the last-level cache, a large one's in DRAM), measured
  before and after the runs (the better counts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from devprof import REPO_ROOT
from devprof.errors import DevprofError, RuntimeFailed

WEIGHTS = ("q4_0", "f32")
TAGS = ("moe", "dense")
LLAMA_BENCH_TARGET = (">=", 0.98)
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-device-bins"


# -- where llama-bench lives ----------------------------------------------------------------
def build_root() -> Path:
    """``scripts/build-device-bins``' build folder (``$XDG_CACHE_HOME/devprof/build``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "devprof" / "build"


def host_variant() -> str:
    """The CPU variant of devprof's host runner this machine runs (e.g. ``x86_64-v3``)."""
    import platform

    from devprof import bins

    try:
        flags = bins.cpuinfo_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        flags = None
    return bins.select("llamacpp", "host", platform.machine(), cpu_flags=flags).variant


def llama_bench_path(variant: str) -> Path:
    return build_root() / variant / "bin" / "llama-bench"


def build_command(variant: str) -> str:
    return f"scripts/build-device-bins --llama-bench --variant {variant}"


def not_built_line(variant: str) -> str:
    return (f"llama-bench is not built ({llama_bench_path(variant)}): build it once with "
            f"`pip install -e '.[build]' && {build_command(variant)}` (about 20 min on 2 cores), or run "
            f"`devprof bench --build-llama-bench`")


def build_llama_bench(variant: str, log: Callable[[str], None]) -> Path:
    """Build llama-bench into the build cache with scripts/build-device-bins (a source checkout)."""
    if not BUILD_SCRIPT.is_file():
        raise DevprofError(f"--build-llama-bench needs devprof's source checkout ({BUILD_SCRIPT} is missing)")
    log(f"building llama-bench: {build_command(variant)} (about 20 min on 2 cores, once)")
    t = time.monotonic()
    proc = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--llama-bench", "--variant", variant],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise DevprofError(f"building llama-bench failed: {tail}")
    path = llama_bench_path(variant)
    if not path.is_file():
        raise DevprofError(f"the build finished but {path} is not there")
    log(f"llama-bench built in {time.monotonic() - t:.0f} s: {path}")
    return path


def runner_has_decode_ids(runner: str) -> bool:
    """Whether this runner binary accepts ``--decode-ids`` (binaries built before it do not)."""
    try:
        out = subprocess.run([runner, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--decode-ids" in out.stdout


# -- what a decode step reads ----------------------------------------------------------------
@dataclass(frozen=True)
class GgufBytes:
    weights: int          # every tensor's bytes
    per_token: int        # what one decode step reads of them


def gguf_bytes(path: Path) -> GgufBytes:
    """Weight bytes of a GGUF and the bytes a decode step reads of them: every tensor but the
    token-embedding lookup (one row; the whole matrix where it doubles as the LM head), routed
    experts (``*_exps``) ``expert_used_count / expert_count`` of theirs."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    arch = _field(r, "general.architecture") or ""
    n_exp = int(_field(r, f"{arch}.expert_count") or 0)
    top_k = int(_field(r, f"{arch}.expert_used_count") or 0)
    names = {t.name for t in r.tensors}
    total = per = 0
    for t in r.tensors:
        n = int(t.n_bytes)
        total += n
        if t.name == "token_embd.weight" and "output.weight" in names:
            per += n // max(1, int(t.shape[-1]))
        elif "_exps." in t.name and n_exp:
            per += n * top_k // n_exp
        else:
            per += n
    return GgufBytes(weights=total, per_token=per)


def _field(r: Any, key: str) -> Any:
    f = r.fields.get(key)
    if f is None or not f.data:
        return None
    v = f.parts[f.data[0]]
    return bytes(v).decode() if v.dtype.kind == "u" and v.dtype.itemsize == 1 else v[0]


def gemv_read_rate(nbytes: int, threads: int, reps: int = 10) -> float:
    """Best fp32 GEMV read rate (bytes/s) of numpy's BLAS on a matrix of ``nbytes``, either way
    round (``W @ x`` and ``x @ W``), with ``threads`` BLAS threads."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    cols = 4096
    rows = max(8, nbytes // (4 * cols))
    W = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    x, y = np.ones(cols, np.float32), np.ones(rows, np.float32)
    best = float("inf")
    with threadpool_limits(threads, user_api="blas"):
        for fn in (lambda: W @ x, lambda: y @ W):
            fn()
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
    return W.nbytes / best


# -- the figures --------------------------------------------------------------------------------
def figures(dec: Callable[[str], float | None], pre: Callable[[str], float | None],
            nbytes: dict[str, GgufBytes], kv_bytes: dict[str, int], bw: dict[str, float],
            have_llama_bench: bool) -> dict[str, Any]:
    """The section's figures from tok/s per configuration key (``q4_0-moe``, and ``lb-q4_0-moe`` for
    llama-bench; devprof bench gives the best of the repetitions), the GGUFs' bytes, KV bytes per
    step and GEMV rates."""
    fig: dict[str, Any] = {}
    for w in WEIGHTS:
        for tag in TAGS:
            k = f"{w}-{tag}"
            d, p = dec(k), pre(k)
            fig[f"runner_{k}_decode_tok_s"] = _r(d)
            fig[f"runner_{k}_prefill_tok_s"] = _r(p)
            read = nbytes[k].per_token + kv_bytes[tag]
            ceiling = bw[k] / read
            fig[f"gemv_ceiling_{k}_gb_s"] = _r(bw[k] / 1e9)
            fig[f"gemv_ceiling_{k}_decode_tok_s"] = _r(ceiling)
            fig[f"decode_bytes_per_token_{k}"] = read
            fig[f"runner_decode_over_gemv_ceiling_{w}_{tag}"] = _r(d / ceiling if d else None, 3)
            if have_llama_bench:
                fig[f"llama_bench_{k}_decode_tok_s"] = _r(dec(f"lb-{k}"))
                fig[f"llama_bench_{k}_prefill_tok_s"] = _r(pre(f"lb-{k}"))
                fig[f"runner_over_llama_bench_decode_{w}_{tag}"] = _r(_div(d, dec(f"lb-{k}")), 3)
                fig[f"runner_over_llama_bench_prefill_{w}_{tag}"] = _r(_div(p, pre(f"lb-{k}")), 3)
    return fig


def ratio_keys() -> list[str]:
    """The section's figures with a target, in table order."""
    return [f"runner_over_llama_bench_{ph}_{w}_{tag}" for w in WEIGHTS for tag in TAGS for ph in ("prefill", "decode")]


def table_rows(fig: dict[str, Any]) -> list[list[str]]:
    """One row per (weights, model): runner, llama-bench and ratio for prefill and decode, then the
    GEMV ceiling's decode tok/s and the runner's share of it."""
    rows = []
    for w in WEIGHTS:
        for tag in TAGS:
            k = f"{w}-{tag}"
            if fig.get(f"runner_{k}_decode_tok_s") is None and fig.get(f"runner_{k}_prefill_tok_s") is None:
                continue
            rows.append([f"{w} {tag}",
                         _f(fig.get(f"runner_{k}_prefill_tok_s"), 1), _f(fig.get(f"llama_bench_{k}_prefill_tok_s"), 1),
                         _f(fig.get(f"runner_over_llama_bench_prefill_{w}_{tag}"), 3),
                         _f(fig.get(f"runner_{k}_decode_tok_s"), 1), _f(fig.get(f"llama_bench_{k}_decode_tok_s"), 1),
                         _f(fig.get(f"runner_over_llama_bench_decode_{w}_{tag}"), 3),
                         _f(fig.get(f"gemv_ceiling_{k}_decode_tok_s"), 1),
                         _f(fig.get(f"runner_decode_over_gemv_ceiling_{w}_{tag}"), 3)])
    return rows


COLUMNS = ("weights model", "prefill runner", "llama-bench", "ratio", "decode runner", "llama-bench", "ratio",
           "GEMV ceiling", "runner/ceiling")


def _f(v: float | None, nd: int) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _r(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


class LlamaBench:
    """Runs llama-bench for one (GGUF, phase) and reads its tok/s from ``-o jsonl``."""

    def __init__(self, path: Path, context: int, steps: int, threads: int) -> None:
        self.path, self.context, self.steps, self.threads = path, context, steps, threads

    def argv(self, gguf: Path, phase: str) -> list[str]:
        test = (["-p", str(self.context), "-n", "0"] if phase == "prefill"
                else ["-p", "0", "-n", str(self.steps), "-d", str(self.context)])
        return [str(self.path), "-m", str(gguf), *test, "-t", str(self.threads), "-b", "512", "-ub", "512",
                "-r", "1", "-o", "jsonl"]

    @staticmethod
    def tok_s(stdout: str, stderr: str, status: str) -> float:
        from devprof.runtimes.llamacpp import parse_llama_bench

        if status != "ok":
            tail = (stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeFailed(f"llama-bench failed ({status}): {tail[:300]}")
        return parse_llama_bench(stdout, "jsonl")[0].avg_ts


class NativeSection:
    """The runner configurations (each with its llama-bench twin when built), the GEMV ceilings
    of their GGUFs, and the figures. ``runner`` is devprof.bench's Runner (its local device)."""

    def __init__(self, cfg: Any, runner: Any, specs: dict[str, Any], log: Callable[[str], None]) -> None:
        from devprof.runtimes.llamacpp import host_runner
        from devprof.runtimes.llamacpp.gguf_export import build_gguf

        self.cfg, self.runner, self.specs, self.log = cfg, runner, specs, log
        self.notes: list[str] = []
        self.ggufs = {f"{w}-{tag}": build_gguf(spec, seed=cfg.seed, weights=w) for w in WEIGHTS for tag, spec in specs.items()}
        self.bytes = {k: gguf_bytes(p) for k, p in self.ggufs.items()}
        self.bw: dict[str, float] = {}
        self.feed: list[str] = []
        if runner_has_decode_ids(cfg.runner or host_runner()):
            import numpy as np

            vocab = min(s.vocab for s in specs.values())
            ids = np.random.default_rng(cfg.seed).integers(0, vocab, size=max(1, cfg.new_tokens - 1))
            path = runner.workdir / "decode.ids"
            path.write_text("\n".join(map(str, ids.tolist())) + "\n")
            self.feed = ["--decode-ids", str(path)]
        else:
            self.notes.append("this runner binary predates --decode-ids: its decode steps feed the greedy token "
                              "(one repeated token on random weights), llama-bench's random ids; MoE decode "
                              "ratios are flattered (rebuild it: scripts/build-device-bins)")
        variant = host_variant()
        self.llama_bench: LlamaBench | None = None
        path = llama_bench_path(variant)
        if not path.is_file() and getattr(cfg, "build_llama_bench", False):
            path = build_llama_bench(variant, log)
        if path.is_file():
            self.llama_bench = LlamaBench(path, cfg.context, cfg.new_tokens - 1, cfg.n_threads)
        else:
            self.notes.append(not_built_line(variant))

    def configs(self) -> dict[str, tuple[list[str], str]]:
        """Key -> (argv, parser): ``q4_0-moe`` (the runner) then ``lb-q4_0-moe`` (llama-bench)."""
        out: dict[str, tuple[list[str], str]] = {}
        for k, path in self.ggufs.items():
            out[k] = (self.runner.llamacpp_argv(path) + self.feed, "llamacpp")
            if self.llama_bench:
                out[f"lb-{k}"] = ([str(path)], "llama-bench")
        return out

    def run_llama_bench(self, gguf: str) -> tuple[Any, Any]:
        """(RunResult with both phases' tok/s, the decode process's outcome): two processes."""
        from devprof.devices.base import RunRequest
        from devprof.results import RunResult

        assert self.llama_bench is not None
        got: dict[str, float] = {}
        outcome = None
        for phase in ("prefill", "decode"):
            outcome = self.runner.dev.run(RunRequest(argv=self.llama_bench.argv(Path(gguf), phase), sample_ms=10,
                                                     timeout_s=3600))
            try:
                got[phase] = LlamaBench.tok_s(outcome.stdout, outcome.stderr, outcome.status)
            except RuntimeFailed as e:  # a parse error too; the runner's figures stand without it
                note = f"{Path(gguf).name} {phase}: {e}"
                if note not in self.notes:
                    self.notes.append(note)
        return RunResult(runtime="llama-bench", prefill_tok_s=got.get("prefill"), decode_tok_s=got.get("decode")), outcome

    def measure_ceilings(self) -> None:
        """GEMV read rate on a matrix the size of each GGUF's weights (keeps the better of calls)."""
        for k, b in self.bytes.items():
            rate = gemv_read_rate(b.weights, self.cfg.n_threads)
            self.bw[k] = max(rate, self.bw.get(k, 0.0))

    def figures(self, dec: Callable[[str], float | None], pre: Callable[[str], float | None]) -> dict[str, Any]:
        kv_tokens = self.cfg.context + self.cfg.new_tokens // 2
        kv = {tag: spec.kv_cache_bytes(kv_tokens, 2) for tag, spec in self.specs.items()}
        return figures(dec, pre, self.bytes, kv, self.bw, self.llama_bench is not None)


def rich_table(fig: dict[str, Any]) -> Any:
    """The section as a rich Table (None when the llama.cpp runs were skipped)."""
    from rich.table import Table
    from rich.text import Text

    rows = table_rows(fig)
    if not rows:
        return None
    t = Table(title=f"devprof's runner vs llama-bench (same source, same GGUF, {fig.get('threads')} threads, "
                    f"context {fig.get('context')}, {max(1, (fig.get('new_tokens') or 2) - 1)} decode steps): best tok/s "
                    f"of the repetitions, ratio runner ÷ llama-bench (target >= {LLAMA_BENCH_TARGET[1]:g}); decode "
                    f"against the GEMV ceiling")
    for i, col in enumerate(COLUMNS):
        t.add_column(col, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(Text(c) for c in r))
    return t
