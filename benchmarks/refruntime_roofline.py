"""How close the reference runtime gets to this machine's roofline.

    python benchmarks/refruntime_roofline.py                      # minis + full-size, 1024 & 8192
    python benchmarks/refruntime_roofline.py --quick              # minis only
    python benchmarks/refruntime_roofline.py --process            # + whole-process times (minis, 8192)
    python benchmarks/refruntime_roofline.py --residency          # + residency granularity table
    python benchmarks/refruntime_roofline.py --gemv --models none # GEMV read rate per decode shape

Measured in this process, next to each model, with the same thread count:

- the ceilings of ``devprof bench`` (:func:`devprof.bench.machine_ceilings`): fp32 GEMV read
  bandwidth on a 256 MB matrix, the fastest of torch's and numpy's BLAS, either way round; fp32 GEMM rate.

Decode efficiency = (catalog ``weight_bytes_read_per_token("fp32")`` + KV bytes read per step) /
time per step / GEMV bandwidth. Prefill efficiency = catalog ``prefill_flops(context)`` / time /
GEMM rate. Decode runs right after the timed prefill of the same context (real-text prompt from
devprof.workloads), so its KV cache holds ``context`` positions. Times are wall clock: the
reference rates are the best of their repetitions, prefill the best of 2 (1 for full-size models
at > 2048 tokens), decode the 25th percentile of the per-step times, so that a shared machine's
hiccups hurt both sides of each ratio alike; an idle machine still gives the cleanest numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devprof.catalog import get_model  # noqa: E402
from devprof.runtimes.reference.bundle import build_bundle, default_cache_dir  # noqa: E402
from devprof.bench import machine_ceilings  # noqa: E402
from devprof.runtimes.reference.engine import Engine, decode_threads, set_threads, tune_malloc  # noqa: E402


def real_ids(context: int) -> np.ndarray:
    """The real-text workload prompt of ``context`` tokens (cached beside the bundles)."""
    path = default_cache_dir().parent / "bench" / f"real-{context}.npy"
    if path.is_file():
        return np.load(path)
    from devprof.workloads import build_prompt

    ids = np.asarray(build_prompt("real", context).token_ids, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ids)
    return ids


def bench_model(name: str, contexts: list[int], steps: int, bw: float, rate: float,
                prefill_reps: int = 2) -> list[dict]:
    spec = get_model(name)
    t = time.perf_counter()
    folder = build_bundle(spec)
    built = time.perf_counter() - t
    eng = Engine(folder)
    rows = []
    for C in contexts:
        ids = torch.from_numpy(real_ids(C))
        eng.prefill(ids[:256], eng.new_cache(256))  # warm: map the dense weights
        tp = float("inf")
        for _ in range(prefill_reps if C <= 2048 or spec.mini else 1):
            cache = eng.new_cache(C + steps + 8)
            t = time.perf_counter()
            logits = eng.prefill(ids, cache)
            tp = min(tp, time.perf_counter() - t)
        tok = int(torch.argmax(logits))
        pos = C
        ts = []
        with decode_threads():  # as Engine.generate decodes: torch on one thread, BLAS on all
            for _ in range(4):  # warm
                tok = int(torch.argmax(eng.decode(tok, pos, cache)))
                pos += 1
            for _ in range(steps):
                t = time.perf_counter()
                logits = eng.decode(tok, pos, cache)
                tok = int(torch.argmax(logits))
                ts.append(time.perf_counter() - t)
                pos += 1
        td = float(np.percentile(ts, 25))  # robust to a shared machine's hiccups
        read = spec.weight_bytes_read_per_token("fp32") + spec.kv_cache_bytes(C + 4 + steps // 2)
        flops = spec.prefill_flops(C)
        rows.append(dict(
            model=name, context=C, prefill_s=tp, prefill_tok_s=C / tp, prefill_gflops=flops / tp / 1e9,
            prefill_eff=flops / tp / rate, decode_ms=td * 1e3, decode_tok_s=1 / td,
            decode_gbs=read / td / 1e9, decode_eff=read / td / bw, read_mb=read / 1e6,
            bundle_build_s=built,
        ))
        print(f"  {name} @ {C}: prefill {tp:.2f} s ({flops / tp / 1e9:.1f} GFLOP/s), "
              f"decode {td * 1e3:.2f} ms/token ({read / td / 1e9:.2f} GB/s)", file=sys.stderr, flush=True)
    return rows


def bench_process(name: str, context: int, new: int, threads: int) -> dict:
    folder = build_bundle(get_model(name))
    ids_path = default_cache_dir().parent / "bench" / f"real-{context}.npy"
    real_ids(context)
    cmd = [sys.executable, "-m", "devprof.refruntime", f"--model_path={folder}",
           f"--prompt_ids_file={ids_path}", f"--max_new_tokens={new}"]
    if threads > 0:
        cmd.append(f"--cpu_threads={threads}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(out.stderr)
    line = next(x for x in out.stdout.splitlines() if x.startswith("PyTorchObserver "))
    o = json.loads(line.split(" ", 1)[1])
    imp = next((x for x in out.stderr.splitlines() if "runtime import" in x), "")
    rss = [x for x in out.stderr.splitlines() if "RSS after finishing text generation" in x]
    peak = float(rss[-1].split(": ")[1].split(" MiB")[0]) if rss else None
    return dict(model=name, context=context, new=new, wall_s=wall,
                import_ms=float(imp.split("runtime import: ")[1].split(" ms")[0]) if imp else None,
                load_ms=o["model_load_end_ms"] - o["model_load_start_ms"],
                prefill_s=(o["prompt_eval_end_ms"] - o["inference_start_ms"]) / 1000, peak_rss_mib=peak,
                decode_tok_s=o["generated_tokens"] / (o["inference_end_ms"] - o["prompt_eval_end_ms"]) * 1000)


RESIDENCY_CHILD = r"""
import json, mmap, os, sys
folder, prep, advice = sys.argv[1], sys.argv[2], sys.argv[3]
w = os.path.join(folder, "weights.bin")
fd = os.open(w, os.O_RDONLY)
if prep in ("drop", "read"):
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
if prep == "read":  # warm through read(): the page cache gets large folios
    while os.read(fd, 1 << 24):
        pass
