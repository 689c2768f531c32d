"""Fixtures shared by every test: a platform on a temporary state directory, its users, and
an in-process API client."""

import asyncio
import base64
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from pytest_aiohttp import AiohttpClient

import openhosting.config
from openhosting.api.app import RUNNER_OPTIONS, build_app
from openhosting.api.handlers import HANDLERS
from openhosting.api.routes import Handler
from openhosting.api.runner import ApiRunner
from openhosting.config import Config, default_run_base, load_config
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform, open_platform
from openhosting.store.database import is_sqlite, open_engine
from testbed.leftovers import kill_leftover_vms
from testbed.postgres import PostgresServer
from tests.disk_tmp import disk_directory

REPO = Path(__file__).resolve().parents[1]
# Real bodies of the service this API comes from (see its README): golden inputs.
SAMPLES = Path(__file__).resolve().parent / "data" / "samples"


def basic_auth(key: NewKey, secret: str | None = None) -> dict[str, str]:
    """The Authorization header for `key` (or for its UUID with another secret)."""
    token = f"{key.uuid}:{key.secret if secret is None else secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(token).decode()}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the database of the `config` fixture's platform: the state directory's SQLite"
        " file, or a database of the test's own on a PostgreSQL the session starts",
    )


def config_in(tmp_path: Path, **overrides: Any) -> Config:
    """The tests' configuration: its state in `tmp_path`/state, no first user, no `OH_*`
    variable read; `overrides` as `load_config` takes them (sections as mappings)."""
    return load_config(
        env={},
        overrides={"state_dir": str(tmp_path / "state"), "first_user": False, **overrides},
    )


@pytest.fixture(autouse=True)
def own_run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A run directory of the test's own (VMs' pidfiles, sockets and serial logs, the network
    helpers' files), its VMs and helpers killed and it removed at the test's end: a platform
    without one makes a directory under /run/openhosting that nothing removes.

    It is the `config` fixture's run directory, and OH_HYPERVISOR_RUN_DIR for what the test
    starts as a process (daemons, the admin tool); a configuration the test makes itself
    without a run directory gets one inside it (config.py's default_run_base). Short and
    outside `tmp_path`: unix socket paths must stay under 108 bytes, and QEMU, running as
    `nobody`, must reach it (pytest's temporary directories are the owner's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="ohr-", dir="/tmp"))
    directory.chmod(0o755)
    monkeypatch.setenv("OH_HYPERVISOR_RUN_DIR", str(directory))
    monkeypatch.setattr(openhosting.config, "default_run_base", lambda: directory)
    yield directory
    if not directory.exists():
        return  # the platform fixture's clean-up has removed it
    if not any(directory.iterdir()):
        directory.rmdir()  # most tests start nothing: no look for VMs or nft tables to pay
        return
    for run_path in directory.glob("*/network"):  # the default run directories inside
        kill_leftover_vms(run_path.parent)
    kill_leftover_vms(directory)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database at the newest schema, made once per test process: a platform's own
    is a copy of it (a file copy, where migrating each new database took ~0.15 s of every
    test that opens a platform). The migrations themselves are tested in tests/store."""
    path = tmp_path_factory.mktemp("migrated") / "openhosting.sqlite"
    open_engine(path).dispose()  # the last connection's close checkpoints the WAL into it
    return path


@pytest.fixture
def config(
    request: pytest.FixtureRequest, tmp_path: Path, own_run_dir: Path, migrated_sqlite: Path
) -> Config:
    run_dir = {"run_dir": str(own_run_dir)}
    if request.config.getoption("store") == "postgresql":
        return config_in(
            tmp_path, hypervisor=run_dir, store={"url": request.getfixturevalue("postgres_url")}
        )
    made = config_in(tmp_path, hypervisor=run_dir)
    made.state_path.mkdir(mode=0o700, parents=True)
    shutil.copyfile(migrated_sqlite, made.database_path)
    return made


def config_with_tiers(tmp_path: Path, *names: str) -> Config:
    """The tests' configuration with each tier of `names` in a directory of its own under
    `tmp_path` (`disk` stays in the state directory)."""
    tiers = " ".join(f"{name}={tmp_path / name}" for name in names)
    return config_in(tmp_path, storage={"tiers": tiers})


def config_with_pool(tmp_path: Path, pool_range: str = "192.0.2.10-192.0.2.20") -> Config:
    """The tests' configuration with a small IP pool, so that IP resources exist (in user
    mode, without a bridge) and exhausting the pool is quick."""
    return config_in(tmp_path, network={"pool_range": pool_range})


class ApiTestServer(TestServer):
    """aiohttp's test server running the app as the daemon does, with api/runner.py's runner."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ApiRunner(self.app, **kwargs)


async def serve_api(
    aiohttp_client: AiohttpClient,
    platform: Platform,
    handlers: Mapping[str, Handler] = HANDLERS,
    **options: Any,
) -> TestClient:
    """A client of `platform`'s API served in-process with the daemon's runner options (and
    `options`, e.g. its request log)."""
    server = ApiTestServer(build_app(platform, handlers))
    await server.start_server(**RUNNER_OPTIONS, **options)
    return await aiohttp_client(server)


