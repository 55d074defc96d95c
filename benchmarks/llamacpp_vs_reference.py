"""llama.cpp (F32, Q8_0, Q4_0) against devprof's reference runtime (fp32 torch), MoE against dense.

    python benchmarks/llamacpp_vs_reference.py                 # the minis at 1024 tokens
    python benchmarks/llamacpp_vs_reference.py --full          # + mobilemoe-s vs mobilellm-pro; 1024 and 8192

Every measurement is one process run, as a devprof session does it: ``python -m
devprof.refruntime`` (its PyTorchObserver line) or devprof's native llama.cpp runner, host build
(llama.cpp's perf lines), the same real-text prompt as exact token ids, greedy, ``--new-tokens`` tokens. One
untimed run of every configuration warms the page cache, then repetitions are interleaved
(rep 1 of every configuration, then rep 2, ...) so drift falls on all alike; the table shows
medians (and min-max with --spread). Rates follow the adapters: prefill = prompt tokens /
prompt time, decode = decode steps (new tokens - 1) / decode time.

Ratios: reference ÷ llama.cpp at F32 (how far the torch reference is from llama.cpp at the
same precision), and MoE ÷ dense at Q4_0 (the speed-up the paper reports for INT4 on phones).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devprof import workloads as wl
from devprof.catalog import get_model
from devprof.runtimes.llamacpp.gguf_export import build_gguf
from devprof.runtimes.reference.bundle import build_bundle
from devprof.runtimes.executorch import parse_pytorch_observer
from devprof.runtimes.llamacpp import parse_llama_perf

PAIRS = {"mini": ("mobilemoe-s-mini", "mobilellm-pro-mini"), "full": ("mobilemoe-s", "mobilellm-pro")}
VARIANTS = ("reference", "f32", "q8_0", "q4_0")


def run_one(kind: str, path: Path, ids_file: Path, new_tokens: int, threads: int, timeout: float,
            trace: Path | None = None, warmup: bool = False) -> tuple[float | None, float | None, float, float]:
    """(prefill tok/s, decode tok/s, wall seconds, CPU utilisation) of one process run.

    Utilisation is the child's user + system CPU time / (wall time x threads): well below 1 on
    a machine shared with other work (the run waited for a core), so it flags noisy samples."""
    if kind == "reference":
        argv = [sys.executable, "-m", "devprof.refruntime", "--model_path", str(path), "--prompt_ids_file",
                str(ids_file), "--max_new_tokens", str(new_tokens), "--cpu_threads", str(threads)]
    else:
        from devprof.runtimes.llamacpp import host_runner

        argv = [host_runner(), "-m", str(path), "--prompt-ids", str(ids_file),
                "-n", str(new_tokens), "-t", str(threads)]
        if trace is not None:
            argv += ["--routing-trace", str(trace)]
    if warmup:
        argv.append("--warmup")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    util = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / (wall * threads)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    text = out.stdout + "\n" + out.stderr
    r = parse_pytorch_observer(text, runtime="reference") if kind == "reference" else parse_llama_perf(text)
    return r.prefill_tok_s, r.decode_tok_s, wall, util


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="add mobilemoe-s vs mobilellm-pro, and 8192 tokens")
    ap.add_argument("--only-full", action="store_true", help="the full-size pair only")
    ap.add_argument("--contexts", default=None, help="comma-separated prompt lengths (default 1024; 1024,8192 with --full)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="reference,f32,q8_0,q4_0 (and q4_0+trace)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--spread", action="store_true", help="show min-max next to each median")
    ap.add_argument("--in-process-warmup", action="store_true",
                    help="pass --warmup to both runtimes: each measured generation follows an untimed one in the "
                         "same process, so weights are already mapped and faulted in (a devprof session measures "
                         "the first generation of each process, as without this flag)")
    ap.add_argument("--json", default=None, help="write every sample here")
    a = ap.parse_args()
    if a.reps < 3:
        ap.error("--reps must be >= 3 (medians of at least three)")
    contexts = [int(c) for c in a.contexts.split(",")] if a.contexts else ([1024, 8192] if a.full or a.only_full else [1024])
    pairs = ([] if a.only_full else [PAIRS["mini"]]) + ([PAIRS["full"]] if a.full or a.only_full else [])
    variants = a.variants.split(",")

    # ---- build everything first (cached), then measure ------------------------------------
    files: dict[tuple[str, str], Path] = {}
    for pair in pairs:
        for name in pair:
            spec = get_model(name)
            t = time.perf_counter()
            for v in variants:
                w = v.split("+")[0]
                files[(name, v)] = build_bundle(spec, a.seed) if v == "reference" else build_gguf(spec, a.seed, w)
            print(f"# {name}: files ready in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="llamacpp-bench-"))
    prompts = {}
    for c in contexts:
        ids = wl.build_prompt("real", c, seed=a.seed).token_ids
        p = tmp / f"real-{c}.ids"
        p.write_text("\n".join(map(str, ids)) + "\n")
        prompts[c] = p

    samples: dict[tuple[str, int, str], list[tuple[float | None, float | None, float, float]]] = {}
    load0 = os.getloadavg()
    for c in contexts:
        configs = [(name, v) for pair in pairs for name in pair for v in variants
                   if c <= get_model(name).max_context and not (v.endswith("+trace") and not get_model(name).is_moe)]
        for rep in range(a.reps + 1):  # rep 0: untimed warm-up of every configuration
            for name, v in configs:
                trace = tmp / "trace.npz" if v.endswith("+trace") else None
                kind = "reference" if v == "reference" else "llamacpp"
                r = run_one(kind, files[(name, v)], prompts[c], a.new_tokens, a.threads, a.timeout, trace,
                            a.in_process_warmup)
                label = "warm-up" if rep == 0 else f"rep {rep}/{a.reps}"
                print(f"# {c:>5} {name:<20} {v:<10} {label:<8} prefill {r[0] or 0:8.1f} tok/s  decode "
                      f"{r[1] or 0:7.2f} tok/s  ({r[2]:.1f} s, CPU use {r[3]:.0%}, load {os.getloadavg()[0]:.1f})",
                      file=sys.stderr, flush=True)
                if rep:
                    samples.setdefault((name, c, v), []).append(r)

    def med(key: tuple[str, int, str], i: int) -> float | None:
        vals = [s[i] for s in samples.get(key, []) if s[i] is not None]
        return statistics.median(vals) if vals else None

    def cell(key: tuple[str, int, str], i: int) -> str:
        m = med(key, i)
        if m is None:
            return "-"
        s = f"{m:.1f}" if m >= 10 else f"{m:.2f}"
        if a.spread:
            vals = [x[i] for x in samples[key] if x[i] is not None]
            s += f" ({min(vals):.3g}-{max(vals):.3g})"
        return s

    def ratio(x: float | None, y: float | None) -> str:
        return f"{x / y:.2f}x" if x and y else "-"

    utils = [x[3] for v in samples.values() for x in v]
    print(f"\nthreads {a.threads} of {os.cpu_count()} CPUs, {a.new_tokens} new tokens, real prompt (seed {a.seed}), "
          f"median of {a.reps}{', in-process warm-up' if a.in_process_warmup else ''}; load average {load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
          f"child CPU use median {statistics.median(utils):.0%} (min {min(utils):.0%}) of its threads\n")
    head = "| model | context | " + " | ".join(f"{v} decode | {v} prefill" for v in variants) + " |"
    print(head)
    print("|" + "---|" * (2 + 2 * len(variants)))
    for pair in pairs:
        for c in contexts:
            for name in pair:
                if not any((name, c, v) in samples for v in variants):
                    continue
                print(f"| {name} | {c} | " + " | ".join(f"{cell((name, c, v), 1)} | {cell((name, c, v), 0)}"
                                                        for v in variants) + " |")
    print("\ntok/s; decode = (new tokens - 1) / decode time, prefill = prompt tokens / prompt time\n")
    print("| pair | context | ref÷llama F32 decode (MoE) | ref÷llama F32 prefill (MoE) | ref÷llama F32 decode (dense) "
          "| ref÷llama F32 prefill (dense) | MoE÷dense Q4_0 decode | MoE÷dense Q4_0 prefill |")
    print("|---|---|---|---|---|---|---|---|")
    for moe, dense in pairs:
        for c in contexts:
            row = [f"{moe} / {dense}", str(c)]
            for name in (moe, dense):
                for i in (1, 0):
                    row.append(ratio(med((name, c, "reference"), i), med((name, c, "f32"), i)))
            for i in (1, 0):
                row.append(ratio(med((moe, c, "q4_0"), i), med((dense, c, "q4_0"), i)))
            print("| " + " | ".join(row) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(
            {"threads": a.threads, "new_tokens": a.new_tokens, "reps": a.reps,
             "samples": [{"model": k[0], "context": k[1], "variant": k[2], "prefill_tok_s": s[0],
                          "decode_tok_s": s[1], "wall_s": s[2], "cpu_use": s[3]}
                         for k, v in samples.items() for s in v]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
