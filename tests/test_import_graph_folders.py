"""The folders show the seams, and the imports keep them: the client tools reach nothing of the
platform's server side (a client install could ship alone), the operator's tool has a package
of its own, `logs.py` knows nothing of the HTTP edge, the daemon needs neither tool, and
bench/ stands on testbed/ and the package, never on tests/.

Read from the source with `ast` (every import statement, in functions too), followed through
the repository's own modules to everything they reach.
"""

import ast
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import REPO

SRC = REPO / "src"
PACKAGE = SRC / "openhosting"
# Where the repository's modules live: the package under src/, testbed, tests and bench at
# the top.
ROOTS = (SRC, REPO)

# What the client tools may share with the server: pure helpers, no I/O of the platform.
CLIENT_MAY_REACH = ("openhosting.client", "openhosting.errors", "openhosting.wire")
# The one dependency the client tools have (gzip at C speed for uploads and downloads).
CLIENT_DEPENDENCIES = {"isal"}
SERVER_SIDE = ("store", "services", "hypervisor", "network", "storage", "api", "model")


def module_file(name: str) -> Path | None:
    """The file of the repository's module `name`, or None (a third-party or standard one,
    or a name imported from a module rather than a module)."""
    parts = name.split(".")
    for root in ROOTS:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def module_name(path: Path) -> str:
    root = SRC if path.is_relative_to(SRC) else REPO
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement of `path` gives, at any depth; for `from M import
    N` both M and M.N (N may be a module). Relative imports resolved."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def with_parents(name: str) -> list[str]:
    """`a.b.c` → a, a.b, a.b.c: importing a module runs its packages' __init__ first."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def reached(files: Iterable[Path]) -> set[str]:
    """Every module the files import, directly or through the repository's own modules (which
    are followed); standard and third-party modules are named but not followed."""
    seen: set[str] = set()
    pending = list(files)
    assert pending, "no files to start from"
    visited: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in visited:
            continue
        visited.add(path)
        for name in imported_names(path):
            for module in with_parents(name):
                file = module_file(module)
                if file is None:
                    if module_file(module.rpartition(".")[0]) is None:
                        seen.add(module)  # a module outside the repository
                    continue  # else: a name imported from one of our modules
                seen.add(module)
                pending.append(file)
    return seen


def python_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def ours(modules: set[str], top: str) -> set[str]:
    return {name for name in modules if name == top or name.startswith(top + ".")}


def test_the_client_tools_reach_only_the_wire_codec_and_errors_of_the_platform() -> None:
    modules = reached(python_files(PACKAGE / "client"))
    outside = {
        name
        for name in ours(modules, "openhosting")
        if name != "openhosting" and not name.startswith(CLIENT_MAY_REACH)
    }
    assert outside == set()
    # Their tools and their shared modules are all there.
    assert {"openhosting.client.http_client", "openhosting.client.chunks"} <= modules | {
        module_name(path) for path in python_files(PACKAGE / "client")
    }
    # Of the dependencies, only fast gzip: none of the server's (aiohttp, SQLAlchemy, QMP, …).
    third_party = {
        name.partition(".")[0]
        for name in modules
        if module_file(name) is None and name.partition(".")[0] != "openhosting"
    }
    assert third_party - set(sys.stdlib_module_names) == CLIENT_DEPENDENCIES


def test_the_admin_tool_opens_the_platform_itself() -> None:
    # The other kind of program: what the client may not reach, the admin tool does (and this
    # walk of the imports finds it).
    admin = ours(reached(python_files(PACKAGE / "admin")), "openhosting")
    assert {"openhosting.services.platform", "openhosting.store", "openhosting.config"} <= admin


def test_each_tool_has_its_package_and_the_entry_points_say_so() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["openhosting-admin"] == "openhosting.admin.tool:main"
    for tool in ("openhosting", "openhosting-upload", "openhosting-download"):
        assert scripts[tool].startswith("openhosting.client."), scripts[tool]
    for target in scripts.values():
        module, _, function = target.partition(":")
        file = module_file(module)
        assert file is not None, target
        assert f"def {function}(" in file.read_text(), target
    assert python_files(PACKAGE / "cli") == []  # its modules moved to client/ and admin/


def test_the_daemon_and_its_layers_import_neither_tool() -> None:
    tools = (PACKAGE / "client", PACKAGE / "admin")
    platform = [path for path in python_files(PACKAGE) if not any(map(path.is_relative_to, tools))]
    modules = reached(platform)
    assert ours(modules, "openhosting.client") | ours(modules, "openhosting.admin") == set()
    assert {f"openhosting.{layer}" for layer in SERVER_SIDE} <= modules


def test_logs_does_not_reach_the_http_edge() -> None:
    modules = reached([PACKAGE / "logs.py"])
    assert ours(modules, "openhosting.api") == set()
    assert ours(modules, "openhosting") - {"openhosting", "openhosting.logs"} == set()


def test_bench_reaches_testbed_and_never_tests() -> None:
    modules = reached(python_files(REPO / "bench"))
    assert ours(modules, "tests") == set()
    assert {"testbed.daemon_process", "testbed.build_guest", "testbed.hostile_input"} <= modules
    # testbed itself stands on the package alone.
    shared = reached(python_files(REPO / "testbed"))
    assert ours(shared, "tests") | ours(shared, "bench") == set()


# The services' folders, one per kind of object, each above the ones it may import: accounts
# and the cluster's hosts know no drive or server, drives know no server, and only the
# modules shared at services/'s top (the platform, which assembles them all, events,
# operations, …) stand beside or above them.
SERVICE_FOLDERS_MAY_IMPORT = {
    "accounts": set(),
    "cluster": set(),
    "drives": {"accounts", "cluster"},
    "servers": {"accounts", "cluster", "drives"},
}


def test_the_services_folders_keep_their_layers() -> None:
    services = PACKAGE / "services"
    assert {
        path.name for path in services.iterdir() if path.is_dir() and path.name[0] != "_"
    } == set(SERVICE_FOLDERS_MAY_IMPORT)
    crossings = {}
    for folder, allowed in SERVICE_FOLDERS_MAY_IMPORT.items():
        for path in python_files(services / folder):
            used = {
                name.split(".")[2]
                for name in imported_names(path)
                if name.startswith("openhosting.services.") and len(name.split(".")) > 3
            }
            wrong = used & set(SERVICE_FOLDERS_MAY_IMPORT) - allowed - {folder}
            if wrong:
                crossings[module_name(path)] = sorted(wrong)
    assert crossings == {}
