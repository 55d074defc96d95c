"""Shared test set-up: an isolated bundle cache, alias file and store for the whole session."""

from __future__ import annotations

import os
import signal
import sys

import pytest

# A test runner started in the background of a non-interactive shell (as CI may be) inherits
# SIGINT ignored, and so would every process it starts: the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _isolated_devprof_env(tmp_path_factory):
    """Bundles are built once per test session into a private cache; no user config leaks in."""
    base = tmp_path_factory.mktemp("devprof-env")
    saved = {k: os.environ.get(k) for k in ("DEVPROF_CACHE", "DEVPROF_PYTHON", "DEVPROF_DEVICES_FILE", "DEVPROF_DB")}
    os.environ["DEVPROF_CACHE"] = os.environ.get("DEVPROF_TEST_CACHE") or str(base / "cache")
    os.environ["DEVPROF_PYTHON"] = sys.executable  # what the fake phones' runtime launcher runs
    os.environ["DEVPROF_DEVICES_FILE"] = str(base / "devices.toml")
    os.environ["DEVPROF_DB"] = str(base / "default-store" / "devprof.db")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---- a private adb server (tests/support/adb_env.py) per test module, and its environment ----------
@pytest.fixture(scope="module")
def adb():
    from tests.support.adb_env import AdbServer

    with AdbServer() as server:
        yield server


@pytest.fixture
def adb_env(adb, monkeypatch) -> dict[str, str]:
    """The private adb server's ANDROID_ADB*/ADB_* variables, set for one test: devprof never starts
    (or asks) the user's own server."""
    for k, v in adb.env.items():
        if k.startswith("ANDROID_ADB") or k.startswith("ADB_"):
            monkeypatch.setenv(k, v)
    return adb.env


# ---- a private PostgreSQL server (tests/support/pg_server.py), started on first use, stopped at end ----
@pytest.fixture(scope="session")
def pg_server():
    from tests.support.pg_server import PgServer

    server = PgServer().start()
    yield server
    server.stop()


_pg_dbs = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a new, empty database on the test server."""
    return pg_server.create_db(f"t{next(_pg_dbs)}")
