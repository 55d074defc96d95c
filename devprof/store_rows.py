"""The store's rows <-> records: JSON columns, rows read back as records, inserts, and whether a run's
writer process still runs (a "running" run whose writer is gone reads as "interrupted")."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from devprof.results import DeviceInfo, MemorySample, ProcessOutcome, Repetition, RoutingSummary, RunMeta, RunResult
from devprof.store_pg import _PgConn, _pg_errors, _RunIdTaken
from devprof.store_schema import _META_COLUMN_FIELDS

# ---- (de)serialisation -----------------------------------------------------------------------
T = TypeVar("T")


def _json(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False)


def _json_default(o: Any) -> Any:
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _build(cls: type[T], data: dict[str, Any]) -> T:
    """A dataclass from a dict, ignoring keys it does not know (older/newer writers)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _meta_json(meta: RunMeta) -> str:
    d = asdict(meta)
    for k in _META_COLUMN_FIELDS:
        d.pop(k, None)
    return _json(d)


def _outcome_json(o: ProcessOutcome) -> str:
    d = {f.name: getattr(o, f.name) for f in fields(o) if f.name != "samples"}
    return _json(d)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- who is writing -------------------------------------------------------------------------
def _process_started(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # psutil missing, or no such process
        return None


def _writer_alive(host: str, pid: int | None, started: float | None) -> bool | None:
    """Whether the process that wrote a run still runs: True/False, or None when we cannot tell."""
    if pid is None or not host or host != socket.gethostname():
        return None
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is not None and abs(p.create_time() - started) > 1.0:
            return False  # the pid was reused by another process
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return None


# ---- row helpers -----------------------------------------------------------------------------
def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return " ".join(str(e).split()) or type(e).__name__


def _insert(c: Any, table: str, row: dict[str, Any]) -> int:
    """Insert one row; returns its rowid (SQLite) or its rep_id (PostgreSQL, repetitions only)."""
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    if isinstance(c, _PgConn):
        ret = " RETURNING rep_id" if table == "repetitions" else ""
        cur = c.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks}){ret}", tuple(row.values()))
        return int(cur.fetchone()[0]) if ret else 0
    cur = c.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(row.values()))
    return int(cur.lastrowid)


def _insert_run(c: Any, row: dict[str, Any]) -> None:
    """Insert a run row; another writer's row with the same id raises _RunIdTaken (the transaction
    is rolled back by the caller; PostgreSQL aborts it anyway)."""
    try:
        _insert(c, "runs", row)
    except sqlite3.IntegrityError:
        raise _RunIdTaken() from None
    except _pg_errors() as e:
        if getattr(e, "sqlstate", None) == "23505":  # unique_violation
            raise _RunIdTaken() from None
        raise


def _created_time(created: str) -> datetime:
    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(timezone.utc)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def _meta_from_row(row: dict[str, Any]) -> RunMeta:
    d = json.loads(row["meta_json"])
    d["device"] = _build(DeviceInfo, d.get("device") or {"kind": "", "serial": "", "name": ""})
    d.update(run_id=row["run_id"], created=row["created"], status=row["status"], note=row["note"])
    return _build(RunMeta, d)


def _effective(meta: RunMeta, row: dict[str, Any]) -> RunMeta:
    """Show a "running" run whose writer process is gone as "interrupted"."""
    if meta.status == "running" and _writer_alive(row["writer_host"], row["writer_pid"], row["writer_started"]) is False:
        meta.status = "interrupted"
        gone = f"the writing process (pid {row['writer_pid']} on {row['writer_host']}) ended without finishing the run"
        meta.note = f"{meta.note}; {gone}" if meta.note else gone
    return meta


def _rep_from_row(row: dict[str, Any], samples: list[MemorySample], routing: RoutingSummary | None) -> Repetition:
    od = json.loads(row["outcome_json"])
    od["samples"] = samples
    outcome = _build(ProcessOutcome, od)
    result = _build(RunResult, json.loads(row["result_json"])) if row["result_json"] is not None else None
    return Repetition(
        model=row["model"], workload=row["workload"], context=row["context"], index=row["idx"],
        warmup=bool(row["warmup"]), result=result, outcome=outcome, cache_state=row["cache_state"],
        cache_note=row["cache_note"], routing=routing, thermal_before=json.loads(row["thermal_before_json"]),
        thermal_after=json.loads(row["thermal_after_json"]), artifacts=json.loads(row["artifacts_json"]),
        conditions=json.loads(row.get("conditions_json") or "{}"),
        energy=json.loads(row.get("energy_json") or "{}"),
    )
