"""Drives: ownership and readers, limits, claims and busy rules, and who may move bytes
between the API and the drive's bytes (docs/api.md §4). The bytes are the storage's of the
host holding the drive (services/cluster/host_storages.py: this host's files, or its agent's).

A user sees and changes only their own drives; a drive whose `readers` name the user (or
everyone) can also be read by them, but not written, set or destroyed. Blocking file work runs
in worker threads so the event loop stays responsive.
"""

import base64
import contextlib
import functools
import logging
import secrets
import time
import uuid as uuid_module
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from openhosting.errors import ApiError, BusyError, FullError, MissingError
from openhosting.model.drive import DriveSettings, apply_drive_properties
from openhosting.reverter import Reverter
from openhosting.services.accounts.billing import Billing
from openhosting.services.cluster.host_storages import HostStorages
from openhosting.services.cluster.hosts import Hosts
from openhosting.services.cluster.node_operations import NodeOperations
from openhosting.services.drives.drive_repair import ORPHAN_GRACE_SECONDS, repair_drive_files
from openhosting.services.drives.standard_drives import standard_generation
from openhosting.services.off_loop import INLINE_ITEMS, built_in_worker
from openhosting.services.operations import (
    ATTACH,
    DESTROY,
    DRIVE_RULES,
    IMAGE,
    READ,
    RESIZE,
    SET,
    SHRINK,
    WRITE,
    Operation,
    Operations,
)
from openhosting.storage.drive_files import DriveFiles, OpenDrive
from openhosting.storage.drive_storage import (
    BodyDecoder,
    DriveBytes,
    DriveRead,
    DriveStorage,
    DriveWrite,
)
from openhosting.storage.drive_tiers import DriveTiers
from openhosting.storage.local_storage import LocalDriveStorage
from openhosting.store import drives as drive_store
from openhosting.store import row_locks, space_reserve
from openhosting.store.executor import StoreExecutor
from openhosting.store.platform_key import unwrap_secret, wrap_secret
from openhosting.store.reader import Reader
from openhosting.store.records import ClaimRecord, DriveRecord, drive_settings_columns
from openhosting.store.tables import PLATFORM_USER
from openhosting.wire.payload import Properties, Value, ValueList

log = logging.getLogger("openhosting.drives")


def drive_info(
    drive: DriveRecord,
    claims: list[ClaimRecord],
    available: bool = True,
    offline: frozenset[str] = frozenset(),
) -> dict[str, Value]:
    """The info of a drive, keys in the order the real service shows them; `available`:
    whether its data can be reached now (`status active`, else `inactive`); `offline`: the
    hosts offline now (a drive on one says `host:state offline`)."""
    info: dict[str, Value] = {
        "drive": drive.uuid,
        "name": drive.name,
        "size": drive.size,
        "user": drive.user,
        "status": "active" if available else "inactive",
        "claim:type": drive.claim_type,
    }
    if claims:
        info["claimed"] = " ".join(
            f"{claim.user}:{claim.kind}:{claim.holder}:{claim.device}" for claim in claims
        )
    info["readers"] = " ".join(drive.readers)
    info["tags"] = " ".join(drive.tags)
    info.update(sorted(drive.user_keys.items()))
    info["encryption:cipher"] = drive.cipher
    info["tier"] = drive.tier
    if drive.host:  # ours: the host whose storage holds it
        info["host"] = drive.host
        if drive.host in offline:
            info["host:state"] = "offline"
    # Kept on the row by services/drives/imaging.py; absent (never "false") when nothing is pending.
    if drive.imaging:
        info["imaging"] = drive.imaging
    if drive.imaging_error:
        info["imaging:error"] = drive.imaging_error
    info["read:bytes"] = drive.read_bytes
    info["read:requests"] = drive.read_requests
    info["write:bytes"] = drive.write_bytes
    info["write:requests"] = drive.write_requests
    return info


def _missing(uuid: str) -> MissingError:
    return MissingError(f"Drive {uuid} could not be found")


