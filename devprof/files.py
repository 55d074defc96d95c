"""Local files: their sha256, writing them atomically, and their state in the page cache.

- :func:`sha256_file`: cached by (path, size, mtime) for the life of the process, so staging
  (Android, iOS), the binaries manifest and bundle manifests hash a multi-GB file once per
  process, not once per push.
- :func:`atomic_path`, :func:`atomic_write`, :func:`write_text`: a temporary file beside the
  target, renamed into place; an interrupted write or a full disk leaves the old file (or none),
  never a half-written one.
- :func:`evict`, :func:`state`, :func:`resident_fraction`, :func:`drop_page_cache`,
  :func:`mapped_rss_bytes`: whether a run started with its weights file cold or warm in the page
  cache (posix_fadvise to evict, mincore to measure), since routing-dependent memory (RssFile)
  depends on it (DESIGN.md, "Memory that depends on routing").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devprof.errors import UsageError, path_error

# ---- sha256 -------------------------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path | str, cached: bool = True) -> str:
    """Hex sha256 of a file's bytes; ``cached=False`` reads it again even if hashed before."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if not cached or key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(4 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


# ---- atomic writes ------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path | str, prefix: str | None = None, suffix: str = "",
                mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends, removed
    when it raises. ``mode`` defaults to the permissions a plain write would give (mkstemp's 0600
    otherwise); ``prefix`` defaults to ``.NAME.``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix,
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path | str, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes via a temporary file renamed into place; creates the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def write_text(path: Path | str, text: str, what: str) -> Path:
    """Write a user-named file atomically; a folder or an OS error is one clear DevprofError."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write the {what} to {path}: it is a folder (give a file name)")
    try:
        atomic_write(path, text)
    except OSError as e:
        raise path_error(f"cannot write to {path} (the {what}): {e.strerror or e}", e) from None
    return path


# ---- the page cache -----------------------------------------------------------------------------
#: below this fraction of its pages resident, a file counts as cold
COLD_FRACTION = 0.02


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


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
    libc = _libc()
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            return sum(b & 1 for b in vec) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _drop_fd(fd: int) -> None:
    os.fsync(fd)  # dirty pages (a freshly built bundle) cannot be dropped until written back
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def drop_page_cache(path: str | Path) -> None:
    """Drop a file's pages from the page cache (POSIX_FADV_DONTNEED); OSError if it cannot."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _drop_fd(fd)
    finally:
        os.close(fd)


def _cold_or_warm(frac: float) -> str:
    return "cold" if frac < COLD_FRACTION else "warm"


def evict(path: str | Path) -> tuple[str, str]:
    """Ask the kernel to drop the file's clean pages; return (state, how it was obtained)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return "unknown", f"cannot open {path}: {e.strerror}"
    try:
        _drop_fd(fd)
    except OSError as e:
        return "unknown", f"posix_fadvise failed: {e.strerror}"
    finally:
        os.close(fd)
    frac = resident_fraction(path)
    if frac is None:
        return "unknown", "posix_fadvise DONTNEED; residency not measurable"
    return _cold_or_warm(frac), f"posix_fadvise DONTNEED; {frac:.1%} of the file resident after (mincore)"


def state(path: str | Path) -> tuple[str, str]:
    """Describe the cache state without changing it."""
    frac = resident_fraction(path)
    if frac is None:
        return "unknown", "residency not measurable"
    return _cold_or_warm(frac), f"left as is; {frac:.1%} of the file resident (mincore)"


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
