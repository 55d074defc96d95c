"""How many threads the native runner gets on this host, and the warning for more threads than CPUs."""

from __future__ import annotations

from devprof import interference


def host_default_threads(cpu_mask: str | None = None, window_s: float = 0.5) -> tuple[int, str]:
    """Threads for devprof's native runner on this host when none are asked for: the cores it may use
    (affinity, --cpu-mask) that are idle now (/proc/stat over ``window_s``), at least 1. Without OpenMP,
    ggml's threads spin at every op's barrier: one more thread than free cores collapses the speed
    (measured on this 2-core host under load: 2 threads 659 ms/token, 1 thread 1.9 ms). Returns
    (threads, why)."""
    import os
    import time

    allowed = set(os.sched_getaffinity(0))
    if cpu_mask:
        mask = int(cpu_mask, 16)
        allowed = {c for c in allowed if mask >> c & 1} or allowed
    a = interference.local_snapshot()
    time.sleep(window_s)
    m = interference.measure(a, interference.local_snapshot())
    ncpu = m.get("ncpu") or len(allowed)
    if "busy_pct" not in m:
        return len(allowed), f"{len(allowed)} usable core(s)"
    idle = ncpu * (1.0 - m["busy_pct"] / 100.0)
    n = max(1, min(len(allowed), int(idle + 0.25)))
    return n, f"{idle:.1f} of {ncpu} core(s) idle before the run, {len(allowed)} usable"


def threads_warning(threads: int, ncpu: int | None, where: str) -> str | None:
    """One warning line when ``threads`` is more than the ``ncpu`` CPUs the device reports, else None:
    built without OpenMP, the native runner's ggml threads spin at a barrier after every op, so
    threads beyond the free cores collapse its speed (4 threads on 2 cores: 0.96 tok/s)."""
    if threads > 0 and ncpu and threads > ncpu:
        return (f"warning: --threads {threads} is more than the {ncpu} CPUs of {where}: the native runner's threads "
                f"spin at a barrier after every op, so more threads than free cores collapses its speed")
    return None
