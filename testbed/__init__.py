"""What the tests and the benchmarks both use to stand the platform up for real: a daemon in a
subprocess with a user and a small text-mode API client (`daemon_process`), the tiny bootable
guest (`build_guest`), the hostile-input tables (`hostile_input`), a PostgreSQL of their
own in a temporary directory (`postgres`), agents (`agent_process`) and a whole cluster in
network namespaces (`cluster`: `make cluster`).

A top-level package of the repository, beside tests/ and bench/, not shipped in the wheel (it
builds guests from Debian's kernel and busybox and starts daemons on loopback: tools of the
repository, not of an installed platform). It imports the `openhosting` package and the
standard library only, never `tests` or `bench`, so that `python -m bench` runs without the
test suite (tests/test_import_graph_folders.py holds it to it).
"""
