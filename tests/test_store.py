"""The result store, on both engines (SQLite, and PostgreSQL on a private test server): round trips, crash safety, run references, errors, merging."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support import factories as F
from devprof.errors import StoreError, UsageError
from devprof.results import DeviceInfo, MemorySample
from devprof.store import SCHEMA_VERSION, Store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where a store lives: an SQLite file, or a new database on the test's PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "reports" / "devprof.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def pg_or_file(request, tmp_path):
    return tmp_path / "a.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def store(target) -> Store:
    with Store(target) as s:
        yield s


def _q(store: Store, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of a raw query through the store's own connection (either engine)."""
    with store._read() as c:
        return [tuple(r) for r in c.execute(sql, params).fetchall()]


def _small_meta(**kw):
    return F.make_meta(reps=1, warmup=0, workloads=("real",), contexts=(256,), new_tokens=8, **kw)


# ---- round trip -------------------------------------------------------------------------------
def test_round_trip_everything_comes_back_equal(store):
    meta, reps = F.make_run()
    run_id = store.create_run(meta)
    assert re.fullmatch(r"20260921-140507-[0-9a-f]{4}", run_id)  # from meta.created
    assert meta.run_id == run_id
    rep_ids = [store.add_repetition(run_id, r) for r in reps]
    assert rep_ids == sorted(rep_ids) and len(set(rep_ids)) == len(reps)
    store.finish_run(run_id, "complete")

    rec = store.load_run(run_id)
    assert rec.meta == replace(meta, status="complete")
    assert rec.repetitions == reps  # results, outcomes, samples, routing, thermal, artifacts
    assert sum(len(r.outcome.samples) for r in rec.repetitions) > 5000

    # helpers
    assert rec.models() == [F.MOE, F.DENSE]
    assert rec.workloads() == ["templated", "real"]
    assert rec.contexts() == [2048]
    assert len(rec.measured()) == 12 and all(not r.warmup for r in rec.measured())
    assert len(rec.measured(F.MOE, "real", 2048)) == 3
    assert (rec.planned_reps, rec.missing_reps, rec.failed_reps) == (12, 0, [])


def test_metric_columns_are_queryable(store):
    meta, reps = F.make_run()
    run_id = store.create_run(meta)
    for r in reps:
        store.add_repetition(run_id, r)
    rows = _q(store, "SELECT model, workload, idx, warmup, status, cache_state, exit_code, prefill_tok_s, "
                       "decode_tok_s, ttft_ms, peak_rss_kb, peak_file_kb, peak_anon_kb, distinct_pairs, n_samples "
                       "FROM repetitions WHERE run_id = ? ORDER BY rep_id", (run_id,))
    for row, rep in zip(rows, reps):
        assert row == (rep.model, rep.workload, rep.index, int(rep.warmup), "ok", "cold", 0, rep.result.prefill_tok_s,
                       rep.result.decode_tok_s, rep.result.ttft_ms, rep.outcome.peak_rss_kb, rep.peak_file_kb,
                       rep.peak_anon_kb, rep.routing.distinct_pairs if rep.routing else None,
                       len(rep.outcome.samples))
    n = _q(store, "SELECT count(*) FROM samples")[0][0]
    assert n == sum(len(r.outcome.samples) for r in reps)
    assert _q(store, "SELECT count(*) FROM routing")[0][0] == 8  # MoE repetitions only
    if store.engine == "sqlite":
        assert _q(store, "PRAGMA journal_mode")[0][0] == "wal"
    assert _q(store, "SELECT version FROM schema_version")[0][0] == SCHEMA_VERSION


def test_failed_repetition_without_result_round_trips(store):
    meta = _small_meta()
    run_id = store.create_run(meta)
    rep = F.make_rep(F.MOE, "real", 256, 0, new_tokens=8, status="failed")
    store.add_repetition(run_id, rep)
    store.finish_run(run_id, "failed", "runtime exited with code 139")
    rec = store.load_run(run_id)
    assert rec.repetitions == [rep] and rec.repetitions[0].result is None
    assert (rec.meta.status, rec.meta.note) == ("failed", "runtime exited with code 139")
    assert len(rec.failed_reps) == 1 and rec.missing_reps == 2


def test_update_run_and_finish(store):
    meta = _small_meta()
    run_id = store.create_run(meta)
    dev = DeviceInfo(kind="android", serial="XYZ", name="Pixel 9", model="Pixel 9", os_version="15")
    store.update_run(run_id, device=dev, settings={"threads": 2}, artifacts_dir="/tmp/runs/x")
    m = store.load_run(run_id).meta
    assert (m.device, m.settings, m.artifacts_dir, m.status) == (dev, {"threads": 2}, "/tmp/runs/x", "running")
    store.update_run(run_id, device={"kind": "ios", "serial": "S", "name": "iPhone"})
    assert store.load_run(run_id).meta.device.name == "iPhone"
    store.finish_run(run_id, "complete", "all good")
    store.finish_run(run_id, "complete")  # an empty note keeps the old one
    assert store.load_run(run_id).meta.note == "all good"
    with pytest.raises(ValueError):
        store.update_run(run_id, colour="red")
    with pytest.raises(ValueError):
        store.finish_run(run_id, "great")
    with pytest.raises(StoreError):
        store.finish_run("nope", "complete")
    with pytest.raises(StoreError):
        store.add_repetition("nope", F.make_rep(new_tokens=8, context=256))


