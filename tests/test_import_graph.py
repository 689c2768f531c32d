"""The layers as the imports draw them (parsed with `ast`, nothing imported): the network
layer knows nothing of the hypervisor, and the services reach the hypervisor only through its
driver interface, its spec types and its errors (hypervisor/driver.py), never QEMU's parts."""

import ast
from pathlib import Path

import openhosting

PACKAGE = Path(openhosting.__file__).parent
SERVICES_MAY_USE = {
    "openhosting.hypervisor.driver",
    "openhosting.hypervisor.spec",
    "openhosting.hypervisor.errors",
    "openhosting.hypervisor.moves",  # a migration's calls over the interface, no QEMU part
}


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, by its full name (`from a import b` gives `a.b` when b
    is a module of a package, else `a`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / submodule.replace(".", "/")).with_suffix(".py")
                names.add(submodule if is_module.exists() else node.module)
    return names


def imports_under(folder: str) -> dict[str, set[str]]:
    return {
        str(path.relative_to(PACKAGE.parent)): imports_of(path)
        for path in sorted((PACKAGE / folder).rglob("*.py"))
    }


def test_imports_of_reads_modules_and_names_apart(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nfrom openhosting.hypervisor import vm\n"
        "from openhosting.hypervisor.spec import VmSpec\n"
        "def f():\n    from openhosting.hypervisor.qemu_driver import QemuDriver\n"
    )
    assert imports_of(module) == {
        "os",
        "openhosting.hypervisor.vm",
        "openhosting.hypervisor.spec",
        "openhosting.hypervisor.qemu_driver",
    }


def test_the_network_layer_imports_nothing_of_the_hypervisor() -> None:
    found = {
        module: sorted(name for name in names if name.startswith("openhosting.hypervisor"))
        for module, names in imports_under("network").items()
    }
    assert {module: names for module, names in found.items() if names} == {}


def test_the_services_use_only_the_hypervisors_interface() -> None:
    found = {
        module: sorted(
            name
            for name in names
            if name.startswith("openhosting.hypervisor") and name not in SERVICES_MAY_USE
        )
        for module, names in imports_under("services").items()
    }
    assert {module: names for module, names in found.items() if names} == {}


def integers_in(path: Path, value: int) -> list[int]:
    """The lines of `path` whose code holds the integer `value` (not in strings or comments)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value == value
    ]


def test_integers_in_reads_code_not_text(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""port 5900"""\nA = 5900  # 5900\nB = "5900"\nC = 59000\n\nD = [1, 5900]\n')
    assert integers_in(module, 5900) == [2, 6]


def test_vncs_base_port_is_written_only_in_the_vnc_package() -> None:
    """One owner of VNC's port numbers (vnc/ports.py): elsewhere they are computed from it."""
    found = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if not path.is_relative_to(PACKAGE / "vnc") and (lines := integers_in(path, 5900))
    }
    assert found == {}
