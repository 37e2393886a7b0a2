"""``trainleak review``: a local page where a person confirms or dismisses each candidate.

A thin FastAPI layer over :mod:`~trainleak.service.review_items` (the
candidates of any report folder) and :mod:`~trainleak.service.decisions` (the
append-only log beside each report). The page itself is plain HTML, CSS and
JavaScript served by the package (``service/static``): no CDN, every action
on a key.

Routes: ``GET /`` the page; ``GET /api/candidates``; ``GET /api/state`` (the
current decision of every candidate, polled so two reviewers see each
other's work); ``POST /api/decide`` and ``POST /api/undo``; ``GET /image/N``
(only images the reports list, re-encoded as PNG); ``GET /report/N`` (the
report's own ``report.html`` with a "review" link on each candidate).

Guards, declared once in :class:`Guard`: on a loopback address, requests must
name a loopback host (no DNS rebinding); with a token (required off loopback)
every request carries it as ``Authorization: Bearer``, or opens ``/?token=``
once, which sets a same-site cookie; a ``POST`` must be JSON from the same
origin (no cross-site form can decide); request bodies are counted while
they stream and capped.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from functools import lru_cache
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from trainleak.config import ReviewConfig
from trainleak.errors import TrainleakError
from trainleak.service.decisions import DB_NAME, VERDICTS, Decision, DecisionStore
from trainleak.service.review_images import ImageTable, render_png
from trainleak.service.review_items import Candidate, ReviewReport, read_report

STATIC = Path(__file__).parent / "static"
#: The files under ``/static/``: a fixed list, so no request reaches another file.
STATIC_FILES = {
    "review.js": "text/javascript",
    "review.css": "text/css",
    "report-links.js": "text/javascript",
}
COOKIE = "trainleak_review_token"
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
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


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


class Review:
    """The state behind the page: the reports, their candidates and decision logs.

    Args:
        folders: report folders (each holds a ``report.json``).
        config: settings (defaults from :class:`~trainleak.config.ReviewConfig`).
        base: folder relative image paths are resolved against first
            (default: the current folder, where the audit usually ran).

    Raises:
        ReviewInputError: a folder holds no report with candidates.

    """

    def __init__(
        self,
        folders: list[str | os.PathLike[str]],
        config: ReviewConfig | None = None,
        base: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config or ReviewConfig()
        self.reviewer = self.config.reviewer or _login_name()
        self.images = ImageTable([Path(base or Path.cwd())], self.config.max_file_mb)
        self.reports: list[ReviewReport] = [
            read_report(f, i, self.images) for i, f in enumerate(folders)
        ]
        self.stores = [DecisionStore(r.folder / DB_NAME) for r in self.reports]
        ordered = [c for r in self.reports for c in r.candidates]
        ordered.sort(key=lambda c: -c.order)
        self.candidates: list[Candidate] = ordered
        self.by_id = {c.id: c for c in ordered}
        self.keys = {c.id: self.key(c) for c in ordered}
        self._png = lru_cache(maxsize=512)(self._render)

    def key(self, c: Candidate) -> tuple[str, str, str]:
        """Return ``(synthetic_hash, train_hash, encoder)``: what a decision on ``c`` is about."""
        s, t = c.pair_images
        return (
            self.images.digest(s) if s is not None else f"sample:{c.synthetic}",
            self.images.digest(t) if t is not None else c.train,
            self.reports[c.report].encoder_key,
        )

    def state(self) -> dict[str, dict[str, Any] | None]:
        """Return the current decision of every candidate (``None`` = undecided)."""
        current = [store.current() for store in self.stores]
        out: dict[str, dict[str, Any] | None] = {}
        for c in self.candidates:
            d = current[c.report].decision_for(*self.keys[c.id])
            out[c.id] = None if d is None else {**d.summary(), "row": d.row}
        return out

    def decide(self, cid: str, decision: str, reviewer: str, note: str = "") -> Decision:
        """Append ``decision`` on candidate ``cid`` to its report's log.

        Raises:
            KeyError: no such candidate.
            ValueError: not one of ``leak``, ``not a leak``, ``unsure``.

        """
        c = self.by_id[cid]
        if decision not in VERDICTS or decision == "undecided":
            raise ValueError(f"decision must be one of {VERDICTS[:3]}, not {decision!r}")
        row = Decision(
            *self.keys[cid], decision=decision, reviewer=reviewer or self.reviewer,
            decided_at="", note=note, synthetic=c.synthetic, train=c.train, kind=c.kind,
        )  # fmt: skip
        return self.stores[c.report].add(row)

    def undo(self, cid: str, row: int, reviewer: str) -> Decision:
        """Undo log row ``row`` of candidate ``cid``'s report (a new row puts back the one before).

        Raises:
            KeyError: no such candidate, or the row is not about it.

        """
        c = self.by_id[cid]
        store = self.stores[c.report]
        target = next((d for d in store.history() if d.row == row), None)
        if target is None or target.key != self.keys[cid]:
            raise KeyError(f"row {row} is not a decision on candidate {cid}")
        return store.undo(row, reviewer or self.reviewer)

    def png(self, n: int) -> bytes | None:
        """Return image ``n`` as PNG, or ``None`` when it is missing or not an image."""
        if not 0 <= n < len(self.images.paths):
            return None
        return self._png(n)

    def _render(self, n: int) -> bytes | None:
        data = self.images.read(n)
        if data is None:
            return None
        return render_png(data, self.config.image_size, self.config.max_pixels)

    def payload(self) -> dict[str, Any]:
        """Return what ``GET /api/candidates`` answers."""
        return {
            "reviewer": self.reviewer,
            "reports": [r.summary() for r in self.reports],
            "candidates": [
                {**c.to_dict(), "redacted": self.reports[c.report].redacted, "order": c.order}
                for c in self.candidates
            ],
            "decisions": self.state(),
        }


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "reviewer"


class Guard:
    """Pure ASGI middleware: host check, token, same-origin JSON posts, headers.

    Args:
        app: the application it guards.
        token: the token every request must carry, or ``None`` (loopback only).
        loopback: whether the server is bound to a loopback address (then the
            ``Host`` header must name one: a page on another site cannot reach
            the server through DNS rebinding).

    """

    def __init__(self, app: Any, token: str | None, loopback: bool) -> None:
        self.app = app
        self.token = token
        self.loopback = loopback

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal = self._refusal(scope, headers, host)
        if refusal is not None:
            await _plain(send, *refusal)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if (
            self.token is not None
            and scope["method"] == "GET"
            and self._matches(query.get("token"))
        ):
            # The token arrived in the URL once: keep it in a cookie and drop it from the URL.
            cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            await _plain(send, 303, "", [(b"location", scope["path"].encode()),
                                          (b"set-cookie", cookie.encode())])  # fmt: skip
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Any, headers: dict[str, str], host: str) -> tuple[int, str] | None:
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.loopback and not is_loopback(hostname):
            return 403, "this review server answers requests for localhost only"
        if self.token is not None and not self._authorised(scope, headers):
            return 401, "a token is required: open /?token=YOUR_TOKEN or send a Bearer token"
        if scope["method"] == "POST":
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return 415, "POST a JSON body (Content-Type: application/json)"
            origin = headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != host:
                return 403, "cross-origin requests are refused"
        return None

    def _authorised(self, scope: Any, headers: dict[str, str]) -> bool:
        presented = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            presented.append(auth[7:].strip())
        jar: SimpleCookie = SimpleCookie()
        jar.load(headers.get("cookie", ""))
        if COOKIE in jar:
            presented.append(jar[COOKIE].value)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        presented += query.get("token", [])[:1]
        return self._matches(presented)

    def _matches(self, presented: list[str] | None) -> bool:
        want = (self.token or "").encode()
        return bool(want) and any(
            hmac.compare_digest(p.encode("utf-8", "surrogateescape"), want) for p in presented or []
        )


async def _plain(
    send: Any, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ReviewServerError(TrainleakError):
    """The review server cannot start as asked (e.g. off loopback without a token)."""


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token.

    Raises:
        ReviewServerError: ``host`` is reachable from other machines and no token is set.

    """
    if token is None and not is_loopback(host):
        raise ReviewServerError(
            f"refusing to serve {host} without a token: reviews show training images; "
            "set TRAINLEAK_TOKEN or pass --token-file, or bind 127.0.0.1"
        )


def create_app(review: Review, token: str | None = None, host: str | None = None) -> Any:
    """Return the FastAPI application of a review (routes in :mod:`.review_routes`).

    Args:
        review: the reports and logs behind the page.
        token: the token every request must carry (``None``: loopback only).
        host: the address it will be bound to (default: the config's).

    Raises:
        ReviewServerError: a non-loopback ``host`` without a token.

    """
    from trainleak.service.review_routes import build_app

    host = host or review.config.host
    check_bind(host, token)
    app = build_app(review)
    return Guard(app, token, loopback=is_loopback(host))


def run(
    review: Review, token: str | None = None, host: str | None = None, port: int | None = None
) -> None:
    """Serve the review page until interrupted (uvicorn, one process)."""
    import uvicorn

    host = host or review.config.host
    app = create_app(review, token, host)
    uvicorn.run(
        app, host=host, port=port or review.config.port, log_level="warning",
        timeout_keep_alive=5, limit_concurrency=64,
    )  # fmt: skip
