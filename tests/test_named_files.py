"""A `NamedFile` is the file of its name in its instance's directory, read each time."""

from dataclasses import dataclass
from pathlib import Path

from openhosting.named_files import NamedFile


@dataclass(frozen=True)
class Files:
    directory: Path

    pidfile = NamedFile("daemon.pid")


def test_a_named_file_is_in_the_instance_directory() -> None:
    assert Files(Path("/run/a")).pidfile == Path("/run/a/daemon.pid")
    assert Files(Path("/run/b")).pidfile == Path("/run/b/daemon.pid")


def test_named_files_are_no_fields_of_the_record() -> None:
    # Not a field: records crossing the wire or compared carry only their directory.
    assert Files(Path("/run/a")) == Files(Path("/run/a"))
    assert Files.__dataclass_fields__.keys() == {"directory"}
    assert Files.pidfile.name == "daemon.pid"
