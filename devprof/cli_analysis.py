"""`devprof compare`, `devprof diff`, `devprof export`: commands that read stored runs.

Standalone click commands; ``devprof/cli.py`` registers them on its group::

    from devprof.cli_analysis import compare, diff, export
    cli.add_command(compare)
    cli.add_command(diff)
    cli.add_command(export)

Argument parsing, output and exit codes only: the analysis is in ``devprof.analysis``, the files
in ``devprof.export``. User errors are ``DevprofError``s (one line, non-zero exit).

The helpers come from ``devprof.cli`` (``db_option``, ``_open_store``, ``out``, ``console``), which
imports this module at its end: so that either module can be imported first, this one imports
``devprof.cli`` only at its bottom, after the three commands exist, and adds the shared ``--db``
option to them there (``db_option`` applied to a command appends the option).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from devprof.errors import UsageError


def _echo_json(doc: dict) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False, default=str))


# --------------------------------------------------------------------------------------------
@click.command()
@click.argument("run_ref", default="latest")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison as a self-contained HTML page.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable figures instead of tables.")
def compare(run_ref, html_path, as_json, db_path) -> None:
    """Templated vs real prompts for each MoE model of a run: memory, routing, the join, a projection.

    RUN is a run id, a unique prefix, latest or latest~N.
    """
    from devprof.analysis.compare import compare as analyse_compare
    from devprof.analysis.compare import to_dict

    store = _open_store(db_path, must_exist=True)
    record = store.load_run(run_ref)
    report = analyse_compare(record)
    if html_path is not None:
        from devprof.files import write_text
        from devprof.report.html import CompareHTMLRenderer

        write_text(html_path, CompareHTMLRenderer().render(report), "HTML page")
    if as_json:
        _echo_json(to_dict(report))
    else:
        from devprof.analysis.console import compare_renderables

        for r in compare_renderables(report, width=out.width):
            out.print(r)
    if html_path is not None:
        click.echo(f"report: {html_path}", err=True)


# --------------------------------------------------------------------------------------------
@click.command()
@click.argument("run_a")
@click.argument("run_b", required=False, default=None)
@click.option("--threshold", default=5.0, show_default=True, type=click.FloatRange(0),
              help="Flag regressions larger than this many percent (and clear at 95%).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable rows instead of a table.")
@click.option("--db-b", "db_b", default=None, metavar="FILE|URL",
              callback=lambda _c, _p, v: None if v is None else _db_arg(v),
              help="Read B from this store (another device's, say) [default: the same as A].")
@click.option("--allow-noisy", is_flag=True,
              help="Call regressions even when a run is flagged noisy (busy device, wide spread).")
@click.option("--against-last", "last_n", default=None, type=click.IntRange(1, 1000), metavar="N",
              help="Instead of B: compare RUN_A with the median of the N runs before it on the same device.")
def diff(run_a, run_b, threshold, as_json, db_b, allow_noisy, last_n, db_path) -> None:
    """Every metric of run B against run A, with the change and its 95% CI.

    Exit status 1 when a regression beyond --threshold is clear (slower prefill or decode, longer
    TTFT, higher peak memory), 0 otherwise: usable in CI. When run A or B is noisy (other processes
    busy during many repetitions, or a wide spread) no regression is called unless --allow-noisy.

    `diff RUN --against-last N` compares RUN with the median of the N runs before it on the same device
    instead (exit 1 when a figure got worse beyond --threshold and beyond those runs' noise).
    """
    from devprof.analysis.diff import diff_runs, to_dict

    if last_n is not None:
        if run_b is not None:
            raise UsageError("give run B or --against-last N, not both")
        _diff_against_last(run_a, last_n, threshold, as_json, db_path)
        return
    if run_b is None:
        raise UsageError("diff needs run B (or --against-last N)")
    store = _open_store(db_path, must_exist=True)
    a = store.load_run(run_a)
    b = (_open_store(db_b, must_exist=True) if db_b else store).load_run(run_b)
    report = diff_runs(a, b, threshold=threshold, allow_noisy=allow_noisy)
    if as_json:
        _echo_json(to_dict(report))
    else:
        from devprof.analysis.console import diff_renderables

        for r in diff_renderables(report):
            out.print(r)
    if report.exit_code:
        # not ctx.exit(): devprof's main() runs click with standalone_mode=False, which turns Exit into a return
        # value it ignores; SystemExit reaches the shell (and CliRunner) either way
        raise SystemExit(report.exit_code)


def _diff_against_last(run_ref, n, threshold, as_json, db_path) -> None:
    """`diff RUN --against-last N`: every metric of RUN against the median of the N runs before it."""
    from rich.table import Table
    from rich.text import Text

    from devprof.analysis.history import against_last_runs
    from devprof.stats import METRIC_INFO

    store = _open_store(db_path, must_exist=True)
    record = store.load_run(run_ref)
    rows = against_last_runs(store, record, n, threshold=threshold)
    if not rows:
        raise UsageError(f"no earlier run on {record.meta.device.name or record.meta.device.serial} measured "
                         f"what run {record.meta.run_id} did: nothing to compare against")
    if as_json:
        _echo_json({"format": "devprof.diff-against-last/1", "run_id": record.meta.run_id, "n": n,
                    "threshold_pct": threshold, "rows": rows})
    else:
        t = Table(title=f"run {record.meta.run_id} against the median of up to {n} earlier run(s) on "
                        f"{record.meta.device.name or record.meta.device.serial}")
        for col in ("model", "workload", "context", "metric", "this run", "earlier median", "change", "status"):
            t.add_column(col)
        for r in rows:
            d = METRIC_INFO[r["metric"]].decimals
            status = ("regression" if r["regression"] else "beyond noise" if r["beyond_noise"] else "within noise")
            t.add_row(r["model"], r["workload"], str(r["context"]), r["metric"], f"{r['median']:.{d}f}",
                      f"{r['baseline_median']:.{d}f} ({len(r['baseline_runs'])} runs)",
                      "" if r["change_pct"] is None else f"{r['change_pct']:+.1f}%",
                      Text(status, style="bold red" if r["regression"] else ""))
        out.print(t)
    if any(r["regression"] for r in rows):
        raise SystemExit(1)


# --------------------------------------------------------------------------------------------
@click.command()
@click.argument("run_ref", default="latest")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "md", "perfetto"]), default="csv",
              show_default=True, help="csv/json/md: one row per repetition and per summary; perfetto: one "
                                      "Chrome trace-event JSON per repetition.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="File to write (csv/json/md; default: standard output) or folder (perfetto; default: "
                   "RUN-perfetto/ next to the store).")
def export(run_ref, fmt, out_path, db_path) -> None:
    """Export a run: CSV, JSON, Markdown, or Perfetto traces (open in ui.perfetto.dev)."""
    from devprof import export as ex

    store = _open_store(db_path, must_exist=True)
    record = store.load_run(run_ref)
    if fmt == "perfetto":
        folder = out_path or store.local_dir / f"{record.meta.run_id}-perfetto"
        paths = ex.write_perfetto(record, folder)
        for p in paths:
            click.echo(str(p))
        console.print(f"{len(paths)} trace(s) in {folder}: open one in ui.perfetto.dev (or chrome://tracing)",
                      highlight=False, markup=False)
        return
    if out_path is None:
        click.echo(ex.render(record, fmt), nl=False)
        return
    ex.write(record, fmt, out_path)
    click.echo(str(out_path), err=True)


# ---- the shared helpers of devprof/cli.py (see the module docstring for why they come last) ----------
from devprof.cli import _db_arg, _open_store, console, db_option, out  # noqa: E402

for _cmd in (compare, diff, export):
    if not any(p.name == "db_path" for p in _cmd.params):
        db_option(_cmd)

__all__ = ["compare", "diff", "export"]
