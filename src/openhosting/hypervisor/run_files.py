"""Files the daemon (root) writes into a VM's run directory, which QEMU's account owns: a QEMU
taken over by its guest may have left links there (to /etc/shadow, say) for the daemon's next
write, so nothing is opened through a link and every file is made anew."""

import contextlib
import os

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_new_file(
    directory: int, name: str, data: bytes, owner: tuple[int, int] | None = None
) -> None:
    """A new file `name` (0600, of `owner` if given) holding `data` in the directory open as
    `directory`; whatever stood at `name` (a file, a link) is removed first, never followed.
    One put back there meanwhile makes this fail (FileExistsError), not write through it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=directory)
    with os.fdopen(os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=directory), "wb") as file:
        if owner is not None:
            os.fchown(file.fileno(), *owner)
        file.write(data)
