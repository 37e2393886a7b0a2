"""Where a model encoder runs: the CPU, or one CUDA device through onnxruntime or torch.

An encoder's ``device`` option is ``"cpu"`` (the default: trainleak never
picks a GPU by itself), ``"cuda"`` or ``"cuda:N"``. The model is loaded on
that device by the process that builds the encoder, and the embedder then
embeds in that process (:attr:`Encoder.device <trainleak.encoders.base.Encoder.device>`):
CUDA is initialised only by the process that owns the device, and worker
processes are never forked from it (they are fresh interpreters in any case,
see :mod:`trainleak.workers`).

onnxruntime silently falls back to the CPU when its CUDA provider cannot load
(missing CUDA or cuDNN libraries); :func:`onnx_session` checks which provider
the session really got and fails loudly instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainleak._optional import require

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def parse_device(device: Any) -> tuple[str, int | None]:
    """Validate a device option; return ``("cpu", None)`` or ``("cuda", index)``.

    Example:
        >>> parse_device("cpu"), parse_device("cuda"), parse_device("cuda:1")
        (('cpu', None), ('cuda', 0), ('cuda', 1))

    """
    if device == "cpu":
        return "cpu", None
    match = _CUDA.match(str(device)) if isinstance(device, str) else None
    if match is None:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return "cuda", int(match.group(1) or 0)


def onnx_session(path: Path, device: str) -> tuple[Any, str]:
    """Open an onnxruntime session on ``device``; return it and the provider it runs on.

    Raises:
        ValueError: the file is not a loadable model, or a CUDA device was
            asked for and this onnxruntime cannot run on it (the message names
            ``onnxruntime-gpu``).

    """
    ort = require("onnxruntime", extra="onnx", needed_for="the onnx encoder")
    kind, index = parse_device(device)
    providers: list[Any] = ["CPUExecutionProvider"]
    if kind == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                f"device={device!r} needs onnxruntime's CUDA execution provider, and the "
                f"installed onnxruntime has only {available}: pip uninstall onnxruntime && "
                "pip install onnxruntime-gpu (matching your CUDA version), or use device=cpu"
            )
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"{path} is not a loadable ONNX model: {err}") from None
    used = session.get_providers()[0]
    if kind == "cuda" and used != "CUDAExecutionProvider":
        raise ValueError(
            f"device={device!r}: onnxruntime-gpu is installed but could not start its CUDA "
            f"provider (the session fell back to {used}); check that the CUDA and cuDNN "
            "libraries onnxruntime-gpu was built for are installed, or use device=cpu"
        )
    return session, used


def torch_device(device: str) -> Any:
    """Return the ``torch.device`` for ``device``, checking that torch can use it.

    Raises:
        ValueError: a CUDA device torch does not see.

    """
    import torch

    kind, index = parse_device(device)
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asked for, but torch sees no CUDA GPU here (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}): install a CUDA "
            "build of torch or use device=cpu"
        )
    index = index or 0
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
            "device(s): use cuda:0 .. cuda:N-1"
        )
    return torch.device("cuda", index)
