"""`devprof bench`: the local runtimes against this machine's roofline, and the sampler's accuracy."""

from __future__ import annotations

import time

import click
from rich.table import Table
from rich.text import Text

from devprof.cli.options import console, out


@click.command()
@click.option("--quick", is_flag=True, help="The mini shapes (a few minutes) instead of full-size MobileMoE-S vs MobileLLM-Pro.")
@click.option("--context", default=None, type=click.IntRange(2), help="Prompt tokens [default: 1024 quick, 512 full].")
@click.option("--new-tokens", default=None, type=click.IntRange(2), help="Generated tokens [default: 128 quick, 32 full].")
@click.option("--reps", default=3, show_default=True, type=click.IntRange(1), help="Measured repetitions per configuration (medians).")
@click.option("--sampler-pairs", default=None, type=click.IntRange(1), help="Interleaved sampled/unsampled pairs [default: 5 quick, 9 full].")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0), help="Runtime threads (0: all cores).")
@click.option("--no-llamacpp", is_flag=True, help="Skip the llama.cpp comparisons.")
@click.option("--build-llama-bench", is_flag=True, help="Build llama-bench into devprof's cache first if it is not there (~20 min; needs the build extra).")
@click.option("--runner", type=click.Path(exists=True, dir_okay=False, resolve_path=True), default=None, help="This build of devprof's llama.cpp runner [default: the committed host build].")
def bench(quick, context, new_tokens, reps, sampler_pairs, threads, no_llamacpp, build_llama_bench, runner) -> None:
    """Measure the local runtimes against this machine's roofline, and the sampler's accuracy."""
    from devprof.bench import BenchConfig, run_bench, to_json

    cfg = BenchConfig(quick=quick, context=context or (1024 if quick else 512),
                      new_tokens=new_tokens or (128 if quick else 32), reps=reps,
                      sampler_pairs=sampler_pairs or (5 if quick else 9), threads=threads, llamacpp=not no_llamacpp,
                      build_llama_bench=build_llama_bench, runner=runner)
    started = time.monotonic()
    res = run_bench(cfg, log=lambda m: console.log(Text(str(m))))
    t = Table(title=f"devprof bench: {' vs '.join(res.figures['models'])}, {cfg.context} tokens, "
                    f"{res.figures['threads']} threads; GEMV {res.figures['gemv_read_gb_s']} GB/s, "
                    f"GEMM {res.figures['gemm_gflop_s']} GFLOP/s")
    for col in ("figure", "value", "target", ""):
        t.add_column(col)
    for row in res.rows:
        style = "green" if row[3] == "met" else "yellow" if row[3] else ""
        t.add_row(*(Text(str(c)) for c in row[:3]), Text(str(row[3]), style=style))
    out.print(t)
    from devprof.bench_native import rich_table

    if (native := rich_table(res.figures)) is not None:
        out.print(native)
    for n in res.notes:
        out.print(Text(f"note: {n}"))
    out.print(f"took {time.monotonic() - started:.0f} s (load average at the end {res.figures['load_average_end']})")
    click.echo(to_json(res))

