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
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from devprof import REPO_ROOT, __version__
from devprof.errors import DevprofError, UsageError

# log_path=False: the user's log says what happened, not which line of devprof said it (cli.py:238)
console = Console(stderr=True, soft_wrap=True, log_path=False)


class _Stdout(Console):
    """Standard output, sized when printing (not at import): $COLUMNS when set, else the terminal's
    width; piped output (a file, CI logs) gets 150 columns of room for the tables instead of rich's 80."""

    @property
    def size(self) -> ConsoleDimensions:
        cols = os.environ.get("COLUMNS", "")
        if cols.isdigit() and int(cols) > 0:
            return ConsoleDimensions(int(cols), Console.size.fget(self).height)
        if not self.is_terminal:
            return ConsoleDimensions(150, 25)
        return Console.size.fget(self)

    @size.setter
    def size(self, new_size) -> None:
        Console.size.fset(self, new_size)


out = _Stdout()


def default_db() -> Path | str:
    env = os.environ.get("DEVPROF_DB")
    return _db_arg(env) if env else REPO_ROOT / "reports" / "devprof.db"


def _db_arg(value: str | Path) -> Path | str:
    """A --db value: a postgresql:// URL stays a string, anything else is an SQLite file's path."""
    from devprof.store import is_url

    return value if is_url(str(value)) else Path(value)


adb_server_option = click.option(
    "--adb-server", default=None, metavar="HOST:PORT[,...]",
    help="adb server(s) to use: one HOST:PORT or a comma-separated list (the hosts of a lab, a device farm's "
         "remote adb endpoints); --device all runs every phone of every one that answers "
         "[default: local, $ANDROID_ADB_SERVER_PORT].")


def _report_down_endpoints() -> None:
    """One line per adb endpoint of --adb-server that did not answer; the others go on."""
    from devprof.devices import android

    for line in android.down:
        console.print(Text(f"warning: {line}: skipped", style="yellow"), highlight=False)
lab_option = click.option(
    "--lab", "lab_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="TOML lab file: [hosts.NAME] adb = \"HOST:PORT\", optional phones = [serials] (see README, Lab); "
         "its endpoints join --adb-server's.")
