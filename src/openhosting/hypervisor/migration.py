"""Live migration of a running VM to another QEMU, its local drives copied along (what libvirt
does for `virsh migrate --live --copy-storage-all`).

The sequence, each step bounded by a timeout and undone by a `Reverter` if a later one fails:

1. Target (`serve_incoming`): a QEMU started with `-incoming defer -S` and its drives as empty
   files of the source's sizes serves each drive's block node writable over NBD
   (`nbd-server-start`, `block-export-add`), then waits for the state (`migrate-incoming`,
   with `late-block-activate`: it takes its drives over only at `cont`).
2. Source (`mirror_drives`): an NBD client node per drive (`blockdev-add`) and a
   `blockdev-mirror` of the whole drive onto it, in `write-blocking` mode: once a job is
   READY every guest write reaches the target before the guest is told it is done, so
   stopping the guest leaves nothing behind. An encrypted drive lands as it is stored: the
   target made its file with the LUKS header first, opened it as a start does (passphrase
   file written, then removed) and exports its `file` node; the source mirrors its luks
   node into a luks node over that export, so the same key writes the same ciphertext.
3. Source (`send_state`): once every job is READY, `migrate` to the target. With
   `pause-before-switchover` QEMU pauses the guest for the state's last round and waits:
   each mirror job is cancelled, which for a READY job is a completion without switching
   the source over to the copy; then `migrate-continue` sends the devices' state and the
   source ends paused (`postmigrate`). Why the state does not go beside the mirrors:
   `send_state`.
4. Target (`take_over`): the state is in; the NBD server stops and `cont` runs the guest.
5. Source: ended (the caller's). Had step 4 failed, a `cont` on the source takes its drives
   back and runs the guest on.

The daemon waits for QEMU's events (BLOCK_JOB_READY, BLOCK_JOB_COMPLETED, MIGRATION with
the `events` capability), each a copy of its own (`Monitor.listen`: the held VM's watcher,
vm.py, gets them too), and looks at the state of what it waits for once a second all the
same. Where a move's time goes: docs/cluster.md.

`live_migrate` (moves.py, re-exported here) runs the five steps through two
`MigratingDriver`s, so the same order holds whether the drivers are local or agents on two
hosts (remote_driver.py). Streams are unix
sockets between drivers of one machine, TCP on the target host's `hypervisor.
migration_address` across hosts (docs/cluster.md).

With `MigrationTls` on both drivers, both streams (NBD and the state) are TLS with the
cluster CA's certificates, each side checking the other's (`tls-creds-x509`, `verify-peer`),
the source checking that the target's bears the target host's name. QEMU loads them while it
runs, as `hypervisor.run_as`, which cannot read the host's files (root's, 0600): each load
reads a copy in the VM's run directory owned by that account, removed once QEMU has the
credentials in memory (`TlsLoad`), as the passphrases of encrypted drives are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from openhosting.hypervisor.driver import IncomingInfo
from openhosting.hypervisor.errors import HypervisorError
from openhosting.hypervisor.monitor import EventStream, Monitor
from openhosting.hypervisor.moves import live_migrate as live_migrate
from openhosting.hypervisor.run_files import DIRECTORY_FLAGS, write_new_file
from openhosting.hypervisor.spec import secret_id_of
from openhosting.pem_files import write_whole
from openhosting.reverter import Reverter

log = logging.getLogger("openhosting.hypervisor")

# The daemon waits for QEMU's events (`Monitor.listen`), and looks at the state of what it
# waits for this often all the same, should an event be missed.
LOOK_SECONDS = 1.0
# A mirror job's undo: cancelled at once (`force`), so its end is quick.
UNDO_SECONDS = 30.0
_SOURCE_CAPABILITIES = ("pause-before-switchover", "events")
_JOB_ENDS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
_MIGRATION_ENDS = ("failed", "cancelled")  # but "completed"
_SOURCE_EVENTS = ("BLOCK_JOB_READY", *_JOB_ENDS, "MIGRATION")
# Block nodes and jobs of a migration on the source, named after the drive's node.
_PREFIX = "migrate-"
# An encrypted drive's mirror target: a luks node over its NBD client node.
_LUKS_PREFIX = "migrate-luks-"
# The ids of the `tls-creds-x509` objects of a migration: its target's, its source's (a VM
# that came in may later go out).
_TLS_IN, _TLS_OUT = "migrate-tls-in", "migrate-tls-out"
_NO_TLS = {"tls-creds": "", "tls-hostname": ""}
# The files of a `tls-creds-x509` directory, both ends (write_qemu_tls_dir).
_TLS_FILES = (
    "ca-cert.pem",
    "server-cert.pem",
    "client-cert.pem",
    "server-key.pem",
    "client-key.pem",
)
# The copy QEMU loads them from, in the VM's run directory (TlsLoad).
_TLS_COPY = "migration-tls"
# The finite-field Diffie-Hellman group of a TLS server (QEMU's `dh-params.pem`): RFC 7919's
# ffdhe2048, a known safe group. Without the file QEMU makes new 2048-bit parameters at each
# server load, 0.5-0.8 s of CPU here at every migration's target before it can listen.
DH_PARAMS = "dh-params.pem"
FFDHE2048_PEM = b"""\
-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


