"""The small hierarchy of errors devprof raises for things a user can fix, and every exit code.

Every error is a ``click.ClickException``: the CLI prints its one-line message and exits non-zero,
never a traceback. Deeper layers raise these; only ``cli/options.py`` decides how to show them.

    error / outcome        exit  when
    (success)                 0
    DevprofError              1  a failure while running (the base of the tree)
      DeviceError             1  a device cannot be found, reached or used
        DeviceLost            1  the device vanished mid-run (finished repetitions kept)
      RuntimeFailed           1  a runtime exited non-zero or printed no stats
        ParseError            1  a runtime's output cannot be parsed
      StoreError              1  the result store cannot be opened or written
      UsageError              2  bad input (also any error whose path the user gave is unusable)
        NoDeviceMatch         2  no attached device matches the alias (carries each backend's reason)
      Interrupted           130  Ctrl-C (128 + SIGINT); 143 for SIGTERM (128 + the stop signal)
    `devprof diff` regression 1  a metric got worse beyond the threshold
    an internal error         1  a bug, in one line (DEVPROF_DEBUG=1 for the traceback)
"""

from __future__ import annotations

import enum
import errno

import click


class ExitCode(enum.IntEnum):
    """devprof's exit statuses (the table above)."""

    OK = 0
    FAILED = 1
    REGRESSION = 1  # `devprof diff` found a regression (an alias of FAILED)
    USAGE = 2
    INTERRUPTED = 130  # 128 + SIGINT
    TERMINATED = 143  # 128 + SIGTERM


class DevprofError(click.ClickException):
    """A user-facing error: one line, exit code 1."""

    exit_code = ExitCode.FAILED


class UsageError(DevprofError):
    """Bad input on the command line (unknown model, context too large, ...): exit code 2."""

    exit_code = ExitCode.USAGE



class NoDeviceMatch(UsageError):
    """No device matches the spec (bad input, exit 2); ``reasons`` says what each backend saw."""

    def __init__(self, spec: str, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(f"no device matches {spec!r}" + (f" ({'; '.join(reasons)})" if reasons else "")
                         + "; `devprof devices` lists what is attached")


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


class Interrupted(DevprofError):
    """Ctrl-C (or SIGTERM) during a run: what was measured is kept. Exits 128 + the stop signal."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.exit_code = interrupted_exit_code()


#: OS errors that mean "the path the user gave cannot be used" (bad input, exit 2), as opposed to a
#: failure while writing (a full disk, an I/O error: exit 1).
_BAD_PATH_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EACCES", "EPERM", "ENOENT", "ENOTDIR", "EISDIR", "EROFS", "ENAMETOOLONG",
                                      "ELOOP", "EEXIST") if hasattr(errno, name))


def is_bad_path(e: BaseException) -> bool:
    """Whether an OSError says the path itself is unusable (permissions, no such folder, a file in the way)."""
    return isinstance(e, OSError) and e.errno in _BAD_PATH_ERRNOS


def path_error(message: str, e: BaseException, cls: type[DevprofError] = DevprofError) -> DevprofError:
    """``cls(message)``, with exit code 2 when ``e`` says the user's path is unusable (else ``cls``'s own)."""
    err = cls(message)
    if is_bad_path(e):
        err.exit_code = UsageError.exit_code
    return err


# ---- signals: how a process died, and what to try (one line each) ------------------------------

#: The signal that stopped devprof itself (set by the CLI's SIGTERM handler): a run it interrupts
#: is stored as interrupted and the command exits 128 + the signal (143 for SIGTERM).
stop_signal: list[int] = []


def interrupted_exit_code() -> int:
    """128 + the signal that stopped devprof (143 for SIGTERM), or 130 for Ctrl-C."""
    return 128 + stop_signal[0] if stop_signal else ExitCode.INTERRUPTED


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def killed_by(signum: int) -> str:
    """'killed by signal 11 (SIGSEGV)'."""
    return f"killed by signal {signum} ({signal_name(signum)})"


def signal_hint(signum: int, runtime: str = "") -> str:
    """What to try after a runtime died by ``signum`` (one clause, no trailing period)."""
    import signal

    llama = runtime == "llamacpp"
    if signum == signal.SIGILL:
        return ("the binary uses CPU instructions this CPU lacks: rebuild the runtime for this CPU or use a "
                "portable baseline build (a wheel pip cached on another machine: pip install --no-cache-dir "
                "--force-reinstall)")
    if signum in (signal.SIGSEGV, signal.SIGBUS):
        return ("try --runtime-arg=--no-repack (llama.cpp's CPU repack kernels), or rebuild the runtime for this CPU"
                if llama else "the runtime crashed (its stderr is kept with the run): try a smaller --context "
                              "or rebuild the runtime")
    if signum == signal.SIGABRT:
        return "the runtime aborted (a failed check): see its stderr kept with the run"
    if signum == signal.SIGKILL:
        return ("no out-of-memory record was found, so something else killed it (a watchdog, a CI "
                "timeout, a user): run again")
    if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        return "another process stopped it: run again"
    return "see its stderr kept with the run"
