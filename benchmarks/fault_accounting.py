"""How the kernel counts the page faults of a cold memory-mapped file, by the way it is read.

    python benchmarks/fault_accounting.py [--file-mb 24] [--dir DIR]

Writes a file of --file-mb random bytes in --dir (default: the temporary directory; it must be a
disk file system, not tmpfs, or nothing can be evicted), then for each way of reading it starts a
fresh child that drops the file from the page cache (posix_fadvise DONTNEED, as the native
runner's --evict and devprof's cold cache do), maps it and touches every 4 KiB page, and prints the
child's own major and minor faults (getrusage), what it read from storage (/proc/self/io
read_bytes) and the file's pages, all counted around the map-and-touch only. llama.cpp maps its
GGUF like the "populate" rows (MAP_POPULATE after POSIX_FADV_SEQUENTIAL, then MADV_WILLNEED);
devprof's reference runtime like "plain". docs/measurements.md, "Page faults and storage reads",
has the table and what it means for devprof's fault counts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

MODES = {
    "plain": "default readahead, touched in order",
    "fadv-sequential": "POSIX_FADV_SEQUENTIAL first (doubled readahead)",
    "madv-willneed": "MADV_WILLNEED on the mapping, then touched",
    "populate": "MAP_POPULATE (llama.cpp without lazy ranges)",
    "populate+seq+willneed": "llama.cpp's exact calls",
    "madv-random": "MADV_RANDOM: no readahead, one read per page",
    "read()": "read() into a buffer (llama.cpp --no-mmap), no mapping",
}

CHILD = r"""
import mmap, os, resource, sys
path, mode = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

def read_bytes():
    with open("/proc/self/io") as f:
        return next(int(v) for k, v in (line.split(":") for line in f) if k == "read_bytes")

r0, io0 = resource.getrusage(resource.RUSAGE_SELF), read_bytes()
if mode == "read()":
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        got += os.readv(fd, [view[got:]])
else:
    if "seq" in mode or mode == "fadv-sequential":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if "populate" in mode else 0)
    m = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    if "willneed" in mode:
        m.madvise(mmap.MADV_WILLNEED)
    if mode == "madv-random":
        m.madvise(mmap.MADV_RANDOM)
    s = 0
    for off in range(0, size, 4096):
        s += m[off]
r1, io1 = resource.getrusage(resource.RUSAGE_SELF), read_bytes()
print(r1.ru_majflt - r0.ru_majflt, r1.ru_minflt - r0.ru_minflt, io1 - io0, -(-size // 4096))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file-mb", type=int, default=24)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = os.path.join(d, "weights.bin")
        with open(path, "wb") as f:
            for _ in range(a.file_mb):
                f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())  # clean pages: DONTNEED can drop them
        print(f"{a.file_mb} MiB file in {d}; Linux {os.uname().release}")
        print(f"| {'how it is read':<24} | {'pages':>6} | {'major faults':>12} | {'minor faults':>12} "
              f"| {'read from storage':>17} |")
        print(f"| {'-' * 24} | {'-' * 5}: | {'-' * 11}: | {'-' * 11}: | {'-' * 16}: |")
        for mode in MODES:
            out = subprocess.run([sys.executable, "-c", CHILD, path, mode], capture_output=True, text=True,
                                 check=True).stdout.split()
            maj, mnr, rb, pages = (int(x) for x in out)
            print(f"| {mode:<24} | {pages:>6,} | {maj:>12,} | {mnr:>12,} | {rb / 2**20:>13.1f} MiB |")
        print()
        for mode, what in MODES.items():
            print(f"{mode}: {what}")


if __name__ == "__main__":
    main()
