"""The result store: runs, repetitions, memory samples and routing summaries, in one SQLite file or
in a lab's shared PostgreSQL database (``postgresql://user@host:port/dbname``, through psycopg 3).

A run (one ``devprof run`` on one device) is written as it goes: ``create_run`` first, then one
``add_repetition`` per finished generation, each its own committed transaction, then
``finish_run``. A run whose writer died without finishing (killed, power cut, Ctrl-C twice) stays
"running" on disk; readers show it as "interrupted" once they can tell its writer process is gone
(the writer's host, pid and process start time are kept in the run's row).

Several writers may share one file (one worker thread or process per device): WAL journal, a busy
timeout, ``BEGIN IMMEDIATE`` write transactions. One store per device can also be merged later
(``merge_from``), or pushed into a shared PostgreSQL store (``push_from``, ``devprof db push``).

PostgreSQL: the same schema and migrations (``_dialect`` rewrites what the dialects spell
differently), an autocommit connection with one explicit transaction per write, an advisory lock
around migrations, and run ids made unique by the primary key: a generated id another writer took
first is drawn again. psycopg's errors become StoreError (exit 1) at this boundary; a bad URL is a
UsageError (exit 2).

Schema (version 5)::

    schema_version(version)
    runs(run_id PK, created, status, note, finished, device_kind, device_serial, device_name,
         runtime, meta_json, writer_host, writer_pid, writer_started)
    repetitions(rep_id PK, run_id FK, model, workload, context, idx, warmup, status, exit_code,
                cache_state, cache_note, memory_metric, prefill_tok_s, decode_tok_s, ttft_ms,
                peak_rss_kb, peak_file_kb, peak_anon_kb, distinct_pairs, start_wall_ms, wall_ms,
                n_samples, result_json, outcome_json, note, thermal_before_json,
                thermal_after_json, artifacts_json, created,
                conditions_json,  -- version 2: interference and readiness around the repetition
                energy_json,  -- version 3: battery J/token per phase (devprof.energy)
                peak_swap_kb, peak_pss_kb, major_faults, minor_faults, mem_available_kb,  -- version 4
                storage_read_kb)  -- version 5: /proc/PID/io read_bytes at the last sample, kB
    samples(rep_id FK, t_ms, rss_kb, anon_kb, file_kb, hwm_kb, footprint_kb,
            shmem_kb, swap_kb, pss_kb, pss_anon_kb, pss_file_kb, smaps_swap_kb, swap_pss_kb, majflt, minflt,
            mem_available_kb, swap_free_kb,  -- in sampling order; the second line since version 4
            read_kb)  -- version 5
    routing(rep_id PK/FK, n_tokens, distinct_pairs, summary_json)
    soak_points(run_id FK, seq, t_s, model, point_json) -- version 3: --soak, PK (run_id, seq)

``runs.meta_json`` holds the RunMeta fields that have no column of their own (device, models,
workloads, settings, ...). The metric columns of ``repetitions`` are for queries (peak_rss_kb is the
device's reported peak, see ``stats.peak_rss_kb``; memory_metric says which); the JSON columns hold
the full records, so a repetition read back equals the one written. ``MIGRATIONS[i]`` upgrades version i to i + 1.

The schema and its migrations live in :mod:`devprof.store_schema`, the PostgreSQL connection in
:mod:`devprof.store_pg`, rows <-> records in :mod:`devprof.store_rows`.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from devprof.errors import StoreError, UsageError, path_error
from devprof.results import DeviceInfo, MemorySample, Repetition, RoutingSummary, RunMeta, RunRecord
from devprof.store_pg import _PgConn, _pg_errors, _pg_reason, _redact, _RunIdTaken, is_url
from devprof.store_rows import (
    _build, _created_time, _effective, _insert, _insert_run, _json, _meta_from_row, _meta_json, _now, _outcome_json,
    _process_started, _reason, _rep_from_row,
)
from devprof.store_schema import (_INSERT_SAMPLES, _REP_COLS, _RUN_COLS, _SAMPLE_COLS, MIGRATIONS, SCHEMA_VERSION,
                                  _dialect, _exec_script)

#: Where the CLI keeps the store by default, relative to the repository root.
DEFAULT_STORE = Path("reports") / "devprof.db"

RUN_STATUSES = ("running", "complete", "interrupted", "failed", "lost")


# ---- the store -------------------------------------------------------------------------------
class Store:
    """The result store: an SQLite file, or a PostgreSQL database (``postgresql://user@host:port/db``).

    Thread-safe; several processes (or hosts, with PostgreSQL) may write the same store.
    """

    BUSY_TIMEOUT_S = 30.0
    CONNECT_TIMEOUT_S = 10

    def __init__(self, path: Path | str) -> None:
        self.target = path
        self.engine = "postgresql" if is_url(path) else "sqlite"
        self._lock = threading.RLock()
        self._conn: Any = None
        if self.engine == "postgresql":
            self.path = None
            self.where = _redact(str(path))
            self._open_pg(str(path))
            return
        self.path = Path(path)
        self.where = str(self.path)
        try:
            for parent in reversed(self.path.parents):
                if parent.exists() and not parent.is_dir():
                    raise NotADirectoryError(20, f"{parent} is not a directory")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise IsADirectoryError(21, "it is a directory")
            if not self.path.exists() and not os.access(self.path.parent, os.W_OK):
                raise PermissionError(errno.EACCES, "Permission denied")  # sqlite would only say "unable to open"
            conn = sqlite3.connect(str(self.path), timeout=self.BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            self._conn = conn
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            try:
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:
                pass  # a file system without shared memory: the default journal still works
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable against a killed process
            self._migrate()
        except StoreError:
            self.close()
            raise
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise path_error(f"cannot open the result store {self.path}: {_reason(e)}", e, StoreError) from None

    def _open_pg(self, url: str) -> None:
        """Connect (autocommit: every write is an explicit transaction) and migrate; errors in one line."""
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise UsageError("--db postgresql://... needs psycopg: pip install 'devprof[lab]'") from None
        try:
            info = conninfo_to_dict(url)
        except psycopg.Error as e:
            raise UsageError(f"bad PostgreSQL URL {self.where}: {_pg_reason(e)}") from None
        port = str(info.get("port") or "5432")
        if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
            raise UsageError(f"bad PostgreSQL URL {self.where}: port {port!r} is not a port number")
        if not info.get("dbname"):
            raise UsageError(f"bad PostgreSQL URL {self.where}: name the database, "
                             "postgresql://user@host:port/dbname")
        try:
            raw = psycopg.connect(url, autocommit=True, connect_timeout=self.CONNECT_TIMEOUT_S,
                                  application_name="devprof")
        except psycopg.ProgrammingError as e:  # an unknown option, a malformed port
            raise UsageError(f"bad PostgreSQL URL {self.where}: {_pg_reason(e)}") from None
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to the result store {self.where}: {_pg_reason(e)}") from None
        self._conn = _PgConn(raw)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # ---- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                (self._conn.raw if isinstance(self._conn, _PgConn) else self._conn).close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.where!r})"

    def reopen(self) -> Store:
        """Another connection to the same store (one per worker thread)."""
        return Store(self.target)

    @property
    def local_dir(self) -> Path:
        """Where this host keeps files that go with the store (reports, artifacts): next to an SQLite
        file; for a PostgreSQL store $DEVPROF_REPORTS, else ``reports/`` of the repository."""
        if self.path is not None:
            return self.path.parent
        if os.environ.get("DEVPROF_REPORTS"):
            return Path(os.environ["DEVPROF_REPORTS"])
        from devprof import REPO_ROOT

        return REPO_ROOT / "reports"

    @property
    def conn(self) -> Any:
        if self._conn is None:
            raise StoreError(f"the result store {self.where} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction, committed on exit, rolled back on any exception (Ctrl-C too)."""
        with self._lock, self._errors():
            c = self.conn
            if isinstance(c, _PgConn):
                with c.raw.transaction():
                    yield c
                return
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._lock, self._errors():
            yield self.conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"result store {self.where}: {_reason(e)}") from None
        except _pg_errors() as e:
            raise StoreError(f"result store {self.where}: {_pg_reason(e)}") from None

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, one transaction per step (concurrent openers wait)."""
        while True:
            with self._write() as c:
                if self.engine == "postgresql":
                    c.execute("SELECT pg_advisory_xact_lock(16016)")  # one migrator at a time
                c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = c.execute("SELECT version FROM schema_version").fetchone()
                version = row[0] if row else 0
                if version > SCHEMA_VERSION:
                    raise StoreError(f"the result store {self.where} has schema version {version}; this "
                                     f"devprof knows up to {SCHEMA_VERSION}: upgrade devprof")
                if version == SCHEMA_VERSION:
                    if row is None:
                        c.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                    return
                new, sql = MIGRATIONS[version]
                _exec_script(c, _dialect(sql, self.engine))
                if row is None:
                    c.execute("INSERT INTO schema_version (version) VALUES (?)", (new,))
                else:
                    c.execute("UPDATE schema_version SET version = ?", (new,))

    @property
    def schema_version(self) -> int:
        with self._read() as c:
            return c.execute("SELECT version FROM schema_version").fetchone()[0]

    # ---- writing --------------------------------------------------------------------------
    def create_run(self, meta: RunMeta) -> str:
        """Store a new run; assigns ``meta.run_id`` ("YYYYMMDD-HHMMSS-xxxx") when empty.

        A generated id another writer took first (the primary key refuses it) is drawn again.
        """
        if not meta.created:
            meta.created = _now()
        started = _created_time(meta.created)
        pid = os.getpid()
        generated = not meta.run_id
        for _attempt in range(100):
            try:
                with self._write() as c:
                    if generated:
                        while True:
                            rid = f"{started:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
                            if c.execute("SELECT 1 FROM runs WHERE run_id = ?", (rid,)).fetchone() is None:
                                break
                        meta.run_id = rid
                    elif c.execute("SELECT 1 FROM runs WHERE run_id = ?", (meta.run_id,)).fetchone():
                        raise StoreError(f"run {meta.run_id} is already in {self.where}")
                    row = self._run_row(meta)
                    row.update(writer_host=socket.gethostname(), writer_pid=pid, writer_started=_process_started(pid))
                    _insert_run(c, row)
                return meta.run_id
            except _RunIdTaken:
                if not generated:
                    raise StoreError(f"run {meta.run_id} is already in {self.where}") from None
        raise StoreError(f"could not find a free run id in {self.where}")


    def _run_row(self, meta: RunMeta) -> dict[str, Any]:
        return dict(run_id=meta.run_id, created=meta.created, status=meta.status, note=meta.note,
                    device_kind=meta.device.kind, device_serial=meta.device.serial,
                    device_name=meta.device.name, runtime=meta.runtime, meta_json=_meta_json(meta))

    def add_repetition(self, run_id: str, rep: Repetition) -> int:
        """Store one repetition with its samples and routing; committed before returning."""
        from devprof.memory import rep_memory
        from devprof.stats import peak_rss_kb

        o, r = rep.outcome, rep.result
        mem = rep_memory(rep)
        row = dict(
            run_id=run_id, model=rep.model, workload=rep.workload, context=rep.context, idx=rep.index,
            warmup=int(rep.warmup), status=o.status, exit_code=o.exit_code, cache_state=rep.cache_state,
            cache_note=rep.cache_note, memory_metric=o.memory_metric,
            prefill_tok_s=r.prefill_tok_s if r else None, decode_tok_s=r.decode_tok_s if r else None,
            ttft_ms=r.ttft_ms if r else None, peak_rss_kb=peak_rss_kb(rep), peak_file_kb=rep.peak_file_kb,
            peak_anon_kb=rep.peak_anon_kb,
            distinct_pairs=rep.routing.distinct_pairs if rep.routing else None,
            start_wall_ms=o.start_wall_ms, wall_ms=o.wall_ms, n_samples=len(o.samples),
            result_json=_json(r.to_dict()) if r is not None else None, outcome_json=_outcome_json(o),
            note=o.note, thermal_before_json=_json(rep.thermal_before),
            thermal_after_json=_json(rep.thermal_after), artifacts_json=_json(rep.artifacts), created=_now(),
            conditions_json=_json(rep.conditions or {}), energy_json=_json(rep.energy or {}),
            peak_swap_kb=mem["peak_swap_kb"], peak_pss_kb=mem["peak_pss_kb"], major_faults=mem["major_faults"],
            minor_faults=mem["minor_faults"], mem_available_kb=mem["meminfo_before"].get("MemAvailable"),
            storage_read_kb=mem["storage_read_kb"],
        )
        with self._write() as c:
            if c.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                raise StoreError(f"no run {run_id} in {self.where}")
            rep_id = _insert(c, "repetitions", row)
            if o.samples:
                c.executemany(_INSERT_SAMPLES,
                              ((rep_id, *(getattr(s, k) for k in _SAMPLE_COLS)) for s in o.samples))
            if rep.routing is not None:
                rt = rep.routing
                c.execute("INSERT INTO routing (rep_id, n_tokens, distinct_pairs, summary_json) VALUES (?, ?, ?, ?)",
                          (rep_id, rt.n_tokens, rt.distinct_pairs, _json(asdict(rt))))
        return rep_id

    def finish_run(self, run_id: str, status: str, note: str = "") -> None:
        """Mark a run finished: complete | interrupted | failed | lost. An empty note keeps the old one."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; known: {', '.join(RUN_STATUSES)}")
        with self._write() as c:
            cur = c.execute("UPDATE runs SET status = ?, note = CASE WHEN ? = '' THEN note ELSE ? END, "
                            "finished = ? WHERE run_id = ?", (status, note, note, _now(), run_id))
            if cur.rowcount == 0:
                raise StoreError(f"no run {run_id} in {self.where}")

    def update_run(self, run_id: str, **fields_: Any) -> None:
        """Replace some fields of a run's meta (e.g. ``device=DeviceInfo(...)``, ``settings={...}``)."""
        known = {f.name for f in fields(RunMeta)} - {"run_id"}
        unknown = set(fields_) - known
        if unknown:
            raise ValueError(f"RunMeta has no field(s) {', '.join(sorted(unknown))}")
        if "status" in fields_ and fields_["status"] not in RUN_STATUSES:
            raise ValueError(f"unknown run status {fields_['status']!r}")
        with self._write() as c:
            row = c.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run {run_id} in {self.where}")
            meta = _meta_from_row(dict(row))
            for k, v in fields_.items():
                if k == "device" and isinstance(v, dict):
                    v = _build(DeviceInfo, v)
                setattr(meta, k, v)
            new = self._run_row(meta)
            del new["run_id"]
            c.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in new)} WHERE run_id = ?",
                      (*new.values(), run_id))

    # ---- reading --------------------------------------------------------------------------
    def _ids_newest_first(self, c: sqlite3.Connection) -> list[str]:
        return [r[0] for r in c.execute("SELECT run_id FROM runs ORDER BY created DESC, rowid DESC")]

    def _measured_ids_newest_first(self, c: sqlite3.Connection) -> list[str]:
        """Runs with at least one measured repetition (not warm-up, status ok): what `latest` can mean."""
        return [r[0] for r in c.execute(
            "SELECT run_id FROM runs r WHERE EXISTS (SELECT 1 FROM repetitions p WHERE p.run_id = r.run_id "
            "AND p.warmup = 0 AND p.status = 'ok') ORDER BY created DESC, rowid DESC")]

    def resolve(self, ref: str) -> str:
        """A run id from "latest", "latest~N", a full id or a unique prefix of one.

        ``latest~N`` counts only runs with at least one measured repetition: a run that failed (or was
        stopped) before its first one has nothing to show, so it is never what `latest` means; its id
        still names it.
        """
        ref = (ref or "latest").strip()
        with self._read() as c:
            if ref == "latest" or ref.startswith("latest~"):
                n = 0
                if ref != "latest":
                    try:
                        n = int(ref[len("latest~"):])
                    except ValueError:
                        raise UsageError(f"bad run reference {ref!r}: use latest, latest~N, a run id or a prefix") from None
                ids = self._measured_ids_newest_first(c)
                if not ids:
                    empty = len(self._ids_newest_first(c))
                    if not empty:
                        raise UsageError(f"no runs in {self.where} yet: run `devprof run` first")
                    raise UsageError(f"no run in {self.where} has a measured repetition yet ({empty} run(s) "
                                     "ended before their first one: `devprof list` shows them)")
                if n < 0 or n >= len(ids):
                    raise UsageError(f"{ref}: the store {self.where} holds only {len(ids)} run(s) with measured "
                                     "repetitions")
                return ids[n]
            if c.execute("SELECT 1 FROM runs WHERE run_id = ?", (ref,)).fetchone():
                return ref
            like = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            hits = [r[0] for r in c.execute(
                "SELECT run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY created DESC, rowid DESC",
                (like,))]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise UsageError(f"no run {ref!r} in {self.where} (see `devprof list`)")
        shown = ", ".join(hits[:8]) + (f", ... ({len(hits)} in all)" if len(hits) > 8 else "")
        raise UsageError(f"run {ref!r} is ambiguous: it matches {shown}")

    def load_run(self, ref: str, samples: bool = True) -> RunRecord:
        """A run with all its repetitions (samples and routing included unless ``samples=False``)."""
        run_id = self.resolve(ref)
        with self._read() as c:
            row = c.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            meta = _effective(_meta_from_row(dict(row)), dict(row))
            reps_rows = [dict(r) for r in c.execute(
                "SELECT * FROM repetitions WHERE run_id = ? ORDER BY rep_id", (run_id,))]
            by_rep: dict[int, list[MemorySample]] = {r["rep_id"]: [] for r in reps_rows}
            if samples and reps_rows:
                for rep_id, *vals in c.execute(
                        f"SELECT s.rep_id, {', '.join('s.' + k for k in _SAMPLE_COLS)} FROM samples s "
                        "JOIN repetitions r ON r.rep_id = s.rep_id WHERE r.run_id = ? "
                        "ORDER BY s.rep_id, s.rowid", (run_id,)):
                    by_rep[rep_id].append(MemorySample(**dict(zip(_SAMPLE_COLS, vals))))
            routing = {rep_id: _build(RoutingSummary, json.loads(js)) for rep_id, js in c.execute(
                "SELECT g.rep_id, g.summary_json FROM routing g JOIN repetitions r ON r.rep_id = g.rep_id "
                "WHERE r.run_id = ?", (run_id,))}
            soak = [json.loads(js) for (js,) in c.execute(
                "SELECT point_json FROM soak_points WHERE run_id = ? ORDER BY seq", (run_id,))]
        reps = [_rep_from_row(r, by_rep.get(r["rep_id"], []), routing.get(r["rep_id"])) for r in reps_rows]
        return RunRecord(meta=meta, repetitions=reps, soak=soak)

    def list_runs(self, limit: int | None = None) -> list[RunMeta]:
        """Runs, newest first (a dead writer's "running" run shows as "interrupted")."""
        sql = "SELECT * FROM runs ORDER BY created DESC, rowid DESC"
        args: tuple = ()
        if limit is not None:
            sql += " LIMIT ?"
            args = (int(limit),)
        with self._read() as c:
            rows = [dict(r) for r in c.execute(sql, args)]
        return [_effective(_meta_from_row(r), r) for r in rows]

    def rep_timings(self, device_serial: str, runtime: str, model: str, weights: str | None = None,
                    limit: int = 200) -> list[dict[str, Any]]:
        """The newest successful repetitions (warm-ups included) of ``model`` on one device and runtime:
        context, new_tokens, wall_ms, prefill_tok_s, decode_tok_s; what ``devprof.estimate`` rescales."""
        with self._read() as c:
            rows = c.execute(
                "SELECT p.context, p.wall_ms, p.prefill_tok_s, p.decode_tok_s, r.meta_json FROM repetitions p "
                "JOIN runs r ON r.run_id = p.run_id WHERE r.device_serial = ? AND r.runtime = ? AND p.model = ? "
                "AND p.status = 'ok' AND p.wall_ms IS NOT NULL ORDER BY p.rep_id DESC LIMIT ?",
                (device_serial, runtime, model, int(limit) * 4)).fetchall()
        out = []
        for ctx, wall, pre, dec, meta_json in rows:
            try:
                meta = json.loads(meta_json)
            except ValueError:
                continue
            settings = meta.get("settings") or {}
            if weights is not None and settings.get("weights", "fp32") != weights:
                continue
            out.append({"context": ctx, "wall_ms": wall, "prefill_tok_s": pre, "decode_tok_s": dec,
                        "new_tokens": meta.get("new_tokens")})
            if len(out) >= limit:
                break
        return out

    def add_soak_point(self, run_id: str, seq: int, point: dict[str, Any]) -> None:
        """Store one --soak point (devprof.soak) the moment it is measured."""
        with self._write() as c:
            c.execute("INSERT INTO soak_points (run_id, seq, t_s, model, point_json) VALUES (?, ?, ?, ?, ?)",
                      (run_id, seq, float(point["t_s"]), str(point.get("model", "")), _json(point)))

    def rep_ids(self, run_id: str) -> list[int]:
        with self._read() as c:
            return [r[0] for r in c.execute("SELECT rep_id FROM repetitions WHERE run_id = ? ORDER BY rep_id",
                                            (run_id,))]

    # ---- merging --------------------------------------------------------------------------
    def merge_from(self, other_path: Path | str) -> int:
        """Copy in the runs of another store (e.g. one per device); ids already here are skipped.

        Returns how many runs were copied. The other file is opened read-only.
        """
        return self.push_from(other_path)[0]

    def push_from(self, other_path: Path | str) -> tuple[int, int]:
        """Copy in the runs of an SQLite store, one transaction per run: (copied, skipped). A run
        whose id is already here (pushed before, or by another host meanwhile) is skipped, so pushing
        the same file twice adds nothing."""
        other = Path(other_path)
        if not other.is_file():
            raise StoreError(f"no result store at {other}")
        if self.path is not None and self.path.exists() and other.resolve() == self.path.resolve():
            raise StoreError(f"cannot merge {other} into itself")
        try:
            src = sqlite3.connect(f"{other.resolve().as_uri()}?mode=ro", uri=True, timeout=self.BUSY_TIMEOUT_S)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the result store {other}: {_reason(e)}") from None
        src.row_factory = sqlite3.Row
        copied = skipped = 0
        try:
            try:
                row = src.execute("SELECT version FROM schema_version").fetchone()
            except sqlite3.Error as e:
                raise StoreError(f"{other} is not a devprof result store: {_reason(e)}") from None
            if row is None or row[0] != SCHEMA_VERSION:
                raise StoreError(f"{other} has schema version {row[0] if row else '?'}, this store "
                                 f"{SCHEMA_VERSION}: open it with this devprof once to migrate it")
            with self._read() as c:
                here = {r[0] for r in c.execute("SELECT run_id FROM runs")}
            run_rows = [dict(r) for r in src.execute("SELECT * FROM runs ORDER BY created, rowid")]
            for run in run_rows:
                if run["run_id"] in here:
                    skipped += 1
                    continue
                try:
                    self._copy_run(src, run)
                except _RunIdTaken:
                    skipped += 1
                    continue
                copied += 1
        except sqlite3.Error as e:
            raise StoreError(f"cannot merge {other}: {_reason(e)}") from None
        finally:
            src.close()
        return copied, skipped

    def _copy_run(self, src: sqlite3.Connection, run: dict[str, Any]) -> None:
        with self._write() as c:
            _insert_run(c, {k: run[k] for k in _RUN_COLS})
            for rep in [dict(r) for r in src.execute(
                    "SELECT * FROM repetitions WHERE run_id = ? ORDER BY rep_id", (run["run_id"],))]:
                new_id = _insert(c, "repetitions", {k: rep[k] for k in _REP_COLS})
                c.executemany(_INSERT_SAMPLES, ((new_id, *s) for s in src.execute(
                    f"SELECT {', '.join(_SAMPLE_COLS)} FROM samples WHERE rep_id = ? ORDER BY rowid", (rep["rep_id"],))))
                g = src.execute("SELECT n_tokens, distinct_pairs, summary_json FROM routing WHERE rep_id = ?",
                                (rep["rep_id"],)).fetchone()
                if g is not None:
                    c.execute("INSERT INTO routing (rep_id, n_tokens, distinct_pairs, summary_json) "
                              "VALUES (?, ?, ?, ?)", (new_id, *g))
            c.executemany("INSERT INTO soak_points (run_id, seq, t_s, model, point_json) VALUES (?, ?, ?, ?, ?)",
                          [tuple(p) for p in src.execute("SELECT run_id, seq, t_s, model, point_json FROM soak_points "
                                                         "WHERE run_id = ? ORDER BY seq", (run["run_id"],))])
