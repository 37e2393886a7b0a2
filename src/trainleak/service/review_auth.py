"""Who is reviewing: one token per reviewer, sessions for the browser, and the page's guard.

Every request to the review page carries a reviewer's token, on every
address (another user of a shared machine can reach a loopback port too):
as ``Authorization: Bearer``, or through a session. A browser opens
``/?token=TOKEN`` once; the answer sets an ``HttpOnly; SameSite=Strict``
cookie holding a random session id (never the token) that the server maps
to the reviewer, and redirects to ``/`` (always ``/``: a redirect never goes
where the request asks). The reviewer a decision is signed with is the one
whose token or session the request carries; a name in the request body is
ignored.

:class:`Guard` also refuses requests naming another host than a loopback
one when bound to loopback (no DNS rebinding), and ``POST`` bodies that are
not JSON from the same origin (no cross-site form can decide).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections import OrderedDict
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from trainleak.service.guard import check_token

COOKIE = "trainleak_review_session"
#: Sessions kept; the oldest is forgotten first (its reviewer opens the link again).
MAX_SESSIONS = 1024
#: Longest reviewer name.
MAX_NAME = 100
UNAUTHORISED = (
    "a reviewer's token is required: open the link 'trainleak review' printed "
    "(/?token=...) or send a Bearer token"
)
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
#: Headers of every response: nothing from elsewhere, nothing framed, nothing sniffed.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches this machine only.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("[::1]"), is_loopback("0.0.0.0")
        (True, True, False)

    """
    if host.strip("[]") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Reviewers:
    """The reviewers' tokens: each token signs decisions with one name.

    Args:
        tokens: reviewer name -> token.

    Raises:
        ValueError: no reviewer, an empty or over-long name, a token that is
            short or not printable ASCII, or a token given to two reviewers.

    Example:
        >>> r = Reviewers({"ana": "ana-token-0123456789", "bob": "bob-token-0123456789"})
        >>> r.who("bob-token-0123456789"), r.who("nobody-0123456789xx")
        ('bob', None)

    """

    def __init__(self, tokens: dict[str, str]) -> None:
        if not tokens:
            raise ValueError("give at least one reviewer and their token")
        seen: set[str] = set()
        for name, token in tokens.items():
            if not name.strip() or len(name) > MAX_NAME or name != name.strip():
                raise ValueError(f"a reviewer's name is 1 to {MAX_NAME} characters: {name!r}")
            check_token(token, f"token of reviewer {name!r}")
            if token in seen:
                raise ValueError(f"two reviewers have the same token ({name!r}): one each")
            seen.add(token)
        self._tokens = [(name, token.encode()) for name, token in tokens.items()]

    @property
    def names(self) -> list[str]:
        """The reviewers' names."""
        return [name for name, _ in self._tokens]

    def who(self, presented: str | None) -> str | None:
        """Return the reviewer whose token was presented, or ``None``; every token compared."""
        if not presented:
            return None
        given = presented.encode("utf-8", "surrogateescape")
        found = None
        for name, token in self._tokens:  # no early exit: timing does not tell how far it got
            if hmac.compare_digest(given, token):
                found = name
        return found


class Sessions:
    """Random session ids -> reviewer, the most recent :data:`MAX_SESSIONS` kept."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit = limit
        self._by_id: OrderedDict[str, str] = OrderedDict()

    def open(self, reviewer: str) -> str:
        """Start a session for ``reviewer``; return its id."""
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = reviewer
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return sid

    def who(self, sid: str | None) -> str | None:
        """Return the session's reviewer, or ``None``."""
        if not sid:
            return None
        found = None
        for known, name in self._by_id.items():
            if hmac.compare_digest(known.encode(), sid.encode("utf-8", "surrogateescape")):
                found = name
        return found


class Guard:
    """Pure ASGI middleware: host check, reviewer's token or session, same-origin JSON posts.

    The reviewer is put in ``scope["state"]["reviewer"]`` (``request.state.reviewer``).

    Args:
        app: the application it guards.
        reviewers: the reviewers' tokens.
        loopback: whether the server is bound to a loopback address (then the
            ``Host`` header must name one).

    """

    def __init__(self, app: Any, reviewers: Reviewers, loopback: bool) -> None:
        self.app = app
        self.reviewers = reviewers
        self.loopback = loopback
        self.sessions = Sessions()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.loopback and not is_loopback(hostname):
            await plain(send, 403, "this review server answers requests for localhost only")
            return
        if scope["method"] == "GET" and scope["path"] == "/":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if "token" in query:
                await self._login(send, query["token"][0])
                return
        reviewer = self._reviewer(headers)
        if reviewer is None:
            await plain(send, 401, UNAUTHORISED)
            return
        refusal = _post_refusal(scope, headers, host)
        if refusal is not None:
            await plain(send, *refusal)
            return
        scope.setdefault("state", {})["reviewer"] = reviewer

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _login(self, send: Any, token: str) -> None:
        """Answer ``/?token=``: a session cookie and a redirect to ``/``, or 401."""
        reviewer = self.reviewers.who(token)
        if reviewer is None:
            await plain(send, 401, "this token belongs to no reviewer of this server")
            return
        sid = self.sessions.open(reviewer)
        cookie = f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict"
        await plain(send, 303, "", [(b"location", b"/"), (b"set-cookie", cookie.encode())])

    def _reviewer(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return self.reviewers.who(auth[7:].strip())
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except CookieError:
            return None
        return self.sessions.who(jar[COOKIE].value) if COOKIE in jar else None


def _post_refusal(scope: Any, headers: dict[str, str], host: str) -> tuple[int, str] | None:
    if scope["method"] == "POST":
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return 415, "POST a JSON body (Content-Type: application/json)"
        origin = headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != host:
            return 403, "cross-origin requests are refused"
    return None


async def plain(
    send: Any, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a short text answer with the security headers."""
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
