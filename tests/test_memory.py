"""The daemon holds glibc to two malloc arenas (memory.py)."""

import subprocess
import sys


def test_the_arena_limit_is_set_in_glibc() -> None:
    # In a child process: the setting is for the whole process and cannot be read back, so
    # the test shows it took effect the only way glibc allows, by mallopt's answer.
    code = "from openhosting.memory import limit_malloc_arenas as f;print(f())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert out.strip() == "True"