def test_explicit_run_id_kept_and_duplicates_refused(store):
    meta = _small_meta(run_id="my-run")
    assert store.create_run(meta) == "my-run"
    with pytest.raises(StoreError, match="already"):
        store.create_run(_small_meta(run_id="my-run"))


# ---- crashes and Ctrl-C -------------------------------------------------------------------------
_CRASH = """
import os, signal, sys
sys.path[:0] = [{repo!r}]
from tests.support import factories as F
from devprof.store import Store
s = Store({db!r})
meta, reps = F.make_run(reps=1, warmup=0, contexts=(256,), new_tokens=8)
run_id = s.create_run(meta)
s.add_repetition(run_id, reps[0])
s.add_repetition(run_id, reps[1])
print(run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no finish_run, no close: like a power cut of the process
"""


def test_killed_writer_keeps_finished_reps_and_shows_interrupted(tmp_path):
    db = tmp_path / "devprof.db"
    proc = subprocess.run([sys.executable, "-c", _CRASH.format(repo=str(REPO), db=str(db))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    run_id = proc.stdout.strip()
    with Store(db) as s:
        rec = s.load_run("latest")
        assert rec.meta.run_id == run_id
        assert len(rec.repetitions) == 2
        assert all(r.outcome.samples for r in rec.repetitions)
        assert rec.meta.status == "interrupted"
        assert "ended without finishing" in rec.meta.note
        assert [m.status for m in s.list_runs()] == ["interrupted"]
    # readers never rewrite the stored status: the raw row still says running
    assert sqlite3.connect(db).execute("SELECT status FROM runs").fetchone()[0] == "running"


def test_live_writer_shows_running(store):
    run_id = store.create_run(_small_meta())
    with store.reopen() as other:
        assert other.load_run(run_id).meta.status == "running"


class _Boom(MemorySample):
    """A sample whose time cannot be read: Ctrl-C in the middle of writing the samples."""

    @property
    def t_ms(self):  # noqa: D401
        raise KeyboardInterrupt

    @t_ms.setter
    def t_ms(self, v):
        pass


def test_ctrl_c_while_writing_leaves_no_partial_repetition(store):
    run_id = store.create_run(_small_meta())
    good = F.make_rep(F.MOE, "real", 256, 0, new_tokens=8)
    store.add_repetition(run_id, good)
    bad = F.make_rep(F.MOE, "real", 256, 1, new_tokens=8)
    bad.outcome.samples.append(_Boom(t_ms=0, rss_kb=1))
    with pytest.raises(KeyboardInterrupt):
        store.add_repetition(run_id, bad)
    rec = store.load_run(run_id)
    assert rec.repetitions == [good]
    assert _q(store, "SELECT count(*) FROM samples")[0][0] == len(good.outcome.samples)
    assert _q(store, "SELECT count(*) FROM routing")[0][0] == 1


def test_concurrent_writers(target):
    db = target
    Store(db).close()
    errors = []

    def worker(k: int) -> None:
        try:
            with Store(db) as s:  # one connection per worker, as one per device
                run_id = s.create_run(_small_meta())
                for i in range(4):
                    s.add_repetition(run_id, F.make_rep(F.MOE, "real", 256, i, new_tokens=8, sample_ms=50))
                s.finish_run(run_id, "complete")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(db) as s:
        runs = s.list_runs()
        assert len(runs) == 3 and {m.status for m in runs} == {"complete"}
        assert all(len(s.load_run(m.run_id).repetitions) == 4 for m in runs)


# ---- references --------------------------------------------------------------------------------
@pytest.fixture
def three_runs(store):
    for rid, created in (("20260101-000000-aaaa", "2026-01-01T00:00:00+00:00"),
                         ("20260102-000000-aaab", "2026-01-02T00:00:00+00:00"),
                         ("20260103-000000-bbbb", "2026-01-03T00:00:00+00:00")):
        store.create_run(_small_meta(run_id=rid, created=created))
        store.add_repetition(rid, F.make_rep(workload="real", context=256, new_tokens=8))
    return store


def test_resolve(three_runs):
    s = three_runs
    assert s.resolve("latest") == "20260103-000000-bbbb"
    assert s.resolve("latest~0") == "20260103-000000-bbbb"
    assert s.resolve("latest~1") == "20260102-000000-aaab"
    assert s.resolve("latest~2") == "20260101-000000-aaaa"
    assert s.resolve("20260102-000000-aaab") == "20260102-000000-aaab"
    assert s.resolve("20260103") == "20260103-000000-bbbb"
    assert s.resolve("20260101-000000-a") == "20260101-000000-aaaa"
    assert [m.run_id for m in s.list_runs()] == ["20260103-000000-bbbb", "20260102-000000-aaab",
                                                 "20260101-000000-aaaa"]
    assert [m.run_id for m in s.list_runs(limit=1)] == ["20260103-000000-bbbb"]


@pytest.mark.parametrize("ref, words", [
    ("latest~3", "holds only 3 run"),
    ("latest~x", "bad run reference"),
    ("2027", "no run '2027'"),
    ("2026010", "ambiguous"),
    ("%", "no run"),
])
def test_resolve_errors_are_one_line(three_runs, ref, words):
    with pytest.raises(UsageError) as e:
        three_runs.resolve(ref)
    assert words in e.value.message
    assert "\n" not in e.value.message


def test_ambiguous_lists_candidates(three_runs):
    with pytest.raises(UsageError) as e:
        three_runs.resolve("202601")
    for rid in ("20260101-000000-aaaa", "20260102-000000-aaab", "20260103-000000-bbbb"):
        assert rid in e.value.message


def test_resolve_in_empty_store(store):
    with pytest.raises(UsageError, match="no runs"):
        store.load_run("latest")


def test_latest_skips_runs_without_a_measured_repetition(three_runs):
    s = three_runs
    # newer runs that measured nothing: one failed at once, one with only a warm-up and a failed rep
    s.create_run(_small_meta(run_id="20260104-000000-cccc", created="2026-01-04T00:00:00+00:00"))
    s.finish_run("20260104-000000-cccc", "failed", "runtime exited with code 3")
    s.create_run(_small_meta(run_id="20260105-000000-dddd", created="2026-01-05T00:00:00+00:00"))
    s.add_repetition("20260105-000000-dddd", F.make_rep(workload="real", context=256, new_tokens=8, warmup=True,
                                                         index=-1))
    s.add_repetition("20260105-000000-dddd", F.make_rep(workload="real", context=256, new_tokens=8,
                                                         status="failed"))
    s.finish_run("20260105-000000-dddd", "failed", "runtime exited with code 3")
    assert s.resolve("latest") == "20260103-000000-bbbb"
    assert s.resolve("latest~1") == "20260102-000000-aaab"
    assert s.load_run("latest").meta.run_id == "20260103-000000-bbbb"
    with pytest.raises(UsageError, match="holds only 3 run"):
        s.resolve("latest~3")
    assert s.resolve("20260104-000000-cccc") == "20260104-000000-cccc"  # its id still names it
    assert s.resolve("20260105") == "20260105-000000-dddd"
    assert [m.run_id for m in s.list_runs(limit=2)] == ["20260105-000000-dddd", "20260104-000000-cccc"]


def test_latest_when_no_run_measured_anything(store):
    store.create_run(_small_meta(run_id="20260104-000000-cccc", created="2026-01-04T00:00:00+00:00"))
    store.finish_run("20260104-000000-cccc", "failed", "no device")
    with pytest.raises(UsageError) as e:
        store.resolve("latest")
    assert "no run in" in e.value.message and "has a measured repetition yet" in e.value.message


# ---- errors --------------------------------------------------------------------------------------
def test_unwritable_paths_raise_store_error_naming_the_path(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile / "devprof.db", tmp_path, Path("/proc/devprof-test/devprof.db")):
        with pytest.raises(StoreError) as e:
            Store(bad)
        assert str(bad) in e.value.message and "\n" not in e.value.message
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 200)
    with pytest.raises(StoreError, match="not a database"):
        Store(junk)


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "devprof.db"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="upgrade devprof"):
        Store(db)