async def changes_heard(platform: Platform, quiet_seconds: float = 0.3) -> None:
    """On PostgreSQL, until the echoes of the commits made so far have come back on the
    change feed (its number still for `quiet_seconds`, 10 s at most): a test that counts
    what a cache saves must not see a late echo of its fixtures' writes empty it."""
    if is_sqlite(platform.engine):
        return
    deadline = asyncio.get_running_loop().time() + 10
    last = platform.changes.version()
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(quiet_seconds)
        now = platform.changes.version()
        if now is not None and now == last:
            return
        last = now
    raise AssertionError("the change feed never went quiet")


@pytest.fixture
def disk_tmp_path(tmp_path: Path) -> Iterator[Path | None]:
    """A temporary directory on a disk file system (see tests/disk_tmp.py), or None."""
    with disk_directory(tmp_path) as directory:
        yield directory


@pytest.fixture
def platform(config: Config) -> Iterator[Platform]:
    opened = open_platform(config)
    yield opened
    opened.close()
    kill_leftover_vms(config.run_path)


@pytest.fixture
def user(platform: Platform) -> NewKey:
    return platform.accounts.create_user("alice")


@pytest.fixture
def other_user(platform: Platform) -> NewKey:
    return platform.accounts.create_user("mallory")


@pytest.fixture
def auth(user: NewKey) -> dict[str, str]:
    return basic_auth(user)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, platform: Platform) -> AsyncIterator[TestClient]:
    served = await serve_api(aiohttp_client, platform)
    # As the daemon does: on PostgreSQL, the listening connection its caches trust (before
    # it is up nothing is cached: a test of the caches would see none).
    listener = platform.listen()
    if listener is not None:
        for _ in range(100):  # at most 10 s
            if platform.changes.version() is not None:
                break
            await asyncio.sleep(0.1)
    await platform.imaging.start()
    yield served
    await platform.imaging.stop()
    if listener is not None:
        listener.stop()


def platform_nft_tables() -> set[tuple[str, str]]:
    """The (family, name) of every nftables table of ours in the host's own namespace."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        return set()
    listed = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    tables = set()
    for line in listed.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2].startswith("openhosting_"):
            tables.add((words[1], words[2]))
    return tables


NFT_TABLES_BEFORE = pytest.StashKey[set[tuple[str, str]]]()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


RUN_ENTRIES_BEFORE = pytest.StashKey[set[str]]()


def run_entries() -> set[str]:
    base = default_run_base()
    return set(os.listdir(base)) if base.is_dir() else set()


def run_entries_made_under(root: Path, entries: set[str]) -> dict[str, Path]:
    """Which of `entries` (default run directories) belong to a state directory under
    `root`: each is named by a hash of its state directory's path, so every directory under
    `root` is hashed the same way. By name, entries other pytest sessions on the machine
    made meanwhile are told from this one's."""
    made = {}
    for parent, directories, _ in os.walk(root):
        for name in directories:
            state = Path(parent, name)
            if (tag := Config(state_dir=str(state)).run_path.name) in entries:
                made[tag] = state
    return made


def pytest_sessionstart(session: pytest.Session) -> None:
    """Daemons a test kills (SIGKILL, a crash on purpose) cannot take down their guest fence
    or counting tables: whatever table of ours the run made is removed at its end. Only the
    process that runs the whole session does it (with pytest-xdist, the controller, after
    every worker is done), so no worker removes the tables of another's running daemon.
    The same process notes the default run directories (/run/openhosting) there are."""
    if not _is_xdist_worker(session.config):
        session.config.stash[NFT_TABLES_BEFORE] = platform_nft_tables()
        session.config.stash[RUN_ENTRIES_BEFORE] = run_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(NFT_TABLES_BEFORE, None)
    if before is None:
        return
    for family, name in platform_nft_tables() - before:
        subprocess.run(
            ["nft", "delete", "table", family, name], capture_output=True, timeout=10, check=False
        )
    _fail_on_default_run_directories(session)


def _fail_on_default_run_directories(session: pytest.Session) -> None:
    """A test whose platform or daemon made a default run directory (no `own_run_dir`, no
    OH_HYPERVISOR_RUN_DIR) fails the run: nothing would ever remove the directory. It is
    removed here, with whatever it still runs."""
    new = run_entries() - session.config.stash[RUN_ENTRIES_BEFORE]
    basetemp = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    left = run_entries_made_under(basetemp, new) if new else {}
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n")
        reporter.write_sep("=", "default run directories left behind", red=True)
    for tag, state in sorted(left.items()):
        if reporter is not None:
            reporter.write_line(
                f"left behind: {default_run_base() / tag} (state directory {state}):"
                " give the test's platform or daemon a run directory (tests/conftest.py)",
                red=True,
            )
        kill_leftover_vms(default_run_base() / tag)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the whole session (testbed/postgres.py), stopped at its end."""
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The store URL of a new database of this test's own, at the newest schema; dropped
    afterwards."""
    name = postgres_server.new_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture
def pg_platform(tmp_path: Path, postgres_url: str) -> Iterator[Platform]:
    """The platform (no daemon) on a PostgreSQL database of this test's own."""
    config = load_config(
        env={},
        overrides={
            "state_dir": str(tmp_path / "state"),
            "first_user": False,
            "store": {"url": postgres_url},
        },
    )
    opened = open_platform(config)
    yield opened
    opened.close()
    kill_leftover_vms(config.run_path)
