"""Server commands that need no running VM: validation, ownership, stopped-server rules
(docs/api.md §5). Booting servers is tested in tests/integration/."""

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.store import servers as server_store
from openhosting.wire.text import parse_properties, parse_properties_list
from tests.api.drive_helpers import create_drive
from tests.conftest import SAMPLES, basic_auth

BASE = "name s\ncpu 1000\nmem 256\n"


async def stopped_server(client: TestClient, auth: dict[str, str], body: str = BASE) -> str:
    response = await client.post("/servers/create/stopped", data=body, headers=auth)
    assert response.status == 200, await response.text()
    info = parse_properties(await response.text())
    assert info["status"] == "stopped"
    return info["server"]


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ("name s\ncpu abc\nmem 256", "cpu"),  # compat case 32
        ("name s\ncpu 1000\nmem lots", "mem"),
        ("name s\ncpu 1000\nmem 99999999", "mem"),
        ("name s\ncpu 0\nmem 256", "cpu"),
        ("cpu 1000\nmem 256", "name"),
        (BASE + "colour blue", "colour"),
        (BASE + "ide:2:0 00000000-0000-4000-8000-000000000000", "ide:2:0"),
        (BASE + "scsi:1:0 00000000-0000-4000-8000-000000000000", "scsi:1:0"),
        (BASE + "block:8 00000000-0000-4000-8000-000000000000", "block:8"),
        (BASE + "nic:0:model ne2000", "nic:0:model"),
        (BASE + "nic:0:model e1000\nnic:0:mac 01:00:00:00:00:01", "nic:0:mac"),
        (BASE + "vnc:password 123456789", "vnc:password"),
        (BASE + "smp many", "smp"),
        (BASE + "persistent maybe", "persistent"),
        (BASE + "boot ide:0:0", "boot"),
        (BASE + "ide:0:0 not-a-uuid", "ide:0:0"),
        (BASE + "nic:1:model e1000\nnic:1:vlan 00000000-0000-4000-8000-000000000000", "VLAN"),
        (BASE + "nic:0:model e1000\nnic:0:block tcp/22 tcp/65536", "nic:0:block: 'tcp/65536'"),
        (BASE + "nic:0:model e1000\nnic:0:block icmp/8", "nic:0:block: 'icmp/8'"),
        (BASE + "nic:0:model e1000\nnic:0:block 90-80", "nic:0:block: '90-80'"),
        (BASE + "nic:1:block tcp/22", "nic:1:block"),
        (
            BASE + "nic:0:model e1000\nnic:0:mac 52:54:00:12:34:56\n"
            "nic:1:model virtio\nnic:1:mac 52:54:00:12:34:56",
            "nic:1:mac 52:54:00:12:34:56 is nic:0:mac too",
        ),
        ("name " + "n" * 257 + "\ncpu 1000\nmem 256", "name"),
        (BASE + "tags " + "t" * 4097, "tags"),
        (BASE + "user:" + "k" * 124 + " v", "user:kkk"),
        (BASE + "user:note " + "v" * 4097, "user:note"),
        (BASE + "".join(f"user:k{index} v\n" for index in range(65)), "user:* keys"),
    ],
)
async def test_invalid_configuration_is_a_usage_error_naming_the_key(
    client: TestClient, auth: dict[str, str], body: str, word: str
) -> None:
    for path in ("/servers/create", "/servers/create/stopped"):
        response = await client.post(path, data=body, headers=auth)
        assert response.status == 400, (path, await response.text())
        assert response.headers["X-Elastic-Error"] == "usage"
        assert response.content_type == "text/plain"
        assert word in await response.text()
    assert await (await client.get("/servers/list", headers=auth)).text() == ""


