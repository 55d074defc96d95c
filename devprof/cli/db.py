"""`devprof db push`: merge local SQLite stores into a lab's shared PostgreSQL store."""

from __future__ import annotations

from pathlib import Path

import click

from devprof.cli.options import db_arg, out
from devprof.errors import UsageError


@click.group()
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
    with Store(db_arg(target)) as store:
        for src in sources:
            copied, skipped = store.push_from(src)
            out.print(f"{src}: {copied} run(s) copied, {skipped} already in {store.where}",
                      markup=False, highlight=False)