@dataclass(frozen=True)
class MigrationTls:
    """This host's side of TLS on migration streams: `directory` holds its cluster
    certificate and key under QEMU's names (`write_qemu_tls_dir`), `host` is the name in it."""

    directory: Path
    host: str


@dataclass(frozen=True)
class TlsLoad:
    """How one VM's QEMU loads this host's `tls`: from a copy in its `run_dir` owned by
    `owner` (uid, gid: the account it runs as; None: it runs as the daemon)."""

    tls: MigrationTls
    run_dir: Path
    owner: tuple[int, int] | None = None


def write_qemu_tls_dir(ca_cert: Path, cert: Path, key: Path, directory: Path) -> None:
    """Lay a node's cluster bundle out as QEMU's `tls-creds-x509` reads a directory: one
    certificate for both ends (the cluster's are good for server and client)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    sources = (ca_cert, cert, cert, key, key)
    for name, source in zip(_TLS_FILES, sources, strict=True):
        write_whole(directory / name, source.read_bytes(), 0o600)
    os.chmod(directory, 0o700)


@contextlib.contextmanager
def qemu_copy(load: TlsLoad) -> Iterator[Path]:
    """A copy of `load.tls`'s files that QEMU's account reads, there while the block runs.

    The run directory is QEMU's: it could put a symlink or its own directory where the copy
    goes. So every step goes through descriptors and never follows a link (no file of the
    host is written or chowned through one); what is there first is removed (a link, not its
    target), and a name that appears meanwhile is refused (HypervisorError)."""
    try:
        parent = os.open(load.run_dir, DIRECTORY_FLAGS)
    except OSError as error:
        raise HypervisorError(f"cannot copy the migration TLS files: {error}") from error
    try:
        try:
            _remove_copy(parent)  # a load cut short by a crash
            _write_copy(parent, load)
        except OSError as error:
            raise HypervisorError(f"cannot copy the migration TLS files: {error}") from error
        yield load.run_dir / _TLS_COPY
    finally:
        try:
            _remove_copy(parent)
        except OSError as error:
            log.warning("event=migration_tls_copy_left path=%s error=%s", load.run_dir, error)
        os.close(parent)


def _write_copy(parent: int, load: TlsLoad) -> None:
    os.mkdir(_TLS_COPY, 0o700, dir_fd=parent)
    directory = os.open(_TLS_COPY, DIRECTORY_FLAGS, dir_fd=parent)
    try:
        files = {name: (load.tls.directory / name).read_bytes() for name in _TLS_FILES}
        for name, data in {**files, DH_PARAMS: FFDHE2048_PEM}.items():
            write_new_file(directory, name, data, load.owner)
        if load.owner is not None:
            os.fchown(directory, *load.owner)
    finally:
        os.close(directory)


def _remove_copy(parent: int) -> None:
    """Remove the copy under the run directory `parent` (a descriptor), if there is one."""
    try:
        directory = os.open(_TLS_COPY, DIRECTORY_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return
    except OSError:  # not a directory: whatever it is goes, a link without its target
        os.unlink(_TLS_COPY, dir_fd=parent)
        return
    try:
        for name in os.listdir(directory):
            os.unlink(name, dir_fd=directory)
    finally:
        os.close(directory)
    os.rmdir(_TLS_COPY, dir_fd=parent)


async def _add_tls(monitor: Monitor, load: TlsLoad, endpoint: str) -> str:
    # Loaded when needed, not at start: the object reads its files once, as it is made,
    # as the account QEMU runs as by then; the copy goes once it has them.
    object_id = _TLS_IN if endpoint == "server" else _TLS_OUT
    with qemu_copy(load) as directory:
        await monitor.add_tls_creds(object_id, directory, endpoint)
    return object_id


async def serve_incoming(
    monitor: Monitor,
    nodes: Sequence[str],
    nbd_address: str,
    migration_uri: str,
    tls: TlsLoad | None = None,
) -> None:
    """Target: serve `nodes` writable over NBD on `nbd_address` (export names = node names),
    and wait for the VM's state on `migration_uri` (each `unix:PATH` or `tcp:HOST:PORT`);
    both over TLS only with `tls`."""
    creds = None
    if tls is not None:
        creds = await _add_tls(monitor, tls, "server")
        await monitor.set_migration_parameters({"tls-creds": creds})
    await monitor.start_nbd_server(nbd_address, creds)
    for node in nodes:
        await monitor.export_writable(node)
    await monitor.set_migration_capability("late-block-activate")
    await monitor.set_migration_capability("events")  # take_over waits for them
    await monitor.migrate_incoming(migration_uri)


async def take_over(monitor: Monitor, timeout: float, tls: bool = False) -> None:
    """Target: once the source is done, stop serving the drives and run the guest."""
    with monitor.listen("MIGRATION") as events:
        await wait_migrated(monitor, events, timeout)
    # Disconnects the source's NBD clients and drops the exports' hold on the drives, so
    # the devices can take them (their write lock) at `cont`.
    await monitor.stop_nbd_server()
    if tls:
        # The VM may go out again, or save its state (`fd:`, without TLS): none of it stays.
        await monitor.set_migration_parameters(_NO_TLS)
        await monitor.delete_object(_TLS_IN)
    await monitor.cont()


async def mirror_drives(
    monitor: Monitor,
    target: IncomingInfo,
    revert: Reverter,
    tls: TlsLoad | None = None,
    max_bandwidth: int = 0,
) -> list[str]:
    """Source: start mirroring each drive of `target.exports` onto its NBD export; return the
    jobs (READY later: `send_state` waits for them). Over TLS if the target asks for it
    (`tls` is then this host's); each job at most `max_bandwidth` bytes/s (0: no limit).
    Each step's undo goes to `revert`."""
    tls_options: dict[str, str] = {}
    if target.tls_hostname is not None:
        if tls is None:
            raise HypervisorError("the migration target takes TLS only; this host has none")
        await _add_tls(monitor, tls, "client")
        revert.add(functools.partial(_quietly, functools.partial(monitor.delete_object, _TLS_OUT)))
        tls_options = {"tls-creds": _TLS_OUT, "tls-hostname": target.tls_hostname}
    drivers = await monitor.query_node_drivers()
    jobs = []
    for node, export in target.exports:
        client = f"{_PREFIX}{node}"
        # A plain drive's zeros cross as zero requests and land as holes, as they do in the
        # source's file (discard=unmap); an encrypted drive's ciphertext is never zeros.
        plain = drivers.get(node) != "luks"
        await monitor.add_nbd_node(client, target.nbd_address, export, tls_options, plain)
        revert.add(functools.partial(_quietly, functools.partial(monitor.delete_node, client)))
        job = client
        if not plain:
            # QEMU mirrors root nodes only ("Need a root block node"), so not the file node
            # under the luks one: the plaintext is mirrored into a luks node over the target's
            # file, opened from the header already there with this drive's own secret. Same
            # master key, same payload offset, and XTS with plain64 IVs has one ciphertext
            # per sector: the bytes that land are the source's, encrypted as they were.
            job = f"{_LUKS_PREFIX}{node}"
            await monitor.add_luks_node(job, client, secret_id_of(node))
            revert.add(functools.partial(_quietly, functools.partial(monitor.delete_node, job)))
        await monitor.mirror(job, node, job, max_bandwidth)
        revert.add(functools.partial(cancel_jobs, monitor, [job], True, UNDO_SECONDS))
        jobs.append(job)
    return jobs


async def migrate_out(
    monitor: Monitor,
    target: IncomingInfo,
    revert: Reverter,
    timeout: float,
    tls: TlsLoad | None = None,
    max_bandwidth: int = 0,
) -> None:
    """Source: the drives' mirrors and the state's stream at once (`mirror_drives`, then
    `send_state`), within `timeout` s; each step's undo goes to `revert`."""
    # Listened to before the first job starts: none of their events is missed.
    with monitor.listen(*_SOURCE_EVENTS) as events:
        jobs = await mirror_drives(monitor, target, revert, tls, max_bandwidth)
        await send_state(monitor, events, target, jobs, revert, timeout, max_bandwidth)


async def send_state(
    monitor: Monitor,
    events: EventStream,
    target: IncomingInfo,
    jobs: list[str],
    revert: Reverter,
    timeout: float,
    max_bandwidth: int = 0,
) -> None:
    """Source: send the VM's state to the target (at most `max_bandwidth` bytes/s; 0: no
    limit) once the mirror `jobs` are READY; `events` are theirs and the migration's.

    Not before: the state's last round, which pauses the guest, comes when QEMU finds little
    left to send, and an idle guest's memory goes faster than any guess of it (a zero page
    costs a few bytes on the wire, whatever the bandwidth set). Sent beside the mirrors'
    rest, it also slows that rest down (the target's QEMU takes both in its one main
    thread): begun 0.15 s before they were due READY, it once paused the guest 1.6 s.

    The state's stream pauses before its switch-over (`pause-before-switchover`): with the
    guest paused, the mirrors are completed (every write of a READY job reached the target
    before the guest saw it done: nothing is left to copy), then the devices' state goes,
    and the source ends paused (`postmigrate`): the target never holds a state newer than
    its drives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    revert.add(functools.partial(_quietly, monitor.cancel_migration))
    # Undone: the source may run on, and a later save of its state (`fd:`, vm.py) must
    # neither pause before its end nor try TLS.
    for capability in _SOURCE_CAPABILITIES:
        await monitor.set_migration_capability(capability)
        undo = functools.partial(monitor.set_migration_capability, capability, False)
        revert.add(functools.partial(_quietly, undo))
    if target.tls_hostname is not None:
        parameters = {"tls-creds": _TLS_OUT, "tls-hostname": target.tls_hostname}
        await monitor.set_migration_parameters(parameters)
        undo = functools.partial(monitor.set_migration_parameters, _NO_TLS)
        revert.add(functools.partial(_quietly, undo))
    mirrors = _Mirrors(monitor, events, jobs, deadline)
    await mirrors.until_ready()
    await monitor.migrate(target.migration_uri, max_bandwidth)
    await mirrors.until_switchover()
    # The guest is paused: the mirrors end with their last writes on the target.
    await cancel_jobs(monitor, jobs, False, max(0.0, deadline - loop.time()))
    await monitor.migrate_continue("pre-switchover")
    await wait_migrated(monitor, events, max(0.0, deadline - loop.time()))
    for job in jobs:
        for node in _job_nodes(job):
            await _quietly(functools.partial(monitor.delete_node, node))


class _Mirrors:
    """The mirror jobs of one migration, and the migration, as their QMP events tell it."""

    def __init__(
        self, monitor: Monitor, events: EventStream, jobs: list[str], deadline: float
    ) -> None:
        self._monitor = monitor
        self._events = events
        self._jobs = set(jobs)
        self._deadline = deadline
        self._ready: set[str] = set()
        self._paused = False  # the migration waits before its switch-over

    async def until_ready(self) -> None:
        """Wait until every job is READY."""
        while self._ready < self._jobs:
            if await self._next(LOOK_SECONDS):
                continue
            # Looked at all the same, should an event have been missed.
            found = await self._monitor.query_block_jobs()
            if missing := sorted(self._jobs - set(found)):
                # With auto-dismiss a failed job vanishes; its error is in its event.
                raise HypervisorError(f"mirror jobs {missing} ended before they were ready")
            self._ready |= {job for job in self._jobs if found[job]}

    async def until_switchover(self) -> None:
        """Wait until the migration paused before its switch-over (a job that fails
        meanwhile ends the wait with its error)."""
        while not self._paused:
            if not await self._next(LOOK_SECONDS):
                # Looked at all the same, should its event have been missed.
                self._paused = await _migration_status(self._monitor) == "pre-switchover"

    async def _next(self, timeout: float) -> bool:
        """Take the next event within `timeout` s, if one comes (whether it did)."""
        left = self._deadline - asyncio.get_running_loop().time()
        if left <= 0:
            waiting = "mirror jobs" if self._ready < self._jobs else "the migration"
            raise HypervisorError(f"{waiting} not ready within the move's bound")
        event = await self._events.next(min(left, timeout))
        if event is None:
            return False
        job = str(event.data.get("device", ""))
        if event.name == "BLOCK_JOB_READY" and job in self._jobs:
            self._ready.add(job)
        elif event.name in _JOB_ENDS and job in self._jobs:
            # A mirror ends by itself only when it fails (auto-dismissed once it has).
            error = event.data.get("error", "no reason given")
            raise HypervisorError(f"mirror job {job} ended before its completion: {error}")
        elif event.name == "MIGRATION" and event.data.get("status") in _MIGRATION_ENDS:
            await _migration_status(self._monitor)  # raises, with QEMU's reason
        elif event.name == "MIGRATION" and event.data.get("status") == "pre-switchover":
            self._paused = True
        return True


async def wait_migrated(monitor: Monitor, events: EventStream, timeout: float) -> None:
    """Wait until the migration under way completed, woken by its MIGRATION events (the
    `events` capability) and looking at its status every `LOOK_SECONDS` all the same;
    `HypervisorError` if it failed or is not done within `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (status := await _migration_status(monitor)) != "completed":
        if (left := deadline - loop.time()) <= 0:
            raise HypervisorError(f"migration not done within {timeout:g} s ({status})")
        await events.next(min(left, LOOK_SECONDS))


async def _migration_status(monitor: Monitor) -> str:
    """The migration's status; `HypervisorError` with QEMU's reason once it failed."""
    result = await monitor.query_migration()
    status = str(result.get("status"))
    if status in _MIGRATION_ENDS:
        raise HypervisorError(f"migration {status}: {result.get('error-desc', 'no reason given')}")
    return status


def _job_nodes(job: str) -> list[str]:
    """The nodes a mirror job of `mirror_drives` wrote through, top first: its target, and
    for an encrypted drive the NBD client under that luks node."""
    if job.startswith(_LUKS_PREFIX):
        return [job, _PREFIX + job.removeprefix(_LUKS_PREFIX)]
    return [job]


async def cancel_jobs(monitor: Monitor, jobs: list[str], force: bool, timeout: float) -> None:
    """End the mirror `jobs` and wait until they are gone. A READY job cancelled without
    `force` first copies what is left: the copy is complete, the source stays the drive."""
    with monitor.listen(*_JOB_ENDS) as events:
        for job in set(jobs) & set(await monitor.query_block_jobs()):  # a failed one ended
            await monitor.cancel_block_job(job, force)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while set(jobs) & set(await monitor.query_block_jobs()):
            if (left := deadline - loop.time()) <= 0:
                raise HypervisorError(f"mirror jobs {jobs} not ended within {timeout:g} s")
            await events.next(min(left, LOOK_SECONDS))  # woken as one ends


async def run_on(monitor: Monitor) -> None:
    """Source: let the guest run again after a failed migration, if it is paused (a
    completed migration left it paused; `cont` takes its drives back)."""
    try:
        if await monitor.query_status() != "running":
            await monitor.cont()
    except HypervisorError as error:
        log.warning("event=migration_run_on_failed error=%s", error)


async def _quietly(step: Callable[[], Awaitable[None]]) -> None:
    """An undo step QEMU may refuse because there is nothing left to undo."""
    try:
        await step()
    except HypervisorError as error:
        log.debug("migration undo refused: %s", error)