async def test_a_drive_that_does_not_exist_is_missing(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = BASE + "ide:0:0 00000000-0000-4000-8000-000000000000"
    response = await client.post("/servers/create/stopped", data=body, headers=auth)
    assert response.status == 404
    assert "ide:0:0" in await response.text()


async def test_another_users_drive_is_missing_and_a_readers_drive_only_a_cdrom(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    other = basic_auth(other_user)
    private = (await create_drive(client, other, 1000))["drive"]
    shared = (await create_drive(client, other, 1000, readers=(await _uuid(auth))))["drive"]
    response = await client.post(
        "/servers/create/stopped", data=BASE + f"ide:0:0 {private}", headers=auth
    )
    assert response.status == 404
    as_disk = await client.post(
        "/servers/create/stopped", data=BASE + f"ide:0:0 {shared}", headers=auth
    )
    assert as_disk.status == 400 and "cdrom" in await as_disk.text()
    await stopped_server(client, auth, BASE + f"ide:1:0 {shared}\nide:1:0:media cdrom")


async def _uuid(auth: dict[str, str]) -> str:
    import base64

    return base64.b64decode(auth["Authorization"].split()[1]).decode().split(":")[0]


async def test_case_23_jclouds_create_stopped_echoes_password(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 1000))["drive"]
    body = (
        f"name TestServer\ncpu 2000\nmem 1024\nsmp auto\nide:0:0 {drive}\nboot ide:0:0\n"
        "nic:0:model e1000\nnic:0:dhcp auto\npassword XXXXXXXX\nvnc:ip auto\n"
        "persistent false\nide:0:0:media disk"
    )
    response = await client.post("/servers/create/stopped", data=body, headers=auth)
    assert response.status == 200
    info = parse_properties(await response.text())
    assert (info["status"], info["password"], info["vnc:password"]) == (
        "stopped", "XXXXXXXX", "XXXXXXXX",
    )  # fmt: skip
    assert (info["smp"], info["smp:cores"], info["vnc:ip"], info["vnc"]) == (
        "auto", "1", "auto", "auto",
    )  # fmt: skip
    assert (info["ide:0:0"], info["ide:0:0:media"], info["boot"]) == (drive, "disk", "ide:0:0")


async def test_the_real_services_create_body_is_accepted(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = (SAMPLES / "create_server.txt").read_text()
    drive = (await create_drive(client, auth, 1000))["drive"]
    body = body.replace("08c92dd5-70a0-4f51-83d2-835919d254df", drive)
    await stopped_server(client, auth, body)


async def test_list_and_info_forms(client: TestClient, auth: dict[str, str]) -> None:
    first = await stopped_server(client, auth)
    second = await stopped_server(client, auth, "name t\ncpu 2500\nmem 512\nsmp 2")
    listing = await client.get("/servers/list", headers=auth)
    assert listing.headers["X-Elastic-Output"] == "list"
    assert (await listing.text()).splitlines() == [f"{first} 1000 256", f"{second} 2500 512"]
    as_json = await client.get("/servers/list", headers={**auth, "Accept": "application/json"})
    assert await as_json.json() == [
        {"server": first, "cpu": 1000, "mem": 256},
        {"server": second, "cpu": 2500, "mem": 512},
    ]
    # compat case 22: blank-line separated objects with integer cpu and mem
    info = await client.get("/servers/info", headers={**auth, "Accept": "text/plain"})
    assert info.headers["X-Elastic-Output"] == "properties list"
    servers = parse_properties_list(await info.text())
    assert [s["server"] for s in servers] == [first, second]
    assert all(s["cpu"].isdigit() and s["mem"].isdigit() for s in servers)
    assert [s["smp"] for s in servers] == ["auto", "2"]
    # compat case 13: a JSON array with the configuration and status
    as_json = await client.get(
        "/servers/info",
        headers={**auth, "Accept": "application/json", "Content-Type": "application/json"},
    )
    documents = await as_json.json()
    assert [d["status"] for d in documents] == ["stopped", "stopped"]
    assert documents[1]["smp"] == 2 and documents[0]["cpu"] == 1000


async def test_case_19_set_answers_200_with_info(client: TestClient, auth: dict[str, str]) -> None:
    server = await stopped_server(client, auth)
    response = await client.post(
        f"/servers/{server}/set",
        data=json.dumps({"name": "x", "cpu": "2"}),
        headers={**auth, "Content-Type": "application/json", "Accept": "application/json"},
    )
    assert response.status == 200
    document = await response.json()
    assert (document["name"], document["cpu"], document["server"]) == ("x", 2, server)


async def test_set_on_a_stopped_server_changes_any_key_and_unsets_with_empty(
    client: TestClient, auth: dict[str, str]
) -> None:
    drive = (await create_drive(client, auth, 1000))["drive"]
    server = await stopped_server(client, auth, BASE + "tags a b\nuser:x 1")
    body = f"mem 512\nide:0:0 {drive}\nboot ide:0:0\ntags\nuser:y 2\nvnc:password pw"
    response = await client.post(f"/servers/{server}/set", data=body, headers=auth)
    info = parse_properties(await response.text())
    assert (info["mem"], info["ide:0:0"], info["boot"], info["user:x"], info["user:y"]) == (
        "512", drive, "ide:0:0", "1", "2",
    )  # fmt: skip
    assert "tags" not in info
    invalid = await client.post(f"/servers/{server}/set", data="mem 1", headers=auth)
    assert invalid.status == 400
    assert (
        parse_properties(await (await client.get(f"/servers/{server}/info", headers=auth)).text())[
            "mem"
        ]
        == "512"
    )


async def test_sets_cannot_pile_up_user_keys_without_end(
    client: TestClient, auth: dict[str, str]
) -> None:
    # Each set merges its user keys into the server's: unbounded, 20 sets of 60 KiB made a
    # row (and every info of it) of 1.2 MB.
    server = await stopped_server(client, auth)
    for batch in range(2):
        body = "".join(f"user:k{batch}_{index} {'v' * 900}\n" for index in range(32))
        response = await client.post(f"/servers/{server}/set", data=body, headers=auth)
        assert response.status == 200, await response.text()
    response = await client.post(f"/servers/{server}/set", data="user:one more", headers=auth)
    assert (response.status, response.headers["X-Elastic-Error"]) == (400, "usage")
    assert "at most 64" in await response.text()
    info = parse_properties(
        await (await client.get(f"/servers/{server}/info", headers=auth)).text()
    )
    assert len([key for key in info if key.startswith("user:")]) == 64
    assert "user:one" not in info
    response = await client.post(
        f"/servers/{server}/set", data="user:k0_0\nuser:one more", headers=auth
    )
    assert response.status == 200, await response.text()  # one gone, one in: still 64


async def test_a_drive_destroyed_while_its_server_starts_makes_the_start_missing(
    client: TestClient,
    auth: dict[str, str],
    user: NewKey,
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A start checks its drives, then claims them: a destroy of one that came in between
    # (a client's two requests at once) left a claim on nothing, and QEMU failed on the
    # missing file: 500 failed, the destroy 204.
    drive = (await create_drive(client, auth, 1000))["drive"]
    server = await stopped_server(client, auth, BASE + f"ide:0:0 {drive}\nboot ide:0:0")
    start_once = platform.servers._start_once

    async def destroyed_first(*args: Any, **kwargs: Any) -> None:
        await platform.drives.destroy(user.uuid, drive)
        await start_once(*args, **kwargs)

    monkeypatch.setattr(platform.servers, "_start_once", destroyed_first)
    response = await client.post(f"/servers/{server}/start", headers=auth)
    assert (response.status, response.headers["X-Elastic-Error"]) == (404, "missing")
    assert f"ide:0:0: drive {drive} could not be found" in await response.text()
    info = parse_properties(
        await (await client.get(f"/servers/{server}/info", headers=auth)).text()
    )
    assert info["status"] == "stopped"
    with platform.engine.connect() as connection:
        assert server_store.claims_on_drives(connection, [drive]) == []


async def test_case_25_destroy_then_info_is_missing(
    client: TestClient, auth: dict[str, str]
) -> None:
    server = await stopped_server(client, auth)
    response = await client.post(
        f"/servers/{server}/destroy", headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status == 204
    missing = await client.get(f"/servers/{server}/info", headers=auth)
    assert missing.status == 404 and "could not be found" in await missing.text()


async def test_power_commands_on_a_stopped_server(client: TestClient, auth: dict[str, str]) -> None:
    server = await stopped_server(client, auth)
    assert (await client.post(f"/servers/{server}/stop", headers=auth)).status == 204
    assert (await client.post(f"/servers/{server}/shutdown", headers=auth)).status == 204
    reset = await client.post(f"/servers/{server}/reset", headers=auth)
    assert reset.status == 409 and reset.headers["X-Elastic-Error"] == "busy"
    for command in ("start", "stop", "shutdown", "reset", "destroy", "set"):
        response = await client.get(f"/servers/{server}/{command}", headers=auth)
        assert response.status == 405, command  # compat case 30


async def test_another_users_server_is_missing_for_every_command(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    server = await stopped_server(client, auth)
    other = basic_auth(other_user)
    for command in ("info", "start", "set", "stop", "shutdown", "reset", "destroy"):
        response = await client.post(f"/servers/{server}/{command}", data=b"name x", headers=other)
        assert response.status == 404, command
    assert await (await client.get("/servers/list", headers=other)).text() == ""
    info = parse_properties(
        await (await client.get(f"/servers/{server}/info", headers=auth)).text()
    )
    assert (info["name"], info["status"]) == ("s", "stopped")


BLOCKED = "tcp/43594 tcp/5902 udp/5060 tcp/5900 tcp/5901 tcp/21 tcp/22 tcp/23 tcp/25 tcp/110"


async def test_nic_block_is_shown_in_info_and_set_like_any_key(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    server = await stopped_server(client, auth, BASE + f"nic:0:model e1000\nnic:0:block {BLOCKED}")
    info = parse_properties(
        await (await client.get(f"/servers/{server}/info", headers=auth)).text()
    )
    assert info["nic:0:block"] == BLOCKED  # as the real service sent it, in its order
    as_json = await client.post(
        f"/servers/{server}/set",
        data=json.dumps({"nic:0:block": ["udp/53", "8000-8100"]}),
        headers={**auth, "Content-Type": "application/json", "Accept": "application/json"},
    )
    assert as_json.status == 200
    assert (await as_json.json())["nic:0:block"] == "udp/53 8000-8100"
    bad = await client.post(f"/servers/{server}/set", data="nic:0:block ssh", headers=auth)
    assert bad.status == 400 and bad.headers["X-Elastic-Error"] == "usage"
    assert "nic:0:block: 'ssh'" in await bad.text()
    # Another user's server is missing, whatever the body.
    other = basic_auth(other_user)
    stranger = await client.post(f"/servers/{server}/set", data="nic:0:block 22", headers=other)
    assert stranger.status == 404 and stranger.headers["X-Elastic-Error"] == "missing"
    unset = await client.post(f"/servers/{server}/set", data="nic:0:block", headers=auth)
    assert "nic:0:block" not in parse_properties(await unset.text())
