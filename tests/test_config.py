"""Configuration: defaults, a TOML file, OH_* overrides, and refusals."""

from pathlib import Path

import pytest

from openhosting.config import ConfigError, load_config


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
