"""The adbutils boundary: the client of one adb server, the errors adb calls raise, each turned
into one line for the user, and the probe that notices a phone that stopped answering."""

from __future__ import annotations

import threading

from devprof.errors import UsageError

#: Longest silence (s) of the phone on one adb socket before it counts as gone. A phone whose
#: adbd froze or whose USB hung answers nothing at all; every adb call devprof makes is bounded
#: by this (socket inactivity, so a long transfer that keeps moving is never cut), and a run is
#: declared lost within its --timeout plus a few of these, whatever the --timeout.
IO_TIMEOUT = 15.0
#: How often a running repetition checks that the phone still answers (one in-process sync STAT
#: on adbd: no process is started on the phone, so the measurement is not disturbed).
PROBE_INTERVAL = 5.0


def adb_client(adb_server: str | None):
    import adbutils

    if adb_server:
        host, _, port = adb_server.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--adb-server must be HOST:PORT, got {adb_server!r}")
        return adbutils.AdbClient(host=host, port=int(port), socket_timeout=IO_TIMEOUT)
    return adbutils.AdbClient(socket_timeout=IO_TIMEOUT)


def adb_errors():
    import adbutils

    return (adbutils.AdbError, ConnectionError, OSError, TimeoutError, EOFError)


def error_line(e: BaseException) -> str:
    import socket

    import adbutils

    text = str(e)
    if isinstance(e, (EOFError, ConnectionError)) or text.strip().lower() in ("closed", "connection closed"):
        return "the adb connection closed (device unplugged or adbd gone?)"
    if "offline" in text or "not found" in text:  # what the adb server says once it noticed
        return f"adb says {text} (device unplugged or adbd gone?)"
    if isinstance(e, (adbutils.AdbTimeout, socket.timeout, TimeoutError)):
        return f"it stopped answering (nothing for {IO_TIMEOUT:g} s: adbd frozen or USB hung?)"
    return str(e) or type(e).__name__


class Probe(threading.Thread):
    """Checks every PROBE_INTERVAL that the phone still answers (a sync STAT, served inside adbd);
    two silences of IO_TIMEOUT in a row make it gone: a frozen adbd or a hung USB link is found
    within PROBE_INTERVAL + 2 * IO_TIMEOUT (35 s), whatever the run's --timeout."""

    def __init__(self, dev, path: str) -> None:
        super().__init__(daemon=True, name="adb-probe")
        self.dev, self.path = dev, path
        self._stop_evt = threading.Event()
        self._gone = threading.Event()
        self.why = ""

    def run(self) -> None:
        misses = 0
        while not self._stop_evt.wait(0 if misses else PROBE_INTERVAL):  # a silence is checked again at once
            try:
                self.dev.sync.stat(self.path)
                misses = 0
            except adb_errors() as e:
                misses += 1
                self.why = (f"no answer within {IO_TIMEOUT:g} s to 2 checks in a row: adbd frozen or USB hung?"
                            if isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower() else error_line(e))
                if misses >= 2:
                    self._gone.set()
                    return

    def gone(self) -> bool:
        return self._gone.is_set()

    def stop(self) -> None:
        self._stop_evt.set()
