"""`openhosting-admin backup DIR`: taken while the platform runs, it restores users, their keys
and encrypted drives (given the drive files); it never writes into a used directory and never
leaves half a backup."""

import os
import shutil
import stat
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.admin.tool import main
from openhosting.config import Config, load_config
from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform, open_platform
from tests.api.drive_helpers import create_drive, read_bytes
from tests.conftest import basic_auth, serve_api


def admin(state: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--state-dir", str(state), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_a_backup_taken_while_running_restores_keys_and_encrypted_drives(
    client: TestClient,
    auth: dict[str, str],
    user: NewKey,
    config: Config,
    platform: Platform,
    aiohttp_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drive = (await create_drive(client, auth, 100_000, "aes-xts-plain"))["drive"]
    data = os.urandom(100_000)
    await client.post(f"/drives/{drive}/write", data=data, headers=auth)

    backup = tmp_path / "backup"
    code, out, err = admin(config.state_path, capsys, "backup", str(backup))
    assert code == 0, err
    assert f"database {backup / 'openhosting.sqlite'}" in out and "drives not included" in out
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    for name in ("openhosting.sqlite", "platform.key"):
        assert stat.S_IMODE((backup / name).stat().st_mode) == 0o600

    # Restored elsewhere: the two files into a new state directory, the drives beside them.
    restored_state = tmp_path / "restored"
    restored_state.mkdir(mode=0o700)
    for name in ("openhosting.sqlite", "platform.key"):
        shutil.copy2(backup / name, restored_state / name)
    shutil.copytree(config.drive_path, restored_state / "drives")
    restored = open_platform(load_config(env={}, overrides={"state_dir": str(restored_state)}))
    try:
        restored_client = await serve_api(aiohttp_client, restored)
        # The same secret key still signs in, and the encrypted drive decrypts.
        assert await read_bytes(restored_client, basic_auth(user), f"/drives/{drive}/read") == data
    finally:
        restored.close()


def test_a_used_directory_or_a_missing_state_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    admin(state, capsys, "init")  # makes the platform's state
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    code, _, err = admin(state, capsys, "backup", str(used))
    assert code == 1 and "not an empty directory" in err
    assert sorted(p.name for p in used.iterdir()) == ["keep.txt"]

    nowhere = tmp_path / "no-state"
    code, _, err = admin(nowhere, capsys, "backup", str(tmp_path / "b"))
    assert code == 1 and "No platform state to back up" in err
    assert not nowhere.exists()  # the backup did not make a platform to back up
    assert not (tmp_path / "b").exists()


def test_a_failed_backup_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    admin(state, capsys, "init")

    def broken_copy(database: Path, copy_path: Path) -> None:
        copy_path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("openhosting.store.backup._copy_database", broken_copy)
    target = tmp_path / "backup"
    code, _, err = admin(state, capsys, "backup", str(target))
    assert code == 1 and "No space left on device" in err
    assert not target.exists()


def test_on_postgresql_the_backup_holds_the_key_and_names_where_the_database_is_backed_up(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    postgres_url: str,
) -> None:
    monkeypatch.setenv("OH_STORE_URL", postgres_url)
    state = tmp_path / "state"
    assert admin(state, capsys, "user", "create")[0] == 0
    backup = tmp_path / "backup"
    code, out, err = admin(state, capsys, "backup", str(backup))
    assert code == 0, err
    assert "database not included: it is PostgreSQL's (store.url)" in out
    assert sorted(path.name for path in backup.iterdir()) == ["platform.key"]
    assert (backup / "platform.key").read_bytes() == (state / "platform.key").read_bytes()
    assert not (state / "openhosting.sqlite").exists()
