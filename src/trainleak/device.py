"""Where the neighbour search runs, decided without importing torch when it can be.

Importing torch takes about 2 s, most of a warm (all cached) audit, so
``device="auto"`` asks torch whether it sees a GPU only where a GPU driver's
device files exist (or torch is already loaded), and ``backend="auto"`` is
numpy on the CPU, which needs no torch at all.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal

# Device files of the NVIDIA and ROCm drivers; without them torch sees no GPU.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd")


def resolve_device(device: str, backend: str = "auto") -> str:
    """Turn a search device name into the torch device :func:`~trainleak.neighbors.knn` gets.

    Args:
        device: ``auto`` (a CUDA GPU when torch sees one and the backend runs
            on it, else ``cpu``), ``cpu``, ``cuda`` or ``cuda:N``.
        backend: the search backend; ``numpy`` and ``faiss`` run on the CPU.

    Returns:
        ``"cpu"`` or a CUDA device name.

    Raises:
        ValueError: an unknown name, a CUDA device torch cannot see, or a CUDA
            device with a CPU-only backend.

    Example:
        >>> resolve_device("cpu")
        'cpu'

    """
    on_cpu_only = backend in ("numpy", "faiss")
    if device == "cpu":
        return "cpu"
    if device == "auto":
        if on_cpu_only or not gpu_possible():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda" and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if on_cpu_only:
        raise ValueError(f"the {backend} backend searches on the CPU: use device 'cpu' or 'auto'")
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but torch sees no CUDA GPU here: "
            "use --device cpu (or auto)"
        )
    return device


def gpu_possible() -> bool:
    """Whether torch could see a GPU, answered without importing torch when it can be.

    Importing torch takes seconds, most of a warm (all cached) audit. Without
    a GPU driver's device files no torch build can see a GPU, so ``auto`` is
    the CPU; torch is asked only where they exist or torch is already loaded.
    """
    if "torch" in sys.modules:
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in _GPU_DEVICE_FILES)


def pick_backend(
    n_query: int, n_database: int, dim: int, device: str = "cpu"
) -> Literal["torch", "numpy"]:
    """Return the backend ``backend="auto"`` runs: ``torch`` on a GPU, ``numpy`` on the CPU.

    On the CPU numpy's search (one scan per thread, each with a one-thread
    BLAS) beat torch's multi-threaded products at every size measured, by
    9-19% at 2,000 queries of 100,000 rows (bench/README "Exact search at
    faiss's pace"), and needs no torch import (about 2 s). The sizes are
    kept in the signature for callers that choose per search; the choice
    depends on the device only, so a run's results do not depend on what
    else the process has imported.

    Example:
        >>> pick_backend(100, 1000, 128), pick_backend(100, 1000, 128, "cuda")
        ('numpy', 'torch')

    """
    return "numpy" if device == "cpu" else "torch"


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limit: Any = None
_controller: Any = None
_pools: dict[int, ThreadPoolExecutor] = {}
_CPUS = os.cpu_count() or 1  # read once: os.cpu_count() costs ~50 us a call here


def _blas() -> Any:
    """Return threadpoolctl's view of numpy's BLAS (found once: the scan takes about 2 ms)."""
    global _controller
    with _blas_lock:
        if _controller is None:
            import numpy  # noqa: F401  (its BLAS must be loaded to be found)
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        return _controller


def cpu_threads() -> int:
    """Threads the CPU search runs on: as many as numpy's BLAS would use, at most the CPUs.

    The BLAS's own count follows ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``
    and any ``threadpoolctl.threadpool_limits`` the caller set, so one setting
    governs both.

    Example:
        >>> 1 <= cpu_threads() <= (os.cpu_count() or 1)
        True

    """
    controller = _blas()
    with _blas_lock:
        if _blas_users:  # our own limit is on: count what it replaced
            count = _blas_limit.get_original_num_threads().get("blas") or 1
        else:
            libs = controller.select(user_api="blas").lib_controllers
            count = max((lib.num_threads for lib in libs), default=1)
    return max(1, min(count, _CPUS))


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limit the BLAS libraries to one thread each while the CPU search's own threads run.

    The limit is process-wide (BLAS has no per-thread setting); overlapping
    searches share it, and the last to finish restores the counts.
    """
    global _blas_users, _blas_limit
    controller = _blas()
    with _blas_lock:
        if _blas_users == 0:
            _blas_limit = controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limit.restore_original_limits()


def search_pool(threads: int) -> ThreadPoolExecutor:
    """Return the process's pool of ``threads`` threads for the CPU search (made once per count).

    The same threads serve every search. A new pool per search gave each call
    new threads, and glibc a new malloc arena per thread, each keeping its
    freed score buffers: a search's peak memory then grew with the number of
    calls, not with the block size (tests/test_outofcore.py, 20,000 vs
    200,000 queries, grew 21 MB in one run of four).
    """
    with _blas_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, f"trainleak-search-{threads}")
        return _pools[threads]
