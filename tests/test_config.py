"""Configuration: defaults, a TOML file, OH_* overrides, and refusals."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

from openhosting.config import ConfigError, load_config
from testbed.daemon_process import BIN


def test_defaults_work_out_of_the_box() -> None:
    config = load_config(env={})
    assert config.api.listen == "127.0.0.1:8080"
    assert config.state_dir == "state"
    assert config.storage.default_cipher == "aes-xts-plain"
    assert config.database_path == Path("state/openhosting.sqlite")


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "oh.toml"
    path.write_text(
        'state_dir = "/srv/oh"\n[api]\nlisten = "0.0.0.0:80"\nmax_body_bytes = 1000\n'
        "[storage]\nimaging_concurrency = 3\n"
    )
    config = load_config(path, env={"OH_API_LISTEN": "127.0.0.1:9", "OH_FIRST_USER": "no"})
    assert config.state_dir == "/srv/oh"
    assert config.api.listen == "127.0.0.1:9"
    assert config.api.max_body_bytes == 1000
    assert config.storage.imaging_concurrency == 3
    assert config.first_user is False
    overridden = load_config(path, env={}, overrides={"api": {"listen": "[::1]:1"}})
    assert overridden.api.listen == "[::1]:1"


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("nosuch = 1\n", {}),
        ("[api]\nlisten = 5\n", {}),
        ("[api]\nmax_body_bytes = 'big'\n", {}),
        ("", {"OH_API_MAX_BODY_BYTES": "lots"}),
        ("", {"OH_FIRST_USER": "perhaps"}),
        ("state_dir = [\n", {}),
    ],
)
def test_invalid_settings_are_refused(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    path = tmp_path / "oh.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path, env=env)


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("[api]\nlisten = 5\n", {}, "Invalid value for api.listen: 5"),
        ("[api]\nnosuch = 1\n", {}, "Unknown setting api.nosuch"),
        ("[storage]\nimaging_concurrency = 'x'\n", {}, "storage.imaging_concurrency"),
        ("nosuch = 1\n", {}, "Unknown setting nosuch"),
        ("api = 3\n", {}, "Setting api must be a table"),
        ("", {"OH_API_MAX_BODY_BYTES": "lots"}, "Invalid value for OH_API_MAX_BODY_BYTES"),
        # A variable of a section's that no setting has: a typo, taken silently before.
        ("", {"OH_API_LISTNE": "0.0.0.0:80"}, "Unknown setting OH_API_LISTNE: no such api"),
        ("", {"OH_HYPERVISOR_DRIVE": "fake"}, "Unknown setting OH_HYPERVISOR_DRIVE"),
    ],
)
def test_a_refused_setting_is_named_as_it_is_written(
    tmp_path: Path, text: str, env: dict[str, str], named: str
) -> None:
    """A file's setting by its section and key (`api.listen`), a variable by its name: as
    the operator wrote them (the file's used to read `api_listen`)."""
    path = tmp_path / "oh.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, env=env)
    assert named in str(refused.value)


@pytest.mark.parametrize(
    ("text", "env"), [("", {"OH_STATE_DIR": ""}), ('state_dir = " "\n', {})], ids=["env", "file"]
)
def test_an_empty_state_dir_is_refused_not_the_working_directory(
    tmp_path: Path, text: str, env: dict[str, str]
) -> None:
    # `OH_STATE_DIR=` made the platform (database, key, drives/) in the working directory.
    path = tmp_path / "oh.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="state_dir is empty"):
        load_config(path, env=env)


def test_openhostingd_with_an_empty_state_dir_makes_nothing_where_it_runs(tmp_path: Path) -> None:
    with socket.socket() as taken:  # had it started, it would stop at once, not serve
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run(
            [str(BIN / "openhostingd"), "--listen", f"127.0.0.1:{taken.getsockname()[1]}"],
            env={**os.environ, "OH_STATE_DIR": "", "OH_API_METRICS_LISTEN": ""}, cwd=tmp_path,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "openhostingd: state_dir is empty: name the platform's state directory\n"
    assert list(tmp_path.iterdir()) == []


def test_tiers_default_to_disk_in_the_drive_directory_and_ssd_beside_it(tmp_path: Path) -> None:
    config = load_config(env={}, overrides={"state_dir": str(tmp_path)})
    assert config.tier_paths == {"disk": tmp_path / "drives", "ssd": tmp_path / "drives"}


def test_each_configured_tier_has_its_own_directory(tmp_path: Path) -> None:
    path = tmp_path / "oh.toml"
    path.write_text('[storage]\ndrive_dir = "/d"\ntiers = "ssd=/srv/ssd/drives  cold-2=/c"\n')
    assert load_config(path, env={}).tier_paths == {
        "disk": Path("/d"),
        "ssd": Path("/srv/ssd/drives"),
        "cold-2": Path("/c"),
    }
    from_env = load_config(env={"OH_STORAGE_TIERS": "fast=/f"}).tier_paths
    assert from_env["fast"] == Path("/f") and from_env["ssd"] == from_env["disk"]


@pytest.mark.parametrize(
    ("tiers", "named"),
    [
        ("ssd", "'ssd'"),
        ("ssd=", "'ssd='"),
        ("=/x", "'=/x'"),
        ("SSD=/x", "'SSD=/x'"),
        ("a-name-far-too-long=/x", "'a-name-far-too-long=/x'"),
        ("disk=/x", "storage.drive_dir"),
        ("ssd=/a ssd=/b", "ssd twice"),
    ],
)
def test_invalid_tiers_are_refused_at_load(tiers: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(env={"OH_STORAGE_TIERS": tiers})


def test_the_store_is_the_state_directorys_sqlite_file_unless_store_url_names_one(
    tmp_path: Path,
) -> None:
    assert load_config(env={}).store_url == "sqlite:///state/openhosting.sqlite"
    path = tmp_path / "oh.toml"
    path.write_text('[store]\nurl = "postgresql+psycopg://oh@db.example/oh"\n')
    assert load_config(path, env={}).store_url == "postgresql+psycopg://oh@db.example/oh"
    url = "postgresql+psycopg://oh@10.0.0.5:5433/oh"
    assert load_config(env={"OH_STORE_URL": url}).store_url == url


@pytest.mark.parametrize(
    "url", ["mysql://oh:secret@db/oh", "postgresql://oh@db/oh", "/var/lib/oh.sqlite"]
)
def test_a_store_url_of_a_database_the_store_does_not_run_on_is_refused_without_echoing_it(
    url: str,
) -> None:
    with pytest.raises(ConfigError, match=r"store\.url") as refused:
        load_config(env={"OH_STORE_URL": url})
    assert "secret" not in str(refused.value)
