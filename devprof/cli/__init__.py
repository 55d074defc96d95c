"""The devprof command line: argument parsing, progress display and exit codes only.

Profiling logic lives in session.py (running), store.py (keeping) and report/ (showing). Each command
family is one module of this package, listed in :data:`COMMANDS`; what they share (options, consoles,
the error -> exit code translation) is in ``options.py``.
"""

from __future__ import annotations

from importlib import import_module

import click

from devprof import __version__
from devprof.cli.options import invoke

# module of devprof.cli -> the click commands (or groups) it defines, in the order of that module
COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("run",),
    "runs": ("show", "report", "list_runs"),
    "inventory": ("models", "devices_cmd", "bins"),
    "analyse": ("compare", "diff", "export", "history"),
    "bench": ("bench",),
    "db": ("db",),
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="devprof")
def cli() -> None:
    """Profile LLM runtimes on phones and on this host: sparse MoE vs dense.

    With no phone attached, `devprof run` profiles this machine with devprof's own reference
    MoE/dense runtime and writes an HTML report.
    """


for _module, _names in COMMANDS.items():
    _mod = import_module(f"devprof.cli.{_module}")
    for _name in _names:
        cli.add_command(getattr(_mod, _name))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line and a non-zero exit for every error, never a traceback."""
    invoke(cli, argv)


__all__ = ["COMMANDS", "cli", "main"]