def test_reopening_keeps_data_and_schema(target):
    db = target
    with Store(db) as s:
        run_id = s.create_run(_small_meta())
        s.add_repetition(run_id, F.make_rep(workload="real", context=256, new_tokens=8))
    with Store(db) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.resolve("latest") == run_id


# ---- merging -------------------------------------------------------------------------------------
def test_merge_from_another_store(tmp_path, pg_or_file):
    a, b = Store(pg_or_file), Store(tmp_path / "b.db")
    shared = _small_meta(run_id="20260101-000000-0000", created="2026-01-01T00:00:00+00:00")
    a.create_run(shared)
    b.create_run(replace(shared, device=replace(shared.device)))
    meta, reps = F.make_run(reps=1, warmup=1, contexts=(512,), new_tokens=8, device=F.make_device("ios"),
                            created="2026-02-01T00:00:00+00:00")
    run_id = b.create_run(meta)
    for r in reps:
        b.add_repetition(run_id, r)
    b.finish_run(run_id, "complete")
    b.close()

    assert a.merge_from(tmp_path / "b.db") == 1
    rec = a.load_run(run_id)
    assert rec.meta == replace(meta, status="complete")
    assert rec.repetitions == reps
    assert a.resolve("latest") == run_id
    assert a.merge_from(tmp_path / "b.db") == 0  # ids already present are skipped
    assert len(a.list_runs()) == 2

    if a.engine == "sqlite":
        with pytest.raises(StoreError, match="itself"):
            a.merge_from(tmp_path / "a.db")
    with pytest.raises(StoreError, match="no result store"):
        a.merge_from(tmp_path / "missing.db")
    (tmp_path / "junk.db").write_bytes(b"junk" * 500)
    with pytest.raises(StoreError):
        a.merge_from(tmp_path / "junk.db")
    a.close()
