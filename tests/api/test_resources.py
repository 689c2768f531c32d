"""Resources through the API (docs/api.md §6): IPs from the pool and VLANs, their ownership,
limits and exhaustion. Rules that need an active server are in
tests/integration/test_resource_rules.py."""

import json
from pathlib import Path

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from openhosting.config import Config
from openhosting.model.common import is_uuid
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.wire.text import parse_properties, parse_properties_list
from tests.conftest import basic_auth, config_in

POOL = ("192.0.2.10", "192.0.2.11", "192.0.2.12")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A small pool, so that exhausting it is quick."""
    return config_in(
        tmp_path,
        network={
            "pool_range": f"{POOL[0]}-{POOL[-1]}",
            "pool_nameservers": "192.0.2.1 198.51.100.53",
        },
    )


async def create(
    client: TestClient, auth: dict[str, str], kind: str, body: str = "name r\n"
) -> dict[str, str]:
    response = await client.post(f"/resources/{kind}/create", data=body, headers=auth)
    assert response.status == 200, await response.text()
    assert response.headers["X-Elastic-Output"] == "properties"
    return parse_properties(await response.text())


async def status_and_error(response: ClientResponse) -> tuple[int, str | None]:
    await response.read()
    return response.status, response.headers.get("X-Elastic-Error")


async def test_case_35_ip_create_shows_how_to_configure_the_address_then_destroy(
    client: TestClient, auth: dict[str, str], user: NewKey
) -> None:
    info = await create(client, auth, "ip", "name x\ntag a b")
    assert info == {
        "resource": POOL[0],
        "type": "ip",
        "name": "x",
        "user": user.uuid,
        "netmask": "255.255.255.0",
        "gateway": "192.0.2.1",
        "nameserver": "192.0.2.1 198.51.100.53",
        "tags": "a b",
    }
    destroyed = await client.post(f"/resources/ip/{POOL[0]}/destroy", headers=auth)
    assert destroyed.status == 204
    gone = await client.get(f"/resources/ip/{POOL[0]}/info", headers=auth)
    assert await status_and_error(gone) == (404, "missing")
    assert "could not be found" in await gone.text()


async def test_case_34_list_is_type_and_resource_lines_or_a_json_array(
    client: TestClient, auth: dict[str, str]
) -> None:
    ip = (await create(client, auth, "ip"))["resource"]
    vlan = (await create(client, auth, "vlan"))["resource"]
    text = await client.get("/resources/list", headers=auth)
    assert text.status == 200
    assert text.headers["X-Elastic-Output"] == "list"
    assert (await text.text()).splitlines() == [f"ip {ip}", f"vlan {vlan}"]
    as_json = await client.get("/resources/list", headers={**auth, "Accept": "application/json"})
    assert json.loads(await as_json.text()) == [
        {"type": "ip", "resource": ip},
        {"type": "vlan", "resource": vlan},
    ]
    only_vlans = await client.post("/resources/vlan/list", headers=auth)
    assert (await only_vlans.text()).splitlines() == [f"vlan {vlan}"]
    only_ips = await client.get("/resources/ip/list", headers=auth)
    assert (await only_ips.text()).splitlines() == [f"ip {ip}"]


async def test_info_of_all_of_one_type_and_of_one(client: TestClient, auth: dict[str, str]) -> None:
    ip = await create(client, auth, "ip", "name public\nuser:role web")
    vlan = await create(client, auth, "vlan", "name backend")
    assert is_uuid(vlan["resource"]) and vlan["type"] == "vlan"
    assert "netmask" not in vlan and "gateway" not in vlan
    everything = await client.get("/resources/info", headers=auth)
    assert everything.headers["X-Elastic-Output"] == "properties list"
    assert parse_properties_list(await everything.text()) == [ip, vlan]
    ips = await client.get("/resources/ip/info", headers=auth)
    assert parse_properties_list(await ips.text()) == [ip]
    one = await client.get(f"/resources/vlan/{vlan['resource']}/info", headers=auth)
    assert parse_properties(await one.text()) == vlan
    assert ip["user:role"] == "web"


@pytest.mark.parametrize("kind", ["ip", "vlan"])
async def test_a_user_key_with_a_newline_is_refused(
    client: TestClient, auth: dict[str, str], kind: str
) -> None:
    # Written unescaped in the text answer, it would have forged a `resource` line.
    forged = {"name": "r", "user:x\nresource 198.51.100.7\nuser:y": "v"}
    json_auth = {**auth, "Content-Type": "application/json"}
    response = await client.post(
        f"/resources/{kind}/create", data=json.dumps(forged), headers=json_auth
    )
    assert await status_and_error(response) == (400, "usage")
    resource = (await create(client, auth, kind))["resource"]
    path = f"/resources/{kind}/{resource}/set"
    response = await client.post(path, data=json.dumps(forged), headers=json_auth)
    assert await status_and_error(response) == (400, "usage")
    listed = await (await client.get("/resources/list", headers=auth)).text()
    assert listed == f"{kind} {resource}\n"
    info = await (await client.get(f"/resources/{kind}/{resource}/info", headers=auth)).text()
    assert [line for line in info.splitlines() if line.startswith("resource ")] == [
        f"resource {resource}"
    ]


async def test_set_changes_name_tags_and_user_keys_only(
    client: TestClient, auth: dict[str, str]
) -> None:
    vlan = (await create(client, auth, "vlan", "name a\ntags x\nuser:k v"))["resource"]
    path = f"/resources/vlan/{vlan}/set"
    response = await client.post(path, data="name b\ntag y z\nuser:k \nuser:n 1", headers=auth)
    assert response.status == 200
    info = parse_properties(await response.text())
    assert (info["resource"], info["name"], info["tags"], info["user:n"]) == (vlan, "b", "y z", "1")
    assert "user:k" not in info
    for body in ("resource 192.0.2.99", "user 00000000-0000-4000-8000-000000000000",
                 "netmask 255.0.0.0", "colour blue"):  # fmt: skip
        refused = await client.post(path, data=body, headers=auth)
        assert await status_and_error(refused) == (400, "usage"), body


async def test_an_address_can_be_asked_for_if_it_is_free_and_in_the_pool(
    client: TestClient, auth: dict[str, str]
) -> None:
    assert (await create(client, auth, "ip", f"resource {POOL[2]}"))["resource"] == POOL[2]
    again = await client.post("/resources/ip/create", data=f"resource {POOL[2]}", headers=auth)
    assert await status_and_error(again) == (409, "busy")
    for body in ("resource 198.51.100.7", "resource 192.0.2.1", "resource nonsense"):
        refused = await client.post("/resources/ip/create", data=body, headers=auth)
        assert await status_and_error(refused) == (400, "usage"), body
    vlan = await client.post("/resources/vlan/create", data=f"resource {POOL[0]}", headers=auth)
    assert await status_and_error(vlan) == (400, "usage")


async def test_running_out_of_addresses_is_full_and_destroy_frees_one(
    client: TestClient, auth: dict[str, str]
) -> None:
    created = [(await create(client, auth, "ip"))["resource"] for _ in POOL]
    assert created == list(POOL)
    full = await client.post("/resources/ip/create", data="name more", headers=auth)
    assert await status_and_error(full) == (507, "full")
    assert (await client.post(f"/resources/ip/{POOL[1]}/destroy", headers=auth)).status == 204
    assert (await create(client, auth, "ip"))["resource"] == POOL[1]


async def test_above_the_accounts_ip_or_vlan_limit_is_billing(
    client: TestClient, auth: dict[str, str], user: NewKey, platform: Platform
) -> None:
    platform.accounts.set_limits(user.uuid, max_ips=1, max_vlans=0)
    await create(client, auth, "ip")
    for kind in ("ip", "vlan"):
        refused = await client.post(f"/resources/{kind}/create", data="name r", headers=auth)
        assert await status_and_error(refused) == (402, "billing"), kind
    assert (await client.get("/resources/list", headers=auth)).status == 200
    platform.accounts.set_limits(user.uuid, max_ips=None, max_vlans=None)
    await create(client, auth, "vlan")


async def test_another_users_resources_are_missing_for_every_command(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    mine = {kind: (await create(client, auth, kind))["resource"] for kind in ("ip", "vlan")}
    theirs = basic_auth(other_user)
    assert await (await client.get("/resources/list", headers=theirs)).text() == ""
    for kind, resource in mine.items():
        for command in ("info", "set", "destroy"):
            response = await client.post(
                f"/resources/{kind}/{resource}/{command}", data="name mine", headers=theirs
            )
            assert await status_and_error(response) == (404, "missing"), (kind, command)
    # Theirs to create: the pool hands them an address nobody holds.
    assert (await create(client, theirs, "ip"))["resource"] == POOL[1]
    assert len((await (await client.get("/resources/list", headers=auth)).text()).split()) == 4


@pytest.mark.parametrize(
    "path",
    [
        "/resources/ip/198.51.100.7/info",
        "/resources/ip/not-an-address/info",
        "/resources/vlan/00000000-0000-4000-8000-000000000000/info",
        "/resources/vlan/not-a-uuid/destroy",
        "/resources/disk/list",
        "/resources/disk/info",
    ],
)
async def test_unknown_resources_and_types_are_missing(
    client: TestClient, auth: dict[str, str], path: str
) -> None:
    response = await client.post(path, headers=auth)
    assert await status_and_error(response) == (404, "missing")


async def test_changing_commands_refuse_get(client: TestClient, auth: dict[str, str]) -> None:
    vlan = (await create(client, auth, "vlan"))["resource"]
    for path in ("/resources/ip/create", f"/resources/vlan/{vlan}/set",
                 f"/resources/vlan/{vlan}/destroy"):  # fmt: skip
        response = await client.get(path, headers=auth)
        assert await status_and_error(response) == (405, "method"), path


async def test_servers_may_name_only_their_users_ip_and_vlan_resources(
    client: TestClient, auth: dict[str, str], other_user: NewKey
) -> None:
    ip = (await create(client, basic_auth(other_user), "ip"))["resource"]
    body = f"name s\ncpu 1000\nmem 256\nnic:0:model e1000\nnic:0:dhcp {ip}\n"
    for path in ("/servers/create", "/servers/create/stopped"):
        refused = await client.post(path, data=body, headers=auth)
        assert await status_and_error(refused) == (404, "missing"), path
        assert "nic:0:dhcp" in await refused.text()
    mine = (await create(client, auth, "ip"))["resource"]
    stopped = await client.post(
        "/servers/create/stopped", data=body.replace(ip, mine), headers=auth
    )
    assert stopped.status == 200
    info = parse_properties(await stopped.text())
    assert info["nic:0:dhcp"] == mine and "nic:0:dhcp:ip" not in info
    server = info["server"]
    changed = await client.post(f"/servers/{server}/set", data=f"nic:0:dhcp {ip}", headers=auth)
    assert await status_and_error(changed) == (404, "missing")
