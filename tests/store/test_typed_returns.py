"""No row crosses from the store into the services as a dict: every store function the
services call returns typed records (store/records.py) or plain values, and no service reads
the Reader's rows by column name itself."""

import ast
import importlib
import inspect
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import openhosting.services
import openhosting.store
from openhosting.store.reader import Reader

SERVICES = Path(openhosting.services.__file__).parent
STORE_PACKAGE = openhosting.store.__name__


def _store_names_used(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(store module, name) for each store function a service module uses: through an
    imported module (`drive_store.get_drive`) or imported by name (`unwrap_secret`)."""
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                if node.module == STORE_PACKAGE:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif node.module.startswith(STORE_PACKAGE + "."):
                    yield node.module, alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            yield modules[node.value.id], node.attr


def store_functions_used_by_services() -> dict[str, Any]:
    """Every store function some service calls, by its dotted name."""
    found: dict[str, Any] = {}
    for path in sorted(SERVICES.rglob("*.py")):
        for module_name, name in _store_names_used(ast.parse(path.read_text())):
            value = getattr(importlib.import_module(module_name), name)
            if inspect.isfunction(value):
                found[f"{module_name}.{name}"] = value
    return found


def _is_row_type(hint: Any) -> bool:
    """Whether `hint` is, or holds, a row by column name: a dict or Mapping of Any values
    (or of no declared values)."""
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    is_mapping = hint in (dict, Mapping) or origin in (dict, Mapping)
    if is_mapping and (not arguments or arguments[-1] is Any):
        return True
    return any(_is_row_type(argument) for argument in arguments)


def test_the_scan_finds_the_store_functions_services_use() -> None:
    used = store_functions_used_by_services()
    # A scan that found nothing would pass vacuously: these are certainly called.
    assert {
        "openhosting.store.drives.get_drive",
        "openhosting.store.drives.claims_on",
        "openhosting.store.jobs.get_job",
    } <= set(used)


def test_the_row_type_check_tells_rows_from_records() -> None:
    assert _is_row_type(dict[str, Any])
    assert _is_row_type(list[dict[str, Any]])
    assert _is_row_type(Mapping[str, Any] | None)
    assert _is_row_type(dict[str, list[dict[str, Any]]])
    assert not _is_row_type(dict[str, int])
    assert not _is_row_type(set[str])


def test_no_store_function_used_by_services_returns_a_row_dict() -> None:
    offenders = {
        name: typing.get_type_hints(function).get("return")
        for name, function in store_functions_used_by_services().items()
        if _is_row_type(typing.get_type_hints(function).get("return"))
    }
    assert offenders == {}


def test_services_do_not_read_the_readers_rows_by_column_name() -> None:
    readers_rows = Reader.mappings.__name__
    users = [
        f"{path.relative_to(SERVICES)}:{node.lineno}"
        for path in sorted(SERVICES.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == readers_rows
    ]
    assert users == []


def test_every_store_function_used_by_services_says_what_it_returns() -> None:
    # An unannotated function could hand back a row unseen by the check above.
    unannotated = [
        name
        for name, function in store_functions_used_by_services().items()
        if "return" not in typing.get_type_hints(function)
    ]
    assert unannotated == []
