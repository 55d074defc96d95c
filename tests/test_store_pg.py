"""The shared PostgreSQL store of a lab, against a real server (tests/support/pg_server.py): writers in two
processes, schema migration on both engines, `devprof db push`, the CLI's one-line errors, and a
`devprof run` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import factories as F
from devprof.store import SCHEMA_VERSION, Store
from tests.support.pg_server import free_port

REPO = Path(__file__).resolve().parent.parent


def devprof(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "devprof", *args], env={**os.environ, **(env or {})},
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


def _small_meta(**kw):
    return F.make_meta(reps=1, warmup=0, workloads=("real",), contexts=(256,), new_tokens=8, **kw)


# ---- two writer processes ------------------------------------------------------------------------
_WRITER = """
import os, random, secrets, sys, time
sys.path[:0] = [{repo!r}]
from tests.support import factories as F
from devprof.store import Store
# run ids drawn from 16 suffixes within one second: the two writers must collide, and retry
secrets.token_hex = lambda n: "%04x" % random.randrange(16)
s = Store({url!r})
while not os.path.exists({go!r}):
    time.sleep(0.005)
for k in range(6):
    meta = F.make_meta(reps=3, warmup=0, workloads=("real",), contexts=(256,), new_tokens=8,
                       created="2026-03-01T00:00:00+00:00")
    run_id = s.create_run(meta)
    for i in range(3):
        s.add_repetition(run_id, F.make_rep(F.MOE, "real", 256, i, new_tokens=8, sample_ms=50))
    s.finish_run(run_id, "complete")
    print(run_id, flush=True)