os.close(fd)
from devprof.runtimes.reference.engine import Engine
from devprof.files import mapped_rss_bytes
def mapping_rss():
    return mapped_rss_bytes(w)
e = Engine(folder)
if advice == "hugepage":
    e.advise(mmap.MADV_HUGEPAGE)
r0, touched = mapping_rss(), 0
L = e.layers[0]
for ex in range(0, e.spec.n_experts, 6):  # every 6th expert of layer 0
    float(L.experts_w13[ex].sum() + L.experts_w2[ex].sum())
    touched += (L.experts_w13[ex].numel() + L.experts_w2[ex].numel()) * 4
print(json.dumps({"touched": touched, "delta": mapping_rss() - r0}))
"""

#: (label, how the page cache is prepared, madvise): run in this order per alignment
RESIDENCY_CASES = (
    ("cold (DONTNEED)", "drop", "normal"),
    ("warm from the previous run's faults", "none", "normal"),
    ("warm from read() of the file", "read", "normal"),
    ("cold, MADV_HUGEPAGE", "drop", "hugepage"),
)


def residency_table() -> list[dict]:
    """Touch 10 experts of layer 0 and compare the mapping's Rss growth with their bytes."""
    spec = get_model("mobilemoe-s-mini")
    rows = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for align in (4096, 64 * 1024, 2 * 1024 * 1024):
        folder = build_bundle(spec, expert_align=align)
        for label, prep, advice in RESIDENCY_CASES:
            out = subprocess.run([sys.executable, "-c", RESIDENCY_CHILD, str(folder), prep, advice],
                                 capture_output=True, text=True, env=env, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(dict(align_kib=align // 1024, cache=label, advice=advice,
                             touched_mib=r["touched"] / 2**20, mapped_mib=r["delta"] / 2**20))
        # leave no large folios behind for the next alignment's bundle or later runs
        subprocess.run([sys.executable, "-c", RESIDENCY_CHILD, str(folder), "drop", "normal"],
                       capture_output=True, env=env)
    return rows


def gemv_table(threads: int) -> list[dict]:
    """GB/s of one fp32 GEMV per shape a MobileMoE-S / MobileLLM-Pro decode step runs, out of the
    caches (a ring of copies > 200 MB), for each way to run it: numpy/OpenBLAS ``x @ W`` with W
    [in, out] (what decode does), numpy ``W @ x`` with W [out, in], and torch's ``F.linear``
    (MKL). Interleaved, best of 7 rounds."""
    import torch.nn.functional as F

    shapes = [("MoE-S expert w2", 384, 768), ("MoE-S expert w13 / wo", 768, 768),
              ("MoE-S qkv", 768, 1280), ("MoE-S shared w2", 1536, 768), ("MoE-S shared w13", 768, 3072),
              ("Pro qkv", 1280, 1792), ("Pro ffn w2", 6144, 1280), ("Pro ffn w13", 1280, 12288),
              ("256 MB (bench ceiling)", 8192, 8192)]
    rng = np.random.default_rng(0)
    rows = []
    for label, k, n in shapes:
        copies = max(2, (200 << 20) // (k * n * 4))
        w_in_out = [rng.standard_normal((k, n), dtype=np.float32) for _ in range(copies)]
        w_out_in = [np.ascontiguousarray(w.T) for w in w_in_out]
        w_t = [torch.from_numpy(w) for w in w_out_in]
        x = rng.standard_normal((1, k), dtype=np.float32)
        xt = torch.from_numpy(x)
        out = np.empty((1, n), np.float32)
        ways = {"numpy x@W": lambda i: np.matmul(x, w_in_out[i % copies], out=out),
                "numpy W@x": lambda i: np.matmul(w_out_in[i % copies], x[0], out=out[0]),
                "torch": lambda i: F.linear(xt, w_t[i % copies])}
        reps = max(4, min(200, (400 << 20) // (k * n * 4)))
        best = dict.fromkeys(ways, float("inf"))
        with torch.inference_mode():
            for _ in range(7):
                for name, fn in ways.items():
                    t = time.perf_counter()
                    for i in range(reps):
                        fn(i)
                    best[name] = min(best[name], (time.perf_counter() - t) / reps)
        rows.append({"shape": label, "in": k, "out": n, "mb": k * n * 4 / 1e6,
                     **{name: k * n * 4 / t / 1e9 for name, t in best.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilemoe-s-mini,mobilellm-pro-mini,mobilemoe-s,mobilellm-pro")
    ap.add_argument("--contexts", default="1024,8192")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=24, help="timed decode steps per context")
    ap.add_argument("--quick", action="store_true", help="minis only")
    ap.add_argument("--process", action="store_true", help="whole-process wall times (minis, 8192 + 128)")
    ap.add_argument("--residency", action="store_true", help="residency granularity vs alignment")
    ap.add_argument("--gemv", action="store_true", help="GEMV read rate per decode shape and kernel")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    tune_malloc()  # as the runtime process does
    if args.threads > 0:
        set_threads(args.threads)
    models = [m for m in args.models.split(",") if m and m != "none" and (not args.quick or m.endswith("-mini"))]
    contexts = [int(c) for c in args.contexts.split(",")]
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": []}

    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print()
    if models:
        print("| model | context | ref GEMV GB/s | ref GEMM GFLOP/s | prefill s | prefill tok/s | prefill GFLOP/s "
              "| prefill eff | decode ms/tok | decode tok/s | bytes/tok MB | decode GB/s | decode eff |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in models:
        bw, rate = machine_ceilings(torch.get_num_threads())
        for r in bench_model(m, contexts, args.steps, bw, rate):
            r.update(ref_gemv_gbs=bw / 1e9, ref_gemm_gflops=rate / 1e9)
            out["rows"].append(r)
            print(f"| {r['model']} | {r['context']} | {bw / 1e9:.1f} | {rate / 1e9:.0f} | {r['prefill_s']:.2f} "
                  f"| {r['prefill_tok_s']:.0f} | {r['prefill_gflops']:.1f} | {r['prefill_eff']:.2f} "
                  f"| {r['decode_ms']:.2f} | {r['decode_tok_s']:.1f} | {r['read_mb']:.0f} | {r['decode_gbs']:.2f} "
                  f"| {r['decode_eff']:.2f} |", flush=True)
    if args.process:
        print()
        print("| whole process | context + new | wall s | torch import ms | load ms | prefill s | decode tok/s "
              "| peak RSS MiB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for m in ("mobilemoe-s-mini", "mobilellm-pro-mini"):
            r = bench_process(m, 8192, 128, args.threads)
            out.setdefault("process", []).append(r)
            print(f"| {m} | 8192 + 128 | {r['wall_s']:.2f} | {r['import_ms']:.0f} | {r['load_ms']:.0f} "
                  f"| {r['prefill_s']:.2f} | {r['decode_tok_s']:.1f} | {r['peak_rss_mib']:.0f} |", flush=True)
    if args.residency:
        print()
        print("| expert alignment | page cache | touched MiB | mapped MiB | ratio |")
        print("|---:|---|---:|---:|---:|")
        for r in residency_table():
            out.setdefault("residency", []).append(r)
            print(f"| {r['align_kib']} KiB | {r['cache']} | {r['touched_mib']:.2f} "
                  f"| {r['mapped_mib']:.2f} | {r['mapped_mib'] / r['touched_mib']:.2f} |", flush=True)
    if args.gemv:
        print()
        print("| GEMV (fp32, out of cache) | in x out | MB | numpy x@W GB/s | numpy W@x GB/s | torch GB/s |")
        print("|---|---|---:|---:|---:|---:|")
        for r in gemv_table(args.threads):
            out.setdefault("gemv", []).append(r)
            print(f"| {r['shape']} | {r['in']} x {r['out']} | {r['mb']:.1f} | {r['numpy x@W']:.1f} "
                  f"| {r['numpy W@x']:.1f} | {r['torch']:.1f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
