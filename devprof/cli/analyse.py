"""`devprof compare`, `diff`, `export`, `history`: commands that read stored runs.

Argument parsing, output and exit codes only: the analysis is in ``devprof.analysis``, the output
formats in ``devprof.report``. User errors are ``DevprofError``s (one line, non-zero exit).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from devprof.cli.options import check_writable, console, db_arg, db_option, echo_json, open_store, out, run_ref_argument
from devprof.errors import UsageError
from devprof.report import EXPORT_FORMATS


# --------------------------------------------------------------------------------------------
@click.command()
@run_ref_argument
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison as a self-contained HTML page.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable figures instead of tables.")
@db_option
def compare(run_ref, html_path, as_json, db_path) -> None:
    """Templated vs real prompts for each MoE model of a run: memory, routing, the join, a projection.

    RUN is a run id, a unique prefix, latest or latest~N.
    """
    from devprof.analysis.compare import compare as analyse_compare
    from devprof.analysis.compare import to_dict

    store = open_store(db_path, must_exist=True)
    record = store.load_run(run_ref)
    report = analyse_compare(record)
    if html_path is not None:
        from devprof.report import get_renderer
        from devprof.report.writer import write_text

        write_text(html_path, get_renderer("compare-html").render(report), "HTML page")
    if as_json:
        echo_json(to_dict(report))
    else:
        from devprof.report.terminal_compare import compare_renderables

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
              callback=lambda _c, _p, v: None if v is None else db_arg(v),
              help="Read B from this store (another device's, say) [default: the same as A].")
@click.option("--allow-noisy", is_flag=True,
              help="Call regressions even when a run is flagged noisy (busy device, wide spread).")
@click.option("--against-last", "last_n", default=None, type=click.IntRange(1, 1000), metavar="N",
              help="Instead of B: compare RUN_A with the median of the N runs before it on the same device.")
@db_option
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
    store = open_store(db_path, must_exist=True)
    a = store.load_run(run_a)
    b = (open_store(db_b, must_exist=True) if db_b else store).load_run(run_b)
    report = diff_runs(a, b, threshold=threshold, allow_noisy=allow_noisy)
    if as_json:
        echo_json(to_dict(report))
    else:
        from devprof.report.terminal_compare import diff_renderables

        for r in diff_renderables(report):
            out.print(r)
    if report.exit_code:
        # not ctx.exit(): devprof's main() runs click with standalone_mode=False, which turns Exit into a return
        # value it ignores; SystemExit reaches the shell (and CliRunner) either way
        raise SystemExit(report.exit_code)


def _diff_against_last(run_ref, n, threshold, as_json, db_path) -> None:
    """`diff RUN --against-last N`: every metric of RUN against the median of the N runs before it."""
    from devprof.analysis.history import against_last_runs

    store = open_store(db_path, must_exist=True)
    record = store.load_run(run_ref)
    rows = against_last_runs(store, record, n, threshold=threshold)
    if not rows:
        raise UsageError(f"no earlier run on {record.meta.device.name or record.meta.device.serial} measured "
                         f"what run {record.meta.run_id} did: nothing to compare against")
    if as_json:
        echo_json({"format": "devprof.diff-against-last/1", "run_id": record.meta.run_id, "n": n,
                    "threshold_pct": threshold, "rows": rows})
    else:
        from devprof.report.terminal_tables import against_last_table

        out.print(against_last_table(record.meta, n, rows))
    if any(r["regression"] for r in rows):
        from devprof.errors import ExitCode

        raise SystemExit(ExitCode.REGRESSION)


# --------------------------------------------------------------------------------------------
@click.command()
@run_ref_argument
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), default="csv",
              show_default=True, help="csv/json/md: one row per repetition and per summary; perfetto: one "
                                      "Chrome trace-event JSON per repetition.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="File to write (csv/json/md; default: standard output) or folder (perfetto; default: "
                   "RUN-perfetto/ next to the store).")
@db_option
def export(run_ref, fmt, out_path, db_path) -> None:
    """Export a run: CSV, JSON, Markdown, or Perfetto traces (open in ui.perfetto.dev)."""
    from devprof.report import export as write_export
    from devprof.report import export_renderer

    store = open_store(db_path, must_exist=True)
    record = store.load_run(run_ref)
    renderer = export_renderer(fmt)
    if renderer.writes_folder:
        folder = out_path or store.local_dir / f"{record.meta.run_id}-{fmt}"
        paths = write_export(record, fmt, folder)
        for p in paths:
            click.echo(str(p))
        console.print(f"{len(paths)} trace(s) in {folder}: open one in ui.perfetto.dev (or chrome://tracing)",
                      highlight=False, markup=False)
        return
    if out_path is None:
        click.echo(renderer.render(record), nl=False)
        return
    write_export(record, fmt, out_path)
    click.echo(str(out_path), err=True)


# ---- one figure over every stored run ----------------------------------------------------------
@click.command()
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
    from devprof.analysis.history import build, to_dict

    if html_path is not None:
        check_writable(html_path, "--html")
    store = open_store(db_path, must_exist=True)
    hist = build(store, device, model, metric, workload=workload, context=context, window=window)
    if html_path is not None:
        from devprof.report import get_renderer
        from devprof.report.writer import write_text

        write_text(html_path, get_renderer("history-html", last_n=last_n).render(hist), "HTML page")
    if as_json:
        click.echo(json.dumps(to_dict(hist, last_n or window), indent=2, default=str))
    else:
        from devprof.report.terminal_tables import history_renderables

        for r in history_renderables(hist, model, last_n or window):
            out.print(r)
    if html_path is not None:
        click.echo(f"history: {html_path}", err=True)

