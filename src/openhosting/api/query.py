"""A command's query parameters (`?days=7`, `?after=ID`, `?token=…`): each given at most once.

A parameter given twice (`?days=1&days=2`) is refused as `400 usage` naming it, rather than
one of the two taken silently: which one a client meant cannot be told, and a proxy or a
client library may keep the other.
"""

from aiohttp import web

from openhosting.errors import UsageError


def query_parameter(request: web.Request, name: str) -> str | None:
    """The value of query parameter `name`, None when absent; 400 usage when it is given more
    than once."""
    values = request.query.getall(name, ())
    if len(values) > 1:
        raise UsageError(f"Query parameter {name} is given {len(values)} times: give it once")
    return values[0] if values else None
