"""The audit trail: every state-changing command, who asked, when, and its result.

Only the command's path is kept, never its body: bodies carry VNC passwords and user data.
"""

import logging
import re
import time

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from openhosting.store import audit as audit_store
from openhosting.store.records import AuditRecord

log = logging.getLogger("openhosting.audit")

# The object a path names: the first UUID or IPv4 address after the area (`/drives/UUID/…`,
# `/resources/ip/192.0.2.7/…`).
_OBJECT = re.compile(
    r"/(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|\d{1,3}(?:\.\d{1,3}){3})(?=/|$)"
)


def object_of(path: str) -> str | None:
    match = _OBJECT.search(path)
    return match.group(0)[1:].lower() if match else None


class Audit:
    """Records and reads the audit trail."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(
        self, user: str, remote: str, method: str, path: str, status: int, error: str,
        created: str | None = None,
    ) -> None:  # fmt: skip
        """Record one command; `created` names the object a create made. The trail never
        changes an answer: an entry that cannot be written (a full disk, a locked database)
        is logged instead, and the command's own answer stands."""
        try:
            with self._engine.begin() as connection:
                audit_store.insert_entry(
                    connection,
                    at=time.time(),
                    user=user,
                    remote=remote[:64],
                    method=method[:8],
                    path=path[:512],
                    object=created or object_of(path),
                    status=status,
                    error=error[:16],
                )
        except SQLAlchemyError as failure:
            log.error(
                "event=audit_entry_lost user=%s method=%s path=%s status=%s error=%s",
                user, method, path[:512], status, failure,
            )  # fmt: skip

    def history(
        self, object_id: str | None = None, user: str | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        with self._engine.connect() as connection:
            return audit_store.entries(connection, object_id, user, limit)
