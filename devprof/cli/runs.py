"""`devprof show`, `devprof report`, `devprof list`: one stored run, or the list of them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from devprof.cli.options import db_option, load_shown, open_store, out, run_ref_argument


def write_report(record, path: Path) -> Path:
    from devprof.report import get_renderer
    from devprof.report.writer import write_text

    # atomic: a temporary file beside it, renamed into place; a full disk leaves no empty report
    return write_text(Path(path), get_renderer("html").render(record), "report")


@click.command()
@run_ref_argument
@click.option("--json", "as_json", is_flag=True, help="Machine-readable figures.")
@db_option
def show(run_ref, as_json, db_path) -> None:
    """Show the figures of a run (RUN id, a unique prefix, latest, latest~1)."""
    store = open_store(db_path, must_exist=True)
    record = load_shown(store, run_ref)
    from devprof.report import get_renderer

    if as_json:
        out.print_json(get_renderer("json").render(record))
    else:
        get_renderer("terminal", console=out).print(record)


@click.command()
@run_ref_argument
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: next to the store, RUN.html].")
@click.option("--open", "open_it", is_flag=True, help="Open the report in a browser.")
@db_option
def report(run_ref, out_path, open_it, db_path) -> None:
    """Write the self-contained HTML report of a run."""
    store = open_store(db_path, must_exist=True)
    record = load_shown(store, run_ref)
    path = write_report(record, out_path or store.local_dir / f"{record.meta.run_id}.html")
    click.echo(str(path))
    if open_it:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


@click.command(name="list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
@db_option
def list_runs(limit, as_json, db_path) -> None:
    """List stored runs, newest first."""
    store = open_store(db_path, must_exist=True)
    runs = store.list_runs(limit=limit)
    if as_json:
        out.print_json(json.dumps([{
            "run_id": m.run_id, "created": m.created, "status": m.status, "device": m.device.name,
            "device_kind": m.device.kind, "runtime": m.runtime, "models": m.models,
            "workloads": m.workloads, "contexts": m.contexts, "reps": m.reps} for m in runs]))
        return
    from devprof.report.terminal_tables import runs_table

    out.print(runs_table(out, runs, store.where))

