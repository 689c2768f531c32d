"""The commented configuration file, rendered from config.py: it lists every setting with
its comment, parses to the configuration it was rendered from, and each commented-out
default is itself a valid setting."""

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from openhosting.config import ApiSettings, Config, HypervisorSettings, load_config
from openhosting.config_sample import render_sample, setting_comments, toml_value


def settings(config: Any, section: str = "") -> list[tuple[str, str]]:
    """(section, name) of every setting, nested sections included."""
    found: list[tuple[str, str]] = []
    for item in dataclasses.fields(config):
        if dataclasses.is_dataclass(item.type):
            found += settings(getattr(config, item.name), item.name)
        else:
            found.append((section, item.name))
    return found


def sections_of(text: str) -> dict[str, list[str]]:
    """The sample's lines by section ("" before the first table)."""
    lines: dict[str, list[str]] = {"": []}
    section = ""
    for line in text.splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match.group(1)
            lines[section] = []
        else:
            lines[section].append(line)
    return lines


def test_every_setting_of_config_py_is_listed_in_its_section_with_its_default() -> None:
    by_section = sections_of(render_sample())
    defaults = Config()
    for section, name in settings(defaults):
        value = getattr(getattr(defaults, section) if section else defaults, name)
        assert f"# {name} = {toml_value(value)}" in by_section[section], (section, name)


def test_the_sample_parses_to_the_embedded_defaults(tmp_path: Path) -> None:
    path = tmp_path / "openhosting.toml"
    path.write_text(render_sample())
    assert load_config(path, env={}) == Config()


def test_every_commented_default_is_a_valid_setting_once_uncommented(tmp_path: Path) -> None:
    names = {name for _, name in settings(Config())}
    uncommented = [
        line[2:] if (match := re.match(r"# (\w+) = ", line)) and match.group(1) in names else line
        for line in render_sample().splitlines()
    ]
    table = tomllib.loads("\n".join(uncommented))
    assert sum(len(v) if isinstance(v, dict) else 1 for v in table.values()) == len(names)
    path = tmp_path / "openhosting.toml"
    path.write_text("\n".join(uncommented))
    assert load_config(path, env={}) == Config()


def test_settings_that_differ_from_the_defaults_are_active_and_parse_back(
    tmp_path: Path,
) -> None:
    config = Config(
        state_dir="/var/lib/openhosting",
        api=ApiSettings(listen="0.0.0.0:443", public_url='https://"odd" \\ name/'),
        hypervisor=HypervisorSettings(sandbox=False, core_mhz=3000),
    )
    text = render_sample(config)
    assert 'state_dir = "/var/lib/openhosting"' in sections_of(text)[""]
    assert "sandbox = false" in sections_of(text)["hypervisor"]
    path = tmp_path / "openhosting.toml"
    path.write_text(text)
    assert load_config(path, env={}) == config


def test_descriptions_come_from_the_comments_in_config_py() -> None:
    comments = setting_comments(Config)
    assert comments["first_user"] == [
        "Create a first user when the database has none, and print how to reach the API."
    ]
    text = render_sample()
    assert "# Create a first user when the database has none" in text
    assert "[hypervisor]\n# QEMU." in text  # a section's docstring


@pytest.mark.parametrize("value", ["plain", 'quo"te', "back\\slash", "tab\there", "é"])
def test_string_values_survive_toml(value: str) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value
