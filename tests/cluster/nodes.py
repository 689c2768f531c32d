"""Two API daemons on one PostgreSQL, as the cluster tests drive them.

Both daemons share the test's database and one state directory (the drive files and the
platform key, as API nodes beside one storage would); they run no servers.
"""

import os
import subprocess
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from openhosting.reverter import Reverter
from testbed.daemon_process import BIN, Api, DaemonProcess, create_user

T = TypeVar("T")


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
        return subprocess.run(
            [str(BIN / "openhosting-admin"), "--state-dir", str(self.state), *args],
            capture_output=True, text=True, timeout=60, check=True,
            env={**os.environ, **self.env},
        ).stdout  # fmt: skip

    def query(self, statement: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of `statement` on the shared database (what the test checks)."""
        with psycopg.connect(self.url.replace("postgresql+psycopg", "postgresql")) as db:
            return db.execute(statement, params).fetchall()  # type: ignore[arg-type]

    def stop(self) -> None:
        """Both daemons stopped (those still running), side by side."""
        at_once([self.a.stop, self.b.stop])


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run `calls` together, one thread each; their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]
