"""Micro-batching: one worker thread owns the encoder, concurrent requests share its calls.

Requests are put on a bounded queue (at most ``queue_size`` requests and
``queue_bytes`` bytes of uploads; a full queue refuses at once with
:class:`QueueFull`, so memory does not grow with load). The worker takes the
first waiting request, adds requests that are waiting already or arrive
within ``max_wait_s`` until ``max_batch`` items are gathered, and runs them
through one call of ``run``; each request then gets its own slice of the
results. A request is never split: one with more than ``max_batch`` items
runs alone. ``max_batch=1`` turns batching off.

Exclusive calls (an index change) go through the same queue and run on the
same thread between batches, so only that thread touches the encoder and the
index. :meth:`Batcher.close` lets the worker finish every queued request
before it stops: a graceful shutdown answers what it accepted.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

#: How often an idle worker looks whether it should stop, in seconds.
IDLE_POLL_S = 0.1


class QueueFull(Exception):
    """The queue is full or the service is stopping; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TimedOut(Exception):
    """A request waited longer than its timeout for the worker."""


@dataclass
class _Job:
    items: Sequence[Any]
    nbytes: int
    future: Future[Any] = field(default_factory=Future)
    call: Callable[[], Any] | None = None


class Batcher(Generic[T, R]):
    """A bounded queue in front of ``run``, drained in micro-batches by one thread.

    Args:
        run: called with the items of several requests; returns one result
            per item, in order.
        max_batch: items per call of ``run`` (a larger request runs alone).
        max_wait_s: how long to wait for more requests to fill a batch.
        queue_size: requests that may wait.
        queue_bytes: bytes that may wait (``nbytes`` of the waiting requests).
        on_batch: called with the number of items of every batch run.

    Example:
        >>> b = Batcher(lambda xs: [x * 2 for x in xs], max_batch=8, max_wait_s=0.0,
        ...             queue_size=4, queue_bytes=100)
        >>> b.start(); b.submit([1, 2], 2).result(timeout=5)
        [2, 4]
        >>> b.close()

    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        queue_bytes: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1:
            raise ValueError("max_batch and queue_size must be 1 or more")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.queue_bytes = queue_bytes
        self.on_batch = on_batch
        #: Held while the worker runs a batch or a call.
        self.lock = threading.Lock()
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._bytes = 0
        self._pending = 0
        self._count = threading.Lock()
        self._stop = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- client side -------------------------------------------------------------

    def depth(self) -> int:
        """Return how many requests wait (not yet taken by the worker)."""
        return self._queue.qsize()

    def pending(self) -> int:
        """Return how many accepted requests are not answered yet (waiting or running)."""
        return self._pending

    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, items: Sequence[T], nbytes: int = 0) -> Future[list[R]]:
        """Queue one request's items; return the future of its results.

        Raises:
            QueueFull: the queue holds ``queue_size`` requests or would pass
                ``queue_bytes``, or the batcher is closing.

        """
        return self._put(_Job(list(items), nbytes))

    def submit_call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Queue ``fn`` to run alone on the worker thread, between batches."""
        return self._put(_Job([], 0, call=fn))

    async def results(self, items: Sequence[T], nbytes: int, timeout: float) -> list[R]:
        """Queue a request and await its results (see :meth:`submit`).

        Raises:
            QueueFull: as :meth:`submit`.
            TimedOut: no results within ``timeout`` seconds (the request is
                dropped if the worker has not started it).

        """
        return await self._wait(self.submit(items, nbytes), timeout)

    async def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` on the worker thread and await its return value."""
        return await self._wait(self.submit_call(fn), timeout)

    async def _wait(self, future: Future[Any], timeout: float) -> Any:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            raise TimedOut(f"no answer within {timeout:g} s (--request-timeout)") from None

    def _put(self, job: _Job) -> Future[Any]:
        if self._closing:
            raise QueueFull("the service is shutting down", retry_after=5)
        with self._count:
            if self._bytes + job.nbytes > self.queue_bytes and self._bytes > 0:
                raise QueueFull("too many uploaded bytes are waiting for the encoder")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull("too many requests are waiting for the encoder") from None
            self._bytes += job.nbytes
            self._pending += 1
        job.future.add_done_callback(self._answered)
        return job.future

    def _answered(self, _: Future[Any]) -> None:
        with self._count:
            self._pending -= 1

    # -- worker side ---------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="trainleak-batcher")
            self._thread.daemon = True
            self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the queued ones, and stop the worker.

        Args:
            timeout: seconds to wait for the worker; ``None`` = as long as it takes.

        """
        self._closing = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the encoder worker did not stop within %s s", timeout)

    def _next(self, timeout: float) -> _Job | None:
        try:
            job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        with self._count:
            self._bytes -= job.nbytes
        return job

    def _loop(self) -> None:
        carry: _Job | None = None
        while True:
            job, carry = carry or self._next(IDLE_POLL_S), None
            if job is None:
                if self._stop.is_set() and self._queue.empty():
                    return
                continue
            if job.call is not None:
                self._run_call(job)
                continue
            batch, n = [job], len(job.items)
            deadline = time.monotonic() + self.max_wait_s
            while n < self.max_batch:
                nxt = self._next(deadline - time.monotonic())
                if nxt is None:
                    break
                if nxt.call is not None or n + len(nxt.items) > self.max_batch:
                    carry = nxt
                    break
                batch.append(nxt)
                n += len(nxt.items)
            self._run_batch(batch)

    def _run_call(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel() or job.call is None:
            return
        try:
            with self.lock:
                job.future.set_result(job.call())
        except BaseException as err:  # noqa: BLE001 - handed to the waiting request
            job.future.set_exception(err)

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        items = [item for job in live for item in job.items]
        try:
            with self.lock:
                results = list(self.run(items))
            if len(results) != len(items):
                raise RuntimeError(f"run returned {len(results)} results for {len(items)} items")
        except BaseException as err:  # noqa: BLE001 - handed to every waiting request
            log.exception("a batch of %d items failed", len(items))
            for job in live:
                job.future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(len(items))
        start = 0
        for job in live:
            job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)
