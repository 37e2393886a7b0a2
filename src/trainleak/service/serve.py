"""``trainleak serve``: the release gate over HTTP (FastAPI + uvicorn).

Routes (all JSON unless said):

* ``POST /v1/check``: multipart, field ``file`` once or several times; one
  result per file, in order: ``{"results": [{"name", "verdict", "nearest",
  "similarity", "threshold", "identity", "reason", "reviewed"}]}``. ``name`` is the
  uploaded file name; the other keys are the :class:`~trainleak.gate.check.Verdict`
  that ``trainleak check`` gives for the same bytes (the same function,
  :meth:`Index.check_encoded <trainleak.gate.index.Index.check_encoded>`).
* ``GET /healthz``: no token needed; 200 ``{"status": "ok"}`` when a check
  can be answered, else 503 with the ``problems``: the encoder worker is
  down, the index's encoder cannot be rebuilt (an index built from vectors
  checks vectors only), or the ``--decisions`` file cannot be read.
* ``GET /v1/index``: the index's manifest without the host's file paths
  (:meth:`Index.public_manifest <trainleak.gate.index.Index.public_manifest>`,
  then :func:`~trainleak.service.public.without_paths`).
* ``GET /metrics``: Prometheus text format (see :mod:`trainleak.service.metrics`).
* ``POST /v1/index/add``: multipart ``file`` (and an optional ``label`` field,
  the identity of every file), admin token only: :meth:`Index.add` with the
  uploads, as one atomic change; returns its counts. Fields
  ``max_threshold_change`` and ``accept_threshold_change`` as in ``index add``.

Status codes: 200; 401 missing or unknown token; 403 the check token on an
admin route (or admin routes off); 413 body over ``--max-upload-mb`` (counted
while streaming) or an image over ``--max-pixels``; 415 an upload that is
not an image; 422 a missing ``file`` field (or an upload ``index add``
refuses); 429 over ``--rate-limit``; 503 with ``Retry-After`` when the queue
is full, a request waited past ``--request-timeout``, the service is
stopping, or it cannot check at all (the reasons of ``/healthz``); 408 a
request whose headers or body did not arrive within ``--header-timeout`` /
``--body-timeout`` (:mod:`~trainleak.service.httpserver`). Auth and limits
are middleware (:mod:`~trainleak.service.guard`), declared once in
:func:`create_app`; routes parse, call the gate, serialise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast, get_type_hints

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, create_model

from trainleak._version import __version__
from trainleak.config import MAX_THRESHOLD_CHANGE, ServeConfig
from trainleak.errors import TrainleakError
from trainleak.gate.index import Index
from trainleak.gate.shards import MANIFEST
from trainleak.gate.verdict import Verdict
from trainleak.service.batcher import Batcher, QueueFull, TimedOut
from trainleak.service.guard import Guard, Tokens, check_bind
from trainleak.service.httpserver import Limits, listen, make_server
from trainleak.service.metrics import RecordRequests, ServiceMetrics
from trainleak.service.public import without_paths
from trainleak.service.uploads import pixel_groups, refusal, upload_set

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Upload = tuple[str, bytes]
#: The service's paths; each gets its own metrics label.
ROUTES = ("/v1/check", "/v1/index", "/v1/index/add", "/healthz", "/metrics")


#: Verdict fields named otherwise over HTTP (a verdict's path is the upload's name).
HTTP_NAMES = {"path": "name"}
# The HTTP model is derived from Verdict's fields: FastAPI's response_model drops keys a
# model lacks, so a new verdict field reaches it by itself (tests/gate/test_verdict_fields.py).
CheckResult: type[BaseModel] = create_model(
    "CheckResult",
    __doc__="One file's verdict: the keys of ``trainleak check --jsonl``, path as name.",
    **cast(dict[str, Any], {
        HTTP_NAMES.get(f.name, f.name): (
            get_type_hints(Verdict)[f.name], ... if f.default is dataclasses.MISSING else f.default
        )
        for f in dataclasses.fields(Verdict)
    }),
)  # fmt: skip
#: The answer of ``POST /v1/check``: one result per uploaded file, in order.
CheckResponse: type[BaseModel] = create_model(
    "CheckResponse", results=(cast(Any, list)[CheckResult], ...)  # a model made at run time
)


def _http_result(verdict: Verdict) -> dict[str, Any]:
    return {HTTP_NAMES.get(k, k): v for k, v in verdict.to_dict().items()}


class Service:
    """What the routes share: the index, the batcher that owns its encoder, the metrics.

    Only the batcher's worker thread touches the index's encoder and changes
    the index; it reloads the index when another process changed it.
    """

    def __init__(self, index: Index, config: ServeConfig, *, owns_index: bool) -> None:
        self.index = index
        self.config = config
        self.owns_index = owns_index
        self.metrics = ServiceMetrics(ROUTES)
        self.batcher: Batcher[Upload, Verdict] = Batcher(
            self._check_batch,
            max_batch=config.max_batch,
            max_wait_s=config.max_wait_ms / 1000,
            queue_size=config.queue_size,
            queue_bytes=int(config.queue_mb * 2**20),
            on_batch=self.metrics.batch.observe,
        )
        self.metrics.watch_queue(self.batcher.depth)
        self._manifest_mtime = self._mtime()

    def _mtime(self) -> int:
        try:
            return (Path(self.index.path) / MANIFEST).stat().st_mtime_ns
        except OSError:
            return -1

    def _refresh(self) -> None:
        """Reload the index when its manifest changed (``index add``/``remove`` elsewhere)."""
        mtime = self._mtime()
        if mtime != self._manifest_mtime:
            self.index.reload()
            self._manifest_mtime = mtime

    def _check_batch(self, items: list[Upload]) -> list[Verdict]:
        self._refresh()
        verdicts: list[Verdict] = []
        # Decoded pixels are what costs memory (a 99 KB PNG can hold 81 MP):
        # the batch is checked in groups of at most decode_mpix pixels.
        budget, most = int(self.config.decode_mpix * 1e6), self.config.check.embed.max_pixels
        for group in pixel_groups(items, budget, most):
            verdicts += self.index.check_encoded(group)
        for v in verdicts:
            self.metrics.verdicts.labels(v.verdict).inc()
        return verdicts

    def add(
        self,
        items: Sequence[Upload],
        label: str | None,
        max_threshold_change: float = MAX_THRESHOLD_CHANGE,
        accept_threshold_change: bool = False,
    ) -> dict[str, Any]:
        """Add uploads to the index (runs on the worker thread); see :meth:`Index.add`."""
        self._refresh()
        result = self.index.add(
            upload_set(self.index, items, label),
            max_threshold_change=max_threshold_change,
            accept_threshold_change=accept_threshold_change,
        )
        self._manifest_mtime = self._mtime()
        return result

    def problems(self) -> list[str]:
        """Return why checks cannot be answered now (empty when they can).

        The index's own :meth:`~trainleak.gate.index.Index.health` (a
        threshold that is not finite, an encoder that cannot be rebuilt, an
        unreadable decisions file, a damaged shard), and the worker.
        """
        found = [] if self.batcher.alive() else ["the encoder worker is not running"]
        problems: list[str] = self.index.health()["problems"]
        return found + problems

    def start(self) -> None:
        """Load the search and the encoder, then start the worker: no request pays for loading."""
        self.index.warm()
        self.batcher.start()
        for problem in self.problems():
            log.error("checks will be answered 503: %s", problem)

    def stop(self) -> None:
        """Finish the queued requests, stop the worker, close the index if we opened it."""
        self.batcher.close(timeout=self.config.graceful_timeout)
        if self.owns_index:
            self.index.close()


async def service_of(request: Request) -> Service:
    """Dependency: the app's :class:`Service`."""
    service: Service = request.app.state.service
    return service


