"""Drive-bytes limits per storage tier (`openhosting-admin user set --max-drive-bytes-tier
ssd=SIZE`): a create or a resize beyond the tier's limit is 402 `billing` naming the tier,
while the other tiers and the account's own limit go on as before; `account/info` shows
each tier's limit and use."""

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.admin.tool import main
from openhosting.config import Config
from openhosting.services.accounts.accounts import NewKey
from openhosting.wire.text import parse_properties
from tests.api.drive_helpers import create_drive
from tests.conftest import config_with_tiers

MIB = 1 << 20


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return config_with_tiers(tmp_path, "ssd")


def admin(config: Config, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["--state-dir", config.state_dir, *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def try_create(client: TestClient, auth: dict[str, str], size: int, tier: str) -> int:
    body = f"name t\nsize {size}\nencryption:cipher none\ntier {tier}\n"
    response = await client.post("/drives/create", data=body, headers=auth)
    if response.status != 200:
        assert response.headers["X-Elastic-Error"] == "billing"
        assert f"tier {tier}" in await response.text()
    return response.status


async def test_a_tier_limit_refuses_only_that_tier(
    client: TestClient,
    auth: dict[str, str],
    user: NewKey,
    config: Config,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = admin(config, capsys, "user", "set", user.uuid, "--max-drive-bytes-tier", "ssd=3M")
    assert code == 0 and parse_properties(out)["limit:drive:bytes:ssd"] == str(3 * MIB)

    ssd = (await create_drive(client, auth, 2 * MIB, tier="ssd"))["drive"]
    assert await try_create(client, auth, 2 * MIB, "ssd") == 402  # 4 MiB > 3 MiB
    assert await try_create(client, auth, 8 * MIB, "disk") == 200  # disk has no limit
    resize = await client.post(f"/drives/{ssd}/set", data=f"size {4 * MIB}", headers=auth)
    assert resize.status == 402 and resize.headers["X-Elastic-Error"] == "billing"
    assert (
        await client.post(f"/drives/{ssd}/set", data=f"size {3 * MIB}", headers=auth)
    ).status == 200

    info = parse_properties(await (await client.get("/account/info", headers=auth)).text())
    assert info["limit:drive:bytes:ssd"] == str(3 * MIB)
    assert info["usage:drive:bytes:ssd"] == str(3 * MIB)

    code, _ = admin(config, capsys, "user", "set", user.uuid, "--max-drive-bytes-tier", "ssd=none")
    assert code == 0
    assert await try_create(client, auth, 2 * MIB, "ssd") == 200


def test_a_tier_limit_names_a_tier_the_platform_has(
    config: Config, user: NewKey, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad, word in (("nvme=1G", "no tier 'nvme'"), ("ssd", "TIER=SIZE"), ("ssd=lots", "")):
        code, out = admin(config, capsys, "user", "set", user.uuid, "--max-drive-bytes-tier", bad)
        assert code != 0 and word in out, (bad, out)
