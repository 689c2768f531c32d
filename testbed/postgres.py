"""A real PostgreSQL 15 for the tests and benchmarks: `initdb` in a temporary directory,
`postgres` on a free loopback port, stopped by its PID and its directory removed at the end.

PostgreSQL refuses to run as root: then the server runs as Debian's `postgres` account
(setpriv), never as `nobody`: the platform's guest fence rejects what `nobody` (QEMU's
account) sends to local addresses as new connections, and while other tests' guests had a
fence up the server's replies were seen stuck in TCP retransmission, its client waiting for
ever. One server
serves a whole test session; each test gets a database of its own, copied from a template
that the store's migrations were applied to once (`CREATE DATABASE … TEMPLATE`, a file copy:
far quicker than migrating every time). Only the standard library, the package and psycopg:
`python -m bench` imports it too (bench/capacity.py starts one with `pg_stat_statements`
loaded, through `settings`).
"""

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg

from openhosting.store.database import open_engine
from testbed.daemon_process import free_port

BIN_DIR = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
TEMPLATE = "oh_migrated"
RUN_AS = "postgres"  # made by Debian's postgresql-15 package


def available() -> bool:
    return (BIN_DIR / "postgres").is_file() and (BIN_DIR / "initdb").is_file()


class PostgresServer:
    """One `postgres` process of ours on 127.0.0.1:`port`, trusting local connections;
    `settings` are more server settings (`-c NAME=VALUE`), e.g. `shared_preload_libraries`."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.settings = dict(settings or {})
        self.directory = Path(tempfile.mkdtemp(prefix="oh-pg-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count()
        self._template_ready = False
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _as_owner(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", f"--reuid={RUN_AS}", f"--regid={pwd.getpwnam(RUN_AS).pw_gid}",
                "--clear-groups", "--"]  # fmt: skip

    def _start(self) -> None:
        data = self.directory / "data"
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [*self._as_owner(), str(BIN_DIR / "initdb"), "-D", str(data), "-U", "postgres",
             "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, timeout=120, check=True, cwd=self.directory,
        )  # fmt: skip
        log = (self.directory / "server.log").open("ab")
        with log:
            # Durability is not what the tests measure: no fsync makes each test's database
            # copy and commits quick.
            self.process = subprocess.Popen(
                [*self._as_owner(), str(BIN_DIR / "postgres"), "-D", str(data),
                 "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.directory),
                 "-c", "fsync=off", "-c", "full_page_writes=off",
                 "-c", "synchronous_commit=off", "-c", "max_connections=200",
                 *(word for name, value in self.settings.items()
                   for word in ("-c", f"{name}={value}"))],
                stdout=log, stderr=log, cwd=self.directory, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                output = (self.directory / "server.log").read_text(errors="replace")
                raise AssertionError(f"postgres exited with {self.process.returncode}\n{output}")
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def url(self, database: str) -> str:
        """The store URL (`store.url`) of `database` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(statement)  # type: ignore[arg-type]

    def new_database(self, migrated: bool = True) -> str:
        """A new empty database's name; with `migrated`, at the store's newest schema."""
        name = f"oh_test_{next(self._names)}"
        if not migrated:
            self._admin(f"CREATE DATABASE {name}")
            return name
        if not self._template_ready:
            self._admin(f"CREATE DATABASE {TEMPLATE}")
            open_engine(self.url(TEMPLATE)).dispose()  # no connection may stay to copy it
            self._template_ready = True
        self._admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """SIGINT (PostgreSQL's fast shutdown) to our PID, SIGKILL if it lingers; the
        directory goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(self.directory, ignore_errors=True)
