"""The store's PostgreSQL side: URLs, a psycopg connection that speaks the store's SQLite-flavoured SQL,
and psycopg's errors in one line."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

def is_url(target: Path | str | None) -> bool:
    """Whether a --db value names a PostgreSQL server rather than an SQLite file."""
    return isinstance(target, str) and target.split(":", 1)[0].lower() in ("postgresql", "postgres")


def _redact(url: str) -> str:
    """A URL fit for messages: any password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class _RunIdTaken(Exception):
    """Another writer stored the same run id first (a unique-key violation): pick another."""


class _PgRow(tuple):
    """A PostgreSQL row that behaves like sqlite3.Row: by index, by name, and ``dict(row)``."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _pg_rows(cursor: Any) -> Callable[[Any], _PgRow]:
    names = tuple(d.name for d in cursor.description or ())

    def make(values: Any) -> _PgRow:
        r = _PgRow(values)
        r._names = names
        return r
    return make


class _PgConn:
    """A psycopg connection speaking the store's SQLite-flavoured SQL: ``?`` placeholders, ``rowid``."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    @staticmethod
    def _sql(sql: str, params: Any) -> str:
        sql = re.sub(r"\browid\b", "seq", sql)
        if params:
            sql = sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Any = ()) -> Any:
        cur = self.raw.cursor(row_factory=_pg_rows)
        cur.execute(self._sql(sql, params), tuple(params) if params else None)
        return cur

    def executemany(self, sql: str, seq: Any) -> Any:
        rows = [tuple(r) for r in seq]
        cur = self.raw.cursor()
        if rows:
            cur.executemany(self._sql(sql, rows[0]), rows)
        return cur


def _pg_reason(e: BaseException) -> str:
    """psycopg's message in one line: the server's primary message, without libpq's preamble."""
    msg = str(e).strip()
    # libpq: 'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n Is the server ...'
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    m = re.search(r'failed: (?!.*failed: )(.*)$', first)
    if m and m.group(1):
        first = m.group(1)
    first = re.sub(r"^(connection is bad: |FATAL:\s+)", "", first)
    return first.rstrip(".")


def _pg_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)
