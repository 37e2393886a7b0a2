"""Where the neighbour search runs, decided without importing torch when it can be.

Importing torch takes about 2 s, most of a warm (all cached) audit, so
``device="auto"`` asks torch whether it sees a GPU only where a GPU driver's
device files exist (or torch is already loaded), and ``backend="auto"`` picks
numpy on the CPU for searches too small to repay torch's import.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

#: Multiply-adds (queries x database x dim) above which ``auto`` searches with
#: torch on the CPU: numpy's products are about 25% slower (2 cores), which
#: costs more than importing torch only past about 5e10 (6 s of search).
TORCH_ABOVE_MACS = 5 * 10**10

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
    """Return the backend ``backend="auto"`` runs: ``torch`` or ``numpy``.

    torch on a GPU, and on the CPU for searches large enough that its faster
    matrix products repay its import (about 2 s); numpy otherwise. The choice
    depends on the inputs' sizes and the device only, so a run's results do
    not depend on what else the process has imported.

    Example:
        >>> pick_backend(100, 1000, 128), pick_backend(100, 1000, 128, "cuda")
        ('numpy', 'torch')

    """
    if device != "cpu" or n_query * n_database * dim >= TORCH_ABOVE_MACS:
        return "torch"
    return "numpy"
