"""The devprof command line: argument parsing, progress display and exit codes only.

Profiling logic lives in session.py (running), store.py (keeping) and report/ (showing).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from devprof import REPO_ROOT, __version__
from devprof.errors import DevprofError, UsageError

console = Console(stderr=True, soft_wrap=True)
# Piped output (a file, CI logs) gets room for the tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 150)


def default_db() -> Path:
    env = os.environ.get("DEVPROF_DB")
    return Path(env) if env else REPO_ROOT / "reports" / "devprof.db"


adb_server_option = click.option(
    "--adb-server", default=None, metavar="HOST:PORT",
    help="adb server to use (a device farm's remote adb) [default: local, $ANDROID_ADB_SERVER_PORT].")
devices_file_option = click.option(
    "--devices-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="TOML file of device aliases [default: ~/.config/devprof/devices.toml].")

db_option = click.option(
    "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="SQLite store of results [default: reports/devprof.db, or $DEVPROF_DB].")


def _open_store(db_path: Path | None, must_exist: bool = False):
    from devprof.store import Store

    path = db_path or default_db()
    if must_exist and not Path(path).exists():
        raise UsageError(f"no results store at {path}: run `devprof run` first (or pass --db)")
    return Store(path)


def _int_list(value: str, name: str) -> list[int]:
    try:
        vals = [int(v) for v in str(value).replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{name} must be a number or a comma-separated list of numbers, got {value!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise UsageError(f"{name} must be positive, got {value!r}")
    return vals


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="devprof")
def cli() -> None:
    """Profile LLM runtimes on phones and on this host: sparse MoE vs dense.

    With no phone attached, `devprof run` profiles this machine with devprof's own reference
    MoE/dense runtime and writes an HTML report.
    """


# --------------------------------------------------------------------------------------------
@cli.command()
@click.option("--device", default="local", show_default=True, help="local, an alias (s25), a serial, or all.")
@click.option("--model", default="mobilemoe-s-mini", show_default=True, help="The subject model (see `devprof models`).")
@click.option("--baseline", default="mobilellm-pro-mini", show_default=True, help="The dense baseline; 'none' for no baseline.")
@click.option("--workload", default="templated,real", show_default=True, help="Comma-separated: templated, real, real:code, real:math, real:prose.")
@click.option("--context", default="8192", show_default=True, help="Prompt length in tokens; a comma-separated list sweeps contexts.")
@click.option("--new-tokens", default=128, show_default=True, type=click.IntRange(1, 8192), help="Tokens to generate (greedy).")
@click.option("--reps", default=3, show_default=True, type=click.IntRange(1, 1000), help="Measured repetitions per (model, workload, context).")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0, 100), help="Unmeasured warm-up runs first.")
@click.option("--sample-ms", default=10, show_default=True, type=click.IntRange(0, 60000), help="Memory sampling interval; 0 turns sampling off.")
@click.option("--runtime", default="reference", show_default=True, help="Runtime adapter: reference (devprof's own), executorch, llamacpp.")
@click.option("--weights", type=click.Choice(["fp32", "q8_0", "q4_0"]), default=None,
              help="Weight format of devprof's own bundles [default: fp32 for reference, q4_0 for llamacpp].")
@click.option("--cache", type=click.Choice(["cold", "warm"]), default="cold", show_default=True,
              help="cold: evict the weights file from the page cache before every repetition.")
@click.option("--threads", default=-1, show_default=True, type=int, help="Runtime CPU threads (-1: the runtime's default).")
@click.option("--cpu-mask", default=None, help="Pin the runtime with taskset (hex mask, e.g. f0).")
@click.option("--timeout", "timeout_s", default=900.0, show_default=True, type=click.FloatRange(1), help="Seconds before a repetition is killed.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the model weights and prompt choice.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Where to write the HTML report.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (as `show --json`).")
@click.option("--model-bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The subject's prebuilt model file (.pte for executorch, .gguf for llamacpp).")
@click.option("--baseline-bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The baseline's prebuilt model file.")
@click.option("--tokenizer", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Tokenizer file pushed with --model-bundle (and --baseline-bundle unless --baseline-tokenizer).")
@click.option("--baseline-tokenizer", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--binary", "binary_name", default=None, help="A registered binary by name (`devprof bins list`).")
@click.option("--runtime-arg", "runtime_args", multiple=True, metavar="ARG",
              help="One more argument for the runtime's command line, e.g. --runtime-arg=--no-repack (llama.cpp "
                   "without its CPU repack copy of the weights); repeat for several. Stored with the run.")
@click.option("--cooldown-c", type=float, default=None, help="Before each repetition, wait until the hottest thermal zone is below this (C).")
@click.option("--cooldown-timeout", type=click.FloatRange(0), default=300.0, show_default=True, help="Longest cool-down wait (s).")
@adb_server_option
@devices_file_option
@db_option
def run(device, model, baseline, workload, context, new_tokens, reps, warmup, sample_ms, runtime, weights, cache,
        threads, cpu_mask, timeout_s, seed, out_path, as_json, model_bundle, baseline_bundle, tokenizer,
        baseline_tokenizer, binary_name, runtime_args, cooldown_c, cooldown_timeout, adb_server, devices_file,
        db_path) -> None:
    """Profile a MoE model against a dense baseline on a device; store and report the results."""
    from devprof import devices, workloads
    from devprof.catalog import get_model
    from devprof.runtimes.base import get_adapter
    from devprof.session import Plan, Session

    models = [get_model(model)]
    if baseline and baseline.lower() != "none":
        models.append(get_model(baseline))
    model_files = {}
    if model_bundle:
        model_files[models[0].name] = (model_bundle, tokenizer)
    if baseline_bundle:
        if len(models) < 2:
            raise UsageError("--baseline-bundle needs a --baseline model")
        model_files[models[1].name] = (baseline_bundle, baseline_tokenizer or tokenizer)
    plan = Plan(
        models=models, workloads=workloads.parse_workloads(workload), contexts=_int_list(context, "--context"),
        new_tokens=new_tokens, reps=reps, warmup=warmup, sample_ms=sample_ms, runtime=runtime, cache=cache,
        weights=weights or ("q4_0" if runtime == "llamacpp" else "fp32"),
        seed=seed, threads=threads, timeout_s=timeout_s, cpu_mask=cpu_mask, cooldown_c=cooldown_c,
        cooldown_timeout_s=cooldown_timeout, binary_name=binary_name, model_files=model_files,
        runtime_args=list(runtime_args),
    )
    get_adapter(runtime)
    plan.validate()
    store = _open_store(db_path)
    targets = devices.resolve(device, adb_server=adb_server, devices_file=devices_file)
    started = time.monotonic()
    if len(targets) == 1:
        with targets[0] as dev, _RichObserver(console, enabled=not as_json) as obs:
            metas = [Session(dev, store, plan, store.path.parent / "runs", observer=obs).run()]
    else:
        metas = _run_parallel(targets, store, plan, quiet=as_json)
    elapsed = time.monotonic() - started
    records = [store.load_run(m.run_id) for m in metas]
    paths = [_write_report(r, (out_path if len(records) == 1 and out_path else None)
                           or store.path.parent / f"{r.meta.run_id}.html") for r in records]
    if as_json:
        from devprof.report import JsonRenderer

        docs = [json.loads(JsonRenderer().render(r)) for r in records]
        out.print_json(json.dumps(docs[0] if len(docs) == 1 else docs))
    else:
        from devprof.report import TerminalRenderer

        for r in records:
            TerminalRenderer(console=out).print(r)
        out.print(f"{len(records)} run(s) finished in {elapsed:.0f} s: " + ", ".join(m.run_id for m in metas))
    for p in paths:
        click.echo(f"report: {p}", err=True)


def _run_parallel(targets, store, plan, quiet: bool):
    """One worker thread per device, each with its own store connection; failures on one device
    do not stop the others, and are reported together at the end."""
    from concurrent.futures import ThreadPoolExecutor

    from devprof.session import Session
    from devprof.store import Store

    def work(dev):
        with dev:
            own = Store(store.path)
            obs = _LineObserver(console, dev.serial, enabled=not quiet)
            return Session(dev, own, plan, store.path.parent / "runs", observer=obs).run()

    metas, errors = [], []
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = {pool.submit(work, d): d for d in targets}
        for fut, dev in futures.items():
            try:
                metas.append(fut.result())
            except DevprofError as e:
                errors.append(f"{dev.serial}: {e.message}")
    if errors and not metas:
        raise DevprofError("; ".join(errors))
    for e in errors:
        console.print(f"[red]error:[/] {e}", highlight=False)
    return metas


class _LineObserver:
    """Progress of one device among several: plain log lines prefixed with its serial."""

    def __init__(self, console: Console, serial: str, enabled: bool = True) -> None:
        self.console, self.serial, self.enabled, self.n = console, serial, enabled, 0

    def stage(self, message: str) -> None:
        if self.enabled:
            self.console.log(f"[{self.serial}] {message}")

    def total(self, n: int) -> None:
        self.n = n

    def repetition(self, rep, done: int) -> None:
        if self.enabled and not rep.warmup:
            r = rep.result
            dec = f" decode {r.decode_tok_s:.1f} tok/s" if r is not None and r.decode_tok_s else ""
            self.console.log(f"[{self.serial}] {rep.model} {rep.workload} {rep.context} rep {rep.index + 1}:{dec}")


class _RichObserver:
    """Draws session progress: one bar over all repetitions and a line per stage."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console, self.enabled = console, enabled
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                 disable=not enabled, transient=False)
        self.task = None
        self.count = 0

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("preparing", total=None)
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def stage(self, message: str) -> None:
        if self.enabled:
            self.progress.console.log(message)

    def total(self, n: int) -> None:
        self.progress.update(self.task, total=n)

    def repetition(self, rep, done: int) -> None:
        self.count += 1
        r = rep.result
        what = "warm-up" if rep.warmup else f"rep {rep.index + 1}"
        desc = f"{rep.model} {rep.workload} {rep.context} {what}"
        if r is not None and r.decode_tok_s:
            desc += f": decode {r.decode_tok_s:.1f} tok/s"
        self.progress.update(self.task, completed=self.count, description=desc)


