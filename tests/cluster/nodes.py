"""Two API daemons on one PostgreSQL, as the cluster tests drive them.

Both daemons share the test's database and one state directory (the drive files and the
platform key, as API nodes beside one storage would); they run no servers.
"""

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from openhosting.reverter import Reverter
from testbed.cluster import at_once, run_admin
from testbed.daemon_process import Api, DaemonProcess, create_user


class Cluster:
    """Daemons `a` and `b` on one database, the user made for the test, and the admin tool."""

    def __init__(self, work: Path, url: str, env: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.work, self.env = work, {"OH_STORE_URL": url, **(env or {})}
        self.state = work / "state"
        self.account = create_user(self.state, env=self.env)
        # Started side by side (each start waits until it listens): the tests' time is
        # mostly daemons starting.
        with ThreadPoolExecutor(2) as pool:
            starts = [pool.submit(self._spawn, name) for name in ("a", "b")]
        with Reverter() as revert:
            for start in starts:
                if start.exception() is None:
                    revert.add(start.result().stop)
            self.a, self.b = (start.result() for start in starts)
            revert.success()
        self.api_a = Api(self.account, self.a.url)
        self.api_b = Api(self.account, self.b.url)

    def _spawn(self, name: str) -> DaemonProcess:
        return DaemonProcess(self.state, self.work / f"{name}.log", env=self.env)

    def admin(self, *args: str) -> str:
        """`openhosting-admin ARGS` on the shared database; its standard output."""
        return run_admin(self.state, self.env, *args)

    def query(self, statement: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of `statement` on the shared database (what the test checks)."""
        with psycopg.connect(self.url.replace("postgresql+psycopg", "postgresql")) as db:
            return db.execute(statement, params).fetchall()  # type: ignore[arg-type]

    def stop(self) -> None:
        """Both daemons stopped (those still running), side by side."""
        at_once([self.a.stop, self.b.stop])
