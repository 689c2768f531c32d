"""No secret in a QEMU command line, a process list or a log: a server with an encrypted
drive and a VNC password runs, and the run's logs and QEMU's /proc/PID/cmdline are searched
for every secret it used."""

import logging
import os
import pwd
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from openhosting.services.accounts.accounts import NewKey
from openhosting.services.platform import Platform
from openhosting.store import drives as drive_store
from tests.integration.server_helpers import create_server, qemu_driver, upload_guest, wait_booted


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


async def test_secrets_stay_out_of_command_lines_and_logs(
    client: TestClient, auth: dict[str, str], user: NewKey, platform: Platform,
    tiny_guest_image: Path, all_logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    drive = await upload_guest(client, auth, tiny_guest_image, cipher="aes-xts-plain")
    with platform.engine.connect() as connection:
        row = drive_store.get_drive(connection, drive)
    assert row is not None
    passphrase = platform.drives.passphrase_of(row)
    assert passphrase
    vnc_password = "Vq7#zK2w"
    body = (
        f"name secret\ncpu 2000\nmem 128\npersistent true\nide:0:0 {drive}\nboot ide:0:0\n"
        f"vnc:password {vnc_password}\n"
    )
    server = (await create_server(client, auth, body))["server"]
    await wait_booted(platform, server)
    vm = qemu_driver(platform).vm(server)
    cmdline = Path(f"/proc/{vm.pid}/cmdline").read_bytes()
    assert b"guest=" + server.encode() in cmdline  # the right process
    # Hardened: a seccomp sandbox, and no longer root once its files are open.
    assert b"-sandbox" in cmdline
    status = Path(f"/proc/{vm.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid == pwd.getpwnam("nobody").pw_uid
    run_dir = platform.servers.run_dir(server)
    leftovers = b"".join(
        path.read_bytes()
        for path in run_dir.iterdir()
        if path.is_file() and path.stat().st_size < 1 << 20
    )
    await client.post(f"/servers/{server}/set", data=f"vnc:password {vnc_password[::-1]}",
                      headers=auth)  # fmt: skip
    await client.post(f"/servers/{server}/stop", headers=auth)

    secrets = [passphrase, vnc_password.encode(), vnc_password[::-1].encode(),
               user.secret.encode()]  # fmt: skip
    logs = "\n".join(record.getMessage() for record in all_logs.records).encode()
    assert logs  # the run did log
    for secret in secrets:
        assert secret not in cmdline
        assert secret not in logs
    assert passphrase not in leftovers  # the passphrase file is gone once QEMU started
    assert not list(run_dir.glob("secret-*"))
