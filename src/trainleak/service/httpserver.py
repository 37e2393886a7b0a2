"""The HTTP server of ``serve`` and ``review``: uvicorn with read deadlines, the port bound first.

uvicorn alone lets slow clients lock everyone out: its ``limit_concurrency``
counts open connections, those still sending their headers included, and
nothing times out a request whose headers or body never finish
(``timeout_keep_alive`` covers only the pause between two requests). A few
hundred sockets that each send half a request line, then a header every few
seconds, hold every slot for as long as they like, and every authorised
request is answered 503.

:func:`deadline_protocol` makes a subclass of uvicorn's httptools protocol
that enforces, per connection:

* **a header deadline**: a request's headers must be complete within
  ``header_timeout`` seconds of the connection opening (or of the first byte
  of the next request on a kept-alive connection). The clock is not reset by
  each byte, so trickling does not extend it. Past it: 408, and the
  connection is closed. Headers over ``max_header_bytes``: 431.
* **a body deadline**: the body must be complete within ``body_timeout``
  seconds of the headers; else 408 (when no answer has started) and close.
  This also ends a client that got its answer (say 401) and keeps
  trickling the body it announced.
* **requests, not connections, are counted**: ``max_requests`` requests may
  be answered at once (503 past it); a connection still sending its headers
  holds no slot.
* **connections are capped by eviction**: past ``max_connections`` open
  connections, the oldest one that is not being answered (still sending
  headers, idle between requests, or done) is closed to make room, so an
  attacker's sockets give way to new clients instead of refusing them.

:func:`listen` binds the port before anything is loaded, so a busy port is a
:class:`PortError` with a message, not a traceback after the index was opened.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainleak.errors import TrainleakError

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)


class PortError(TrainleakError):
    """The address or port cannot be bound (in use, not this machine's, or privileged)."""


@dataclass(frozen=True)
class Limits:
    """Deadlines and caps of one server's connections (see the module docstring).

    Attributes:
        header_timeout: seconds for a request's headers to arrive.
        body_timeout: seconds for a request's body to arrive after its headers.
        keep_alive: seconds an idle connection is kept between requests.
        max_header_bytes: largest request line plus headers.
        max_requests: requests answered at once; more are answered 503.
        max_connections: open connections; past it the oldest one not being
            answered is closed.

    """

    header_timeout: float = 5.0
    body_timeout: float = 30.0
    keep_alive: float = 5.0
    max_header_bytes: int = 64 * 1024
    max_requests: int = 256
    max_connections: int = 512


@dataclass
class _Shared:
    """What the connections of one server share: those that may be evicted, oldest first."""

    limits: Limits
    idle: OrderedDict[Any, None] = field(default_factory=OrderedDict)
    evicting: int = 0


def _raw_response(status: bytes, text: str) -> bytes:
    body = text.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


def deadline_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """Return an ``asyncio.Protocol`` class for ``uvicorn.Config(http=...)`` enforcing ``limits``.

    Each call makes a class with its own shared state: one per server.
    """
    from uvicorn.protocols.http.flow_control import service_unavailable
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    shared = _Shared(limits)

    class DeadlineProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with header and body deadlines and request counting."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # requests are counted in on_headers_complete
            self._timer: asyncio.TimerHandle | None = None
            self._reading_headers = False
            self._in_message = False
            self._header_bytes = 0
            self._evicted = False

        # -- connection ---------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_headers()
            self._make_room()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            shared.idle.pop(self, None)
            if self._evicted:
                self._evicted = False
                shared.evicting -= 1
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._timer is None and not self._in_message:
                self._start_headers()  # the first bytes of the next request: its deadline starts
            if self._reading_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._reading_headers and self._header_bytes > limits.max_header_bytes:
                self._refuse(b"431 Request Header Fields Too Large", "request headers too large")

        # -- parser callbacks ---------------------------------------------------------

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_message = True
            if not self._reading_headers:
                self._start_headers()

        def on_headers_complete(self) -> None:
            self._cancel()
            self._reading_headers = False
            shared.idle.pop(self, None)
            app = self.app
            if len(self.tasks) >= limits.max_requests:
                self.app = service_unavailable
                self.logger.warning("more than %d requests at once", limits.max_requests)
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            self._arm(limits.body_timeout, self._body_late)

        def on_message_complete(self) -> None:
            self._cancel()
            self._in_message = False
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                shared.idle[self] = None
                shared.idle.move_to_end(self)

        # -- deadlines ------------------------------------------------------------------

        def _start_headers(self) -> None:
            self._reading_headers = True
            self._header_bytes = 0
            self._arm(limits.header_timeout, self._headers_late)
            if self.cycle is None or self.cycle.response_complete:
                shared.idle[self] = None
                shared.idle.move_to_end(self)

        def _arm(self, seconds: float, handler: Any) -> None:
            self._cancel()
            self._timer = self.loop.call_later(seconds, handler)

        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _headers_late(self) -> None:
            self._timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                # An answer is being written: end the connection after it, read no more.
                self.cycle.keep_alive = False
                self.flow.pause_reading()
                return
            self._refuse(b"408 Request Timeout", "request headers not received in time")

        def _body_late(self) -> None:
            self._timer = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                self._refuse(b"408 Request Timeout", "request body not received in time")
                cycle.disconnected = True  # the app's receive() gets http.disconnect
                cycle.message_event.set()
            elif not self.transport.is_closing():
                self.transport.close()

        def _refuse(self, status: bytes, text: str) -> None:
            self._cancel()
            if not self.transport.is_closing():
                self.transport.write(_raw_response(status, text))
                self.transport.close()

        def _make_room(self) -> None:
            """Close the oldest connection not being answered when too many are open."""
            while len(self.connections) - shared.evicting > limits.max_connections:
                victim = next((c for c in shared.idle if c is not self), None)
                if victim is None:
                    self._refuse(b"503 Service Unavailable", "too many connections")
                    return
                shared.idle.pop(victim, None)
                victim._evicted = True
                shared.evicting += 1
                victim._cancel()
                victim.transport.abort()

    return DeadlineProtocol


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` now; return the socket for ``uvicorn.Server.run``.

    Raises:
        PortError: the port is in use, privileged, or ``host`` is not an
            address of this machine; the message says what to change.

    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        raise PortError(
            f"cannot bind {host}: {err.strerror}; give an address with --host"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PortError(f"port {port} is in use, choose another with --port") from None
        if err.errno == errno.EACCES:
            raise PortError(
                f"port {port} needs privileges to bind (below 1024?), choose another with --port"
            ) from None
        raise PortError(f"cannot bind {host}:{port}: {err.strerror}; check --host") from None
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, limits: Limits, **options: Any) -> uvicorn.Server:
    """Return a ``uvicorn.Server`` for ``app`` whose connections keep ``limits``.

    Args:
        app: the ASGI application.
        limits: deadlines and caps.
        **options: more ``uvicorn.Config`` settings (host, port, log_level, ...).

    """
    import uvicorn

    config = uvicorn.Config(
        app,
        http=deadline_protocol(limits),
        timeout_keep_alive=max(1, round(limits.keep_alive)),
        server_header=False,
        **options,
    )
    return uvicorn.Server(config)
