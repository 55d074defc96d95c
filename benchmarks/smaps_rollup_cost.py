"""What one read of /proc/PID/smaps_rollup costs against /proc/PID/status (and stat, meminfo).

    python benchmarks/smaps_rollup_cost.py [--file-mb 1024] [--anon-mb 512] [--reads 300]

The sampler reads /proc/PID/status every --sample-ms; smaps_rollup walks every mapping's page
tables to sum PSS and swap, so its cost grows with the process's mapped memory, while status is
a few counters. A child process maps a file of --file-mb (touched, so resident like a model's
weights) and --anon-mb of anonymous memory (touched, like a KV cache); this process then reads
each file --reads times, interleaved, both the way the host sampler does (pread on an open
descriptor) and the way the phone's sampler.sh does (a shell ``while read`` loop, here with
/bin/sh). Prints the median microseconds per read and the ratio to status, so the sampler's
every-k-samples choice for smaps_rollup (devprof.memory.SMAPS_EVERY) rests on a measured number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
s = 0
for off in range(0, len(m), 4096):
    s += m[off]
a = bytearray(int(sys.argv[2]) << 20)
for off in range(0, len(a), 4096):
    a[off] = 1
print("ready", flush=True)
sys.stdin.read()
"""

SHELL_LOOP = 'i=0; while [ $i -lt {n} ]; do while read -r k v _; do :; done < {path}; i=$((i+1)); done'


def pread_us(path: str, reads: int) -> list[float]:
    fd = os.open(path, os.O_RDONLY)
    out = []
    try:
        for _ in range(reads):
            t = time.perf_counter()
            os.pread(fd, 65536, 0)
            out.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
    return out


def shell_us(path: str, reads: int) -> float:
    """Microseconds per read in a shell loop (the shell's start, timed with 0 reads, taken off)."""
    def run(n: int) -> float:
        t = time.perf_counter()
        subprocess.run(["sh", "-c", SHELL_LOOP.format(n=n, path=path)], check=True)
        return time.perf_counter() - t
    return max(0.0, run(reads) - run(0)) * 1e6 / reads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file-mb", type=int, default=1024)
    ap.add_argument("--anon-mb", type=int, default=512)
    ap.add_argument("--reads", type=int, default=300)
    a = ap.parse_args()
    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR")) as f:
        f.truncate(a.file_mb << 20)
        for off in range(0, a.file_mb << 20, 1 << 20):  # real blocks, not a sparse hole
            f.seek(off)
            f.write(b"x")
        f.flush()
        child = subprocess.Popen([sys.executable, "-c", CHILD, f.name, str(a.anon_mb)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            names = ("status", "stat", "smaps_rollup")
            paths = {n: f"/proc/{child.pid}/{n}" for n in names} | {"meminfo": "/proc/meminfo"}
            py: dict[str, list[float]] = {n: [] for n in paths}
            sh: dict[str, list[float]] = {n: [] for n in paths}
            for _ in range(5):  # interleaved rounds: drift falls on every file alike
                for n, p in paths.items():
                    py[n] += pread_us(p, a.reads // 5)
                    sh[n].append(shell_us(p, max(2, a.reads // 5)))
        finally:
            child.stdin.close()
            child.wait()
    base_py, base_sh = statistics.median(py["status"]), statistics.median(sh["status"])
    print(f"process: {a.file_mb} MiB file mapped + {a.anon_mb} MiB anonymous, all touched; {a.reads} reads each")
    print(f" {'file':<13} {'pread us':>9} {'x status':>9} {'sh loop us':>11} {'x status':>9}")
    for n in paths:
        mp, ms = statistics.median(py[n]), statistics.median(sh[n])
        print(f" {n:<13} {mp:>9.1f} {mp / base_py:>9.2f} {ms:>11.1f} {ms / base_sh:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
