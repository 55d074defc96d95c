"""Page-cache state of a file on this host: evict it (posix_fadvise) and measure residency (mincore).

Used to record whether a run started with its weights file cold or warm in the page cache, since
routing-dependent memory (RssFile) depends on it (DESIGN.md, "Memory that depends on routing").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_fraction(path: str | Path) -> float | None:
    """Fraction of the file's pages that are in the page cache now (None if it cannot tell)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return 0.0
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                return None
            return sum(b & 1 for b in vec) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def evict(path: str | Path) -> tuple[str, str]:
    """Ask the kernel to drop the file's clean pages; return (state, how it was obtained)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return "unknown", f"cannot open {path}: {e.strerror}"
    try:
        os.fsync(fd)  # dirty pages (a freshly built bundle) cannot be dropped until written back
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        return "unknown", f"posix_fadvise failed: {e.strerror}"
    finally:
        os.close(fd)
    frac = resident_fraction(path)
    if frac is None:
        return "unknown", "posix_fadvise DONTNEED; residency not measurable"
    state = "cold" if frac < 0.02 else "warm"
    return state, f"posix_fadvise DONTNEED; {frac:.1%} of the file resident after (mincore)"


def state(path: str | Path) -> tuple[str, str]:
    """Describe the cache state without changing it."""
    frac = resident_fraction(path)
    if frac is None:
        return "unknown", "residency not measurable"
    return ("cold" if frac < 0.02 else "warm"), f"left as is; {frac:.1%} of the file resident (mincore)"


def mapped_rss_bytes(path: str | Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (the Rss lines of /proc/self/smaps)."""
    path, cur, tot = str(path), None, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                cur = parts[5] if len(parts) >= 6 else None
            elif parts[0] == "Rss:" and cur == path:
                tot += int(parts[1]) * 1024
    return tot