devices_file_option = click.option(
    "--devices-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="TOML file of device aliases [default: ~/.config/devprof/devices.toml].")

db_option = click.option(
    "--db", "db_path", default=None, callback=lambda _c, _p, v: None if v is None else _db_arg(v),
    metavar="FILE|URL",
    help="Result store: an SQLite file, or a lab's PostgreSQL store postgresql://user@host:port/dbname "
         "[default: reports/devprof.db, or $DEVPROF_DB].")


def _open_store(db_path: Path | str | None, must_exist: bool = False):
    from devprof.store import Store, is_url

    path = db_path or default_db()
    if must_exist and not is_url(path) and not Path(path).exists():
        raise UsageError(f"no results store at {path}: run `devprof run` first (or pass --db)")
    return Store(path)


def _check_writable(path: Path, option: str) -> None:
    """Bad input (exit 2) when ``path`` could not be created: a file in the way, or no permission."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {parent} is not writable")


def _load_shown(store, ref: str):
    """A run to show or report: one with nothing measured is an error (exit 2), never an empty page."""
    record = store.load_run(ref)
    if not record.measured():
        m = record.meta
        why = " ".join(f"{m.status}: {m.note}".split()) if m.note else m.status
        raise UsageError(f"run {m.run_id} has no measured repetition ({why}): nothing to show")
    return record


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
@click.option("--reps", default="auto", show_default=True, metavar="N|auto",
              help="Measured repetitions per (model, workload, context); auto: at least --reps-min, then more "
                   "interleaved rounds until the speed ratios' 95% CI is within ±--reps-target %, or a cap.")
@click.option("--reps-min", default=5, show_default=True, type=click.IntRange(2, 1000), help="--reps auto: fewest rounds.")
@click.option("--reps-max", default=12, show_default=True, type=click.IntRange(2, 1000), help="--reps auto: most rounds a cell.")
@click.option("--reps-time", default=120.0, show_default=True, type=click.FloatRange(0),
              help="--reps auto: no new round after a cell has taken this many seconds.")
@click.option("--reps-target", default=5.0, show_default=True, type=click.FloatRange(0.1, 10000),
              help="--reps auto: target half-width of the ratios' interval, in %.")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0, 100), help="Unmeasured warm-up runs first.")
@click.option("--sample-ms", default=10, show_default=True, type=click.IntRange(0, 60000), help="Memory sampling interval; 0 turns sampling off.")
@click.option("--runtime", default=None,
              help="Runtime adapter: reference (devprof's own, in Python), executorch, llamacpp (devprof's native "
                   "llama.cpp runner) [default: llamacpp on Android phones, reference elsewhere].")
@click.option("--weights", type=click.Choice(["fp32", "q8_0", "q4_0"]), default=None,
              help="Weight format of devprof's own bundles [default: fp32 for reference, q4_0 for llamacpp].")
@click.option("--cache", type=click.Choice(["cold", "warm"]), default="cold", show_default=True,
              help="cold: evict the weights file from the page cache before every repetition.")
@click.option("--threads", default=-1, show_default=True, type=click.IntRange(-1), help="Runtime CPU threads (-1: the runtime's default).")
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
@click.option("--dry-run", is_flag=True, help="Print the plan and how long it would take; run nothing.")
@click.option("--ready", "ready", default=None, metavar="COND[,COND]",
              help="Before each repetition wait until the device is quiet and cool: cpu<PCT (busy over 1 s), "
                   "load<L (1-min load average), temp<C (hottest zone); 'none' turns it off "
                   "[default: phones temp<45, this host none].")
@click.option("--ready-timeout", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Longest readiness wait before each repetition (s); then it goes on and records it.")
@click.option("--energy/--no-energy", default=None,
              help="Battery J/token for prefill and decode [default: on Android phones whose battery is readable].")
@click.option("--energy-baseline", type=click.FloatRange(0.2, 60), default=2.0, show_default=True,
              help="Idle window (s) measured right before each repetition and subtracted.")
@click.option("--soak", "soak_min", type=click.FloatRange(0, 24 * 60), default=0.0, metavar="MINUTES",
              help="After the plan, generate back to back this long: tok/s, hottest zone and big-core MHz over time.")
@adb_server_option
@lab_option
@devices_file_option
@db_option
def run(device, model, baseline, workload, context, new_tokens, reps, reps_min, reps_max, reps_time, reps_target,
        warmup, sample_ms, runtime, weights, cache,
        threads, cpu_mask, timeout_s, seed, out_path, as_json, model_bundle, baseline_bundle, tokenizer,
        baseline_tokenizer, binary_name, runtime_args, cooldown_c, cooldown_timeout, ready, ready_timeout,
        dry_run, energy, energy_baseline, soak_min, adb_server, lab_file, devices_file, db_path) -> None:
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
    from devprof.adaptive import Rule

    rule = None
    if str(reps).strip().lower() == "auto":
        if reps_max < reps_min:
            raise UsageError(f"--reps-max {reps_max} is below --reps-min {reps_min}")
        rule = Rule(min_reps=reps_min, target=reps_target / 100.0, max_reps=reps_max, max_s=reps_time)
        reps = reps_min
    else:
        try:
            reps = int(reps)
        except ValueError:
            raise UsageError(f"--reps must be a whole number or auto, got {reps!r}") from None
        if not 1 <= reps <= 1000:
            raise UsageError(f"--reps must be between 1 and 1000 (or auto), got {reps}")
    def make_plan(rt: str) -> Plan:
        p = Plan(
            models=models, workloads=workloads.parse_workloads(workload), contexts=_int_list(context, "--context"),
            new_tokens=new_tokens, reps=reps, warmup=warmup, sample_ms=sample_ms, runtime=rt, cache=cache,
            weights=weights or ("q4_0" if rt == "llamacpp" else "fp32"),
            seed=seed, threads=threads, timeout_s=timeout_s, cpu_mask=cpu_mask, cooldown_c=cooldown_c,
            cooldown_timeout_s=cooldown_timeout, binary_name=binary_name, model_files=model_files,
            ready=ready, ready_timeout_s=ready_timeout, adaptive=rule,
            runtime_args=list(runtime_args), energy=energy, energy_baseline_s=energy_baseline, soak_min=soak_min,
        )
        get_adapter(rt)
        p.validate()
        return p

    # the options are checked before any device is touched; without --runtime the device kind picks it
    plan = make_plan(runtime or ("reference" if weights in (None, "fp32") else "llamacpp"))
    if runtime is None:
        plan = None
    if out_path is not None:  # found out now, not after the run
        _check_writable(out_path, "--out")
    if binary_name:  # an unknown name is bad input: say so before a run is stored
        from devprof import bins

        if binary_name not in {b.name for b in bins.load()}:
            raise UsageError(f"no registered binary named {binary_name!r}; `devprof bins list` shows them")
    from devprof import readiness

    readiness.parse(ready)  # bad conditions: one line, exit 2, before any device is touched
    if dry_run and not isinstance(db_path or default_db(), str) and not Path(db_path or default_db()).exists():
        store = None  # a dry run creates no store; without one the estimate is catalog arithmetic
    else:
        store = _open_store(db_path)
    from devprof.devices import lab as lab_mod

    lab_hosts = lab_mod.load(lab_file) if lab_file else []
    if lab_hosts:
        adb_server = lab_mod.endpoints(adb_server, lab_hosts)
    targets = devices.resolve(device, adb_server=adb_server, devices_file=devices_file)
    if adb_server:
        _report_down_endpoints()
    if lab_hosts and device.strip().lower() == "all":
        targets, warnings = lab_mod.select(targets, lab_hosts)
        for w in warnings:
            console.print(Text(f"warning: {w}", style="yellow"), highlight=False)
        if not targets:
            from devprof.errors import DeviceError

            raise DeviceError(f"no phone of the lab file {lab_file} is attached")
    plans = {k: plan or make_plan(default_runtime(k)) for k in {t.kind for t in targets}}
    plan = plans[targets[0].kind]
    est = _estimate(plans, store, targets)
    if dry_run:
        _print_plan(plan, targets, est)
        return
    from devprof.estimate import ANNOUNCE_ABOVE_S

    if est.seconds > ANNOUNCE_ABOVE_S and not as_json:
        console.print(Text(f"estimate: {est.words()}"), highlight=False)
    started = time.monotonic()
    if len(targets) == 1:
        with targets[0] as dev, _RichObserver(console, enabled=not as_json) as obs:
            metas = [Session(dev, store, plan, store.local_dir / "runs", observer=obs).run()]
    else:
        metas = _run_parallel(targets, store, plans, quiet=as_json)
    elapsed = time.monotonic() - started
    records = [store.load_run(m.run_id) for m in metas]
    paths = [_write_report(r, (out_path if len(records) == 1 and out_path else None)
                           or store.local_dir / f"{r.meta.run_id}.html") for r in records]
    if as_json:
        from devprof.report import JsonRenderer

        docs = [json.loads(JsonRenderer().render(r)) for r in records]
        out.print_json(json.dumps(docs[0] if len(docs) == 1 else docs))
    else:
        from devprof.report import TerminalRenderer

        for r in records:
            TerminalRenderer(console=out).print(r)
        out.print(f"{len(records)} run(s) finished in {elapsed:.0f} s: " + ", ".join(m.run_id for m in metas),
                  markup=False, highlight=False)
    for p in paths:
        click.echo(f"report: {p}", err=True)


def default_runtime(kind: str) -> str:
    """The runtime `devprof run` uses on a device kind when no --runtime is given: devprof's native llama.cpp
    runner on Android phones (the reference runtime's Android launcher needs a host Python, which only the test
    daemon has; `--runtime reference` still reaches it), the reference runtime on this host and on iPhones."""
    return "llamacpp" if kind == "android" else "reference"


def _estimate(plans, store, targets):
    """The longest device's estimate (devices of --device all run side by side)."""
    from devprof.estimate import estimate

    ests = [estimate(plans[t.kind], store, device_serial=getattr(t, "serial", "local"), device_kind=getattr(t, "kind", "local"))
            for t in targets]
    return max(ests, key=lambda e: e.seconds)


def _reps_words(plan) -> str:
    a = plan.adaptive
    if a is None:
        return f"{plan.reps} reps"
    return f"{a.min_reps}-{a.max_reps} reps, --reps auto"


def _print_plan(plan, targets, est) -> None:
    """`run --dry-run`: what would run, where, and for how long."""
    names = [m.name for m in plan.models]
    lines = [
        f"plan: {' vs '.join(names)} · runtime {plan.runtime} ({plan.weights}) · workloads {', '.join(plan.workloads)}"
        f" · context {', '.join(map(str, plan.contexts))} · {plan.new_tokens} new tokens · cache {plan.cache}",
        f"on: {', '.join(getattr(t, 'serial', 'local') for t in targets)}",
        f"{len(plan.models)} model(s) x {len(plan.workloads)} workload(s) x {len(plan.contexts)} context(s) x "
        f"({plan.warmup} warm-up + {_reps_words(plan)}) = {'at least ' if plan.adaptive else ''}{est.runs} runtime runs",
        f"estimate: {est.words()}",
    ]
    for c in est.cells:
        lines.append(f"  {c.model} {c.workload} {c.context}: {c.seconds_per_run:.1f} s per run ({c.source})")
    for ln in lines:
        out.print(Text(ln))


def _run_parallel(targets, store, plans, quiet: bool):
    """One worker thread per device, each with its own store connection; failures on one device
    do not stop the others, and are reported together at the end."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from devprof.session import Interrupted, Session

    cancel = threading.Event()  # Ctrl-C / SIGTERM reach the main thread only: pass them on

    def work(dev):
        with dev:
            own = store.reopen()
            obs = _LineObserver(console, dev.serial, enabled=not quiet)
            session = Session(dev, own, plans[dev.kind], store.local_dir / "runs", observer=obs)
            session.cancel = cancel
            return session.run()

    metas, errors = [], []
    interrupted: list[str] = []
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        futures = {pool.submit(work, d): d for d in targets}
        for fut, dev in futures.items():
            while True:
                try:
                    metas.append(fut.result())
                except KeyboardInterrupt:
                    cancel.set()  # every session stops its runtime and stores its run as interrupted
                    continue
                except Interrupted as e:
                    interrupted.append(f"{dev.serial}: {e.message.split(': ', 1)[-1]}")
                except DevprofError as e:
                    errors.append(f"{dev.serial}: {e.message}")
                break
    if cancel.is_set() or interrupted:
        from devprof.errors import signal_name, stop_signal

        by = f" by {signal_name(stop_signal[0])}" if stop_signal else ""
        err = Interrupted(f"interrupted{by}: " + ("; ".join(interrupted + errors) or "finished repetitions are kept"))
        err.exit_code = _interrupted_exit()
        raise err
    if errors and not metas:
        raise DevprofError("; ".join(errors))
    for e in errors:
        console.print(f"[red]error:[/] {escape(e)}", highlight=False)
    return metas


class _LineObserver:
    """Progress of one device among several: plain log lines prefixed with its serial."""

    def __init__(self, console: Console, serial: str, enabled: bool = True) -> None:
        self.console, self.serial, self.enabled, self.n = console, serial, enabled, 0

    def stage(self, message: str) -> None:
        if self.enabled:
            self.console.log(Text(f"[{self.serial}] {message}"))

    def total(self, n: int) -> None:
        self.n = n

    def repetition(self, rep, done: int) -> None:
        if self.enabled and not rep.warmup:
            r = rep.result
            dec = f" decode {r.decode_tok_s:.1f} tok/s" if r is not None and r.decode_tok_s else ""
            self.console.log(Text(f"[{self.serial}] {rep.model} {rep.workload} {rep.context} rep {rep.index + 1}:{dec}"))


class _RichObserver:
    """Draws session progress: one bar over all repetitions and a line per stage."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console, self.enabled = console, enabled
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
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
            self.progress.console.log(Text(message))

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
    from devprof.export import write_text
    from devprof.report import HtmlRenderer

    # atomic: a temporary file beside it, renamed into place; a full disk leaves no empty report
    return write_text(Path(path), HtmlRenderer().render(record), "report")


# --------------------------------------------------------------------------------------------
@cli.command()
@click.argument("run_ref", default="latest")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable figures.")
@db_option
def show(run_ref, as_json, db_path) -> None:
    """Show the figures of a run (RUN id, a unique prefix, latest, latest~1)."""
    store = _open_store(db_path, must_exist=True)
    record = _load_shown(store, run_ref)
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
    record = _load_shown(store, run_ref)
    path = _write_report(record, out_path or store.local_dir / f"{record.meta.run_id}.html")
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
    from devprof.report.fit import Col, fit_table

    # the run id (it holds the creation time) and the model names are never cut; narrow terminals
    # lose created, reps, runtime, workloads and context, in that order
    cols = [Col("run", keep=True), Col("created", drop=5), Col("status"), Col("device"), Col("runtime", drop=3),
            Col("models", keep=True), Col("workloads", drop=2), Col("context", drop=1), Col("reps", "right", drop=4)]
    rows = []
    for m in runs:
        style = {"complete": "green", "interrupted": "yellow", "running": "cyan"}.get(m.status, "red")
        models = m.models[:1] + [f"vs {x}" for x in m.models[1:]]
        rows.append([Text(m.run_id), Text(m.created), Text(m.status, style=style), Text(m.device.name or ""),
                     Text(m.runtime), Text("\n".join(models)), Text(", ".join(m.workloads)),
                     Text(", ".join(map(str, m.contexts))), Text(str(m.reps))])
    out.print(fit_table(out, cols, rows, title=escape(f"runs in {store.where}")))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--context", default=8192, show_default=True, type=click.IntRange(1), help="Context for KV-cache and FLOP figures.")
def models(as_json, context) -> None:
    """The model catalog: shapes, parameters, weight memory, KV cache and FLOPs."""
    from devprof.catalog import MODELS

    if as_json:
        out.print_json(json.dumps([m.summary(context) for m in MODELS.values()]))
        return
    from devprof.report.fit import Col, fit_table

    # model names are never cut; narrow terminals lose fp32 GiB, hidden, prefill, layers, decode, in that order
    cols = [Col("model", keep=True), Col("kind"), Col("layers", "right", drop=3), Col("hidden", "right", drop=5),
            Col("experts"), Col("total", "right"), Col("active", "right"), Col("INT4 GiB", "right"),
            Col("fp32 GiB", "right", drop=6), Col("KV fp16 MiB", "right"), Col("decode GFLOP/tok", "right", drop=2),
            Col("prefill TFLOP", "right", drop=4)]
    rows = []
    for m in MODELS.values():
        exp = f"{m.n_experts}x{m.expert_ffn} top-{m.top_k}" + (f" +{m.n_shared}x{m.shared_ffn}" if m.n_shared else "") if m.is_moe else f"ffn {m.ffn}"
        mark = lambda f: " (3rd)" if f in m.third_party else ""  # noqa: E731
        rows.append([m.name, m.kind, f"{m.n_layers}{mark('n_layers')}", str(m.hidden), exp,
                  f"{m.total_params / 1e9:.3f}B{mark('total_params')}", f"{m.active_params / 1e6:.0f}M{mark('active_params')}",
                  f"{m.weight_bytes('int4') / 2**30:.3f}", f"{m.weight_bytes('fp32') / 2**30:.2f}",
                  f"{m.kv_cache_bytes(min(context, m.max_context), 2) / 2**20:.1f}",
                  f"{m.decode_flops_per_token(min(context, m.max_context)) / 1e9:.2f}",
                  f"{m.prefill_flops(min(context, m.max_context)) / 1e12:.2f}"])
    out.print(fit_table(out, cols, [[Text(c) for c in r] for r in rows],
                        title=f"models (KV cache and FLOPs at {context} tokens; (3rd) = third-party figure)"))


@cli.command(name="devices")
@click.option("--json", "as_json", is_flag=True)
@adb_server_option
@lab_option
@devices_file_option
def devices_cmd(as_json, adb_server, lab_file, devices_file) -> None:
    """Devices devprof can profile now (this host is always there as `local`)."""
    from dataclasses import asdict

    from devprof import devices
    from devprof.devices import lab as lab_mod

    if lab_file:
        adb_server = lab_mod.endpoints(adb_server, lab_mod.load(lab_file))

    found = devices.discover(adb_server=adb_server, devices_file=devices_file)
    if adb_server:  # the local default server not running is no news: it is the no-phone case
        _report_down_endpoints()
    if as_json:
        out.print_json(json.dumps([asdict(d) for d in found]))
        return
    from devprof.report.fit import Col, fit_table

    cols = [Col("serial", keep=True), Col("alias"), Col("name"), Col("OS", drop=1), Col("ABI", drop=2),
            Col("RAM", "right", drop=3), Col("state"), Col("adb server", drop=4)]
    rows = []
    for d in found:
        ram = d.extra.get("mem_total_mb")
        alias = "local" if d.kind == "local" else ", ".join(d.extra.get("aliases") or [])
        name = d.name if d.kind == "android" else f"{d.name} ({d.model})" if d.model else d.name
        rows.append([Text(d.serial), Text(alias), Text(name or ""), Text(d.os_version or ""),
                     Text(str(d.extra.get("abi") or d.extra.get("machine", ""))),
                     Text(f"{ram / 1024:.1f} GiB" if ram else ""), Text(str(d.extra.get("state", "ready"))),
                     Text(str(d.extra.get("adb_server", "")))])
    out.print(fit_table(out, cols, rows, title="devices"))


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
    for n in res.notes:
        out.print(Text(f"note: {n}"))
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
    out.print(Text.assemble("registered ", (entry.name, "bold"),
                            f" ({entry.runtime}, {entry.platform}/{entry.abi}, sha256 {entry.sha256[:12]}) "
                            f"in {b.manifest_path()}"))


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
    from devprof.report.fit import Col, fit_table

    cols = [Col("name", keep=True), Col("runtime"), Col("platform", drop=2), Col("abi", drop=3), Col("cpu features", drop=4), Col("path"),
            Col("sha256", drop=1), Col("ok")]
    rows = []
    for e in entries:
        try:
            e.verify()
            ok = Text("yes", style="green")
        except DevprofError as err:
            ok = Text(err.message, style="red")
        rows.append([Text(e.name), Text(e.runtime), Text(e.platform), Text(e.abi), Text(e.cpu_features or "any"), Text(str(e.path)),
                     Text(e.sha256[:12]), ok])
    out.print(fit_table(out, cols, rows, title=escape(str(b.manifest_path()))))


# --------------------------------------------------------------------------------------------
def _on_stop_signal(signum, _frame) -> None:
    """SIGTERM (what a CI cancel or `kill` sends) takes Ctrl-C's path: the running repetition's
    process is stopped on the host or the device, the run is stored as interrupted with every
    finished repetition, and devprof exits 128 + the signal (143). A second one while that clean-up
    runs is ignored, so the clean-up finishes."""
    from devprof.errors import stop_signal

    if stop_signal:
        return
    stop_signal.append(signum)
    raise KeyboardInterrupt


def _interrupted_exit() -> int:
    from devprof.errors import stop_signal

    return 128 + stop_signal[0] if stop_signal else 130


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line and a non-zero exit for every error, never a traceback."""
    import signal

    try:
        signal.signal(signal.SIGTERM, _on_stop_signal)
    except ValueError:  # not the main thread (an embedding program): leave its handlers alone
        pass
    try:
        rv = cli.main(args=argv, prog_name="devprof", standalone_mode=False)
        if isinstance(rv, int) and rv:  # a command's ctx.exit(code) comes back as a return value here
            sys.exit(rv)
    except click.exceptions.Abort:
        if os.environ.get("DEVPROF_DEBUG"):
            raise
        console.print("[yellow]interrupted[/]")
        sys.exit(_interrupted_exit())
    except click.ClickException as e:
        console.print(f"[red]error:[/] {escape(e.format_message())}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(_interrupted_exit())
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: say so in one line; the traceback only on request
        if os.environ.get("DEVPROF_DEBUG"):
            raise
        console.print(f"[red]internal error:[/] {type(e).__name__}: {escape(str(e))} (set DEVPROF_DEBUG=1 for the traceback)",
                      highlight=False)
        sys.exit(1)


# ---- stored-run analysis: compare, diff, export (devprof/cli_analysis.py imports helpers from here) ----
from devprof.cli_analysis import compare, diff, export  # noqa: E402

cli.add_command(compare)
cli.add_command(diff)
cli.add_command(export)


# ---- the shared store of a lab ----------------------------------------------------------------
@cli.group()
def db() -> None:
    """Result stores: merge local SQLite files into a lab's shared PostgreSQL store."""


@db.command("push")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("target")
def db_push(sources, target) -> None:
    """Copy the runs of SQLite store(s) SOURCES into TARGET (a postgresql:// URL or another SQLite file).

    Runs already in TARGET (same run id) are skipped: pushing the same file twice adds nothing.
    """
    from devprof.store import Store

    for src in sources:
        if not src.is_file():
            raise UsageError(f"no result store at {src}")
    with Store(_db_arg(target)) as store:
        for src in sources:
            copied, skipped = store.push_from(src)
            out.print(f"{src}: {copied} run(s) copied, {skipped} already in {store.where}",
                      markup=False, highlight=False)


# ---- one figure over every stored run ----------------------------------------------------------
@cli.command()
@click.option("--device", required=True, help="An alias (s25), a serial, a model, local, or all (a series each).")
@click.option("--model", required=True, help="The model whose figure to follow.")
@click.option("--metric", default="decode_tok_s", show_default=True, help="prefill_tok_s, decode_tok_s, ttft_ms, peak_rss_mb, ...")
@click.option("--workload", default=None, help="Only this workload [default: each one, a series each].")
@click.option("--context", default=None, type=click.IntRange(1), help="Only this context [default: each one].")
@click.option("--window", default=5, show_default=True, type=click.IntRange(2, 1000),
              help="Change points: previous runs a run is judged against.")
@click.option("--against-last", "last_n", default=None, type=click.IntRange(1, 1000), metavar="N",
              help="Also compare the latest run with the median of the N runs before it [default: --window].")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the history as a self-contained HTML page (plotly, works offline).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable points instead of a table.")
@db_option
def history(device, model, metric, workload, context, window, last_n, html_path, as_json, db_path) -> None:
    """Every stored run of one cell over time: its median and 95% interval, the runtime binary's sha256,
    devprof's version, and change points (a run whose interval misses the band of the previous runs)."""
    from devprof.analysis.history import against_last, build, to_dict
    from devprof.stats import METRIC_INFO

    if html_path is not None:
        _check_writable(html_path, "--html")
    store = _open_store(db_path, must_exist=True)
    hist = build(store, device, model, metric, workload=workload, context=context, window=window)
    if html_path is not None:
        from devprof.export import write_text
        from devprof.report.history_html import render

        write_text(html_path, render(hist, last_n), "HTML page")
    if as_json:
        click.echo(json.dumps(to_dict(hist, last_n or window), indent=2, default=str))
    else:
        info = METRIC_INFO[metric]
        for (dev, wl, ctx), pts in hist.series().items():
            t = Table(title=escape(f"{info.label} ({info.unit}) of {model} on {dev}: {wl}, context {ctx}"))
            for col in ("run", "created", "device", "median", "95% interval", "n", "runtime sha256", "devprof", "change"):
                t.add_column(col, justify="right" if col in ("median", "n") else "left")
            for p in pts:
                t.add_row(Text(p.run_id), Text(p.created), Text(p.device), Text(f"{p.median:.{info.decimals}f}"),
                          Text(f"[{p.ci_low:.{info.decimals}f}, {p.ci_high:.{info.decimals}f}]"), Text(str(p.n)),
                          Text(p.sha256[:12]), Text(p.version),
                          Text(f"{p.change} (band {p.band[0]:.{info.decimals}f}-{p.band[1]:.{info.decimals}f})"
                               if p.change else "", style="bold red" if p.change else ""))
            out.print(t)
            cmp = against_last(pts, last_n or window)
            if cmp and cmp["change_pct"] is not None:
                out.print(Text(f"latest {cmp['run_id']}: {cmp['latest']:.{info.decimals}f} vs median of the "
                               f"{cmp['baseline_runs']} run(s) before it {cmp['baseline_median']:.{info.decimals}f} "
                               f"({cmp['change_pct']:+.1f}%, {'beyond' if cmp['beyond_noise'] else 'within'} their noise)"))
    if html_path is not None:
        click.echo(f"history: {html_path}", err=True)
