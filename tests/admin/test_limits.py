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


@pytest.mark.usefixtures("on_both_stores")
def test_a_count_limit_beyond_what_every_database_holds_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PostgreSQL's integer column holds 32 bits: a bigger limit was a crash there.
    state = tmp_path / "state"
    uuid = parse_properties(admin(state, capsys, "user", "create")[1])["user"]
    code, _, err = admin(state, capsys, "user", "set", uuid, "--max-cpu", "2147483648")
    assert code == 1 and "must be at most 2147483647" in err
    code, out, _ = admin(state, capsys, "user", "set", uuid, "--max-cpu", "2147483647")
    assert code == 0 and parse_properties(out)["limit:cpu"] == "2147483647"
