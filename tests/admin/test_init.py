"""`openhosting-admin init` and `config show`: a new platform's state, database and first user
with the lines to reach it, made once; and the configuration the admin tool reads on an
installed host."""

import re
import stat
from pathlib import Path

import pytest

from openhosting.admin import tool as admin
from openhosting.config import load_config
from openhosting.services.platform import open_platform

EXPORTS = re.compile(r"export OHURI=(\S+)\nexport OHAUTH=([0-9a-f-]{36}):(\S+)\n")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = admin.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "openhosting.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[api]\npublic_url = "https://api.example/"\n'
    )
    return path


def user_count(config_file: Path) -> int:
    platform = open_platform(load_config(config_file, env={}))
    try:
        return len(platform.accounts.list_users())
    finally:
        platform.close()


def test_init_makes_the_state_and_a_first_user_and_prints_working_export_lines(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--config", str(config_file), "init")
    assert code == 0, err
    match = EXPORTS.search(out)
    assert match, out
    assert match.group(1) == "https://api.example/"  # api.public_url, from the file
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / "openhosting.sqlite").is_file() and (state / "platform.key").is_file()
    platform = open_platform(load_config(config_file, env={}))
    try:
        assert platform.accounts.authenticate(match.group(2), match.group(3)) == match.group(2)
    finally:
        platform.close()


def test_a_second_init_creates_no_user_unless_asked(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "--config", str(config_file), "init")[0] == 0
    code, out, err = run(capsys, "--config", str(config_file), "init")
    assert (code, out) == (0, "")
    assert "has users already" in err and "--another" in err
    assert user_count(config_file) == 1
    code, out, _ = run(capsys, "--config", str(config_file), "init", "--another")
    assert code == 0 and EXPORTS.search(out)
    assert user_count(config_file) == 2


def test_without_config_the_installed_configuration_is_read_when_it_exists(
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin, "SYSTEM_CONFIG_PATH", config_file)
    code, out, err = run(capsys, "init")
    assert code == 0, err
    assert EXPORTS.search(out)
    assert (tmp_path / "state" / "openhosting.sqlite").is_file()
    # --config still wins, and no file at the installed path means the embedded defaults.
    other = tmp_path / "other.toml"
    other.write_text(f'state_dir = "{tmp_path / "other"}"\n')
    assert run(capsys, "--config", str(other), "init")[0] == 0
    assert (tmp_path / "other" / "openhosting.sqlite").is_file()
    monkeypatch.setattr(admin, "SYSTEM_CONFIG_PATH", tmp_path / "missing.toml")
    shown = run(capsys, "config", "show")[1]
    assert '# state_dir = "state"' in shown and str(tmp_path) not in shown


def test_config_show_prints_the_configuration_in_effect(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--config", str(config_file), "config", "show")
    assert code == 0
    assert f'state_dir = "{tmp_path / "state"}"' in out
    assert 'public_url = "https://api.example/"' in out
    assert '# listen = "127.0.0.1:8080"' in out  # a default, commented out
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    # In effect: the file and the environment (the tests' own run directory is named there).
    assert load_config(shown, env={}) == load_config(config_file)
    assert not (tmp_path / "state").exists()  # showing the configuration makes no state


def test_bad_network_settings_are_a_clear_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[network]\nmode = "carrier-pigeon"\n')
    code, _, err = run(capsys, "--config", str(path), "init")
    assert code == 2
    assert "network.mode" in err


@pytest.mark.parametrize(
    "command",
    [
        ["user", "list"],
        ["user", "show", "3f1c0000-0000-4000-8000-000000000000"],
        ["user", "set", "3f1c0000-0000-4000-8000-000000000000", "--max-servers", "1"],
        ["account", "credit", "3f1c0000-0000-4000-8000-000000000000", "5"],
        ["standard", "list"],
        ["jobs", "list"],
        ["audit", "--object", "3f1c0000-0000-4000-8000-000000000000"],
    ],
)
def test_a_command_where_there_is_no_platform_makes_none_and_names_where_it_looked(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    # A newcomer's two slips: a mistyped --state-dir, and the default `state` from the wrong
    # working directory. Either made an empty platform there and answered from it (an empty
    # `user list`, status 0).
    monkeypatch.setattr(admin, "SYSTEM_CONFIG_PATH", tmp_path / "missing.toml")
    mistyped = tmp_path / "stat"
    code, out, err = run(capsys, "--state-dir", str(mistyped), *command)
    assert (code, out) == (2, "")
    assert err.startswith(f"openhosting-admin: no platform in {mistyped}: openhosting.sqlite")
    assert "--state-dir" in err and "openhosting-admin init" in err
    assert not mistyped.exists()
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *command)
    assert (code, out) == (2, "")
    assert f"no platform in {tmp_path / 'state'}:" in err
    assert not (tmp_path / "state").exists()


def test_user_create_where_there_is_no_platform_makes_one_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # How a platform's state may be made before the daemon's first start (the tests' own
    # daemons too); said on standard error, in case the path was a slip.
    monkeypatch.setattr(admin, "SYSTEM_CONFIG_PATH", tmp_path / "missing.toml")
    state = tmp_path / "state"
    code, out, err = run(capsys, "--state-dir", str(state), "user", "create", "--name", "a")
    assert code == 0 and "secret " in out
    assert err == f"openhosting-admin: made a new platform in {state}\n"
    assert (state / "openhosting.sqlite").is_file()
    code, out, err = run(capsys, "--state-dir", str(state), "user", "list")
    assert (code, err) == (0, "") and out.endswith(" a\n")
