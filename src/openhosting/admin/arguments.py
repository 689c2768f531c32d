"""Argument types the admin tool's commands share."""

import argparse

# The largest count: what an integer column or a query's LIMIT holds on every database the
# store runs on (PostgreSQL's integer is 32 bits; SQLite refused a larger LIMIT with a
# traceback).
MAX_COUNT = 2**31 - 1


def limit_argument(text: str) -> int:
    """An argparse type for `--limit N`: a whole number from 1 to `MAX_COUNT`."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_COUNT}")
    return int(text)
