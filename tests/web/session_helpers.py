"""Signing in to the dashboard in protocol tests: the session cookie and CSRF token of a
user, and the headers a dashboard page sends with them."""

from dataclasses import dataclass

from aiohttp.test_utils import TestClient

from openhosting.api.sessions import CSRF_HEADER, SESSION_COOKIE
from openhosting.services.accounts.accounts import NewKey


@dataclass(frozen=True)
class SignedIn:
    """A browser's session: its cookie's value and its CSRF token."""

    user: str
    cookie: str
    csrf: str

    def reads(self) -> dict[str, str]:
        """What the page sends with a request that changes nothing: the cookie alone."""
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}", "Accept": "application/json"}

    def changes(self) -> dict[str, str]:
        """What the page sends with a change: the cookie and the CSRF token."""
        return {**self.reads(), CSRF_HEADER: self.csrf}


async def sign_in(client: TestClient, key: NewKey) -> SignedIn:
    """Sign `key`'s user in as the page does; the client keeps no cookie of it (each test
    says which session a request carries)."""
    response = await client.post("/dashboard/session", json={"user": key.uuid, "key": key.secret})
    assert response.status == 200, await response.text()
    body = await response.json()
    cookie = response.cookies[SESSION_COOKIE].value
    client.session.cookie_jar.clear()
    return SignedIn(body["user"], cookie, body["csrf"])
