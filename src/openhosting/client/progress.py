"""Progress of a chunked transfer: the original tools' dots, or a bar on a terminal.

In a pipe or a file the output is exactly what the original shell tools printed: a header,
one `.` per chunk, then ` completed` (or `E` on failure). On a terminal a bar with the rate
and the time left is redrawn in place instead, a few times a second.
"""

import shutil
import time
from collections.abc import Callable
from typing import Protocol, TextIO

REDRAW_SECONDS = 0.2
ERASE_TO_END = "\x1b[K"


class Progress(Protocol):
    """What a transfer reports as it goes; called from one thread only."""

    def start(self) -> None: ...

    def advance(self, nbytes: int) -> None:
        """One chunk of `nbytes` bytes is done."""

    def tick(self) -> None:
        """Time passed: redraw if the display shows time."""

    def finish(self) -> None: ...

    def fail(self) -> None: ...


class Dots:
    """The original tools' output: `HEADER` `.` per chunk ` completed`."""

    def __init__(self, stream: TextIO, header: str) -> None:
        self._stream, self._header = stream, header

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()

    def start(self) -> None:
        self._write(self._header)

    def advance(self, nbytes: int) -> None:
        self._write(".")

    def tick(self) -> None:
        pass

    def finish(self) -> None:
        self._write(" completed\n")

    def fail(self) -> None:
        self._write("E\n")


def format_rate(bytes_per_second: float) -> str:
    """A transfer rate for people: `512 B/s`, `12.3 MiB/s`, `1.05 GiB/s`."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if bytes_per_second >= scale:
            value = bytes_per_second / scale
            return f"{value:.3g} {unit}/s" if value < 100 else f"{value:.0f} {unit}/s"
    return f"{bytes_per_second:.0f} B/s"


def format_duration(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_bar(header: str, done: int, total: int, elapsed: float, width: int) -> str:
    """One line of at most `width` characters: header, bar, percentage, rate, time left."""
    fraction = done / total if total else 1.0
    rate = done / elapsed if elapsed > 0 else 0.0
    if done >= total:
        tail = f" {fraction:4.0%} {format_rate(rate)} in {format_duration(elapsed)}"
    elif rate > 0:
        tail = f" {fraction:4.0%} {format_rate(rate)} ETA {format_duration((total - done) / rate)}"
    else:
        tail = f" {fraction:4.0%}"
    room = width - len(header) - len(tail) - 2
    if room < 10:  # too narrow for a useful bar: the numbers alone
        return (header.rstrip() + tail)[:width]
    filled = int(room * fraction)
    return f"{header}[{'#' * filled}{' ' * (room - filled)}]{tail}"


class Bar:
    """A progress bar redrawn in place on a terminal."""

    def __init__(
        self,
        stream: TextIO,
        header: str,
        total_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream, self._header, self._total = stream, header, total_bytes
        self._clock = clock
        self._done = 0
        self._started = self._drawn = 0.0

    def _draw(self, end: str = "") -> None:
        # What `end` adds (" completed") must fit on the line too, or the terminal wraps it.
        width = max(20, shutil.get_terminal_size().columns - 1 - len(end.rstrip("\n")))
        line = render_bar(
            self._header, self._done, self._total, self._clock() - self._started, width
        )
        # Back to the line's start, the new line, then erase what a longer one left (EL).
        self._stream.write(f"\r{line}{ERASE_TO_END}{end}")
        self._stream.flush()
        self._drawn = self._clock()

    def start(self) -> None:
        self._started = self._clock()
        self._draw()

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        self.tick()

    def tick(self) -> None:
        if self._clock() - self._drawn >= REDRAW_SECONDS:
            self._draw()

    def finish(self) -> None:
        self._done = self._total
        self._draw(" completed\n")

    def fail(self) -> None:
        self._draw(" E\n")


def choose_progress(stream: TextIO, header: str, total_bytes: int) -> Progress:
    """A bar when `stream` is a terminal, else the original dots."""
    if stream.isatty():
        return Bar(stream, header, total_bytes)
    return Dots(stream, header)
