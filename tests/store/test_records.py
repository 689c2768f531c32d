"""Records round-trip: record → columns → a real SQLite row → record again, through the engine
and through the Reader, with odd values (unicode, huge sizes, None, bytes)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from openhosting.model.common import EVERYONE
from openhosting.model.server import ServerConfig
from openhosting.store import audit as audit_store
from openhosting.store import billing as billing_store
from openhosting.store import console_tokens as token_store
from openhosting.store import drives as drive_store
from openhosting.store import jobs as job_store
from openhosting.store import resources as resource_store
from openhosting.store import servers as server_store
from openhosting.store import users as user_store
from openhosting.store.database import open_engine
from openhosting.store.reader import Reader
from openhosting.store.records import (
    AuditRecord,
    ClaimRecord,
    ConsoleTokenRecord,
    DriveRecord,
    JobRecord,
    NicRecord,
    ResourceRecord,
    ServerRecord,
    StoreRecord,
    UsageRecord,
    UserRecord,
    decode_server_config,
    encode_server_config,
    encode_tier_limits,
    encode_user_keys,
)
from openhosting.store.tables import PLATFORM_USER

USER = "11111111-1111-4111-8111-111111111111"
READER = "22222222-2222-4222-8222-222222222222"
DRIVE = "33333333-3333-4333-8333-333333333333"
SERVER = "44444444-4444-4444-8444-444444444444"

ODD_DRIVE = DriveRecord(
    uuid=DRIVE,
    user=USER,
    size=(1 << 62) + 7,  # beyond any real drive, within a signed 64-bit column
    cipher="aes-xts-plain",
    created_at=1_700_000_000.123456,
    name="Ünïcødé 💾 «drive» \t with\nnewline",
    claim_type="shared",
    readers=(READER, EVERYONE),
    tags=("ταγ", "日本語", "x"),
    user_keys={"user:ключ": "värde ✓", "user:empty-ish": " ", "user:a": '{"json": "inside"}'},
    avoid=("d1",),
    tier="ssd",
    wrapped_passphrase=b"\x00\xff" * 40,
    wrapped_master_key=b"",
    read_bytes=(1 << 63) - 1,
    read_requests=1,
    write_bytes=0,
    write_requests=(1 << 40),
    media="cdrom",
    format="gzip",
    rawsize=(1 << 50),
    imaging="42%",
    imaging_error="source drive gone: «ошибка»",
    host="hv-ü.example",
)
PLAIN_DRIVE = DriveRecord(uuid=DRIVE, user=USER, size=0, cipher="none", created_at=0.0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(tmp_path / "state.db")
    with engine.begin() as connection:
        user_store.insert_user(connection, uuid=USER, key_hash="0" * 64, created_at=0)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("drive", [ODD_DRIVE, PLAIN_DRIVE], ids=["odd", "plain"])
def test_a_drive_reads_back_as_it_was_written_through_the_engine_and_the_reader(
    engine: Engine, drive: DriveRecord
) -> None:
    with engine.begin() as connection:
        drive_store.insert_drive(connection, **drive.to_row())
    with engine.connect() as connection:
        assert drive_store.get_drive(connection, DRIVE) == drive
        assert drive_store.drives_of(connection, USER) == [drive]
        assert drive_store.all_drives(connection) == [drive]
    reader = Reader(engine)
    try:
        assert drive_store.read_drive(reader, DRIVE) == drive
        assert drive_store.read_drive(reader, READER) is None
    finally:
        reader.close()


def test_a_drive_record_is_its_columns_and_back_without_a_database() -> None:
    for drive in (ODD_DRIVE, PLAIN_DRIVE):
        assert DriveRecord.from_row(drive.to_row()) == drive


def test_drive_settings_are_what_the_columns_say() -> None:
    settings = ODD_DRIVE.settings
    assert settings.readers == (READER, EVERYONE)
    assert settings.user_keys == dict(ODD_DRIVE.user_keys)
    assert (settings.size, settings.cipher, settings.tier) == (
        ODD_DRIVE.size,
        "aes-xts-plain",
        "ssd",
    )


def test_readable_by_its_owner_its_readers_and_everyone_when_named() -> None:
    assert ODD_DRIVE.readable_by(USER)
    assert ODD_DRIVE.readable_by(READER)
    assert ODD_DRIVE.readable_by("55555555-5555-4555-8555-555555555555")  # EVERYONE
    assert not PLAIN_DRIVE.readable_by(READER)


def test_user_keys_are_json_with_sorted_keys_and_escaped_unicode() -> None:
    text = encode_user_keys({"user:b": "ü", "user:a": "1"})
    assert text == '{"user:a": "1", "user:b": "\\u00fc"}'
    assert DriveRecord.from_row({**PLAIN_DRIVE.to_row(), "user_keys": text}).user_keys == {
        "user:a": "1",
        "user:b": "ü",
    }


def test_claims_read_back_with_a_real_boolean_through_the_engine_and_the_reader(
    engine: Engine,
) -> None:
    with engine.begin() as connection:
        drive_store.insert_drive(connection, **ODD_DRIVE.to_row())
        server_store.add_guest_claims(connection, USER, SERVER, [(DRIVE, "ide:0:0", True)])
        job_store.insert_job_claim(connection, 7, DRIVE, USER, job_store.SOURCE)
    expected = [
        ClaimRecord(1, DRIVE, USER, "guest", SERVER, "ide:0:0", exclusive=True),
        ClaimRecord(2, DRIVE, USER, "imaging", "7", "source", exclusive=False),
    ]
    with engine.connect() as connection:
        assert drive_store.claims_on(connection, DRIVE) == expected
        assert drive_store.guest_claims_of(connection, SERVER) == expected[:1]
    reader = Reader(engine)
    try:
        claims = drive_store.read_claims_on(reader, DRIVE)
        # By the drives' owner: only drives with claims, and no other user's.
        by_owner = drive_store.read_claims_on_drives_of(reader, ODD_DRIVE.user)
        assert drive_store.read_claims_on_drives_of(reader, READER) == {}
        assert drive_store.read_drives_of(reader, ODD_DRIVE.user) == [ODD_DRIVE]
    finally:
        reader.close()
    assert claims == expected
    assert by_owner == {DRIVE: expected}
    assert claims[0].exclusive is True  # SQLite gives 1: the record says what it means
    assert ClaimRecord.from_row(expected[0].to_row()) == expected[0]


def test_guest_io_marks_read_back_as_written(engine: Engine) -> None:
    with engine.begin() as connection:
        drive_store.insert_drive(connection, **PLAIN_DRIVE.to_row())
        server_store.add_guest_claims(connection, USER, SERVER, [(DRIVE, "ide:0:0", False)])
        mark = {"read_bytes": 1 << 60, "read_requests": 2, "write_bytes": 3, "write_requests": 4}
        drive_store.add_guest_io(connection, 1, DRIVE, mark, mark)
    with engine.connect() as connection:
        [claim] = drive_store.guest_claims_of(connection, SERVER)
        drive = drive_store.get_drive(connection, DRIVE)
    assert (claim.guest_read_bytes, claim.guest_read_requests) == (1 << 60, 2)
    assert (claim.guest_write_bytes, claim.guest_write_requests) == (3, 4)
    assert drive is not None and drive.read_bytes == 1 << 60


@pytest.mark.parametrize(
    "job",
    [
        JobRecord(1, USER, DRIVE, READER, job_store.QUEUED, created_at=5.5),
        JobRecord(
            1,
            USER,
            DRIVE,
            READER,
            job_store.FAILED,
            created_at=1.0,
            conversion="gunzip",
            bytes_done=(1 << 62),
            bytes_total=(1 << 62) + 1,
            error="«не gzip» 💥",
            started_at=2.25,
            ended_at=3.0,
        ),
    ],
    ids=["new", "ended"],
)
def test_a_job_reads_back_as_it_was_written(engine: Engine, job: JobRecord) -> None:
    columns = job.to_row()
    del columns["id"]  # the database gives it
    with engine.begin() as connection:
        assert job_store.insert_job(connection, **columns) == job.id
    with engine.connect() as connection:
        assert job_store.get_job(connection, job.id) == job
        assert job_store.list_jobs(connection) == [job]
        pending = job.state in job_store.PENDING
        assert job_store.pending_jobs(connection) == ([job] if pending else [])
        assert job_store.pending_jobs_into(connection, DRIVE) == ([job] if pending else [])
        assert job_store.get_job(connection, job.id + 1) is None
    assert JobRecord.from_row(job.to_row()) == job


@pytest.mark.parametrize(
    "resource",
    [
        ResourceRecord("ip", "192.0.2.10", USER, created_at=0),
        ResourceRecord(
            "vlan", DRIVE, USER, created_at=(1 << 40), name="réseau 🛰", tags=("a", "β"),
            user_keys={"user:note": "«x»"},
        ),
    ],
    ids=["plain", "odd"],
)  # fmt: skip
def test_a_resource_reads_back_as_it_was_written(engine: Engine, resource: ResourceRecord) -> None:
    with engine.begin() as connection:
        resource_store.insert_resource(connection, **resource.to_row())
    with engine.connect() as connection:
        assert resource_store.get_resource(connection, resource.type, resource.resource) == resource
        assert resource_store.resources_of(connection, USER) == [resource]
        assert resource_store.resources_of(connection, USER, "other") == []
    assert ResourceRecord.from_row(resource.to_row()) == resource
    assert resource.settings.tags == resource.tags


def test_nics_read_back_with_a_real_boolean_and_none_addresses(engine: Engine) -> None:
    nics = [
        NicRecord(SERVER, -1, USER, "vnc", "52:54:00:00:00:01", "192.0.2.9", temporary=True),
        NicRecord(SERVER, 0, USER, "public", "52:54:00:00:00:02"),
        NicRecord(SERVER, 1, USER, DRIVE, "52:54:00:00:00:03", None, temporary=False),
    ]
    with engine.begin() as connection:
        for nic in nics:
            resource_store.insert_nic(connection, **nic.to_row())
    with engine.connect() as connection:
        assert resource_store.nics_of(connection, SERVER) == nics
        assert resource_store.all_nics(connection) == nics
        assert resource_store.nics_of(connection, USER) == []
    assert nics[0].temporary is True and nics[1].address is None


ODD_CONFIG = ServerConfig.from_properties(
    {
        "name": "сервер 🖥 «one»",
        "cpu": "64000",
        "mem": "262144",
        "smp": "64",
        "persistent": "true",
        "ide:0:0": DRIVE,
        "ide:0:0:media": "cdrom",
        "boot": "ide:0:0",
        "nic:0:model": "virtio",
        "nic:0:dhcp": "auto",
        "nic:0:block": "tcp/25 udp/53 1000-2000",
        "vnc:ip": "auto",
        "vnc:password": "p4ss w0r",
        "tags": "α β",
        "user:заметка": "значение ✓",
    }
)
PLAIN_CONFIG = ServerConfig.from_properties({"name": "s", "cpu": "1", "mem": "16"})


@pytest.mark.parametrize(
    "server",
    [
        ServerRecord(SERVER, USER, PLAIN_CONFIG, created_at=0.0),
        ServerRecord(
            SERVER, USER, ODD_CONFIG, created_at=1_700_000_000.5, status="active",
            started_at=(1 << 40), vnc_display=999,
        ),
    ],
    ids=["plain", "odd"],
)  # fmt: skip
def test_a_server_reads_back_as_it_was_written_through_the_engine_and_the_reader(
    engine: Engine, server: ServerRecord
) -> None:
    with engine.begin() as connection:
        server_store.insert_server(connection, **server.to_row())
    with engine.connect() as connection:
        assert server_store.get_server(connection, SERVER) == server
        assert server_store.servers_of(connection, USER) == [server]
        assert server_store.servers_with_status(connection, server.status) == [server]
        assert server_store.servers_with_status(connection, "dead") == []
    reader = Reader(engine)
    try:
        assert server_store.read_server(reader, SERVER) == server
        assert server_store.read_server(reader, USER) is None
        assert server_store.read_servers_of(reader, USER) == [server]
        sizes = server_store.read_server_sizes_of(reader, USER)
        assert sizes == [(SERVER, server.config.cpu, server.config.mem)]
    finally:
        reader.close()
    assert ServerRecord.from_row(server.to_row()) == server


def test_a_server_configuration_is_stored_as_sorted_json_and_read_back_whole() -> None:
    text = encode_server_config(ODD_CONFIG)
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert json.loads(text)["persistent"] == "true"
    assert decode_server_config(text) == ODD_CONFIG
    assert decode_server_config(encode_server_config(PLAIN_CONFIG)) == PLAIN_CONFIG
    # The same text is parsed once: the configuration of an unchanged server is shared.
    assert decode_server_config(text) is decode_server_config(text)


ODD_USER = UserRecord(
    uuid=READER,
    created_at=(1 << 40),
    name="ユーザー «ü» 👤",
    max_drive_bytes=(1 << 62),
    max_drive_bytes_by_tier={"ssd": 1 << 50, "disk": 0},
    max_ips=0,
    max_vlans=None,
    max_servers=1,
    max_cpu_mhz=64000,
    max_mem_mb=262144,
    balance=-(1 << 62),
    metered_at=1_700_000_000.25,
)


def test_a_user_reads_back_as_written_and_its_key_hash_is_in_no_record(engine: Engine) -> None:
    with engine.begin() as connection:
        user_store.insert_user(connection, key_hash="ab" * 32, **ODD_USER.to_row())
    with engine.connect() as connection:
        assert user_store.get_user(connection, READER) == ODD_USER
        assert billing_store.account_of(connection, READER) == ODD_USER
        assert user_store.list_users(connection)[-1] == ODD_USER
        accounts = billing_store.all_accounts(connection)
        assert [account.uuid for account in accounts] == [USER, READER]
        assert user_store.get_user(connection, PLATFORM_USER) is None  # nobody's account
    assert UserRecord.from_row(ODD_USER.to_row()) == ODD_USER
    assert "key_hash" not in ODD_USER.to_row()
    assert "ab" * 32 not in repr(ODD_USER)
    assert ODD_USER.limits() == {
        "drive:bytes": 1 << 62, "servers": 1, "cpu": 64000, "mem": 262144, "ips": 0,
        "vlans": None,
    }  # fmt: skip


def test_tier_limits_are_a_json_object_with_sorted_tiers() -> None:
    assert encode_tier_limits({"ssd": 2, "disk": 1}) == '{"disk": 1, "ssd": 2}'
    assert ODD_USER.to_row()["max_drive_bytes_by_tier"] == encode_tier_limits(
        ODD_USER.max_drive_bytes_by_tier
    )


def test_usage_and_audit_records_read_back_as_written_oldest_first(engine: Engine) -> None:
    usage = [
        UsageRecord(1, USER, 0.5, 1800.5, 1 << 60, 64000, 262144, 3, 0, charge=(1 << 62)),
        UsageRecord(2, USER, 1800.5, 3600.0, 0, 0, 0, 0, 0, charge=-1),
    ]
    entries = [
        AuditRecord(1, 1.5, USER, "POST", "/drives/create", 200, remote="::1"),
        AuditRecord(2, 2.5, USER, "POST", f"/drives/{DRIVE}/set", 400, object=DRIVE, error="usage"),
    ]
    with engine.begin() as connection:
        for record in usage:
            billing_store.record_usage(connection, **record.to_row())
        for entry in entries:
            audit_store.insert_entry(connection, **entry.to_row())
    with engine.connect() as connection:
        assert billing_store.usage_of(connection, USER, 10) == usage
        assert billing_store.usage_of(connection, USER, 1) == usage[1:]
        assert audit_store.entries(connection, None, USER, 10) == entries
        assert audit_store.entries(connection, DRIVE, None, 10) == entries[1:]
    assert UsageRecord.from_row(usage[0].to_row()) == usage[0]
    assert AuditRecord.from_row(entries[1].to_row()) == entries[1]


def test_a_console_token_reads_back_unused_then_used(engine: Engine) -> None:
    token = ConsoleTokenRecord("f" * 64, SERVER, USER, expires=1e12)
    with engine.begin() as connection:
        token_store.insert_token(connection, token)
    with engine.connect() as connection:
        assert token_store.get_token(connection, token.token_hash) == token
        assert token_store.get_token(connection, "0" * 64) is None
    with engine.begin() as connection:
        assert token_store.use_token(connection, token.token_hash, 5.5)
    with engine.connect() as connection:
        used = token_store.get_token(connection, token.token_hash)
    assert used == ConsoleTokenRecord("f" * 64, SERVER, USER, 1e12, used_at=5.5)
    assert ConsoleTokenRecord.from_row(used.to_row()) == used


@dataclass(frozen=True)
class OddRecord(StoreRecord):
    name: str
    at: float
    flag: bool
    when: int | None
    shape: complex  # nothing here decodes a complex column


def test_a_record_decodes_its_columns_by_field_type_and_refuses_a_type_it_cannot() -> None:
    claim = ClaimRecord.from_row(
        {"id": "7", "drive": "d", "user": "u", "kind": "guest", "holder": "s", "device": "ide:0:0"}
        | {"exclusive": 1, "guest_read_bytes": 2, "guest_read_requests": 3}
        | {"guest_write_bytes": 4, "guest_write_requests": 5}
    )
    assert (claim.id, claim.exclusive) == (7, True)
    with pytest.raises(TypeError, match=r"OddRecord\.shape: no decoder"):
        OddRecord.from_row({"name": "x", "at": 1, "flag": 1, "when": None, "shape": 1j})
