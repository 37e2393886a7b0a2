"""Encoder registry: ``get_encoder("face")``, ``get_encoder("onnx:model.onnx")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainleak.encoders.base import Encoder, EncoderInfo, EncodeSkip
from trainleak.registry import Registry

ENCODERS: Registry[Callable[..., Encoder]] = Registry("encoder")


def parse_encoder_name(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"onnx:FILE"`` into ``("onnx", {"path": "FILE"})``.

    Example:
        >>> parse_encoder_name("torchscript:model.pt")
        ('torchscript', {'path': 'model.pt'})
        >>> parse_encoder_name("face")
        ('face', {})

    """
    name, sep, rest = spec.partition(":")
    if sep:
        if not rest:
            raise ValueError(f"encoder {spec!r} needs a file after ':', e.g. onnx:model.onnx")
        return name, {"path": rest}
    return name, {}


def get_encoder(spec: str, **options: Any) -> Encoder:
    """Build an encoder from its registry name (or ``name:FILE``) and options."""
    _load_builtin()
    name, extra = parse_encoder_name(spec)
    factory = ENCODERS.get(name)
    return factory(**extra, **options)


def _load_builtin() -> None:
    # Imported for their registration side effect; kept lazy so that importing
    # trainleak does not load dlib, torch or onnxruntime.
    from trainleak.encoders import face, model, pixel  # noqa: F401


__all__ = ["ENCODERS", "EncodeSkip", "Encoder", "EncoderInfo", "get_encoder", "parse_encoder_name"]
