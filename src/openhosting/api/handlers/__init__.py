"""Request handlers, one module per area; `HANDLERS` maps command names to them."""

from openhosting.api.routes import Handler

HANDLERS: dict[str, Handler] = {}
