"""The HTTP edge: routes, Basic auth, content negotiation, the X-Elastic-* headers, errors.

No SQL, files or subprocesses here: handlers call services.
"""