async def read_uploads(files: list[UploadFile], max_pixels: int) -> list[Upload]:
    """Read every upload (bounded by the body limit) and refuse non-images and bombs.

    Raises:
        HTTPException: 415 or 413, naming the first upload refused.

    """
    items = []
    for i, f in enumerate(files):
        data = await f.read()
        name = f.filename or f"file{i}"
        refused = refusal(name, data, max_pixels)
        if refused is not None:
            raise HTTPException(*refused)
        items.append((name, data))
    return items


router = APIRouter()


@router.post("/v1/check", response_model=CheckResponse)
async def check_images(
    file: list[UploadFile] = File(..., description="one or several images"),  # noqa: B008
    service: Service = Depends(service_of),  # noqa: B008
) -> dict[str, Any]:
    """Give one verdict per uploaded image, as ``trainleak check`` does."""
    items = await read_uploads(file, service.config.check.embed.max_pixels)
    service.batcher.start()
    problems = service.problems()
    if problems:  # fail closed: no verdict rather than one the gate cannot stand behind
        raise HTTPException(503, "; ".join(problems), headers={"Retry-After": "60"})
    nbytes = sum(len(data) for _, data in items)
    try:
        verdicts = await service.batcher.results(items, nbytes, service.config.request_timeout)
    except TrainleakError as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "60"}) from None
    return {"results": [_http_result(v) for v in verdicts]}