@dataclass(frozen=True)
class AttachableDrive:
    """A drive as a server attaches it: its file as its host names it, and the LUKS
    passphrase if encrypted. `host`: the host holding its bytes, whose agent finds its file
    by UUID and `tier`; empty when every host here reaches this host's files (no agents)."""

    uuid: str
    path: Path
    passphrase: bytes | None
    owned: bool
    exclusive: bool
    host: str = ""
    tier: str = ""
    available: bool = True  # whether its bytes can be reached now
    # A standard drive's generation (services/drives/standard_drives.py), which names its copies in
    # the agents' image caches, and its size; "" for any other drive.
    generation: str = ""
    size: int = 0


# The payloads one drive's kept rows keep, by availability and offline hosts.
MAX_PAYLOADS_KEPT = 4


@dataclass
class _KeptInfo:
    """A drive's rows as `drives/D/info` keeps them, with the payloads made of them (by
    whether its file opens and which hosts are offline: all else in them is the rows')."""

    row: DriveRecord | None
    claims: list[ClaimRecord]
    payloads: dict[tuple[bool, frozenset[str]], Properties] = field(default_factory=dict)


class Drives:
    """The drive service."""

    def __init__(
        self,
        engine: Engine,
        reader: Reader,
        tiers: DriveTiers,
        secret_key: bytes,
        cipher: str,
        billing: Billing,
        hosts: Hosts,
        store: StoreExecutor,
        nodes: NodeOperations | None = None,
    ) -> None:
        self._billing = billing
        self._store = store  # where the create's transactions run (off the loop on PostgreSQL)
        self._hosts = hosts
        self._engine = engine
        self._reader = reader
        self.tiers = tiers
        self.local_storage = LocalDriveStorage(tiers)
        # The storage of each host's drives; the daemon gives it agents' (its connector).
        self.storages = HostStorages(hosts.name, self.local_storage, engine)
        self._secret_key = secret_key
        self._default_cipher = cipher
        # Reads, writes and resizes under way per drive, and what each refuses (with `nodes`,
        # on PostgreSQL, those of the other API nodes too).
        self.operations = Operations("Drive", DRIVE_RULES, nodes)

    @property
    def local_host(self) -> str:
        """The name of this daemon's host, where it makes drive files."""
        return self._hosts.name

    @property
    def files(self) -> DriveFiles:
        """The default tier's (`disk`) drive files, where standard drives live too."""
        return self.tiers.of(self.tiers.default)

    def files_of(self, row: DriveRecord) -> DriveFiles:
        """The drive files of the tier of the drive of `row` (on this host)."""
        return self.local_storage.files_of(row.uuid, row.tier)

    def storage_of(self, row: DriveRecord) -> DriveStorage:
        """The storage of the host holding the drive of `row`."""
        return self.storages.of(row.host)

    def is_here(self, row: DriveRecord) -> bool:
        """Whether the drive's bytes are this host's files (not another host's agent's)."""
        return self.storages.is_local(row.host)

    # -- lookups -------------------------------------------------------------------------

    def _owned(self, connection: Connection, user: str, uuid: str) -> DriveRecord:
        row = drive_store.get_drive(connection, uuid)
        if row is None or row.user != user:
            raise _missing(uuid)
        return row

    def _readable(self, connection: Connection, user: str, uuid: str) -> DriveRecord:
        return self._check_readable(drive_store.get_drive(connection, uuid), user, uuid)

    def _check_readable(self, row: DriveRecord | None, user: str, uuid: str) -> DriveRecord:
        """`row` if `user` may read drive `uuid`; missing (as for no drive) otherwise."""
        if row is None or not row.readable_by(user):
            raise _missing(uuid)
        return row

    def master_key_of(self, row: DriveRecord) -> bytes | None:
        """The drive's LUKS master key, unwrapped (None for a plain drive): what its
        storage reads and writes it with (an imaging job's, beside the requests')."""
        return self._master_key(row)

    def _master_key(self, row: DriveRecord) -> bytes | None:
        if row.wrapped_master_key is None:
            return None
        return unwrap_secret(self._secret_key, row.wrapped_master_key, row.uuid + ":master")

    def _is_available(self, row: DriveRecord) -> bool:
        """Whether the drive's bytes can be reached (its `status`): here, whether its file
        opens in its tier's directory."""
        return self.storages.of(row.host).is_available(row.uuid, row.tier)

    def passphrase_of(self, row: DriveRecord) -> bytes | None:
        """The LUKS passphrase QEMU opens an encrypted drive with."""
        if row.wrapped_passphrase is None:
            return None
        return unwrap_secret(self._secret_key, row.wrapped_passphrase, row.uuid + ":luks")

    def open_io(self, row: DriveRecord) -> OpenDrive:
        """The drive of `row` opened for in-process I/O (decrypted when it is encrypted); a
        drive of this host only (imaging refuses the others first)."""
        if not self.is_here(row):
            raise BusyError(f"Drive {row.uuid} is on host {row.host}, not on this API node's")
        return self.files_of(row).open(row.uuid, self._master_key(row))

    def changing(self, uuid: str) -> str | None:
        """What changes the drive's bytes right now outside any claim (`being written`,
        `being resized`), or None."""
        return self.operations.conflict(uuid, IMAGE)

    # -- commands ------------------------------------------------------------------------

    def list_uuids(self, user: str) -> list[str]:
        rows = self._reader.all_cached(drive_store.DRIVE_UUIDS_BY_USER, user=user)
        return [row[0] for row in rows]

    def listing(self, user: str) -> ValueList:
        """`drives/list` of `user`: the same object while nothing has been committed, so
        that its rendered bodies (kept on it) are made once, not per request."""
        return self._reader.memo(
            ("drives/list", user),
            lambda: ValueList(("drive",), [{"drive": uuid} for uuid in self.list_uuids(user)]),
        )

    def kept_listing(self, user: str) -> ValueList | None:
        """`listing` if it is kept and still true, without reading the database; else None."""
        kept: ValueList | None = self._reader.kept(("drives/list", user))
        return kept

    def info(self, user: str, uuid: str) -> dict[str, Value]:
        """The drive's info, read afresh: what a command that has just written answers."""
        # Through the Reader: the hottest command after the lists, and SQLAlchemy's execute
        # cost several times the two queries.
        row = self._check_readable(drive_store.read_drive(self._reader, uuid), user, uuid)
        claims = drive_store.read_claims_on(self._reader, uuid)
        return drive_info(row, claims, self._is_available(row), self._hosts.offline)

    def info_payload(self, user: str, uuid: str) -> Properties:
        """`drives/D/info`: `info` with the drive's row and claims kept while nothing has
        been committed (every change of them is a commit, the I/O counters' too); whether
        its file opens is asked each time (kept by the storage while its directory's watch
        hears nothing, storage/drive_files.py). Not for a command that has just written
        (see Reader.memo). The same payload object while nothing is committed and the
        file's availability and the offline hosts are unchanged, so that its rendered
        bodies (kept on it) are made once; only for the very rows read: ones read again
        after a commit never get a payload made from older ones."""
        kept = self._reader.memo(
            ("drives/info", uuid),
            lambda: _KeptInfo(
                drive_store.read_drive(self._reader, uuid),
                drive_store.read_claims_on(self._reader, uuid),
            ),
        )
        return self._payload_of(user, uuid, kept)

    def kept_info_payload(self, user: str, uuid: str) -> Properties | None:
        """`info_payload` if the drive's rows are kept and still true, without reading the
        database; else None."""
        kept: _KeptInfo | None = self._reader.kept(("drives/info", uuid))
        return None if kept is None else self._payload_of(user, uuid, kept)

    def _payload_of(self, user: str, uuid: str, kept: "_KeptInfo") -> Properties:
        row = self._check_readable(kept.row, user, uuid)
        state = (self._is_available(row), self._hosts.offline)
        payload = kept.payloads.get(state)
        if payload is None:
            if len(kept.payloads) >= MAX_PAYLOADS_KEPT:  # each heartbeat's offline hosts
                kept.payloads.clear()
            payload = kept.payloads[state] = Properties(drive_info(row, kept.claims, *state))
        return payload

    async def info_all(self, user: str) -> list[dict[str, Value]]:
        # The cached listing tells how many there are: thousands are built off the loop, and
        # any number when the database is across the network (every read is I/O).
        if (
            self._reader.local
            and len(self._reader.all_cached(drive_store.DRIVE_UUIDS_BY_USER, user=user))
            <= INLINE_ITEMS
        ):
            return self._infos_of(self._reader, user)
        return await built_in_worker(functools.partial(self._infos_off_loop, user))

    def _infos_off_loop(self, user: str) -> list[dict[str, Value]]:
        # Its own, given back to the pool after: the loop's Reader is the loop thread's alone.
        reader = Reader(self._engine)
        try:
            return self._infos_of(reader, user)
        finally:
            reader.close()

    def _infos_of(self, reader: Reader, user: str) -> list[dict[str, Value]]:
        """The info of every drive of `user`."""
        rows = drive_store.read_drives_of(reader, user)
        claims = drive_store.read_claims_on_drives_of(reader, user)
        offline = self._hosts.offline
        return [
            drive_info(row, claims.get(row.uuid, []), self._is_available(row), offline)
            for row in rows
        ]

    def _check_drive_limit(
        self,
        connection: Connection,
        user: str,
        size: int,
        tier: str,
        excluding: str | None = None,
    ) -> None:
        """May `user` hold `size` bytes more in `tier` (in place of drive `excluding`'s)?
        402 if not."""
        self._billing.check_drive_bytes(connection, user, size, tier, excluding=excluding)

    async def create(self, user: str, properties: dict[str, str]) -> dict[str, Value]:
        defaults = DriveSettings(cipher=self._default_cipher)
        settings = apply_drive_properties(
            defaults, properties, creating=True, tiers=self.tiers.names
        )
        uuid = str(uuid_module.uuid4())
        host = await self._store.run(self._place_new, user, settings)
        storage = self.storages.of(host)
        wrapped: dict[str, bytes | None] = {"wrapped_passphrase": None, "wrapped_master_key": None}
        passphrase = None
        if settings.cipher != "none":
            passphrase = base64.urlsafe_b64encode(secrets.token_bytes(32))
        master_key = await storage.create(uuid, settings.tier, settings.size, passphrase)
        if passphrase is not None and master_key is not None:
            wrapped = {
                "wrapped_passphrase": wrap_secret(self._secret_key, passphrase, uuid + ":luks"),
                "wrapped_master_key": wrap_secret(self._secret_key, master_key, uuid + ":master"),
            }
        async with Reverter() as revert:
            revert.add(functools.partial(storage.destroy, uuid, settings.tier))
            await self._store.run(self._insert_new, user, uuid, settings, host, wrapped)
            revert.success()
        log.info(
            "event=drive_created user=%s drive=%s size=%s cipher=%s tier=%s host=%s",
            user,
            uuid,
            settings.size,
            settings.cipher,
            settings.tier,
            host,
        )
        return await self._store.run(self.info, user, uuid)

    def _place_new(self, user: str, settings: DriveSettings) -> str:
        """The host for a new drive of `user` with `settings`, once its limit allows it."""
        with self._engine.connect() as connection:
            self._check_drive_limit(connection, user, settings.size, settings.tier)
            return self._hosts.place_drive(
                connection, user, settings.size, settings.tier, settings.avoid
            )

    def _insert_new(
        self,
        user: str,
        uuid: str,
        settings: DriveSettings,
        host: str,
        wrapped: dict[str, bytes | None],
    ) -> None:
        """The row of the new drive, its limit checked again in the same transaction (holding
        the user's row): another create may have finished while the file was made."""
        with self._engine.begin() as connection:
            self._check_drive_limit(connection, user, settings.size, settings.tier)
            drive_store.insert_drive(
                connection,
                uuid=uuid,
                user=user,
                cipher=settings.cipher,
                created_at=time.time(),  # sub-second: lists keep creation order
                host=host,
                **drive_settings_columns(settings),
                **wrapped,
            )

    async def set(self, user: str, uuid: str, properties: dict[str, str]) -> dict[str, Value]:
        # The checks, the new row and the resize in flight come with no await between them:
        # from then on whatever would touch the bytes (I/O, imaging, a server) is refused
        # until the file has its new size. The row is the truth; a daemon killed before the
        # file follows is put right at the next start (`repair_files`). With other API nodes,
        # the checks and the resize's row are in the transaction, which holds the drive's
        # operations until it commits: no other node begins a write in between.
        resizing: Operation | None = None
        with Reverter() as revert:
            with self._engine.begin() as connection:
                # The user's row (a bigger size is checked against their limit), then the drive's:
                # another node's claim or job on it waits for this change (store/row_locks.py).
                row_locks.lock_user(connection, user)
                row_locks.lock_drives(connection, [uuid])
                row = self._owned(connection, user, uuid)
                if row.imaging:
                    raise BusyError(f"Drive {uuid} is being imaged and cannot be set now")
                self.operations.check(uuid, SET, connection)
                current = row.settings
                settings = apply_drive_properties(
                    current, properties, creating=False, tiers=self.tiers.names
                )
                if settings.size != current.size:
                    self._check_busy(connection, uuid, "resized")
                    if settings.size > current.size:
                        self._check_drive_limit(
                            connection, user, settings.size, settings.tier, excluding=uuid
                        )
                    else:
                        self.operations.check(uuid, SHRINK, connection)
                drive_store.update_drive(connection, uuid, **drive_settings_columns(settings))
                if settings.size != current.size:
                    resizing = self.operations.begin(uuid, RESIZE, connection)
                    revert.add(resizing.end)  # the transaction failed: nothing is resized
            revert.success()  # committed
        if resizing is not None:
            await self._resize_file(row, current.size, settings.size, resizing)
        return self.info(user, uuid)

    async def _resize_file(
        self, row: DriveRecord, old_size: int, new_size: int, resizing: Operation
    ) -> None:
        uuid, master_key = row.uuid, self._master_key(row)
        storage = self.storage_of(row)
        kept = min(old_size, new_size)
        with resizing:
            try:
                await storage.resize(uuid, row.tier, new_size, master_key, kept)
            except (OSError, ApiError):
                # Back to the old size (what was cut stays cut: it reads as zeros).
                with self._engine.begin() as connection:
                    drive_store.update_drive(connection, uuid, size=old_size)
                # repair_files retries a local one at the next start
                with contextlib.suppress(OSError, ApiError):
                    await storage.resize(uuid, row.tier, old_size, master_key, kept)
                raise

    def repair_files(self, grace: float = ORPHAN_GRACE_SECONDS) -> tuple[int, int]:
        """Put the drive files right after a daemon that stopped half-way (at start): how many
        were resized to their row's size, and how many files without a row, unchanged for
        `grace` seconds, were removed."""
        with self._engine.connect() as connection:
            rows = drive_store.all_drives(connection)
        # Every row keeps its file from removal; only this host's drives are resized here.
        return repair_drive_files(self.tiers, rows, self._master_key, self.is_here, grace)

    async def destroy(self, user: str, uuid: str) -> None:
        found: list[DriveRecord] = []

        def delete_row(connection: Connection) -> None:
            row_locks.lock_drives(connection, [uuid])  # no claim or job lands meanwhile
            row = self._owned(connection, user, uuid)
            if self.is_here(row):
                # Its tier's files first: a drive whose tier the configuration lost keeps
                # its row.
                self.files_of(row)
            self._check_busy(connection, uuid, "destroyed")
            # Held until the delete commits: no other node begins I/O on it meanwhile.
            self.operations.check(uuid, DESTROY, connection)
            drive_store.delete_drive(connection, uuid)
            found.append(row)

        # Destroying is how a user gets space back: it must work on a full disk, where even
        # the row's delete needs room in the WAL (the space reserve gives it).
        space_reserve.begin_freeing(self._engine, delete_row)
        row = found[-1]
        try:
            await self.storage_of(row).destroy(uuid, row.tier)
        except ApiError as error:
            # The drive is gone for its user (its row is); its bytes stay on a host whose
            # agent did not answer, for the operator (docs/cluster.md).
            log.error("event=drive_bytes_left drive=%s host=%s error=%s", uuid, row.host, error)
        space_reserve.refill(self._engine)
        log.info("event=drive_destroyed user=%s drive=%s", user, uuid)

    def _check_busy(self, connection: Connection, uuid: str, action: str) -> None:
        claims = drive_store.claims_on(connection, uuid)
        if claims:
            holder = claims[0]
            raise BusyError(
                f"Drive {uuid} is in use ({holder.kind} {holder.holder}) and cannot be {action} now"
            )

    def attachable(self, user: str, uuid: str) -> "AttachableDrive":
        """What a server of `user` needs to attach drive `uuid` (their own, or readable)."""
        with self._engine.connect() as connection:
            row = self._readable(connection, user, uuid)
        self.operations.check(uuid, ATTACH)
        storage = self.storage_of(row)
        return AttachableDrive(
            uuid=uuid,
            path=storage.disk_path(uuid, row.tier),
            passphrase=self.passphrase_of(row),
            owned=row.user == user,
            exclusive=row.claim_type != "shared",
            host=self.storages.holder(row.host) if self.storages.connector is not None else "",
            tier=row.tier,
            available=storage.is_available(uuid, row.tier),
            generation=standard_generation(row) if row.user == PLATFORM_USER else "",
            size=row.size,
        )

    # -- data ----------------------------------------------------------------------------

    def open_read(self, user: str, uuid: str, offset: int, length: int | None) -> DriveRead:
        """Plan a read of `length` bytes (None: to the end) from `offset`, clamped to the end."""
        with self._engine.connect() as connection:
            row = self._readable(connection, user, uuid)
        size = row.size
        start = min(offset, size)
        count = size - start if length is None else min(length, size - start)
        storage = self.storage_of(row)
        reading = self.operations.begin(uuid, READ)
        with Reverter() as revert:
            revert.add(reading.end)
            self._still_there(user, uuid)  # not destroyed through another node meanwhile
            revert.success()
        bytes_of = DriveBytes(uuid, row.tier, self._master_key(row))
        return storage.open_read(bytes_of, start, count, reading.end)

    def _still_there(self, user: str, uuid: str) -> None:
        """With other API nodes: the drive was not destroyed through another while its
        operation began (a destroy holds the drive's operations until it commits, so one
        begun after it finds the row gone). Nothing to look at within one node."""
        if self.operations.across_nodes:
            with self._engine.connect() as connection:
                self._readable(connection, user, uuid)

    def record_read(self, uuid: str, nbytes: int) -> None:
        self._count_io(uuid, "read", nbytes)

    def _count_io(self, uuid: str, direction: str, nbytes: int) -> None:
        """Add to the drive's I/O counters. They are bookkeeping, written after the bytes
        moved: failing to write them (a full disk, a locked database) is logged and changes
        nothing of the answer."""
        try:
            with self._engine.begin() as connection:
                drive_store.add_io_counters(connection, uuid, direction, nbytes)
        except SQLAlchemyError as error:
            log.error(
                "event=io_counters_lost drive=%s direction=%s bytes=%s error=%s",
                uuid, direction, nbytes, error,
            )  # fmt: skip

    def begin_write(
        self, user: str, uuid: str, offset: int, decoder: BodyDecoder | None = None
    ) -> DriveWrite:
        """A writer of the drive's bytes from `offset`: straight to the drive as they come, or
        written an encoded body that `decoder` decodes (a gzip body), staged: kept aside
        until the body's end proves it good, then applied whole."""
        with self._engine.connect() as connection:
            row = self._owned(connection, user, uuid)
            claims = drive_store.claims_on(connection, uuid)
        self.operations.check(uuid, WRITE)
        for claim in claims:
            if claim.kind != "guest" or row.claim_type != "shared":
                raise BusyError(
                    f"Drive {uuid} is in use ({claim.kind} {claim.holder}) and cannot be"
                    " written now"
                )
        if offset > row.size:
            raise FullError(f"Offset {offset} is past the end of drive {uuid} ({row.size} bytes)")
        storage = self.storage_of(row)
        # Checked above, and nothing awaited since: within one node this cannot be refused
        # (another node may have begun a resize meanwhile).
        writing = self.operations.begin(uuid, WRITE)
        with Reverter() as revert:
            revert.add(writing.end)
            self._still_there(user, uuid)
            revert.success()
        on_close = functools.partial(self._end_write, writing)
        bytes_of = DriveBytes(uuid, row.tier, self._master_key(row))
        return storage.open_write(
            bytes_of, offset, row.size, decoder is not None, on_close, decoder
        )

    def _end_write(self, writing: Operation, nbytes: int | None) -> None:
        writing.end()
        if nbytes is not None:
            self._count_io(writing.uuid, "write", nbytes)
