"""The small hierarchy of errors devprof raises for things a user can fix.

Every one is a ``click.ClickException``: the CLI prints its one-line message and exits non-zero,
never a traceback. Deeper layers raise these; only ``cli.py`` decides how to show them.
"""

from __future__ import annotations

import click


class DevprofError(click.ClickException):
    """A user-facing error: one line, exit code 1."""

    exit_code = 1


class UsageError(DevprofError):
    """Bad input on the command line (unknown model, context too large, ...): exit code 2."""

    exit_code = 2


class DeviceError(DevprofError):
    """A device could not be found, reached or used."""


class DeviceLost(DeviceError):
    """The device disappeared during a run (finished repetitions are kept)."""


class RuntimeFailed(DevprofError):
    """A runtime process exited non-zero or printed no stats line."""


class ParseError(RuntimeFailed):
    """A runtime's output could not be parsed (truncated, garbled, unknown format)."""


class StoreError(DevprofError):
    """The result store cannot be opened or written."""
