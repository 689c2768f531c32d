"""The tests' PostgreSQL lives in testbed/postgres.py (the benchmarks start one too); named
here again for the tests that import it from this module."""

from testbed.postgres import BIN_DIR, RUN_AS, TEMPLATE, PostgresServer, available

__all__ = ["BIN_DIR", "RUN_AS", "TEMPLATE", "PostgresServer", "available"]
