"""Prometheus metrics of the service, and the ASGI middleware that records every request.

Each app has its own registry (several apps in one process, as in the
tests, do not share counters). Route labels are the known paths or ``other``,
so a client requesting random paths cannot grow the label set.

Metrics (``GET /metrics``, Prometheus text format):

* ``trainleak_http_requests_total{route, status}``: requests answered,
  refusals by the guard (401, 403, 413, 429) included.
* ``trainleak_http_request_duration_seconds{route}``: latency histogram.
* ``trainleak_verdicts_total{verdict}``: ``release``, ``block``, ``skip``.
* ``trainleak_batch_images``: images per micro-batch sent to the encoder.
* ``trainleak_queue_requests``: requests waiting for the encoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Latency buckets in seconds (1 ms to 30 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Images-per-batch buckets.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    r"""The service's counters and histograms in their own registry.

    Args:
        routes: the paths that get their own label; any other path is ``other``.

    Example:
        >>> m = ServiceMetrics(["/v1/check"])
        >>> m.verdicts.labels("block").inc()
        >>> b"trainleak_verdicts_total{verdict=\"block\"} 1.0" in m.render()[0]
        True

    """

    def __init__(self, routes: Iterable[str]) -> None:
        self.routes = frozenset(routes)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "trainleak_http_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "trainleak_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.verdicts = Counter(
            "trainleak_verdicts", "Verdicts given, by verdict", ["verdict"], registry=r
        )
        self.batch = Histogram(
            "trainleak_batch_images",
            "Images per micro-batch sent to the encoder",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue = Gauge(
            "trainleak_queue_requests", "Requests waiting for the encoder", registry=r
        )

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth`` at every scrape."""
        self.queue.set_function(depth)

    def route(self, path: str) -> str:
        """Return the route label of ``path``: the path when known, else ``other``."""
        return path if path in self.routes else "other"

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RecordRequests:
    """ASGI middleware: count every HTTP request by route and status, and time it.

    Place it outermost, so that the guard's refusals are counted too. A
    request whose app fails before answering counts as 500.
    """

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; record its status and latency when it is answered."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = self.metrics.route(scope["path"])
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