@router.post("/v1/index/add")
async def add_images(
    file: list[UploadFile] = File(..., description="images to add"),  # noqa: B008
    label: str | None = Form(None, description="identity label of every file"),  # noqa: B008
    max_threshold_change: float = Form(  # noqa: B008
        MAX_THRESHOLD_CHANGE, ge=0, description="largest threshold move committed (absolute)"
    ),
    accept_threshold_change: bool = Form(  # noqa: B008
        False, description="commit whatever the addition does to the threshold"
    ),
    service: Service = Depends(service_of),  # noqa: B008
) -> dict[str, Any]:
    """Add the uploaded images to the index (admin token), as ``trainleak index add`` does.

    An addition that would move the calibrated threshold by more than
    ``max_threshold_change`` is refused (422, nothing committed) unless
    ``accept_threshold_change`` is true.
    """
    items = await read_uploads(file, service.config.check.embed.max_pixels)
    service.batcher.start()
    change = (max_threshold_change, accept_threshold_change)
    try:
        return dict(
            await service.batcher.call(
                lambda: service.add(items, label, *change), service.config.request_timeout
            )
        )
    except TrainleakError as err:
        raise HTTPException(422, str(err)) from None


@router.get("/v1/index")
async def index_manifest(service: Service = Depends(service_of)) -> dict[str, Any]:  # noqa: B008
    """Return the index's manifest, without file paths of this machine."""
    return without_paths(service.index.public_manifest())


@router.get("/healthz")
async def healthz(service: Service = Depends(service_of)) -> JSONResponse:  # noqa: B008
    """Answer ``ok`` when checks can be answered, else 503 and the problems."""
    problems = service.problems()
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(service: Service = Depends(service_of)) -> Response:  # noqa: B008
    """Prometheus text exposition."""
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    retry = exc.retry_after if isinstance(exc, QueueFull) else 1
    headers = {"Retry-After": str(retry)}
    return JSONResponse({"detail": str(exc)}, status_code=503, headers=headers)


def create_app(
    index: Index | PathLike,
    config: ServeConfig | None = None,
    tokens: Tokens | None = None,
) -> FastAPI:
    """Build the service's ASGI app over an index.

    Args:
        index: an opened :class:`Index` (kept open), or an index folder
            (opened now, closed at shutdown).
        config: the service's settings.
        tokens: the accepted bearer tokens; ``None`` = no auth (bind it to
            loopback only: :func:`serve` checks).

    Returns:
        The FastAPI app; its lifespan starts and stops the encoder worker.

    Example:
        >>> import tempfile, pathlib
        >>> from fastapi.testclient import TestClient
        >>> from PIL import Image
        >>> from trainleak.config import EmbedConfig, IndexConfig
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "train").mkdir()
        >>> Image.radial_gradient("L").save(d / "train" / "a.png")
        >>> cfg = IndexConfig(embed=EmbedConfig("pixel", workers=1, no_cache=True))
        >>> Index.build(d / "idx", d / "train", config=cfg).close()
        >>> app = create_app(d / "idx", tokens=Tokens("s3cret-token-0123456789"))
        >>> auth = {"Authorization": "Bearer s3cret-token-0123456789"}
        >>> with TestClient(app) as client, open(d / "train" / "a.png", "rb") as fh:
        ...     r = client.post("/v1/check", files={"file": ("a.png", fh)}, headers=auth)
        >>> r.status_code, r.json()["results"][0]["verdict"]
        (200, 'block')

    """
    config = config or ServeConfig()
    tokens = tokens or Tokens(None)
    if isinstance(index, Index):
        service = Service(index, config, owns_index=False)
    else:
        service = Service(Index.open(index, config=config.check), config, owns_index=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="trainleak",
        version=__version__,
        summary="Check images against a training-set index before they are released.",
        lifespan=lifespan,
        docs_url=None,  # the docs pages load assets from a CDN; the schema stays
        redoc_url=None,
    )
    app.state.service = service
    app.include_router(router)
    app.add_exception_handler(QueueFull, _busy)
    app.add_exception_handler(TimedOut, _busy)
    # Added last = outermost: metrics see every answer, the guard's refusals too.
    app.add_middleware(
        Guard,
        tokens=tokens,
        max_body=int(config.max_upload_mb * 2**20),
        rate=config.rate_limit,
    )
    app.add_middleware(RecordRequests, metrics=service.metrics)
    return app


def limits(config: ServeConfig) -> Limits:
    """Return the connection deadlines and caps of ``config``."""
    return Limits(
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
        max_requests=config.max_requests,
        max_connections=config.max_connections,
    )


def serve(index: PathLike, config: ServeConfig | None = None, tokens: Tokens | None = None) -> None:
    """Serve an index over HTTP until interrupted (SIGINT/SIGTERM: graceful shutdown).

    The port is bound before the index is opened, so a busy port fails at once.

    Raises:
        ValueError: no token and a non-loopback ``config.host``.
        PortError: the port is in use (or the address is not this machine's).
        IndexFormatError: the folder is not a usable index.

    """
    config = config or ServeConfig()
    tokens = tokens or Tokens(None)
    check_bind(config.host, tokens)
    sock = listen(config.host, config.port)
    try:
        app = create_app(index, config, tokens)
        server = make_server(
            app,
            limits(config),
            timeout_graceful_shutdown=int(config.graceful_timeout),
            access_log=config.access_log,
            log_level="info",
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
