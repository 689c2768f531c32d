"""The dashboard's sessions at the edge: the session cookie, and the checks that keep
another site's pages from acting with it (CSRF).

A request without Basic credentials but with the session cookie is the dashboard's: it is
authenticated by the cookie (services/accounts/web_sessions.py), and any request that may change
something (every method but GET and HEAD) must also come from the daemon's own page: its
`X-CSRF-Token` header must be the session's CSRF token, and its `Origin` and
`Sec-Fetch-Site`, when the browser sends them, must be the daemon's own. The cookie is
SameSite=Strict as well, so a browser does not even send it from another site.
"""

import hmac

from aiohttp import web

from openhosting.api.context import DEAD_SESSION_KEY, platform_of
from openhosting.api.origins import foreign_origin
from openhosting.errors import AuthError
from openhosting.services.accounts.web_sessions import WebSession

SESSION_COOKIE = "openhosting_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD"})


class CrossSiteError(AuthError):
    """A change asked by another site's page, or without the session's CSRF token: 403."""

    status = 403


def check_same_origin(request: web.Request) -> None:
    """Refuse a request a browser says another site's page sent (`Sec-Fetch-Site`, `Origin`);
    a request without these headers (not a browser, or an old one) passes this check."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise CrossSiteError("Refused: this request came from another site's page")
    if (origin := foreign_origin(request)) is not None:
        raise CrossSiteError(f"Refused: Origin {origin[:100]!r} is not this platform's")


def secure_cookies(request: web.Request) -> bool:
    """Whether the session cookie is marked Secure: when the daemon serves HTTPS, or is
    reached through HTTPS (its public URL)."""
    api = platform_of(request).config.api
    return request.secure or bool(api.tls_cert) or api.public_url.startswith("https:")


def check_csrf(request: web.Request, session: WebSession) -> None:
    """Refuse a request that may change something unless the daemon's own page sent it:
    the session's CSRF token in its header, and no sign of another site."""
    if request.method in SAFE_METHODS:
        return
    check_same_origin(request)
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise CrossSiteError(f"Refused: a change needs the session's {CSRF_HEADER} header")


def drop_basic_challenge(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """The dashboard's requests get no `WWW-Authenticate: Basic`: a browser would answer it
    with its own password dialog instead of letting the page show the error. A session
    cookie that opened nothing (signed out elsewhere, expired, its key rotated) is deleted
    with the 401 that refuses it: kept, the browser sent it with every later load, each
    counted as a failed login of its address, which throttled the user's own sign-in."""
    if "WWW-Authenticate" not in response.headers:
        return
    if SESSION_COOKIE in request.cookies or request.headers.get("X-Requested-With"):
        response.headers.popall("WWW-Authenticate", None)
        if request.get(DEAD_SESSION_KEY):  # the cookie was what failed, not a token or a key
            response.del_cookie(SESSION_COOKIE, path="/")
