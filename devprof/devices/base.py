"""The one small interface every device backend implements (local host, Android, iOS).

A backend knows how to identify itself, put files on the device (cached by content), run one
process while sampling its memory, read thermal state, and bring files back. It knows nothing
about models or workloads: the session decides what to run.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from devprof.results import DeviceInfo, ProcessOutcome


@dataclass
class StageReport:
    """What staging a set of files did: where they are on the device and what it cost."""

    paths: dict[str, str]  # logical name -> path on the device
    bytes_pushed: int = 0
    files_pushed: int = 0
    files_skipped: int = 0
    seconds: float = 0.0
    remote_dir: str = ""


@dataclass
class RunRequest:
    """One process to run on the device."""

    argv: list[str]
    sample_ms: int = 10  # 0 disables sampling
    timeout_s: float = 900.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    cpu_mask: str | None = None  # taskset mask, e.g. "f0"
    #: set by the caller to stop the process early (Ctrl-C); the backend kills it and returns
    cancel: threading.Event | None = None


class Device(ABC):
    """A place to run runtimes. Instances are cheap; ``close()`` releases connections."""

    kind: str = ""
    #: the runtime may already be installed on the device (iOS: the benchmark app), so a missing
    #: prebuilt binary is not an error
    runtime_preinstalled: bool = False

    @abstractmethod
    def info(self) -> DeviceInfo:
        """Identify the device (model, OS version, memory, ...)."""

    @abstractmethod
    def stage(self, files: dict[str, Path], group: str) -> StageReport:
        """Make local ``files`` available on the device under a folder named by ``group``
        (a content hash); skip files the device already has with the same hash."""

    @abstractmethod
    def scratch_path(self, name: str) -> str:
        """A device path for one output file of the next run (trace, samples, ...)."""

    @abstractmethod
    def run(self, req: RunRequest) -> ProcessOutcome:
        """Run ``req.argv`` to completion (or timeout/cancel), sampling its memory."""

    @abstractmethod
    def pull(self, device_path: str, local_path: Path) -> bool:
        """Copy a device file here; False when it does not exist."""

    def discard(self, device_path: str) -> None:
        """Remove a scratch file of the last run from the device (pulled or not); never raises."""

    def drop_page_cache(self, device_path: str) -> tuple[str, str]:
        """Try to evict a file from the page cache; returns (state, how) where state is
        cold | warm | unknown, describing the file's cache state before the next run."""
        return "unknown", "not supported on this device"

    def cache_state(self, device_path: str) -> tuple[str, str]:
        """The page-cache state of a file that is left as it is (a warm run): (state, how), state
        cold | warm | unknown."""
        return "unknown", "not measurable"

    def cpu_features(self) -> set[str] | None:
        """The CPU's /proc/cpuinfo features (arm64 "Features", x86 "flags"); None when unknown."""
        return None

    def mem_available_bytes(self) -> int | None:
        """RAM the device could give a new process now (/proc/meminfo MemAvailable); None when unknown."""
        return None

    def thermal(self) -> dict[str, float]:
        """Temperatures in degrees C by zone name (empty when the device exposes none)."""
        return {}

    def cpu_freqs(self) -> dict[str, float]:
        """Current CPU frequencies in MHz by cpu name (empty when unknown)."""
        return {}

    def cpu_snapshot(self) -> dict | None:
        """The device's CPU accounting now (``devprof.interference.snapshot``: the aggregate line of
        /proc/stat, /proc/loadavg, CPU count); None where the device exposes none (iOS)."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_exit(finished: Callable[[float], bool], req: RunRequest, t0: float, poll_s: float,
                  gone: Callable[[], bool] | None = None) -> tuple[str, str]:
    """Wait for a running process: ``finished(poll_s)`` blocks up to ``poll_s`` and says whether it ended.
    Returns (status, note): ("ok", "") when it did, "interrupted" when ``req.cancel`` is set or Ctrl-C
    lands, "timeout" after ``req.timeout_s`` from ``t0`` (monotonic), "lost" when ``gone()`` says the
    device stopped answering. The caller stops the process for any status but "ok"."""
    try:
        while not finished(poll_s):
            if req.cancel is not None and req.cancel.is_set():
                return "interrupted", "stopped by the user"
            if time.monotonic() - t0 > req.timeout_s:
                return "timeout", f"killed after the {req.timeout_s:g} s timeout"
            if gone is not None and gone():
                return "lost", ""
    except KeyboardInterrupt:
        return "interrupted", "stopped by the user (Ctrl-C)"
    return "ok", ""
