"""A directory's inotify watch (storage/directory_watch.py), on the real kernel: every change
to its entries is heard by the event loop's next turn, writes to a file are not, and a watch
that can tell no more (its directory gone) and one asked off its event loop are not live."""

import asyncio
import os
import threading
from pathlib import Path

from openhosting.storage.directory_watch import DirectoryWatch


async def turn() -> None:
    """Let the event loop run the readers of what is queued now."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_each_change_of_an_entry_is_heard_by_the_next_turn_of_the_loop(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "drives"
    directory.mkdir()
    (directory / "a.img").write_bytes(b"a")
    watch = DirectoryWatch(directory)
    try:
        await turn()
        assert watch.live
        changes = [
            lambda: (directory / "b.img").write_bytes(b""),  # created
            lambda: (directory / "a.img").rename(directory / "a.away"),  # moved out
            lambda: (directory / "a.away").rename(directory / "a.img"),  # moved in
            lambda: (directory / "a.img").chmod(0o400),  # its attributes
            lambda: (directory / "b.img").unlink(),  # deleted
            lambda: (directory / "c").mkdir(),  # something else in the directory
        ]
        for change in changes:
            heard = watch.heard
            change()
            await turn()
            assert watch.heard > heard
        # A drive's I/O changes no entry: nothing is heard, what was kept stays.
        heard = watch.heard
        with open(directory / "a.img", "r+b") as file:
            file.write(b"written")
            os.fsync(file.fileno())
        os.truncate(directory / "a.img", 1 << 20)
        await turn()
        assert (watch.heard, watch.live) == (heard, True)
    finally:
        watch.close()
    assert not watch.live


async def test_a_watch_whose_directory_is_gone_is_no_longer_live(tmp_path: Path) -> None:
    directory = tmp_path / "drives"
    directory.mkdir()
    watch = DirectoryWatch(directory)
    try:
        directory.rename(tmp_path / "elsewhere")  # its path names another directory now
        await turn()
        assert not watch.live
    finally:
        watch.close()
    moved = tmp_path / "elsewhere"
    again = DirectoryWatch(moved)
    try:
        moved.rmdir()
        await turn()
        assert not again.live
    finally:
        again.close()


async def test_a_watch_is_live_only_on_its_event_loop(tmp_path: Path) -> None:
    watch = DirectoryWatch(tmp_path)
    seen: list[bool] = []
    try:
        thread = threading.Thread(target=lambda: seen.append(watch.live))
        thread.start()
        thread.join()
        assert (watch.live, seen) == (True, [False])
    finally:
        watch.close()


def test_a_closed_watch_leaves_no_descriptor(tmp_path: Path) -> None:
    def descriptors() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    async def watched_and_closed() -> None:
        DirectoryWatch(tmp_path).close()
        DirectoryWatch(tmp_path)  # never closed: its loop closes first

    before = descriptors()
    asyncio.run(watched_and_closed())
    assert descriptors() <= before
