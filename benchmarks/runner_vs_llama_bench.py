"""devprof's native runner against llama.cpp's own llama-bench, same source, same GGUF, same threads.

    scripts/build-device-bins --variant x86_64-v3 --llama-bench      # builds llama-bench (not committed)
    python benchmarks/runner_vs_llama_bench.py --llama-bench ~/.cache/devprof/build/x86_64-v3/bin/llama-bench

Per model (the minis at Q4_0 by default): llama-bench ``-p C -n 0`` (prefill of C tokens) and
``-p 0 -n N -d C`` (N decode steps after C tokens of KV cache), ``-r REPS``, its mean tok/s; the
runner with a C-token prompt, ``-n N+1`` (N decode steps), ``--warmup``, median of REPS processes.
Both use llama.cpp's defaults otherwise (F16 KV cache, flash attention auto, mmap, CPU repack).
The ratio runner ÷ llama-bench is what the runner adds (target: under 2% slower, i.e. >= 0.98).
Interleaved: runner and llama-bench alternate per repetition so drift on a shared machine falls
on both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from devprof.catalog import get_model
    from devprof.runtimes.base import get_adapter
    from devprof.runtimes.llamacpp import host_runner, parse_llama_bench
    from devprof.runtimes.llamacpp.gguf_export import build_gguf
    from devprof.workloads import build_prompt

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--models", default="mobilemoe-s-mini,mobilellm-pro-mini")
    ap.add_argument("--weights", default="q4_0")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    runner = host_runner()
    adapter = get_adapter("llamacpp")
    ids = build_prompt("real", a.context, seed=0).token_ids
    tmp = Path(tempfile.mkdtemp(prefix="devprof-rvb-"))
    ids_file = tmp / "p.ids"
    ids_file.write_text("\n".join(map(str, ids)) + "\n")
    figs: dict[str, float] = {}
    rows = []
    for name in a.models.split(","):
        gguf = build_gguf(get_model(name), seed=0, weights=a.weights)
        r_pre, r_dec, b_pre, b_dec = [], [], [], []
        for _ in range(a.reps):
            out = subprocess.run([runner, "-m", str(gguf), "--prompt-ids", str(ids_file), "-n", str(a.new_tokens + 1),
                                  "-t", str(a.threads), "--warmup"], capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                raise SystemExit(f"runner failed: {out.stderr.strip().splitlines()[-1]}")
            res = adapter.parse(out.stdout, out.stderr)
            r_pre.append(res.prefill_tok_s)
            r_dec.append(res.decode_tok_s)
            for args, sink in ((["-p", str(a.context), "-n", "0"], b_pre),
                               (["-p", "0", "-n", str(a.new_tokens), "-d", str(a.context)], b_dec)):
                out = subprocess.run([a.llama_bench, "-m", str(gguf), *args, "-t", str(a.threads), "-r", "1",
                                      "-o", "jsonl"], capture_output=True, text=True, timeout=900)
                if out.returncode != 0:
                    raise SystemExit(f"llama-bench failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
                sink.append(parse_llama_bench(out.stdout, "jsonl")[0].avg_ts)
        med = statistics.median
        row = dict(model=name, runner_prefill=med(r_pre), llama_bench_prefill=med(b_pre), runner_decode=med(r_dec),
                   llama_bench_decode=med(b_dec))
        row["prefill_ratio"] = row["runner_prefill"] / row["llama_bench_prefill"]
        row["decode_ratio"] = row["runner_decode"] / row["llama_bench_decode"]
        rows.append(row)
        figs[f"runner_over_llama_bench_prefill_{name}"] = round(row["prefill_ratio"], 3)
        figs[f"runner_over_llama_bench_decode_{name}"] = round(row["decode_ratio"], 3)
    print(f"{a.weights}, context {a.context}, {a.new_tokens} decode steps, {a.threads} threads, median of {a.reps}")
    print(f"{'model':22} {'prefill runner':>15} {'llama-bench':>12} {'ratio':>7} {'decode runner':>14} {'llama-bench':>12} {'ratio':>7}")
    for r in rows:
        print(f"{r['model']:22} {r['runner_prefill']:15.1f} {r['llama_bench_prefill']:12.1f} {r['prefill_ratio']:7.3f} "
              f"{r['runner_decode']:14.1f} {r['llama_bench_decode']:12.1f} {r['decode_ratio']:7.3f}")
    print(json.dumps(figs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