def _write_report(record, path: Path) -> Path:
    from devprof.report import HtmlRenderer

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HtmlRenderer().render(record), encoding="utf-8")
    except OSError as e:
        raise DevprofError(f"cannot write the report to {path}: {e.strerror}") from None
    return path


# --------------------------------------------------------------------------------------------
@cli.command()
@click.argument("run_ref", default="latest")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable figures.")
@db_option
def show(run_ref, as_json, db_path) -> None:
    """Show the figures of a run (RUN id, a unique prefix, latest, latest~1)."""
    store = _open_store(db_path, must_exist=True)
    record = store.load_run(run_ref)
    if as_json:
        from devprof.report import JsonRenderer

        out.print_json(JsonRenderer().render(record))
    else:
        from devprof.report import TerminalRenderer

        TerminalRenderer(console=out).print(record)


@cli.command()
@click.argument("run_ref", default="latest")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: next to the store, RUN.html].")
@click.option("--open", "open_it", is_flag=True, help="Open the report in a browser.")
@db_option
def report(run_ref, out_path, open_it, db_path) -> None:
    """Write the self-contained HTML report of a run."""
    store = _open_store(db_path, must_exist=True)
    record = store.load_run(run_ref)
    path = _write_report(record, out_path or store.path.parent / f"{record.meta.run_id}.html")
    click.echo(str(path))
    if open_it:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


