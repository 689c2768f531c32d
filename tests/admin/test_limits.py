"""`openhosting-admin user set --max-ips N --max-vlans N`: the account limits of resources."""

from pathlib import Path

import pytest

from openhosting.admin.tool import main
from openhosting.wire.text import parse_properties


def admin(state: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--state-dir", str(state), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ip_and_vlan_limits_are_set_shown_and_lifted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    code, out, _ = admin(state, capsys, "user", "create", "--name", "bob")
    assert code == 0
    uuid = parse_properties(out)["user"]
    code, out, _ = admin(state, capsys, "user", "set", uuid, "--max-ips", "2", "--max-vlans", "0")
    assert code == 0
    shown = parse_properties(out)
    assert (shown["limit:ips"], shown["limit:vlans"]) == ("2", "0")
    code, out, _ = admin(state, capsys, "user", "set", uuid, "--max-ips", "none")
    assert code == 0
    shown = parse_properties(admin(state, capsys, "user", "show", uuid)[1])
    assert "limit:ips" not in shown and shown["limit:vlans"] == "0"
    code, _, err = admin(state, capsys, "user", "set", uuid, "--max-vlans", "lots")
    assert code == 1 and "--max-vlans" in err
