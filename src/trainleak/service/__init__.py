"""HTTP services over the release gate's index.

:mod:`trainleak.service.serve` answers ``check`` over HTTP (FastAPI +
uvicorn): auth, size and rate limits in one ASGI middleware
(:mod:`~trainleak.service.guard`), a bounded micro-batching queue in front of
the encoder (:mod:`~trainleak.service.batcher`) and Prometheus metrics
(:mod:`~trainleak.service.metrics`). They need the ``serve`` extra:
``pip install 'trainleak[serve]'``; :func:`require_serve` says so before
anything imports them.
"""

from __future__ import annotations

import importlib.util

from trainleak.errors import MissingExtraError

#: Modules the service imports -> the package that provides each (the ``serve`` extra).
SERVE_PACKAGES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "python_multipart": "python-multipart",
    "prometheus_client": "prometheus-client",
}


def require_serve(needed_for: str = "trainleak serve") -> None:
    """Fail with the ``pip install`` to run when a package of the ``serve`` extra is missing.

    Raises:
        MissingExtraError: naming the first missing package and the extra.

    Example:
        >>> require_serve()  # the test environment installs the extra

    """
    for module, package in SERVE_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a None entry in sys.modules
            found = False
        if not found:
            raise MissingExtraError(f"{needed_for} needs {package}: pip install 'trainleak[serve]'")
