"""`NamedFile`: an attribute naming one file of its object's `directory`.

Several records are a directory and the fixed names of the files a program keeps there (a
VM's run directory: `hypervisor/spec.py` `RunPaths`; a DHCP server's: `network/dnsmasq.py`
`DhcpSpec`). Each such file is declared once as `pidfile = NamedFile("qemu.pid")` rather than
as a property spelling out `return self.directory / "qemu.pid"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, overload


class InDirectory(Protocol):
    """What a `NamedFile` is read from: anything with a `directory`."""

    @property
    def directory(self) -> Path: ...


class NamedFile:
    """A read-only attribute: the file `name` in the instance's `directory`."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> NamedFile: ...

    @overload
    def __get__(self, instance: InDirectory, owner: type) -> Path: ...

    def __get__(self, instance: InDirectory | None, owner: type) -> NamedFile | Path:
        if instance is None:
            return self  # read from the class: the declaration itself
        return instance.directory / self.name