@cli.command(name="list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
@db_option
def list_runs(limit, as_json, db_path) -> None:
    """List stored runs, newest first."""
    store = _open_store(db_path, must_exist=True)
    runs = store.list_runs(limit=limit)
    if as_json:
        out.print_json(json.dumps([{
            "run_id": m.run_id, "created": m.created, "status": m.status, "device": m.device.name,
            "device_kind": m.device.kind, "runtime": m.runtime, "models": m.models,
            "workloads": m.workloads, "contexts": m.contexts, "reps": m.reps} for m in runs]))
        return
    t = Table(title=f"runs in {store.path}")
    for col in ("run", "created", "status", "device", "runtime", "models", "workloads", "context", "reps"):
        t.add_column(col)
    for m in runs:
        style = {"complete": "green", "interrupted": "yellow", "running": "cyan"}.get(m.status, "red")
        t.add_row(m.run_id, m.created, f"[{style}]{m.status}[/]", m.device.name, m.runtime,
                  " vs ".join(m.models), ",".join(m.workloads), ",".join(map(str, m.contexts)), str(m.reps))
    out.print(t)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--context", default=8192, show_default=True, type=click.IntRange(1), help="Context for KV-cache and FLOP figures.")
def models(as_json, context) -> None:
    """The model catalog: shapes, parameters, weight memory, KV cache and FLOPs."""
    from devprof.catalog import MODELS

    if as_json:
        out.print_json(json.dumps([m.summary(context) for m in MODELS.values()]))
        return
    t = Table(title=f"models (KV cache and FLOPs at {context} tokens; (3rd) = third-party figure)")
    for col, j in (("model", "left"), ("kind", "left"), ("layers", "right"), ("hidden", "right"),
                   ("experts", "left"), ("total", "right"), ("active", "right"), ("INT4 GiB", "right"),
                   ("fp32 GiB", "right"), ("KV fp16 MiB", "right"), ("decode GFLOP/tok", "right"),
                   ("prefill TFLOP", "right")):
        t.add_column(col, justify=j)
    for m in MODELS.values():
        exp = f"{m.n_experts}x{m.expert_ffn} top-{m.top_k}" + (f" +{m.n_shared}x{m.shared_ffn}" if m.n_shared else "") if m.is_moe else f"ffn {m.ffn}"
        mark = lambda f: " (3rd)" if f in m.third_party else ""  # noqa: E731
        t.add_row(m.name, m.kind, f"{m.n_layers}{mark('n_layers')}", str(m.hidden), exp,
                  f"{m.total_params / 1e9:.3f}B{mark('total_params')}", f"{m.active_params / 1e6:.0f}M{mark('active_params')}",
                  f"{m.weight_bytes('int4') / 2**30:.3f}", f"{m.weight_bytes('fp32') / 2**30:.2f}",
                  f"{m.kv_cache_bytes(min(context, m.max_context), 2) / 2**20:.1f}",
                  f"{m.decode_flops_per_token(min(context, m.max_context)) / 1e9:.2f}",
                  f"{m.prefill_flops(min(context, m.max_context)) / 1e12:.2f}")
    out.print(t)


@cli.command(name="devices")
@click.option("--json", "as_json", is_flag=True)
@adb_server_option
@devices_file_option
def devices_cmd(as_json, adb_server, devices_file) -> None:
    """Devices devprof can profile now (this host is always there as `local`)."""
    from dataclasses import asdict

    from devprof import devices

    found = devices.discover(adb_server=adb_server, devices_file=devices_file)
    if as_json:
        out.print_json(json.dumps([asdict(d) for d in found]))
        return
    t = Table(title="devices")
    for col in ("serial", "alias", "name", "OS", "ABI", "RAM", "state"):
        t.add_column(col)
    for d in found:
        ram = d.extra.get("mem_total_mb")
        alias = "local" if d.kind == "local" else ", ".join(d.extra.get("aliases") or [])
        name = d.name if d.kind == "android" else f"{d.name} ({d.model})" if d.model else d.name
        t.add_row(d.serial, alias, name, d.os_version,
                  str(d.extra.get("abi") or d.extra.get("machine", "")),
                  f"{ram / 1024:.1f} GiB" if ram else "", str(d.extra.get("state", "ready")))
    out.print(t)


@cli.command()
@click.option("--quick", is_flag=True, help="The mini shapes (a few minutes) instead of full-size MobileMoE-S vs MobileLLM-Pro.")
@click.option("--context", default=None, type=click.IntRange(2), help="Prompt tokens [default: 1024 quick, 512 full].")
@click.option("--new-tokens", default=None, type=click.IntRange(2), help="Generated tokens [default: 128 quick, 32 full].")
@click.option("--reps", default=3, show_default=True, type=click.IntRange(1), help="Measured repetitions per configuration (medians).")
@click.option("--sampler-pairs", default=None, type=click.IntRange(1), help="Interleaved sampled/unsampled pairs [default: 5 quick, 9 full].")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0), help="Runtime threads (0: all cores).")
@click.option("--no-llamacpp", is_flag=True, help="Skip the llama.cpp comparisons.")
def bench(quick, context, new_tokens, reps, sampler_pairs, threads, no_llamacpp) -> None:
    """Measure the local runtimes against this machine's roofline, and the sampler's accuracy."""
    from devprof.bench import BenchConfig, run_bench, to_json

    cfg = BenchConfig(quick=quick, context=context or (1024 if quick else 512),
                      new_tokens=new_tokens or (128 if quick else 32), reps=reps,
                      sampler_pairs=sampler_pairs or (5 if quick else 9), threads=threads, llamacpp=not no_llamacpp)
    started = time.monotonic()
    res = run_bench(cfg, log=lambda m: console.log(m))
    t = Table(title=f"devprof bench: {' vs '.join(res.figures['models'])}, {cfg.context} tokens, "
                    f"{res.figures['threads']} threads; GEMV {res.figures['gemv_read_gb_s']} GB/s, "
                    f"GEMM {res.figures['gemm_gflop_s']} GFLOP/s")
    for col in ("figure", "value", "target", ""):
        t.add_column(col)
    for row in res.rows:
        style = "green" if row[3] == "met" else "yellow" if row[3] else ""
        t.add_row(*row[:3], f"[{style}]{row[3]}[/]" if style else row[3])
    out.print(t)
    for n in res.notes:
        out.print(f"note: {n}")
    out.print(f"took {time.monotonic() - started:.0f} s (load average at the end {res.figures['load_average_end']})")
    click.echo(to_json(res))


