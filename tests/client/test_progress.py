"""Progress output: the original dots in a pipe, a bar with rate and time left on a terminal."""

import io

from openhosting.client.progress import (
    Bar,
    Dots,
    choose_progress,
    format_duration,
    format_rate,
    render_bar,
)


def test_dots_print_exactly_what_the_original_tools_printed() -> None:
    stream = io.StringIO()
    dots = Dots(stream, "Uploading 3 chunks of 5242880 bytes: ")
    dots.start()
    for _ in range(3):
        dots.advance(5242880)
        dots.tick()
    dots.finish()
    assert stream.getvalue() == "Uploading 3 chunks of 5242880 bytes: ... completed\n"


def test_dots_end_a_failed_transfer_with_e() -> None:
    stream = io.StringIO()
    dots = Dots(stream, "H: ")
    dots.start()
    dots.advance(1)
    dots.fail()
    assert stream.getvalue() == "H: .E\n"


def test_rates_and_durations_read_as_people_write_them() -> None:
    assert format_rate(512) == "512 B/s"
    assert format_rate(12.3 * 1024 * 1024) == "12.3 MiB/s"
    assert format_rate(250 * 1024 * 1024) == "250 MiB/s"
    assert format_duration(65) == "1:05"
    assert format_duration(3 * 3600 + 61) == "3:01:01"


def test_the_bar_shows_the_share_done_the_rate_and_the_time_left_within_the_width() -> None:
    line = render_bar("Up: ", done=50 << 20, total=100 << 20, elapsed=5, width=60)
    assert line.startswith("Up: [") and len(line) <= 60
    assert " 50% 10 MiB/s ETA 0:05" in line
    inside = line[line.index("[") + 1 : line.index("]")]
    assert inside.count("#") == len(inside) // 2 and inside.strip("#").strip() == ""
    done = render_bar("Up: ", done=100, total=100, elapsed=2, width=60)
    assert "100%" in done and "in 0:02" in done
    narrow = render_bar("Uploading 3 chunks of 5242880 bytes: ", 1, 2, 1, width=30)
    assert len(narrow) <= 30 and "[" not in narrow


def test_the_bar_redraws_in_place_and_ends_with_completed() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = Bar(stream, "Up: ", total_bytes=1000, clock=lambda: now[0])
    bar.start()
    now[0] = 1.0
    bar.advance(500)
    now[0] = 2.0
    bar.finish()
    text = stream.getvalue()
    assert text.count("\r") == 3
    assert text.endswith(" completed\n")
    assert "100%" in text.split("\r")[-1]


def test_only_a_terminal_gets_the_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(choose_progress(io.StringIO(), "H: ", 10), Dots)
    assert isinstance(choose_progress(Terminal(), "H: ", 10), Bar)
