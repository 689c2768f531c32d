"""`openhosting-admin user create` and `user delete`: what a name may be, and a user deleted
only once it owns nothing, alike on both engines."""

import asyncio
from pathlib import Path

import pytest

from openhosting.admin.tool import main
from openhosting.config import load_config
from openhosting.services.platform import Platform, open_platform
from openhosting.store import drives as drive_store
from openhosting.wire.text import parse_properties


@pytest.mark.usefixtures("on_both_stores")
def test_a_user_name_longer_than_its_column_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PostgreSQL enforces the column's 256 characters: it was a traceback there.
    state = ["--state-dir", str(tmp_path / "state")]
    assert main([*state, "user", "create", "--name", "x" * 257]) == 1
    assert "at most 256 characters" in capsys.readouterr().err
    assert main([*state, "user", "create", "--name", "x" * 256]) == 0
    assert parse_properties(capsys.readouterr().out)["name"] == "x" * 256


async def _give_things(platform: Platform, user: str) -> tuple[str, str, str]:
    drive = await platform.drives.create(user, {"size": "1M", "encryption:cipher": "none"})
    server = await platform.servers.create(user, {"name": "s", "cpu": "500", "mem": "64"}, False)
    vlan = platform.resources.create(user, "vlan", {"name": "office"})
    return str(drive["drive"]), str(server["server"]), str(vlan["resource"])


@pytest.mark.usefixtures("on_both_stores")
def test_a_user_who_owns_things_is_not_deleted_until_they_are_destroyed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tables' cascade took the user's drives, servers and resources with the row, status
    # 0: their files, VMs and addresses stayed behind with no row to name them.
    state = ["--state-dir", str(tmp_path / "state")]
    assert main([*state, "user", "create", "--name", "owner"]) == 0
    user = parse_properties(capsys.readouterr().out)["user"]
    config = load_config(overrides={"state_dir": str(tmp_path / "state"), "first_user": False})
    platform = open_platform(config)
    try:
        drive, server, vlan = asyncio.run(_give_things(platform, user))
        file = config.drive_path / f"{drive}.img"
        assert file.exists()
        assert main([*state, "user", "delete", user]) == 1
        assert capsys.readouterr().err == (
            f"openhosting-admin: User {user} still owns 1 drive, 1 server, 1 resource:"
            " destroy them first\n"
        )
        assert main([*state, "user", "show", user]) == 0
        with platform.engine.connect() as connection:
            assert [row.uuid for row in drive_store.drives_of(connection, user)] == [drive]
        assert file.exists()

        asyncio.run(platform.servers.destroy(user, server))
        asyncio.run(platform.drives.destroy(user, drive))
        platform.resources.destroy(user, "vlan", vlan)
    finally:
        platform.close()
    capsys.readouterr()
    assert main([*state, "user", "delete", user]) == 0
    assert main([*state, "user", "show", user]) == 1
    assert "could not be found" in capsys.readouterr().err
