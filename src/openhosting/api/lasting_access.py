"""Whether what let a long-lived answer open (an event stream, a console's WebSocket) still
holds as it runs: its user's key unchanged (not rotated, the user not deleted) and, when a
dashboard session opened it, that session still live (not signed out or expired).

A request is authenticated once, when it arrives; a stream or console then lasts minutes or
hours. A key is rotated, or a session signed out, to shut someone out: what they opened
before must end too, not only what they would ask next.
"""

from dataclasses import dataclass

from openhosting.services.platform import Platform


@dataclass(frozen=True)
class Access:
    """What a long-lived answer was opened with: `key`, the user's key version then (None:
    the user was gone already), and `session`, the dashboard session's id (None: Basic
    credentials, or a bearer console token)."""

    user: str
    key: str | None
    session: str | None


def access_now(platform: Platform, user: str, session: str | None) -> Access:
    """The access of `user` (through the dashboard session `session`, if any), as it is now."""
    return Access(user, platform.accounts.key_version(user), session)


def still_holds(platform: Platform, access: Access) -> bool:
    """Whether `access` still holds: one or two indexed reads."""
    if access.key is None or platform.accounts.key_version(access.user) != access.key:
        return False
    return access.session is None or platform.web_sessions.live(access.session)
