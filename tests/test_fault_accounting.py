"""Page faults and storage reads of a cold memory-mapped file, measured for real on this host.

A child process drops a file from the page cache (posix_fadvise DONTNEED, as a cold repetition does),
maps it and touches every page. With MADV_RANDOM (no readahead) every page is one major fault: the
child's own getrusage says how many, and devprof's samplers (the host thread and the phone's
sampler.sh, both run for real) must report at least that many, and the store and the report's
memory table must carry them. With MAP_POPULATE (how llama.cpp maps a GGUF) the kernel reads the
file in with few or no major faults: /proc/PID/io's read_bytes must still show the whole file read
from storage (docs/measurements.md, "Page faults and storage reads")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devprof import memory

SAMPLER = Path(__file__).resolve().parent.parent / "devprof" / "devices" / "sampler.sh"
FILE_MB = 4
PAGES = FILE_MB << 8

# argv: FILE MODE. Prints the child's own major faults during the map-and-touch, then lingers so
# the last sample sees them all.
CHILD = r"""
import mmap, os, resource, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
before = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if sys.argv[2] == "populate" else 0)
m = mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ)
if sys.argv[2] == "random":
    m.madvise(mmap.MADV_RANDOM)
s = sum(m[i] for i in range(0, len(m), 4096))
print(resource.getrusage(resource.RUSAGE_SELF).ru_majflt - before, flush=True)
time.sleep(0.3)
"""


@pytest.fixture
def cold_file(tmp_path: Path) -> Path:
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fs in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {fs}: its pages cannot be dropped from the page cache")
    path = tmp_path / "weights.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(FILE_MB << 20))
        f.flush()
        os.fsync(f.fileno())  # clean pages: DONTNEED can drop them
    return path


def _local_run(path: Path, mode: str):
    from devprof.devices.base import RunRequest
    from devprof.devices.local import LocalDevice

    with LocalDevice(scratch_dir=path.parent / "scratch") as dev:
        o = dev.run(RunRequest(argv=[sys.executable, "-c", CHILD, str(path), mode], sample_ms=10))
    assert o.status == "ok", o.stderr
    return o, int(o.stdout.split()[0])


def test_io_parser_reads_read_bytes_not_its_lookalikes():
    text = ("rchar: 9000000\nwchar: 12\nsyscr: 40\nsyscw: 2\nread_bytes: 4198400\nwrite_bytes: 0\n"
            "cancelled_write_bytes: 0\n")
    assert memory.parse_io(text) == {"read_bytes": 4198400}
    assert memory.parse_io(text.encode()) == {"read_bytes": 4198400}
    assert memory.parse_io("") == {} and memory.parse_io("read_bytes: x\n") == {}
    s = memory.sample_from(5.0, {"VmRSS": 10, "read_bytes": 4198400, "majflt": 3})
    assert s.read_kb == 4100 and s.majflt == 3


def test_host_sampler_reports_every_major_fault_of_a_file_read_without_readahead(cold_file):
    o, own = _local_run(cold_file, "random")
    # no readahead: one major fault per page (the kernel may count a few pages less if a
    # neighbour's I/O brought them in, never the whole file)
    assert own >= PAGES * 0.9
    last = o.samples[-1]
    # the sampler reads the process's cumulative count: at least the child's own faults
    assert last.majflt >= own and last.read_kb >= (FILE_MB << 10) * 0.9
    mem = _rep_memory(o)
    assert mem["major_faults"] >= own and mem["storage_read_kb"] >= (FILE_MB << 10) * 0.9


def test_phone_sampler_reports_every_major_fault_of_a_file_read_without_readahead(cold_file, tmp_path):
    from devprof.devices.android import parse_sampler_output

    out = tmp_path / "run"
    r = subprocess.run(["sh", str(SAMPLER), str(out), "0.01", sys.executable, "-c", CHILD, str(cold_file), "random"],
                       timeout=120)
    assert r.returncode == 0
    own = int((tmp_path / "run.stdout").read_text().split()[0])
    assert own >= PAGES * 0.9
    samples, _, rc = parse_sampler_output((tmp_path / "run.mem").read_text())
    assert rc == 0 and samples
    assert samples[-1].majflt >= own and samples[-1].read_kb >= (FILE_MB << 10) * 0.9


def test_a_populated_mapping_reads_the_file_with_few_major_faults_and_devprof_shows_the_reads(cold_file):
    o, own = _local_run(cold_file, "populate")
    # readahead brings the file in with far fewer major faults than pages (0 on Linux 6.18): the
    # storage reads are what shows the cold load
    assert own < PAGES / 4
    assert o.samples[-1].read_kb >= (FILE_MB << 10) * 0.9


def test_store_and_report_table_carry_faults_and_storage_reads(cold_file, tmp_path):
    from tests.support import factories as F
    from devprof.report.memory_figures import _storage_cell, headroom_rows
    from devprof.store import Store

    o, own = _local_run(cold_file, "random")
    rep = F.make_rep(F.DENSE, "real", 256, 0, new_tokens=8)
    rep.outcome = o
    db = tmp_path / "f.db"
    with Store(db) as st:
        rid = st.create_run(F.make_meta(models=(F.DENSE,), workloads=("real",), contexts=(256,), reps=1, warmup=0))
        st.add_repetition(rid, rep)
        rec = st.load_run(rid)
    import sqlite3

    faults, read_kb = sqlite3.connect(db).execute("SELECT major_faults, storage_read_kb FROM repetitions").fetchone()
    assert faults >= own >= PAGES * 0.9 and read_kb >= (FILE_MB << 10) * 0.9
    assert [s.read_kb for s in rec.repetitions[0].outcome.samples] == [s.read_kb for s in o.samples]
    row = headroom_rows(rec)[0]
    assert row["major_faults"] == faults and row["read_kb"] == read_kb
    assert _storage_cell(row) == f"{read_kb / 1024:,.0f}"


def test_weights_read_in_from_the_runners_residency():
    from tests.support import factories as F

    rep = F.make_rep(F.DENSE, "real", 256, 0, new_tokens=8)
    rep.result.extra["residency"] = [
        {"stage": "before_load", "resident_kb": 100, "file_kb": 24627, "evicted": True},
        {"stage": "after_prefill", "resident_kb": 24627, "file_kb": 24627, "evicted": True},
        {"stage": "exit", "resident_kb": None, "file_kb": 24627, "evicted": True}]
    assert memory.weights_read_in(rep) == 24527
    rep.result.extra["residency"] = [{"stage": "exit", "resident_kb": 5}]
    assert memory.weights_read_in(rep) is None


def _rep_memory(o):
    from tests.support import factories as F

    rep = F.make_rep(F.DENSE, "real", 256, 0, new_tokens=8)
    rep.outcome = o
    return memory.rep_memory(rep)