s.close()
"""


def test_two_writer_processes_lose_nothing_and_never_collide(pg_url, tmp_path):
    go = tmp_path / "go"
    code = _WRITER.format(repo=str(REPO), url=pg_url, go=str(go))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    ids = [ln for out, _ in outs for ln in out.split()]
    assert len(ids) == 12 and len(set(ids)) == 12
    with Store(pg_url) as s:
        runs = s.list_runs()
        assert sorted(m.run_id for m in runs) == sorted(ids)
        assert {m.status for m in runs} == {"complete"}
        for rid in ids:
            rec = s.load_run(rid)
            assert [r.index for r in rec.repetitions] == [0, 1, 2]
            assert all(r.outcome.samples for r in rec.repetitions)


# ---- migration from an older schema ----------------------------------------------------------------
V4_COLUMNS = {  # what versions 4 (devprof.memory) and 5 (storage reads) added
    "samples": ("shmem_kb", "swap_kb", "pss_kb", "pss_anon_kb", "pss_file_kb", "smaps_swap_kb", "swap_pss_kb",
                "majflt", "minflt", "mem_available_kb", "swap_free_kb", "read_kb"),
    "repetitions": ("peak_swap_kb", "peak_pss_kb", "major_faults", "minor_faults", "mem_available_kb",
                    "storage_read_kb"),
}


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migrates_a_version_1_store_forward(engine, tmp_path, request):
    target = tmp_path / "old.db" if engine == "sqlite" else request.getfixturevalue("pg_url")
    meta = _small_meta()
    rep = F.make_rep(F.MOE, "real", 256, 0, new_tokens=8)
    with Store(target) as s:
        run_id = s.create_run(meta)
        s.add_repetition(run_id, rep)
        with s._write() as c:  # back to version 1: as an older devprof left it
            c.execute("ALTER TABLE repetitions DROP COLUMN conditions_json")
            c.execute("ALTER TABLE repetitions DROP COLUMN energy_json")
            c.execute("DROP TABLE soak_points")
            for table, cols in V4_COLUMNS.items():
                for col in cols:
                    c.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
            c.execute("UPDATE schema_version SET version = 1")
    with Store(target) as s:
        assert s.schema_version == SCHEMA_VERSION == 5
        got = s.load_run(run_id).repetitions
        assert len(got) == 1 and got[0].conditions == {} and got[0].outcome.samples == rep.outcome.samples
        assert got[0].energy == {} and s.load_run(run_id).soak == []
        rep2 = F.make_rep(F.MOE, "real", 256, 1, new_tokens=8)
        rep2.conditions = {"load": 0.5}
        rep2.energy = {"source": "sysfs", "phases": {"decode": {"j_per_token": 0.5}}}
        s.add_repetition(run_id, rep2)
        s.add_soak_point(run_id, 0, {"t_s": 1.5, "model": rep2.model, "decode_tok_s": 9.0})
        back = s.load_run(run_id)
        assert back.repetitions[1].conditions == {"load": 0.5} and back.repetitions[1].energy == rep2.energy
        assert back.soak == [{"t_s": 1.5, "model": rep2.model, "decode_tok_s": 9.0}]


# ---- db push ---------------------------------------------------------------------------------------
def test_db_push_twice_is_idempotent(pg_url, tmp_path):
    local = tmp_path / "local.db"
    with Store(local) as s:
        meta, reps = F.make_run(reps=1, warmup=1, contexts=(512,), new_tokens=8)
        rid = s.create_run(meta)
        for r in reps:
            s.add_repetition(rid, r)
        s.add_soak_point(rid, 0, {"t_s": 2.0, "model": reps[0].model, "decode_tok_s": 8.5, "hottest_c": 41.0})
        s.finish_run(rid, "complete")
        s.create_run(_small_meta(created="2026-01-01T00:00:00+00:00"))
    code, out, err = devprof("db", "push", str(local), pg_url)
    assert code == 0, err
    assert "2 run(s) copied, 0 already in" in out
    code, out, err = devprof("db", "push", str(local), pg_url)
    assert code == 0, err
    assert "0 run(s) copied, 2 already in" in out
    with Store(pg_url) as pg, Store(local) as s:
        assert len(pg.list_runs()) == 2
        a, b = pg.load_run(rid), s.load_run(rid)
        assert a.meta == b.meta and a.repetitions == b.repetitions
        assert a.soak == b.soak and len(a.soak) == 1  # --soak points travel with their run
    code, _, err = devprof("db", "push", str(tmp_path / "missing.db"), pg_url)
    assert code == 2 and "no result store" in error_line(err)


# ---- one-line errors ------------------------------------------------------------------------------
def test_bad_url_is_exit_2(pg_server):
    for url, words in ((f"postgresql://devprof@127.0.0.1:notaport/x", "bad PostgreSQL URL"),
                       (f"postgresql://devprof@127.0.0.1:{pg_server.port}", "name the database"),
                       (f"postgresql://devprof@127.0.0.1:{pg_server.port}/x?nosuchoption=1", "bad PostgreSQL URL")):
        code, _, err = devprof("list", "--db", url)
        assert code == 2, (url, err)
        assert words in error_line(err)


def test_server_down_is_exit_1():
    code, _, err = devprof("list", "--db", f"postgresql://devprof@127.0.0.1:{free_port()}/lab")
    assert code == 1
    line = error_line(err)
    assert "cannot connect to the result store" in line and "refused" in line.lower()


def test_wrong_credentials_is_exit_1(pg_server):
    code, _, err = devprof("list", "--db", pg_server.url("postgres", user="nosuchuser"))
    assert code == 1
    line = error_line(err)
    assert "cannot connect" in line and "nosuchuser" in line
    # a password never shows in a message
    code, _, err = devprof("list", "--db", f"postgresql://nosuchuser:s3cret@127.0.0.1:{pg_server.port}/postgres")
    assert code == 1 and "s3cret" not in err and "***" in error_line(err)


# ---- end to end -----------------------------------------------------------------------------------
def test_two_concurrent_runs_and_show_through_postgresql(pg_url, tmp_path):
    """Two `devprof run` processes (two hosts of a lab) write into one store at once; both runs are
    there, complete, and `show latest` reads one back through $DEVPROF_DB."""
    env = {**os.environ, "DEVPROF_REPORTS": str(tmp_path / "reports")}
    args = [sys.executable, "-m", "devprof", "run", "--db", pg_url, "--context", "64", "--new-tokens", "4",
            "--reps", "1", "--warmup", "0", "--workload", "real"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert len(list((tmp_path / "reports").glob("*.html"))) == 2
    code, shown, err = devprof("show", "latest", env={**env, "DEVPROF_DB": pg_url})
    assert code == 0, err
    assert "mobilemoe-s-mini" in shown.lower()
    with Store(pg_url) as s:
        runs = s.list_runs()
        assert len(runs) == 2 and {m.status for m in runs} == {"complete"}
        assert all(len(s.load_run(m.run_id).measured()) == 2 for m in runs)  # both minis, one rep each


def test_a_run_id_taken_between_check_and_insert_is_drawn_again(pg_url, monkeypatch):
    """The race itself, made certain: another writer stores the drawn id after this one checked it."""
    import secrets

    import devprof.store as store_mod

    draws = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(draws))
    with Store(pg_url) as s, Store(pg_url) as other:
        real = store_mod._process_started
        raced = []

        def meanwhile(pid):
            if not raced:  # the first attempt: "aaaa" was free when checked; another host takes it now
                raced.append(None)
                raced[0] = other.create_run(_small_meta(run_id="20260301-000000-aaaa",
                                            created="2026-03-01T00:00:00+00:00"))
            return real(pid)

        monkeypatch.setattr(store_mod, "_process_started", meanwhile)
        rid = s.create_run(_small_meta(created="2026-03-01T00:00:00+00:00"))
        assert raced == ["20260301-000000-aaaa"] and rid == "20260301-000000-bbbb"
        assert sorted(m.run_id for m in s.list_runs()) == ["20260301-000000-aaaa", "20260301-000000-bbbb"]