@cli.group()
def bins() -> None:
    """Prebuilt runtime binaries devprof pushes to devices (device_bins/manifest.toml)."""


@bins.command(name="add")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--runtime", required=True, type=click.Choice(["reference", "executorch", "llamacpp"]))
@click.option("--platform", required=True, type=click.Choice(["android", "ios", "host"]))
@click.option("--abi", default="arm64-v8a", show_default=True, help="arm64-v8a, x86_64, ... or any.")
@click.option("--name", default=None, help="Name to refer to it by [default: derived].")
@click.option("--command", "command", default="", help="Command template, e.g. '{binary} --model_path {model} ...'.")
@click.option("--notes", default="")
def bins_add(path, runtime, platform, abi, name, command, notes) -> None:
    """Register a binary: record its path, runtime, platform/ABI and sha256."""
    from devprof import bins as b

    entry = b.add(path, runtime, platform, abi, name=name, command=command, notes=notes)
    out.print(f"registered [bold]{entry.name}[/] ({entry.runtime}, {entry.platform}/{entry.abi}, sha256 {entry.sha256[:12]}) "
              f"in {b.manifest_path()}")


@bins.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def bins_list(as_json) -> None:
    """List registered binaries and whether each still matches its hash."""
    from dataclasses import asdict

    from devprof import bins as b

    entries = b.load()
    if as_json:
        out.print_json(json.dumps([asdict(e) for e in entries]))
        return
    t = Table(title=str(b.manifest_path()))
    for col in ("name", "runtime", "platform", "abi", "cpu features", "path", "sha256", "ok"):
        t.add_column(col, overflow="fold")
    for e in entries:
        try:
            e.verify()
            ok = "[green]yes[/]"
        except DevprofError as err:
            ok = f"[red]{err.message}[/]"
        t.add_row(e.name, e.runtime, e.platform, e.abi, e.cpu_features or "any", e.path, e.sha256[:12], ok)
    out.print(t)


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line and a non-zero exit for every error, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="devprof", standalone_mode=False)
        if isinstance(rv, int) and rv:  # a command's ctx.exit(code) comes back as a return value here
            sys.exit(rv)
    except click.exceptions.Abort:
        if os.environ.get("DEVPROF_DEBUG"):
            raise
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except click.ClickException as e:
        console.print(f"[red]error:[/] {e.format_message()}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: say so in one line; the traceback only on request
        if os.environ.get("DEVPROF_DEBUG"):
            raise
        console.print(f"[red]internal error:[/] {type(e).__name__}: {e} (set DEVPROF_DEBUG=1 for the traceback)",
                      highlight=False)
        sys.exit(1)


# ---- stored-run analysis: compare, diff, export (devprof/cli_analysis.py imports helpers from here) ----
from devprof.cli_analysis import compare, diff, export  # noqa: E402

cli.add_command(compare)
cli.add_command(diff)
cli.add_command(export)
