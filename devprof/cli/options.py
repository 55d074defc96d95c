"""What every devprof command shares: the consoles, the options used by several commands, the store
helpers, and the one place an error becomes an exit code (:func:`invoke`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.text import Text

from devprof import REPO_ROOT
from devprof.errors import UsageError

# log_path=False: the user's log says what happened, not which line of devprof said it (options.py)
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
    return db_arg(env) if env else REPO_ROOT / "reports" / "devprof.db"


def db_arg(value: str | Path) -> Path | str:
    """A --db value: a postgresql:// URL stays a string, anything else is an SQLite file's path."""
    from devprof.store import is_url

    return value if is_url(str(value)) else Path(value)


adb_server_option = click.option(
    "--adb-server", default=None, metavar="HOST:PORT[,...]",
    help="adb server(s) to use: one HOST:PORT or a comma-separated list (the hosts of a lab, a device farm's "
         "remote adb endpoints); --device all runs every phone of every one that answers "
         "[default: local, $ANDROID_ADB_SERVER_PORT].")


def report_down_endpoints() -> None:
    """One line per adb endpoint of --adb-server that did not answer; the others go on."""
    from devprof.devices import unreachable_endpoints

    for line in unreachable_endpoints():
        console.print(Text(f"warning: {line}: skipped", style="yellow"), highlight=False)


lab_option = click.option(
    "--lab", "lab_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="TOML lab file: [hosts.NAME] adb = \"HOST:PORT\", optional phones = [serials] (see README, Lab); "
         "its endpoints join --adb-server's.")
devices_file_option = click.option(
    "--devices-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="TOML file of device aliases [default: ~/.config/devprof/devices.toml].")

run_ref_argument = click.argument("run_ref", default="latest")  # a run id, a unique prefix, latest, latest~N

db_option = click.option(
    "--db", "db_path", default=None, callback=lambda _c, _p, v: None if v is None else db_arg(v),
    metavar="FILE|URL",
    help="Result store: an SQLite file, or a lab's PostgreSQL store postgresql://user@host:port/dbname "
         "[default: reports/devprof.db, or $DEVPROF_DB].")


def open_store(db_path: Path | str | None, must_exist: bool = False):
    from devprof.store import Store, is_url

    path = db_path or default_db()
    if must_exist and not is_url(path) and not Path(path).exists():
        raise UsageError(f"no results store at {path}: run `devprof run` first (or pass --db)")
    return Store(path)


def check_writable(path: Path, option: str) -> None:
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


def load_shown(store, ref: str):
    """A run to show or report: one with nothing measured is an error (exit 2), never an empty page."""
    record = store.load_run(ref)
    if not record.measured():
        m = record.meta
        why = " ".join(f"{m.status}: {m.note}".split()) if m.note else m.status
        raise UsageError(f"run {m.run_id} has no measured repetition ({why}): nothing to show")
    return record


def int_list(value: str, name: str) -> list[int]:
    try:
        vals = [int(v) for v in str(value).replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{name} must be a number or a comma-separated list of numbers, got {value!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise UsageError(f"{name} must be positive, got {value!r}")
    return vals


def echo_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False, default=str))


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


def interrupted_exit() -> int:
    from devprof.errors import interrupted_exit_code

    return interrupted_exit_code()


def invoke(group: click.Group, argv: list[str] | None = None) -> None:
    """Run ``group`` as the console entry point: one line and a non-zero exit for every error, never a traceback."""
    import signal

    try:
        signal.signal(signal.SIGTERM, _on_stop_signal)
    except ValueError:  # not the main thread (an embedding program): leave its handlers alone
        pass
    try:
        rv = group.main(args=argv, prog_name="devprof", standalone_mode=False)
        if isinstance(rv, int) and rv:  # a command's ctx.exit(code) comes back as a return value here
            sys.exit(rv)
    except click.exceptions.Abort:
        if os.environ.get("DEVPROF_DEBUG"):
            raise
        console.print("[yellow]interrupted[/]")
        sys.exit(interrupted_exit())
    except click.ClickException as e:
        console.print(f"[red]error:[/] {escape(e.format_message())}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(interrupted_exit())
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: say so in one line; the traceback only on request
        if os.environ.get("DEVPROF_DEBUG"):
            raise
        console.print(f"[red]internal error:[/] {type(e).__name__}: {escape(str(e))} (set DEVPROF_DEBUG=1 for the traceback)",
                      highlight=False)
        sys.exit(1)

