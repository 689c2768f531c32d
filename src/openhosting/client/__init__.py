"""The users' client tools (`openhosting`, `openhosting-upload`, `openhosting-download`): they
speak HTTP to the API only and share the wire codec and the error types with the server, nothing
of its store, services or drivers (tests/test_import_graph_folders.py holds them to it), so
that they could ship alone."""
