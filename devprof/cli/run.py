"""`devprof run`: options -> a plan, its estimate (or the --dry-run), the sessions, the output."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from devprof.cli.options import (
    adb_server_option, check_writable, console, db_option, default_db, devices_file_option, int_list,
    interrupted_exit, lab_option, open_store, out, report_down_endpoints,
)
from devprof.cli.runs import write_report
from devprof.errors import DevprofError, UsageError
from devprof.runtimes.base import default_runtime, get_adapter


@click.command()
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
              help="After the plan, generate back to back this long (and at least twice): tok/s, hottest zone and "
                   "big-core MHz over time.")
@adb_server_option
@lab_option
@devices_file_option
@db_option
def run(**options) -> None:
    """Profile a MoE model against a dense baseline on a device; store and report the results."""
    o = SimpleNamespace(**options)
    make_plan = _plan_maker(o)
    # the options are checked before any device is touched; without --runtime the device kind picks it
    plan = make_plan(o.runtime or default_runtime(weights=o.weights))
    _check_before_devices(o)
    store = _store_for(o)
    targets = _targets(o)
    plans = {k: plan if o.runtime else make_plan(default_runtime(k)) for k in {t.kind for t in targets}}
    est = _estimate(plans, store, targets)
    if o.dry_run:
        _print_plan(plans[targets[0].kind], targets, est)
        return
    from devprof.estimate import ANNOUNCE_ABOVE_S

    if est.seconds > ANNOUNCE_ABOVE_S and not o.as_json:
        console.print(Text(f"estimate: {est.words()}"), highlight=False)
    started = time.monotonic()
    metas = _execute(targets, store, plans, quiet=o.as_json)
    _output(o, store, metas, time.monotonic() - started)


# ---- options -> plan ------------------------------------------------------------------------------
def _plan_maker(o):
    """A function of the runtime name giving the checked Plan of these options (bad input: exit 2)."""
    from devprof import workloads
    from devprof.catalog import get_model
    from devprof.session import Plan

    models = [get_model(o.model)]
    if o.baseline and o.baseline.lower() != "none":
        models.append(get_model(o.baseline))
    model_files = _model_files(o, models)
    reps, rule = _reps(o)

    def make_plan(rt: str) -> Plan:
        p = Plan(
            models=models, workloads=workloads.parse_workloads(o.workload), contexts=int_list(o.context, "--context"),
            new_tokens=o.new_tokens, reps=reps, warmup=o.warmup, sample_ms=o.sample_ms, runtime=rt, cache=o.cache,
            weights=o.weights or get_adapter(rt).default_weights,
            seed=o.seed, threads=o.threads, timeout_s=o.timeout_s, cpu_mask=o.cpu_mask, cooldown_c=o.cooldown_c,
            cooldown_timeout_s=o.cooldown_timeout, binary_name=o.binary_name, model_files=model_files,
            ready=o.ready, ready_timeout_s=o.ready_timeout, adaptive=rule,
            runtime_args=list(o.runtime_args), energy=o.energy, energy_baseline_s=o.energy_baseline,
            soak_min=o.soak_min,
        )
        get_adapter(rt)
        p.validate()
        return p

    return make_plan


def _model_files(o, models) -> dict:
    model_files = {}
    if o.model_bundle:
        model_files[models[0].name] = (o.model_bundle, o.tokenizer)
    if o.baseline_bundle:
        if len(models) < 2:
            raise UsageError("--baseline-bundle needs a --baseline model")
        model_files[models[1].name] = (o.baseline_bundle, o.baseline_tokenizer or o.tokenizer)
    return model_files


def _reps(o):
    """(repetitions, the --reps auto rule or None)."""
    from devprof.adaptive import Rule

    if str(o.reps).strip().lower() == "auto":
        if o.reps_max < o.reps_min:
            raise UsageError(f"--reps-max {o.reps_max} is below --reps-min {o.reps_min}")
        return o.reps_min, Rule(min_reps=o.reps_min, target=o.reps_target / 100.0, max_reps=o.reps_max,
                                max_s=o.reps_time)
    try:
        reps = int(o.reps)
    except ValueError:
        raise UsageError(f"--reps must be a whole number or auto, got {o.reps!r}") from None
    if not 1 <= reps <= 1000:
        raise UsageError(f"--reps must be between 1 and 1000 (or auto), got {reps}")
    return reps, None


def _check_before_devices(o) -> None:
    """What can be wrong with the options apart from the plan: found out now, not after the run."""
    if o.out_path is not None:
        check_writable(o.out_path, "--out")
    if o.binary_name:  # an unknown name is bad input: say so before a run is stored
        from devprof import bins

        if o.binary_name not in {b.name for b in bins.load()}:
            raise UsageError(f"no registered binary named {o.binary_name!r}; `devprof bins list` shows them")
    from devprof import readiness

    readiness.parse(o.ready)  # bad conditions: one line, exit 2, before any device is touched


def _store_for(o):
    where = o.db_path or default_db()
    if o.dry_run and not isinstance(where, str) and not Path(where).exists():
        return None  # a dry run creates no store; without one the estimate is catalog arithmetic
    return open_store(o.db_path)


def _targets(o) -> list:
    """The devices of --device, with --adb-server's and --lab's endpoints."""
    from devprof import devices
    from devprof.devices import lab as lab_mod

    adb_server = o.adb_server
    lab_hosts = lab_mod.load(o.lab_file) if o.lab_file else []
    if lab_hosts:
        adb_server = lab_mod.endpoints(adb_server, lab_hosts)
    targets = devices.resolve(o.device, adb_server=adb_server, devices_file=o.devices_file)
    if adb_server:
        report_down_endpoints()
    if lab_hosts and o.device.strip().lower() == "all":
        targets, warnings = lab_mod.select(targets, lab_hosts)
        for w in warnings:
            console.print(Text(f"warning: {w}", style="yellow"), highlight=False)
        if not targets:
            from devprof.errors import DeviceError

            raise DeviceError(f"no phone of the lab file {o.lab_file} is attached")
    return targets


# ---- execution and output ------------------------------------------------------------------------
def _execute(targets, store, plans, quiet: bool) -> list:
    """The sessions: one with a progress bar, or one per device side by side."""
    from devprof.session import Session

    if len(targets) > 1:
        return _run_parallel(targets, store, plans, quiet=quiet)
    plan = plans[targets[0].kind]
    with targets[0] as dev, _RichObserver(console, enabled=not quiet) as obs:
        return [Session(dev, store, plan, store.local_dir / "runs", observer=obs).run()]


def _output(o, store, metas, elapsed: float) -> None:
    """The HTML report of every run, then the figures (terminal tables or JSON)."""
    records = [store.load_run(m.run_id) for m in metas]
    paths = [write_report(r, (o.out_path if len(records) == 1 and o.out_path else None)
                          or store.local_dir / f"{r.meta.run_id}.html") for r in records]
    from devprof.report import get_renderer

    if o.as_json:
        docs = [json.loads(get_renderer("json").render(r)) for r in records]
        out.print_json(json.dumps(docs[0] if len(docs) == 1 else docs))
    else:
        for r in records:
            get_renderer("terminal", console=out).print(r)
        out.print(f"{len(records)} run(s) finished in {elapsed:.0f} s: " + ", ".join(m.run_id for m in metas),
                  markup=False, highlight=False)
    for p in paths:
        click.echo(f"report: {p}", err=True)


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

    from devprof.errors import Interrupted
    from devprof.session import Session

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
        err.exit_code = interrupted_exit()
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
