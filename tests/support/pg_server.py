"""A private PostgreSQL cluster for the tests: ``initdb`` + ``pg_ctl start`` on a temporary folder and
a free port on 127.0.0.1, trust authentication, stopped at the end.

The server refuses to run as root: when we are root (CI containers), the cluster belongs to the
``postgres`` system user (created when missing) and the server binaries run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def bindir() -> Path | None:
    """The folder of initdb/pg_ctl: pg_config --bindir, Debian's /usr/lib/postgresql/*/bin, or PATH."""
    cands: list[Path] = []
    if shutil.which("pg_config"):
        try:
            cands.append(Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                             check=True).stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    cands += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    if shutil.which("initdb"):
        cands.append(Path(shutil.which("initdb")).resolve().parent)
    for c in cands:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): run scripts/test-setup")
        self.root = Path(tempfile.mkdtemp(prefix="devprof-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "devprof"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        r = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {r.stdout}{r.stderr}")

    def start(self) -> PgServer:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        return self

    def url(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"postgresql://{user or self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_db(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sql(self, dbname: str, query: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as c:
            cur = c.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
