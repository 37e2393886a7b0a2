"""Who may call the service, how often, and with how many bytes: one pure ASGI middleware.

:class:`Guard` runs before any route reads a byte of the body, so a request
without a valid token, over its rate, or declaring too large a body is
answered without being read:

* **Auth.** ``Authorization: Bearer <token>``, compared in constant time
  (:func:`hmac.compare_digest`) with the check token and the admin token.
  Each path needs a role (:data:`ROLES`): ``public`` (``/healthz``), ``admin``
  (``/v1/index/add``) or, for every other path, ``check``; the admin token
  may also check. No or an unknown token: 401 with ``WWW-Authenticate:
  Bearer`` (RFC 6750 ``invalid_token``); the check token on an admin path:
  403 (``insufficient_scope``); admin paths when no admin token is set: 403.
* **Rate limit.** A token bucket per token (per client address without
  auth): ``rate`` requests per second, a burst of one second's worth; 429
  with ``Retry-After``. The buckets of at most ``max_clients`` clients are
  kept (least recently seen forgotten first), so memory does not grow with
  the number of addresses.
* **Body limit.** A ``Content-Length`` over the limit is answered 413 at once;
  otherwise the bytes of the ``http.request`` messages are counted as they
  arrive and the message that crosses the limit is the last one read: 413,
  whether the client sent a length or streamed chunks.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Role = Literal["public", "check", "admin"]

#: Role each path needs; any path not listed needs ``check``.
ROLES: dict[str, Role] = {"/healthz": "public", "/v1/index/add": "admin"}

#: Shortest token accepted: 16 characters (``secrets.token_urlsafe(32)`` gives 43).
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Tokens:
    """The bearer tokens the service accepts.

    Attributes:
        check: token of the check routes; ``None`` = no auth (loopback only).
        admin: token of the admin routes (and the check routes); ``None`` =
            admin routes are off.

    """

    check: str | None
    admin: str | None = None

    def __post_init__(self) -> None:
        for name, token in (("token", self.check), ("admin token", self.admin)):
            if token is not None:
                check_token(token, name)
        if self.admin is not None and self.check is not None and self.admin == self.check:
            raise ValueError("the admin token must differ from the check token")

    def role_of(self, presented: str | None) -> Literal["check", "admin"] | None:
        """Return the role a presented token grants, or ``None``; constant time per token."""
        if presented is None:
            return None
        given = presented.encode("utf-8", "surrogateescape")
        # Compare with both tokens always, so timing does not tell which one matched.
        is_admin = self.admin is not None and hmac.compare_digest(given, self.admin.encode())
        is_check = self.check is not None and hmac.compare_digest(given, self.check.encode())
        if is_admin:
            return "admin"
        return "check" if is_check else None


def check_token(token: str, name: str = "token") -> None:
    """Refuse a token that is short or that no client could send as it is.

    A token is sent in an HTTP header, which carries ASCII: a token with
    spaces, control or non-ASCII characters would be accepted at start and
    never match.

    Raises:
        ValueError: saying how to make a good token.

    Example:
        >>> check_token("s3cret-token-0123456789")
        >>> check_token("sécret-token-0123456789")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the token must be printable ASCII without spaces ...

    """
    make = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
    if not all("!" <= ch <= "~" for ch in token):
        raise ValueError(
            f"the {name} must be printable ASCII without spaces (letters, digits, -._~+/=); {make}"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the {name} must be at least {MIN_TOKEN_CHARS} characters; {make}")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
        (True, True, False)

    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: Tokens) -> None:
    """Refuse to serve without auth on an address other machines can reach.

    Raises:
        ValueError: no check token and ``host`` is not a loopback address.

    """
    if tokens.check is None and not is_loopback(host):
        raise ValueError(
            f"refusing to serve {host} without a token: --no-auth is for loopback addresses "
            "(127.0.0.1, ::1) only; set TRAINLEAK_TOKEN or --token-file"
        )


class TokenBucket:
    """Per-client token buckets: ``rate`` requests per second, ``burst`` at most at once.

    Args:
        rate: tokens added per second (``> 0``).
        burst: bucket size; ``None`` = one second's worth (at least 1).
        max_clients: buckets kept; the least recently seen client is forgotten first.
        clock: seconds, monotonic.

    Example:
        >>> now = [0.0]
        >>> bucket = TokenBucket(2.0, clock=lambda: now[0])
        >>> [bucket.wait("a") for _ in range(3)]
        [0.0, 0.0, 0.5]
        >>> now[0] = 0.5; bucket.wait("a")
        0.0

    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be above 0, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait(self, key: str) -> float:
        """Take a token for ``key`` and return 0.0, or return the seconds until one is free."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class BodyTooLarge(HTTPException):
    """The request body passed the limit (raised from ``receive``; answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit:,} bytes (--max-upload-mb)")


class Guard:
    """Auth, rate limit and body limit in front of an ASGI app (see the module docstring).

    Args:
        app: the application.
        tokens: the accepted tokens.
        max_body: largest request body in bytes.
        rate: requests per second per client; 0 = no rate limit.
        roles: the role each path needs (others need ``check``).

    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: Tokens,
        max_body: int,
        rate: float = 0.0,
        roles: Mapping[str, Role] = ROLES,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.max_body = max_body
        self.roles = dict(roles)
        self.limiter = TokenBucket(rate) if rate > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the request with an error, or pass it on with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        need = self.roles.get(scope["path"], "check")
        if need != "public":
            refused = self._refuse(need, headers, scope)
            if refused is not None:
                await _respond(send, *refused)
                return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _respond(send, *_too_large(self.max_body))
            return
        await self._limited(scope, receive, send)

    def _refuse(
        self, need: Role, headers: dict[str, str], scope: Scope
    ) -> tuple[int, str, dict[str, str]] | None:
        """Return ``(status, detail, headers)`` to refuse the request with, or ``None``."""
        token = _bearer(headers.get("authorization"))
        role = self.tokens.role_of(token)
        challenge = {"WWW-Authenticate": 'Bearer realm="trainleak"'}
        if need == "admin":
            if self.tokens.admin is None:
                return 403, "admin routes are off: start serve with an admin token", {}
            if role == "check":
                return 403, "this route needs the admin token", {}
            if role != "admin":
                return 401, "a valid admin bearer token is required", challenge
        elif role is None and self.tokens.check is not None:
            return 401, "a valid bearer token is required", challenge
        if self.limiter is not None:
            client = scope.get("client")
            key = role or f"address:{client[0] if client else '?'}"
            wait = self.limiter.wait(key)
            if wait > 0:
                retry = {"Retry-After": str(max(1, math.ceil(wait)))}
                return 429, "rate limit exceeded (--rate-limit)", retry
        return None

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:  # never read past the message that crossed the limit
                raise BodyTooLarge(self.max_body)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    exceeded = True
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _respond(send, *_too_large(self.max_body))


def _too_large(limit: int) -> tuple[int, str, dict[str, str]]:
    return 413, str(BodyTooLarge(limit).detail), {"Connection": "close"}


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _respond(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    """Send a JSON error ``{"detail": ...}``, the shape FastAPI's own errors have."""
    body = json.dumps({"detail": detail}).encode()
    raw: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": raw}
    await send(start)
    await send({"type": "http.response.body", "body": body})
