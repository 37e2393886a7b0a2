"""Worker processes for the embedding stage, safe from any entry point and from crashes.

Each worker is a fresh interpreter (``python -c`` with a fixed bootstrap) that
talks to the parent over a socket pair. Unlike ``multiprocessing``'s spawn and
forkserver methods, the child never imports the parent's ``__main__``: a
script without an ``if __name__ == "__main__":`` guard, a script read from
standard input, ``python -c``, a notebook kernel and pytest all work alike.
Nothing is forked, so a parent that has initialised CUDA (or any threads) is
safe. The child gets the parent's ``sys.path`` and imports the module that
registered the encoder, so user encoders in importable modules work too.

A worker holds one chunk of images at a time, so the parent always knows which
images a dead worker held. When a worker dies (segfault in a native decoder or
model, the out-of-memory killer, ``os._exit``), it is restarted and its chunk
is retried one image at a time; the image whose worker dies alone is given
back as a skip with the reason ``encoder process crashed (signal N)`` (or
``(exit code N)``). :data:`MAX_CONSECUTIVE_CRASHES` crashes with nothing
embedded in between, or :data:`MAX_FAILED_STARTS` workers in a row that die
before taking work, raise :class:`~trainleak.errors.WorkerCrashError`.

A worker never outlives the process that started it (``kill -9`` of a run
must not leave workers computing for nobody): one waiting for work sees the end
of file on its socket; on Linux the kernel sends it ``SIGKILL`` when its parent
dies (``PR_SET_PDEATHSIG``), even in the middle of a long native call; and
everywhere a watchdog thread checks every :data:`PARENT_POLL` seconds that its
parent is still the process that started it.

Not available on Windows (no descriptor passing): :func:`unavailable_reason`
says so and the embedder runs in-process.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from trainleak.encoders import Encoder, encoder_factory, get_encoder
from trainleak.errors import WorkerCrashError
from trainleak.prefetch import Chunk, Results, decode_chunk, embed_decoded

log = logging.getLogger(__name__)

#: Crashes while holding images, with no image embedded in between, before giving up.
MAX_CONSECUTIVE_CRASHES = 8
#: Workers in a row that die before taking any work before giving up.
MAX_FAILED_STARTS = 3
#: Seconds a worker gets to exit after being asked to.
EXIT_TIMEOUT = 5.0
#: Seconds between a worker's checks that its parent is alive.
PARENT_POLL = 0.5


# Run by the child as ``python -c``: only the standard library is imported
# before the parent's sys.path is in place.
_BOOT = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = conn.recv()\n"
    "from trainleak.workers import serve\n"
    "serve(conn, int(sys.argv[2]), sys.argv[3] == '1')\n"
)

# One thread per process: the parallelism is across processes. Set before the
# child starts, so BLAS and OpenMP read them when they load.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def encode_chunk(items: list[bytes], max_pixels: int, encoder: Encoder) -> list[np.ndarray | str]:
    """Decode and embed a chunk of encoded images, the same way in a worker or in-process.

    Returns:
        Per image, the ``(m, dim)`` rows, the encoder's skip reason, or
        ``"!" + reason`` for an image that could not be decoded or whose skip
        is not to be cached.

    """
    return embed_decoded(decode_chunk(items, max_pixels), max_pixels, encoder)


def unavailable_reason(spec: str) -> str | None:
    """Return why worker processes cannot embed with encoder ``spec`` here, or ``None``."""
    if os.name != "posix":
        return "worker processes need a POSIX system (Linux, macOS)"
    if not sys.executable or getattr(sys, "frozen", False):
        return "no Python interpreter to start worker processes with (frozen application)"
    module = encoder_factory(spec.partition(":")[0]).__module__
    if module == "__main__":
        return (
            f"encoder {spec!r} is defined in __main__, which worker processes do not import; "
            "move it to an importable module to embed in parallel"
        )
    return None


def crash_reason(returncode: int) -> str:
    """Return the skip reason of an image whose worker ended with ``returncode``.

    Example:
        >>> crash_reason(-9), crash_reason(3)
        ('encoder process crashed (signal 9)', 'encoder process crashed (exit code 3)')

    """
    what = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    return f"encoder process crashed ({what})"


class _Worker:
    """One child process, its connection, and the chunk it holds."""

    def __init__(self, spec: str, options: dict[str, Any], modules: list[str]) -> None:
        env = dict(os.environ, **{var: "1" for var in _THREAD_VARS})
        # The kernel's parent-death signal fires when the *thread* that started
        # the child ends: only safe when that thread lives as long as the process.
        deathsig = "1" if threading.current_thread() is threading.main_thread() else "0"
        ours, theirs = Pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(os.getpid()), deathsig],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except OSError as err:
            ours.close()
            raise WorkerCrashError(
                f"cannot start an encoder worker process ({err}); "
                "embed in-process with workers=1 (--workers 1)"
            ) from err
        finally:
            theirs.close()
        log.debug("started encoder worker process %d", self.proc.pid)
        self.conn = ours
        self.ready = False
        self.task: Chunk | None = None
        ours.send(list(sys.path))
        ours.send((spec, options, modules))

    def give(self, task: Chunk, max_pixels: int) -> None:
        """Send a chunk; a worker that has died is found by :meth:`WorkerPool._ready`."""
        self.task = task
        with contextlib.suppress(OSError):  # BrokenPipeError, ConnectionResetError
            self.conn.send((task[1], max_pixels))

    def receive(self) -> tuple[str, Any] | None:
        """Return the next message, or ``None`` once the process has gone.

        Called when the connection is readable or the process has ended; with
        nothing to read (a grandchild holding the socket open hides the end of
        file) it does not block.
        """
        try:
            if self.conn.poll():
                return self.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            pass
        return None

    def exit_code(self) -> int:
        """Wait for the process to end (killing it if it lingers); return its code."""
        self.conn.close()
        try:
            return self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self) -> None:
        """Ask an idle worker to exit, kill a busy one; wait until it has gone."""
        if self.task is None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        else:
            self.proc.kill()  # its work is not wanted any more
        self.exit_code()


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.kill()


class WorkerPool:
    """Embeds chunks in ``workers`` child processes; see the module docstring.

    Workers start on demand (a run with few cache misses starts few) and are
    reused across :meth:`run` calls until :meth:`close`.

    Args:
        workers: the most child processes at a time.
        spec: the encoder spec, as for :func:`trainleak.encoders.get_encoder`.
        options: the encoder's options.

    """

    def __init__(self, workers: int, spec: str, options: dict[str, Any]) -> None:
        self.size = workers
        self.spec = spec
        self.options = dict(options)
        module = encoder_factory(spec.partition(":")[0]).__module__
        # Built-in encoders register when get_encoder runs; others must be imported.
        self.modules = [] if module.startswith("trainleak.") else [module]
        self.workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _kill_all, self.workers)
        self._crashes = 0  # crashes holding images since an image was last embedded
        self._failed_starts = 0  # workers in a row that died before they were ready

    def close(self) -> None:
        """Stop every worker process."""
        while self.workers:
            self.workers.pop().stop()

    def run(self, chunks: Iterator[Chunk], max_pixels: int) -> Iterator[Results]:
        """Embed chunks; yield each chunk's (or retried image's) results as it finishes.

        Results come in completion order, not input order.

        Raises:
            WorkerCrashError: workers keep crashing or cannot start.
            Exception: whatever the encoder raised in a worker, re-raised here.

        """
        retries: deque[Chunk] = deque()
        self._crashes = self._failed_starts = 0
        try:
            while True:
                busy = [w for w in self.workers if w.task is not None]
                while len(busy) < self.size:
                    task = retries.popleft() if retries else next(chunks, None)
                    if task is None:
                        break
                    busy.append(self._idle_worker())
                    busy[-1].give(task, max_pixels)
                if not busy:
                    return
                for worker in self._ready(busy):
                    done = self._collect(worker, retries)
                    if done is not None:
                        yield done
        finally:
            # Stopped early (an error, Ctrl-C, an abandoned generator): results
            # still in flight must not be read by a later run.
            for worker in [w for w in self.workers if w.task is not None]:
                self.workers.remove(worker)
                worker.stop()

    def _idle_worker(self) -> _Worker:
        """Return an idle worker, starting one if none is; call with a free slot only."""
        for worker in list(self.workers):
            if worker.task is None and worker.proc.poll() is not None:
                self.workers.remove(worker)  # died idle: nothing of ours was lost
                worker.exit_code()
            elif worker.task is None:
                return worker
        self.workers.append(_Worker(self.spec, self.options, self.modules))
        return self.workers[-1]

    def _ready(self, busy: list[_Worker]) -> list[_Worker]:
        """Busy workers with a message or an end of file to read."""
        while True:
            conns = wait([w.conn for w in busy], timeout=1.0)
            ready = [w for w in busy if w.conn in conns]
            # A grandchild holding the socket open would hide the end of file.
            ready += [w for w in busy if w not in ready and w.proc.poll() is not None]
            if ready:
                return ready

    def _collect(self, worker: _Worker, retries: deque[Chunk]) -> Results | None:
        """Read one message of ``worker``; return the results it completes, if any."""
        message = worker.receive()
        if message is None:
            return self._crashed(worker, retries)
        kind, payload = message
        if kind == "ready":
            worker.ready, self._failed_starts = True, 0
            return None
        if kind == "error":
            raise payload
        assert worker.task is not None
        keys, worker.task, self._crashes = worker.task[0], None, 0
        return list(zip(keys, payload, strict=True))

    def _crashed(self, worker: _Worker, retries: deque[Chunk]) -> Results | None:
        """Requeue, split or skip the chunk of a worker that died holding it."""
        self.workers.remove(worker)
        reason = crash_reason(worker.exit_code())
        assert worker.task is not None
        keys, blobs = worker.task
        if not worker.ready:  # it died starting up: the images are not to blame
            log.warning("an encoder worker process died while starting: %s", reason)
            retries.appendleft(worker.task)
            self._failed_starts += 1
            self._check(reason)
            return None
        self._crashes += 1
        self._check(reason)
        if len(keys) > 1:
            log.warning("%s holding %d images; retrying them one at a time", reason, len(keys))
            singles = [([k], [b]) for k, b in zip(keys, blobs, strict=True)]
            retries.extendleft(reversed(singles))
            return None
        log.warning("%s on one image (cache key %s); skipping it", reason, keys[0])
        return [(keys[0], "!" + reason)]

    def _check(self, reason: str) -> None:
        """Raise once workers have died too often to go on."""
        if self._failed_starts >= MAX_FAILED_STARTS:
            self.close()
            raise WorkerCrashError(
                f"encoder worker processes cannot start: {self._failed_starts} in a row ended "
                f"before taking any work (last: {reason}); see the error printed above, "
                "or embed in-process with workers=1 (--workers 1)"
            )
        if self._crashes >= MAX_CONSECUTIVE_CRASHES:
            self.close()
            raise WorkerCrashError(
                f"encoder worker processes crashed {self._crashes} times in a row with nothing "
                f"embedded in between (last: {reason}): the encoder fails on every image. "
                "Check the encoder and its model files; signal 9 is often the out-of-memory "
                "killer: use fewer workers (--workers) or a smaller --batch-size"
            )


def _exit_with_parent(parent: int, deathsig: bool) -> None:
    """Make this process end when ``parent`` does, whatever it is doing then."""
    if deathsig and sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)  # reparented: the parent has gone (no cleanup to do)

    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, name="trainleak-parent-watch", daemon=True).start()


def serve(conn: Connection, parent: int | None = None, deathsig: bool = False) -> None:
    """Run in a worker process: build the encoder, then embed chunks until told to stop.

    Args:
        conn: the socket to the parent.
        parent: the parent's process id; the worker exits when that process ends.
        deathsig: also ask the kernel to kill the worker when the parent ends
            (Linux; only when the parent started it from its main thread).

    """
    # Ctrl-C reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        _exit_with_parent(parent, deathsig)
    try:
        _serve(conn)
    except (EOFError, OSError):  # BrokenPipeError: the parent has gone; nobody to tell
        return


def _serve(conn: Connection) -> None:
    spec, options, modules = conn.recv()
    try:
        for module in modules:
            importlib.import_module(module)
        encoder_factory(spec.partition(":")[0])
    except KeyError:
        conn.send(("error", KeyError(
            f"worker processes do not see encoder {spec!r}: register it in an importable "
            "module or a trainleak.encoders entry point, not in __main__; or embed "
            "in-process with workers=1"
        )))  # fmt: skip
        return
    try:
        encoder = get_encoder(spec, **options)
    except Exception as err:  # noqa: BLE001 - any failure is the parent's to report
        conn.send(("error", _sendable(err)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent has gone
            return
        if task is None:
            return
        blobs, max_pixels = task
        try:
            conn.send(("done", encode_chunk(blobs, max_pixels, encoder)))
        except Exception as err:  # noqa: BLE001 - re-raised in the parent
            conn.send(("error", _sendable(err)))


def _sendable(err: Exception) -> Exception:
    """Return the exception if it pickles, else a RuntimeError with its text."""
    try:
        pickle.dumps(err)
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err
