"""The routes of ``trainleak review``: each parses, calls :class:`~.review.Review`, serialises.

Auth, host and origin checks are not here: :class:`~trainleak.service.review_auth.Guard`
wraps the whole application and names the request's reviewer
(:func:`reviewer_of`); decisions are signed with that name, never with one
from the body. The one check a route shares, a JSON body read with a byte
limit, is the dependency :func:`json_body`.
"""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from trainleak.service.review import STATIC, STATIC_FILES, Review
from trainleak.service.review_auth import Guard, Reviewers, is_loopback

#: Longest note kept with a decision.
MAX_NOTE = 2000


def review_of(request: Request) -> Review:
    """Return the :class:`~trainleak.service.review.Review` the app serves."""
    review: Review = request.app.state.review
    return review


def reviewer_of(request: Request) -> str:
    """Return the reviewer the guard found for this request (their token or session)."""
    reviewer = getattr(request.state, "reviewer", None)
    if not reviewer:  # only an app used without its guard gets here
        raise HTTPException(401, "no reviewer: serve the app through create_app")
    return str(reviewer)


async def json_body(request: Request) -> dict[str, Any]:
    """Read a JSON object body, counting bytes as they arrive; 413 past the limit."""
    limit = review_of(request).config.max_body_kb * 1024
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return data


def _text(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key) or ""
    if not isinstance(value, str):
        raise HTTPException(400, f"{key} must be a string")
    return value[:limit]


def build_app(review: Review) -> FastAPI:
    """Return the FastAPI app (unguarded: wrap it in :class:`~.review.Guard`)."""
    app = FastAPI(title="trainleak review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = review
    page = (STATIC / "review.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    @app.get("/api/candidates")
    def candidates(
        r: Review = Depends(review_of),  # noqa: B008
        who: str = Depends(reviewer_of),  # noqa: B008
    ) -> dict[str, Any]:
        return r.payload(who)

    @app.get("/api/state")
    def state(r: Review = Depends(review_of)) -> dict[str, Any]:  # noqa: B008
        return {"decisions": r.state()}

    @app.post("/api/decide")
    def decide(
        data: dict[str, Any] = Depends(json_body),  # noqa: B008
        r: Review = Depends(review_of),  # noqa: B008
        who: str = Depends(reviewer_of),  # noqa: B008
    ) -> dict[str, Any]:
        cid = _text(data, "id", 64)
        try:
            d = r.decide(cid, _text(data, "decision", 20), who, _text(data, "note", MAX_NOTE))
        except KeyError:
            raise HTTPException(404, f"no candidate {cid!r}") from None
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        return {"id": cid, "row": d.row, "decision": {**d.summary(), "row": d.row}}

    @app.post("/api/undo")
    def undo(
        data: dict[str, Any] = Depends(json_body),  # noqa: B008
        r: Review = Depends(review_of),  # noqa: B008
        who: str = Depends(reviewer_of),  # noqa: B008
    ) -> dict[str, Any]:
        cid, row = _text(data, "id", 64), data.get("row")
        if not isinstance(row, int):
            raise HTTPException(400, "row must be an integer")
        try:
            d = r.undo(cid, row, who)
        except KeyError as err:
            raise HTTPException(404, str(err.args[0] if err.args else err)) from None
        now = None if d.decision == "undecided" else {**d.summary(), "row": d.row}
        return {"id": cid, "row": d.row, "decision": now}

    @app.get("/image/{n}")
    def image(n: str, r: Review = Depends(review_of)) -> Response:  # noqa: B008
        png = r.png(int(n)) if n.isdigit() and len(n) < 10 else None
        if png is None:
            raise HTTPException(404, "no such image")
        return Response(png, media_type="image/png")

    @app.get("/report/{n}", response_class=HTMLResponse)
    def report_page(n: str, r: Review = Depends(review_of)) -> HTMLResponse:  # noqa: B008
        if not (n.isdigit() and int(n) < len(r.reports)):
            raise HTTPException(404, "no such report")
        path = r.reports[int(n)].folder / "report.html"
        if not path.is_file():
            raise HTTPException(404, "this report folder has no report.html")
        text = path.read_text(encoding="utf-8", errors="replace")
        script = (
            f'<script src="/static/report-links.js" data-report="{html.escape(str(n))}" '
            "defer></script>"
        )
        at = text.rfind("</body>")
        text = text[:at] + script + text[at:] if at >= 0 else text + script
        return HTMLResponse(text)

    @app.exception_handler(HTTPException)
    async def _error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return app


def create_app(review: Review, reviewers: Reviewers, host: str | None = None) -> Any:
    """Return the FastAPI application of a review (the routes below).

    Args:
        review: the reports and logs behind the page.
        reviewers: the reviewers' tokens; every request carries one (or its session).
        host: the address it will be bound to (default: the config's).

    """
    host = host or review.config.host
    return Guard(build_app(review), reviewers, loopback=is_loopback(host))


def run(
    review: Review, reviewers: Reviewers, host: str | None = None, port: int | None = None
) -> None:
    """Serve the review page until interrupted (uvicorn, one process, read deadlines).

    Raises:
        PortError: the port is in use (bound before anything else starts).

    """
    from trainleak.service.httpserver import Limits, listen, make_server

    host = host or review.config.host
    sock = listen(host, port or review.config.port)
    try:
        app = create_app(review, reviewers, host)
        limits = Limits(
            header_timeout=review.config.header_timeout,
            body_timeout=review.config.body_timeout,
            max_requests=64,
            max_connections=256,
        )
        make_server(app, limits, log_level="warning").run(sockets=[sock])
    finally:
        sock.close()
