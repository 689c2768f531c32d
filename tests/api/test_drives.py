"""Drive commands over HTTP against a real SQLite file and real drive files (docs/api.md §4)."""

import asyncio
import gzip
import json
import os

import pytest
from aiohttp.test_utils import TestClient

from openhosting.model.drive import MAX_ENCRYPTED_SIZE
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.store import drives as drive_store
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive, drive_holding, drive_info, read_bytes
from tests.conftest import SAMPLES, basic_auth

UUID_LEN = 36
CIPHERS = ["none", "aes-xts-plain"]


# -- compat cases ------------------------------------------------------------------------


async def test_case_1_create_as_octet_stream_shows_drive_and_size(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = await client.post(
        "/drives/create",
        data=b"name TestDrive\nsize 10000000\n",
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert response.headers["X-Elastic-Output"] == "properties"
    info = parse_properties(await response.text())
    assert len(info["drive"]) == UUID_LEN
    assert info["size"] == "10000000"
    assert info["name"] == "TestDrive"
    assert info["encryption:cipher"] == "aes-xts-plain"  # the default
    assert info["claim:type"] == "exclusive"
    assert info["status"] == "active"


async def test_case_2_create_without_final_newline_has_exactly_one_drive_line(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = await client.post(
        "/drives/create",
        data="name image.raw\nsize 10000000\nclaim:type exclusive",
        headers={**auth, "Content-Type": "text/plain", "Expect": ""},
    )
    assert response.status == 200
    drive_lines = [
        line for line in (await response.text()).splitlines() if line.startswith("drive ")
    ]
    assert len(drive_lines) == 1
    assert len(drive_lines[0].split()[1]) == UUID_LEN


async def test_case_3_list_is_a_post_with_an_empty_form_body(
    client: TestClient, auth: dict[str, str]
) -> None:
    made = [(await create_drive(client, auth, 1000))["drive"] for _ in range(2)]
    response = await client.post(
        "/drives/list",
        data=b"",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200
    assert response.headers["X-Elastic-Output"] == "list"
    assert sorted((await response.text()).split()) == sorted(made)


async def test_case_4_info_by_post_with_empty_body(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 1000))["drive"]
    response = await client.post(f"/drives/{drive}/info", headers=auth)
    assert response.status == 200
    assert parse_properties(await response.text())["drive"] == drive


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_case_5_gzip_chunks_then_read_back(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    image = os.urandom(10000000)
    drive = (await create_drive(client, auth, len(image), cipher))["drive"]
    for offset in (0, 5242880):
        chunk = image[offset : offset + 5242880]
        response = await client.post(
            f"/drives/{drive}/write/{offset}",
            data=gzip.compress(chunk, compresslevel=1),
            headers={
                **auth,
                "Content-Type": "application/octet-stream",
                "Content-Encoding": "gzip",
            },
        )
        assert response.status == 204, await response.text()
    assert await read_bytes(client, auth, f"/drives/{drive}/read/0/10000000") == image
    info = await drive_info(client, auth, drive)
    assert info["write:bytes"] == "10000000"
    assert info["write:requests"] == "2"
    assert info["read:bytes"] == "10000000"
    assert info["read:requests"] == "1"


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_case_6_raw_write_without_offset_lands_at_zero(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    drive = (await create_drive(client, auth, 4096, cipher))["drive"]
    response = await client.post(f"/drives/{drive}/write", data=b"hello", headers=auth)
    assert response.status == 204
    data = await read_bytes(client, auth, f"/drives/{drive}/read")
    assert data == b"hello" + bytes(4091)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_case_7_write_past_the_end_is_full_and_writes_nothing(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    drive = (await create_drive(client, auth, 1000, cipher))["drive"]
    response = await client.post(f"/drives/{drive}/write/990", data=b"x" * 20, headers=auth)
    assert response.status == 507
    assert response.headers["X-Elastic-Error"] == "full"
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == bytes(1000)
    info = await drive_info(client, auth, drive)
    assert info["write:requests"] == "0"


async def test_case_8_info_has_a_size_line_for_while_read(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, "10M"))["drive"]
    response = await client.get(f"/drives/{drive}/info", headers=auth)
    lines = dict(line.split(" ", 1) for line in (await response.text()).splitlines() if " " in line)
    assert lines["size"] == str(10 * 1024 * 1024)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_case_9_last_short_chunk_reads_exactly(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    drive = (await create_drive(client, auth, 10000000, cipher))["drive"]
    tail = os.urandom(4757120)
    response = await client.post(f"/drives/{drive}/write/5242880", data=tail, headers=auth)
    assert response.status == 204
    data = await read_bytes(client, auth, f"/drives/{drive}/read/5242880/4757120")
    assert data == tail


async def test_case_10_missing_drive_is_404_missing_in_text(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = await client.get(
        "/drives/00000000-0000-4000-8000-000000000000/info",
        headers={**auth, "Accept": "application/json"},
    )
    assert response.status == 404
    assert response.headers["X-Elastic-Error"] == "missing"
    assert response.content_type == "text/plain"
    assert "could not be found" in await response.text()


async def test_case_14_json_create_with_suffix_size(
    client: TestClient, auth: dict[str, str]
) -> None:
    response = await client.post(
        "/drives/create",
        data=json.dumps({"name": "test", "size": "160G"}),
        headers={**auth, "Content-Type": "application/json", "Accept": "application/json"},
    )
    assert response.status == 200
    document = await response.json()
    assert len(document["drive"]) == UUID_LEN
    assert document["size"] == 171798691840
    assert response.headers["X-Elastic-Output"] == "properties"


async def test_case_26_set_name_size_and_tags(client: TestClient, auth: dict[str, str]) -> None:
    drive = (await create_drive(client, auth, 5000))["drive"]
    response = await client.post(
        f"/drives/{drive}/set", data="name foo\nsize 10000\ntags production candy", headers=auth
    )
    assert response.status == 200
    info = parse_properties(await response.text())
    assert (info["name"], info["size"], info["tags"]) == ("foo", "10000", "production candy")


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_case_27_post_write_then_post_read(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    drive = (await create_drive(client, auth, 100, cipher))["drive"]
    assert (await client.post(f"/drives/{drive}/write", data=b"foo", headers=auth)).status == 204
    response = await client.post(f"/drives/{drive}/read/0/3", headers=auth)
    assert response.status == 200
    assert await response.read() == b"foo"


async def test_case_29_newlines_in_user_keys_are_escaped(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 100, user_note="a\\nb"))["drive"]
    response = await client.get(f"/drives/{drive}/info", headers=auth)
    assert "user:note a\\nb\n" in await response.text()
    assert (await drive_info(client, auth, drive))["user:note"] == "a\nb"


@pytest.mark.parametrize(
    "key", ["user:x\ndrive 00000000-0000-4000-8000-000000000000", "user:a b", "user:a\rb"]
)
async def test_a_user_key_that_would_forge_text_lines_is_refused(
    client: TestClient, auth: dict[str, str], key: str
) -> None:
    # Only JSON can carry such a key; its text answer would have had a second `drive` line.
    json_auth = {**auth, "Content-Type": "application/json"}
    response = await client.post(
        "/drives/create", data=json.dumps({"size": "1k", key: "v"}), headers=json_auth
    )
    assert (response.status, response.headers["X-Elastic-Error"]) == (400, "usage")
    assert await (await client.get("/drives/list", headers=auth)).text() == ""
    drive = (await create_drive(client, auth, 100))["drive"]
    response = await client.post(
        f"/drives/{drive}/set", data=json.dumps({key: "v"}), headers=json_auth
    )
    assert (response.status, response.headers["X-Elastic-Error"]) == (400, "usage")
    text = await (await client.get(f"/drives/{drive}/info", headers=auth)).text()
    assert [line for line in text.splitlines() if line.startswith("drive ")] == [f"drive {drive}"]
    assert not [line for line in text.splitlines() if line.startswith("user:")]


async def test_case_36_info_full_has_the_same_keys(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    plain = await client.get(f"/drives/{drive}/info", headers=auth)
    full = await client.get(f"/drives/{drive}/info/full", headers=auth)
    assert parse_properties(await plain.text()).keys() == parse_properties(await full.text()).keys()


# -- info, create, set, destroy ----------------------------------------------------------


async def test_info_has_every_key(client: TestClient, auth: dict[str, str], user: NewKey) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    info = await drive_info(client, auth, drive)
    expected = {
        "drive", "name", "size", "user", "status", "claim:type", "readers", "tags",
        "encryption:cipher", "tier", "host", "read:bytes", "read:requests", "write:bytes",
        "write:requests",
    }  # fmt: skip
    assert set(info) == expected
    assert info["user"] == user.uuid
    assert "imaging" not in info and "claimed" not in info


async def test_the_real_services_create_body_is_accepted(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = (SAMPLES / "create_drive.txt").read_text()
    response = await client.post("/drives/create", data=body, headers=auth)
    assert response.status == 200, await response.text()
    info = parse_properties(await response.text())
    assert info["size"] == "8589934592"
    assert info["claim:type"] == "shared"
    assert info["readers"] == "ffffffff-ffff-ffff-ffff-ffffffffffff"
    assert (info["user:foo"], info["user:baz"], info["tags"]) == ("bar", "raz", "tag1 tag2")


async def test_all_info_is_blank_line_separated(client: TestClient, auth: dict[str, str]) -> None:
    for _ in range(3):
        await create_drive(client, auth, 100)
    response = await client.get("/drives/info", headers=auth)
    assert response.headers["X-Elastic-Output"] == "properties list"
    blocks = (await response.text()).split("\n\n")
    assert len(blocks) == 3
    json_response = await client.get("/drives/info", headers={**auth, "Accept": "application/json"})
    assert len(await json_response.json()) == 3


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("name x", "size"),
        ("size -5", "size"),
        ("size 1.5G", "size"),
        ("size 10\nclaim:type maybe", "claim:type"),
        ("size 10\nencryption:cipher rot13", "encryption:cipher"),
        ("size 10\ntier floppy", "tier"),
        ("size 10\nreaders bob", "reader"),
        ("size 10\ncolour blue", "colour"),
        ("size 10\ndrive 00000000-0000-4000-8000-000000000000", "drive"),
        ("size 99999999999999999999999", "size"),
    ],
)
async def test_bad_create_bodies_are_usage_errors_naming_the_key(
    client: TestClient, auth: dict[str, str], body: str, word: str
) -> None:
    response = await client.post("/drives/create", data=body, headers=auth)
    assert response.status == 400
    assert response.headers["X-Elastic-Error"] == "usage"
    assert word in await response.text()
    listing = await client.get("/drives/list", headers=auth)
    assert await listing.text() == ""  # nothing half-made


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_terabyte_drive_is_instant_and_sparse(
    client: TestClient, auth: dict[str, str], platform: Platform, cipher: str
) -> None:
    drive = (await create_drive(client, auth, "1T", cipher))["drive"]
    assert platform.drives.files.allocated_bytes(drive) < 4 * 1024 * 1024
    data = await read_bytes(client, auth, f"/drives/{drive}/read/1023G/4096")
    assert data == bytes(4096)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_grow_keeps_data_and_shrink_cuts_it(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    payload = os.urandom(1000)
    drive = await drive_holding(client, auth, payload, cipher)
    grown = await client.post(f"/drives/{drive}/set", data="size 5000", headers=auth)
    assert parse_properties(await grown.text())["size"] == "5000"
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == payload + bytes(4000)
    await client.post(f"/drives/{drive}/set", data="size 300", headers=auth)
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == payload[:300]
    await client.post(f"/drives/{drive}/set", data="size 1000", headers=auth)
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == payload[:300] + bytes(700)


async def test_cipher_cannot_be_changed_by_set(client: TestClient, auth: dict[str, str]) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    response = await client.post(
        f"/drives/{drive}/set", data="encryption:cipher aes-xts-plain", headers=auth
    )
    assert response.status == 400
    assert (await drive_info(client, auth, drive))["encryption:cipher"] == "none"


async def test_set_user_keys_merges_and_empty_value_removes(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 100, user_a="1", user_b="2"))["drive"]
    await client.post(f"/drives/{drive}/set", data="user:a\nuser:c 3", headers=auth)
    info = await drive_info(client, auth, drive)
    assert ("user:a" in info, info["user:b"], info["user:c"]) == (False, "2", "3")


async def test_destroy_removes_drive_and_its_file(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    path = platform.drives.files.path_of(drive)
    assert path.exists()
    response = await client.post(
        f"/drives/{drive}/destroy", headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status == 204
    assert not path.exists()
    assert (await client.get(f"/drives/{drive}/info", headers=auth)).status == 404


async def test_get_on_changing_drive_commands_is_405(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    for path in ("/drives/create", f"/drives/{drive}/set", f"/drives/{drive}/destroy",
                 f"/drives/{drive}/write", f"/drives/{drive}/image/{drive}"):  # fmt: skip
        response = await client.get(path, headers=auth)
        assert response.status == 405, path
        assert response.headers["X-Elastic-Error"] == "method"
    assert (await client.get(f"/drives/{drive}/info", headers=auth)).status == 200


async def test_drive_bytes_limit_is_402_billing(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    platform.accounts.set_limits(user.uuid, max_drive_bytes=10000)
    drive = (await create_drive(client, auth, 6000))["drive"]
    response = await client.post("/drives/create", data="size 5000", headers=auth)
    assert response.status == 402
    assert response.headers["X-Elastic-Error"] == "billing"
    grow = await client.post(f"/drives/{drive}/set", data="size 10001", headers=auth)
    assert grow.status == 402
    assert (
        await client.post(f"/drives/{drive}/set", data="size 10000", headers=auth)
    ).status == 200
    assert (await client.post("/drives/create", data="size 0", headers=auth)).status == 200


async def test_oversized_key_value_body_is_refused(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = "size 10\nname " + "x" * 70000
    response = await client.post("/drives/create", data=body, headers=auth)
    assert response.status == 400
    assert "too large" in await response.text()


# -- ownership and readers ---------------------------------------------------------------


async def test_another_users_drive_is_missing_for_every_command(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    await client.post(f"/drives/{drive}/write", data=b"secret", headers=auth)
    other = basic_auth(other_user)
    for path, body in (
        (f"/drives/{drive}/info", b""),
        (f"/drives/{drive}/read", b""),
        (f"/drives/{drive}/set", b"name stolen"),
        (f"/drives/{drive}/write", b"evil"),
        (f"/drives/{drive}/destroy", b""),
    ):
        response = await client.post(path, data=body, headers=other)
        assert response.status == 404, path
        assert response.headers["X-Elastic-Error"] == "missing"
    assert await (await client.get("/drives/list", headers=other)).text() == ""
    info = await drive_info(client, auth, drive)
    assert info["name"] == "test"
    assert await read_bytes(client, auth, f"/drives/{drive}/read/0/6") == b"secret"


@pytest.mark.parametrize("everyone", [False, True])
async def test_a_reader_can_read_but_not_change(
    client: TestClient, auth: dict[str, str], other_user: NewKey, everyone: bool
) -> None:
    reader = "ffffffff-ffff-ffff-ffff-ffffffffffff" if everyone else other_user.uuid
    drive = (await create_drive(client, auth, 100, readers=reader))["drive"]
    await client.post(f"/drives/{drive}/write", data=b"shared", headers=auth)
    other = basic_auth(other_user)
    assert (await drive_info(client, other, drive))["drive"] == drive
    assert await read_bytes(client, other, f"/drives/{drive}/read/0/6") == b"shared"
    for path, body in (
        (f"/drives/{drive}/set", b"name stolen"),
        (f"/drives/{drive}/write", b"evil"),
        (f"/drives/{drive}/destroy", b""),
    ):
        assert (await client.post(path, data=body, headers=other)).status == 404, path
    assert await read_bytes(client, auth, f"/drives/{drive}/read/0/6") == b"shared"


# -- reads and writes --------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_reads_are_clamped_to_the_end(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    payload = os.urandom(1001)
    drive = await drive_holding(client, auth, payload, cipher)
    assert await read_bytes(client, auth, f"/drives/{drive}/read/1000/50") == payload[1000:]
    assert await read_bytes(client, auth, f"/drives/{drive}/read/1001") == b""
    assert await read_bytes(client, auth, f"/drives/{drive}/read/5000/10") == b""
    assert await read_bytes(client, auth, f"/drives/{drive}/read/1k") == payload[1024:]
    assert await read_bytes(client, auth, f"/drives/{drive}/read/3/7") == payload[3:10]


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_read_at_the_end_of_whole_sectors_is_empty_and_no_error(
    client: TestClient, auth: dict[str, str], cipher: str, caplog: pytest.LogCaptureFixture
) -> None:
    payload = os.urandom(2048)
    drive = await drive_holding(client, auth, payload, cipher)
    for path in (f"/drives/{drive}/read/2048", f"/drives/{drive}/read/4096/512"):
        assert await read_bytes(client, auth, path) == b""
    assert await read_bytes(client, auth, f"/drives/{drive}/read/2000/48") == payload[2000:]
    # An empty read is no fault: an internal error once cut the connection's next answer.
    assert not [record for record in caplog.records if "internal_error" in record.getMessage()]


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_odd_offsets_and_lengths_write_exactly(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    size = 10007
    drive = (await create_drive(client, auth, size, cipher))["drive"]
    expected = bytearray(size)
    for offset, length in ((1, 1), (511, 2), (513, 1500), (4095, 4099), (10000, 7)):
        piece = os.urandom(length)
        response = await client.post(f"/drives/{drive}/write/{offset}", data=piece, headers=auth)
        assert response.status == 204
        expected[offset : offset + length] = piece
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == bytes(expected)


async def test_chunked_body_is_refused(client: TestClient, auth: dict[str, str]) -> None:
    drive = (await create_drive(client, auth, 1000))["drive"]

    async def body():  # type: ignore[no-untyped-def]
        yield b"abc"

    response = await client.post(f"/drives/{drive}/write", data=body(), headers=auth)
    assert response.status == 400
    assert response.headers["X-Elastic-Error"] == "usage"
    assert "hunked" in await response.text()
    assert await read_bytes(client, auth, f"/drives/{drive}/read/0/3") == bytes(3)


async def test_gzip_bomb_stops_at_the_end(client: TestClient, auth: dict[str, str]) -> None:
    drive = (await create_drive(client, auth, 1000000))["drive"]
    bomb = gzip.compress(bytes(200 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 300 * 1024
    response = await client.post(
        f"/drives/{drive}/write", data=bomb, headers={**auth, "Content-Encoding": "gzip"}
    )
    assert response.status == 507
    assert response.headers["X-Elastic-Error"] == "full"


@pytest.mark.parametrize(
    "body",
    [b"definitely not gzip", gzip.compress(b"x" * 5000)[:-12], gzip.compress(b"ok") + b"junk"],
    ids=["not-gzip", "truncated", "trailing-junk"],  # the same in every process (pytest-xdist)
)
async def test_corrupt_gzip_is_a_usage_error_and_not_acknowledged(
    client: TestClient, auth: dict[str, str], body: bytes
) -> None:
    drive = (await create_drive(client, auth, 10000))["drive"]
    response = await client.post(
        f"/drives/{drive}/write", data=body, headers={**auth, "Content-Encoding": "gzip"}
    )
    assert response.status == 400
    assert response.headers["X-Elastic-Error"] == "usage"
    assert (await drive_info(client, auth, drive))["write:requests"] == "0"


async def test_two_gzip_members_are_one_stream(client: TestClient, auth: dict[str, str]) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    body = gzip.compress(b"hello ") + gzip.compress(b"world")
    response = await client.post(
        f"/drives/{drive}/write", data=body, headers={**auth, "Content-Encoding": "gzip"}
    )
    assert response.status == 204
    assert await read_bytes(client, auth, f"/drives/{drive}/read/0/11") == b"hello world"


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_concurrent_writes_to_different_offsets(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    piece = 300001  # odd, so neighbouring writes share sectors
    drive = (await create_drive(client, auth, piece * 8, cipher))["drive"]
    pieces = [os.urandom(piece) for _ in range(8)]

    async def put(index: int) -> int:
        response = await client.post(
            f"/drives/{drive}/write/{index * piece}", data=pieces[index], headers=auth
        )
        return response.status

    assert await asyncio.gather(*(put(i) for i in range(8))) == [204] * 8
    assert await read_bytes(client, auth, f"/drives/{drive}/read") == b"".join(pieces)


async def test_unsupported_content_encoding_is_refused(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 100))["drive"]
    response = await client.post(
        f"/drives/{drive}/write", data=b"x", headers={**auth, "Content-Encoding": "br"}
    )
    assert response.status == 400


async def test_a_drive_being_read_cannot_be_shrunk(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    drive = (await create_drive(client, auth, 4096))["drive"]
    plan = platform.drives.open_read(user.uuid, drive, 0, None)
    shrink = await client.post(f"/drives/{drive}/set", data="size 100", headers=auth)
    assert shrink.status == 409  # the read promised 4096 bytes
    assert (await client.post(f"/drives/{drive}/set", data="size 8192", headers=auth)).status == 200
    plan.close()
    assert (await client.post(f"/drives/{drive}/set", data="size 100", headers=auth)).status == 200


async def test_listing_shows_every_change_at_once(
    client: TestClient, auth: dict[str, str], platform: Platform, user: NewKey
) -> None:
    # The listing is answered from memory until the database changes: check it changes.
    listed = lambda: platform.drives.list_uuids(user.uuid)  # noqa: E731
    assert listed() == []
    first = (await create_drive(client, auth, 10))["drive"]
    assert listed() == [first]
    second = (await create_drive(client, auth, 10))["drive"]
    assert listed() == listed() == [first, second]
    await client.post(f"/drives/{first}/destroy", headers=auth)
    assert listed() == [second]


async def test_listing_answers_show_every_change_at_once_in_text_and_json(
    client: TestClient, auth: dict[str, str]
) -> None:
    # Its rendered bodies are kept with the listing while nothing changes: check they go.
    async def listed() -> tuple[str, list[dict[str, str]]]:
        text = await (await client.get("/drives/list", headers=auth)).text()
        as_json = await client.get("/drives/list", headers={**auth, "Accept": "application/json"})
        assert as_json.headers["X-Elastic-Output"] == "list"
        return text, await as_json.json()

    assert await listed() == await listed() == ("", [])
    first = (await create_drive(client, auth, 10))["drive"]
    assert await listed() == await listed() == (f"{first}\n", [{"drive": first}])
    second = (await create_drive(client, auth, 10))["drive"]
    assert await listed() == (f"{first}\n{second}\n", [{"drive": first}, {"drive": second}])
    await client.post(f"/drives/{first}/destroy", headers=auth)
    assert await listed() == (f"{second}\n", [{"drive": second}])


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_never_written_ranges_go_as_gzip_to_clients_that_accept_it(
    client: TestClient, auth: dict[str, str], cipher: str
) -> None:
    size = 3 * 1024 * 1024
    drive = (await create_drive(client, auth, size, cipher))["drive"]
    await client.post(f"/drives/{drive}/write/1M", data=b"\x01" * 4096, headers=auth)
    empty = await client.get(
        f"/drives/{drive}/read/2M/1M", headers={**auth, "Accept-Encoding": "gzip"}
    )
    assert empty.headers["Content-Encoding"] == "gzip"
    assert int(empty.headers["Content-Length"]) < 4096
    assert await empty.read() == bytes(1024 * 1024)  # the client inflates it
    written = await client.get(
        f"/drives/{drive}/read/1M/1M", headers={**auth, "Accept-Encoding": "gzip"}
    )
    assert "Content-Encoding" not in written.headers
    assert (await written.read())[:4097] == b"\x01" * 4096 + b"\x00"
    plain = await client.get(
        f"/drives/{drive}/read/2M/1M", headers={**auth, "Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in plain.headers
    assert await plain.read() == bytes(1024 * 1024)
    info = await drive_info(client, auth, drive)
    assert info["read:bytes"] == str(3 * 1024 * 1024)


@pytest.mark.parametrize(
    "size",
    ["9223372036854775807", "8388607T", str(MAX_ENCRYPTED_SIZE + 1), str(MAX_ENCRYPTED_SIZE)],
)
async def test_an_encrypted_drive_too_large_for_any_file_is_a_usage_error(
    client: TestClient, auth: dict[str, str], platform: Platform, size: str
) -> None:
    response = await client.post("/drives/create", data=f"size {size}", headers=auth)
    assert response.status == 400
    assert response.headers["X-Elastic-Error"] == "usage"
    assert "too large" in await response.text()
    assert list(platform.drives.files.root.glob("*.img")) == []


async def test_growing_an_encrypted_drive_past_any_file_is_a_usage_error(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 4096, cipher="aes-xts-plain"))["drive"]
    response = await client.post(
        f"/drives/{drive}/set", data="size 9223372036854775807", headers=auth
    )
    assert response.status == 400
    assert "too large" in await response.text()
    assert (await drive_info(client, auth, drive))["size"] == "4096"


async def test_sums_of_huge_drive_sizes_never_overflow(
    client: TestClient, auth: dict[str, str], platform: Platform
) -> None:
    """Sizes summed for limits, account/info and metrics do not overflow 64 bits (SQLite
    raised "integer overflow", a 500, once a file system took two 4 EiB sparse files)."""
    drives = [(await create_drive(client, auth, 4096))["drive"] for _ in range(2)]
    with platform.engine.begin() as connection:
        for drive in drives:  # as large as a file can be on tmpfs or XFS
            drive_store.update_drive(connection, drive, size=1 << 62)
    response = await client.get("/account/info", headers=auth)
    assert response.status == 200, await response.text()
    assert int(parse_properties(await response.text())["usage:drive:bytes"]) == 1 << 63
    created = await client.post("/drives/create", data="size 1M", headers=auth)
    assert created.status == 200, await created.text()
