"""Encoder registry: ``get_encoder("face")``, ``get_encoder("onnx:model.onnx")``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from trainleak.encoders.base import Encoder, EncoderInfo, EncodeSkip
from trainleak.registry import Registry

log = logging.getLogger(__name__)

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
    name, extra = parse_encoder_name(spec)
    return encoder_factory(name)(**extra, **options)


def encoder_factory(name: str) -> Callable[..., Encoder]:
    """Return the factory registered as ``name``: built-in, or from an installed plugin.

    A package adds encoders by registering them in a module it names under the
    ``trainleak.encoders`` entry-point group, e.g. in its ``pyproject.toml``::

        [project.entry-points."trainleak.encoders"]
        myface = "mypackage.encoders"

    Plugins are imported only when a name is not built in.

    Example:
        >>> encoder_factory("pixel").__name__
        'PixelEncoder'

    """
    _load_builtin()
    if name not in ENCODERS:
        _load_plugins()
    return ENCODERS.get(name)


def _load_builtin() -> None:
    # Imported for their registration side effect; kept lazy so that importing
    # trainleak does not load dlib, torch or onnxruntime.
    from trainleak.encoders import copydetect, face, model, named, pixel  # noqa: F401


def _load_plugins() -> None:
    for entry in entry_points(group="trainleak.encoders"):
        try:
            entry.load()
        except Exception as err:  # noqa: BLE001 - one broken plugin must not hide the rest
            log.warning("encoder plugin %s (%s) failed to load: %s", entry.name, entry.value, err)


__all__ = [
    "ENCODERS",
    "EncodeSkip",
    "Encoder",
    "EncoderInfo",
    "encoder_factory",
    "get_encoder",
    "parse_encoder_name",
]
