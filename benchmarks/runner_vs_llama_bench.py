"""devprof's native runner against llama.cpp's own llama-bench, same source, same GGUF, same threads.

    scripts/build-device-bins --variant x86_64-v3 --llama-bench      # builds llama-bench (not committed)
    python benchmarks/runner_vs_llama_bench.py [--runner PATH] [--llama-bench PATH]

Per model (the minis at Q4_0 by default): llama-bench ``-p C -n 0`` (prefill of C random ids) and
``-p 0 -n N -d C`` (N decode steps after C tokens of KV cache, each step feeding a random id),
``-r 1`` per process, ``REPS`` processes; the runner with a C-token prompt, ``-n N+1`` (N decode
steps), ``--warmup``, the best of REPS processes, twice: its decode steps fed random ids like
llama-bench's (``--decode-ids``), and fed its own greedy token (what ``devprof run`` does). On
seeded random weights greedy decoding repeats one token, so an MoE routes every step to the same
few experts: that column shows how much that flatters MoE decode. Both use llama.cpp's defaults
otherwise (F16 KV cache, flash attention auto, mmap, CPU repack, batch and ubatch 512). The ratio
runner ÷ llama-bench is what the runner adds (target: under 2% slower, i.e. >= 0.98).
Interleaved: runner and llama-bench alternate per repetition so drift on a shared machine falls
on both. The runner must be one built with ``--decode-ids`` (the build folder's, by default:
``~/.cache/devprof/build/<variant>/devprof-llamarunner``, built with llama-bench).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_runner(runner: str, gguf: Path, ids_file: Path, feed: list[str], a: argparse.Namespace) -> tuple[float, float]:
    from devprof.runtimes.base import get_adapter

    out = subprocess.run([runner, "-m", str(gguf), "--prompt-ids", str(ids_file), "-n", str(a.new_tokens + 1),
                          "-t", str(a.threads), "--warmup", *feed], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"runner failed: {out.stderr.strip().splitlines()[-1]}")
    res = get_adapter("llamacpp").parse(out.stdout, out.stderr)
    return res.prefill_tok_s, res.decode_tok_s


def run_llama_bench(lb: str, gguf: Path, args: list[str], threads: int) -> float:
    from devprof.runtimes.llamacpp import parse_llama_bench

    out = subprocess.run([lb, "-m", str(gguf), *args, "-t", str(threads), "-b", "512", "-ub", "512", "-r", "1",
                          "-o", "jsonl"], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"llama-bench failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return parse_llama_bench(out.stdout, "jsonl")[0].avg_ts


def main() -> int:
    import numpy as np

    from devprof.bench_native import build_root, host_variant, llama_bench_path, runner_has_decode_ids
    from devprof.catalog import get_model
    from devprof.runtimes.llamacpp.gguf_export import build_gguf
    from devprof.workloads import build_prompt

    variant = host_variant()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench", default=str(llama_bench_path(variant)))
    ap.add_argument("--runner", default=str(build_root() / variant / "devprof-llamarunner"))
    ap.add_argument("--models", default="mobilemoe-s-mini,mobilellm-pro-mini")
    ap.add_argument("--weights", default="q4_0")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if not runner_has_decode_ids(a.runner):
        raise SystemExit(f"{a.runner} has no --decode-ids (an older build): rebuild it with scripts/build-device-bins")
    tmp = Path(tempfile.mkdtemp(prefix="devprof-rvb-"))
    ids_file, feed_file = tmp / "p.ids", tmp / "d.ids"
    ids_file.write_text("\n".join(map(str, build_prompt("real", a.context, seed=0).token_ids)) + "\n")
    figs: dict[str, float] = {}
    rows = []
    med = max  # the best repetition: on a shared machine other processes only ever slow a run down
    for name in a.models.split(","):
        spec = get_model(name)
        feed = np.random.default_rng(0).integers(0, spec.vocab, size=a.new_tokens)
        feed_file.write_text("\n".join(map(str, feed.tolist())) + "\n")
        gguf = build_gguf(spec, seed=0, weights=a.weights)
        r_pre, r_dec, g_dec, b_pre, b_dec = [], [], [], [], []
        for _ in range(a.reps):
            p, d = run_runner(a.runner, gguf, ids_file, ["--decode-ids", str(feed_file)], a)
            r_pre.append(p)
            r_dec.append(d)
            b_pre.append(run_llama_bench(a.llama_bench, gguf, ["-p", str(a.context), "-n", "0"], a.threads))
            b_dec.append(run_llama_bench(a.llama_bench, gguf, ["-p", "0", "-n", str(a.new_tokens), "-d", str(a.context)],
                                         a.threads))
            g_dec.append(run_runner(a.runner, gguf, ids_file, [], a)[1])
        row = dict(model=name, runner_prefill=med(r_pre), llama_bench_prefill=med(b_pre), runner_decode=med(r_dec),
                   llama_bench_decode=med(b_dec), greedy_decode=med(g_dec))
        row["prefill_ratio"] = row["runner_prefill"] / row["llama_bench_prefill"]
        row["decode_ratio"] = row["runner_decode"] / row["llama_bench_decode"]
        row["greedy_ratio"] = row["greedy_decode"] / row["llama_bench_decode"]
        rows.append(row)
        for k in ("prefill", "decode", "greedy"):
            figs[f"runner_over_llama_bench_{k}_{name}"] = round(row[f"{k}_ratio"], 3)
    print(f"{a.weights}, context {a.context}, {a.new_tokens} decode steps, {a.threads} threads, best of {a.reps}; "
          f"runner {a.runner}")
    print(f"{'model':20} {'prefill runner':>14} {'llama-bench':>11} {'ratio':>6} {'decode runner':>13} "
          f"{'llama-bench':>11} {'ratio':>6} {'greedy-fed':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:20} {r['runner_prefill']:14.1f} {r['llama_bench_prefill']:11.1f} {r['prefill_ratio']:6.3f} "
              f"{r['runner_decode']:13.1f} {r['llama_bench_decode']:11.1f} {r['decode_ratio']:6.3f} "
              f"{r['greedy_decode']:10.1f} {r['greedy_ratio']:6.3f}")
    print(json.dumps(figs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
