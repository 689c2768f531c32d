"""The operator's tool, `openhosting-admin` (`tool.py`): it opens the platform directly (the
state directory, its database and drives), whether or not the daemon runs; one module per area
of its commands."""
