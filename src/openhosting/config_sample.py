"""The configuration as a commented TOML file: every setting of config.py with its comment.

config.py is the one source of truth: each setting's description is the comment written
above it there and each section's is its class docstring, so the file installed in
/etc/openhosting cannot drift from the code. Settings whose value is the embedded default
are written commented out (`# name = default`); the others are active, so the file parses to
exactly the configuration it was rendered from.
"""

import ast
import dataclasses
import inspect
import json
import textwrap
from typing import Any

from openhosting.config import Config

HEADER = """\
# Open Hosting: the configuration of openhostingd and openhosting-admin.
#
# Every setting is listed with its comment and its default; a line `# name = value` is the
# default, uncomment and change it to set it. An environment variable OH_<SECTION>_<NAME>
# (OH_API_LISTEN, OH_STATE_DIR) overrides the file. `openhosting-admin config show` prints
# this file for the configuration in effect.
"""


def setting_comments(cls: type) -> dict[str, list[str]]:
    """The comment lines written directly above each field of the dataclass `cls`."""
    lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    (classdef,) = ast.parse("\n".join(lines)).body
    assert isinstance(classdef, ast.ClassDef)
    comments: dict[str, list[str]] = {}
    for node in classdef.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        index = node.lineno - 2  # the line above, counted from 0
        while index >= 0 and lines[index].strip().startswith("#"):
            above.insert(0, lines[index].strip().removeprefix("#").strip())
            index -= 1
        comments[node.target.id] = above
    return comments


def toml_value(value: Any) -> str:
    """`value` (a setting's str, int or bool) written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # JSON's escapes are a subset of a TOML basic string's.
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"no TOML form for {value!r}")


def _render_settings(current: Any, default: Any) -> list[str]:
    comments = setting_comments(type(current))
    out: list[str] = []
    for item in dataclasses.fields(current):
        if dataclasses.is_dataclass(item.type):
            continue
        comment = comments.get(item.name, [])
        if comment:  # a blank line before each commented setting or group of settings
            out.append("")
        out += [f"# {line}".rstrip() for line in comment]
        value = getattr(current, item.name)
        line = f"{item.name} = {toml_value(value)}"
        out.append(line if value != getattr(default, item.name) else f"# {line}")
    return out


def render_sample(config: Config | None = None) -> str:
    """The commented TOML file that holds `config` (the embedded defaults when None)."""
    current = Config() if config is None else config
    default = Config()
    out = [HEADER.rstrip("\n"), *_render_settings(current, default)]
    for item in dataclasses.fields(current):
        if not dataclasses.is_dataclass(item.type):
            continue
        section = getattr(current, item.name)
        docstring = inspect.getdoc(type(section)) or ""
        out += ["", f"[{item.name}]"]
        out += [f"# {line}".rstrip() for line in docstring.splitlines()]
        out += _render_settings(section, getattr(default, item.name))
    return "\n".join(out) + "\n"
