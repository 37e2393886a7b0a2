"""Which files an ONNX model loads, read from the file itself (no ``onnx`` package needed).

An ONNX model may keep its weights outside the ``.onnx`` file ("external
data", needed above 2 GB): each such tensor names a file, relative to the
model's folder, that onnxruntime reads when it loads the model. The encoder's
fingerprint (its ``weights_sha256``, part of the cache key) must cover those
files, or new weights would be served stale vectors from the cache.

The model is a protocol buffer; this module walks only the messages that can
hold tensors (graphs, nodes, attributes, sparse tensors, functions, training
info), skipping everything else by its wire type, so a large model is read
once and nothing is copied. Field numbers are those of ``onnx/onnx.proto``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from trainleak.encoders.base import file_sha256

# Message fields that hold (lists of) other messages we must look into.
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_FUNCTION = {7: "node"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_KINDS = {
    "model": _MODEL,
    "training": _TRAINING,
    "function": _FUNCTION,
    "graph": _GRAPH,
    "node": _NODE,
    "attribute": _ATTRIBUTE,
    "sparse": _SPARSE,
}
# TensorProto: external_data = 13 (key/value entries), data_location = 14 (EXTERNAL = 1).
_EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 13, 14, 1


class _Truncated(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Truncated("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """Yield ``(field number, value)``: an int for scalars, a view for length-delimited."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Truncated("a field runs past the end of its message")
            yield number, buf[pos : pos + size]
            pos += size
        else:  # groups (3, 4) are not used by ONNX
            raise _Truncated(f"unexpected protobuf wire type {wire}")
        if pos > len(buf):
            raise _Truncated("a field runs past the end of its message")


def _tensor_location(buf: memoryview) -> str | None:
    entries: dict[str, str] = {}
    external = False
    for number, value in _fields(buf):
        if number == _DATA_LOCATION and isinstance(value, int):
            external = value == _EXTERNAL
        elif number == _EXTERNAL_DATA and isinstance(value, memoryview):
            pair = {n: bytes(v) for n, v in _fields(value) if isinstance(v, memoryview)}
            entries[pair.get(1, b"").decode("utf-8", "replace")] = pair.get(2, b"").decode(
                "utf-8", "surrogateescape"
            )
    return entries.get("location") if external else None


def external_data_locations(path: str | os.PathLike[str]) -> list[str]:
    """Return the external-data file names an ONNX model refers to, sorted, each once.

    Args:
        path: the ``.onnx`` file.

    Raises:
        ValueError: the file is not a well-formed protocol buffer.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "empty.onnx"
        >>> _ = f.write_bytes(b"")
        >>> external_data_locations(f)
        []

    """
    data = memoryview(Path(path).read_bytes())
    found: set[str] = set()
    stack: list[tuple[str, memoryview]] = [("model", data)]
    try:
        while stack:
            kind, buf = stack.pop()
            if kind == "tensor":
                location = _tensor_location(buf)
                if location is not None:
                    found.add(location)
                continue
            inner = _KINDS[kind]
            for number, value in _fields(buf):
                if number in inner and isinstance(value, memoryview):
                    stack.append((inner[number], value))
    except _Truncated as err:
        raise ValueError(f"{path} is not a loadable ONNX model: {err}") from None
    return sorted(found)


def external_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """Return the external-data files of an ONNX model, found in its folder as onnxruntime does.

    Locations are relative to the folder of ``path`` as given (not resolved:
    a model reached through a symlink, as in a Hugging Face cache, finds its
    data beside the link). Symlinks among the data files are followed.

    Raises:
        ValueError: a location is absolute or climbs out of the model's folder
            (onnxruntime refuses those too; a model must not name arbitrary files).
        FileNotFoundError: a referenced file is missing.

    """
    folder = Path(os.path.abspath(path)).parent
    files = []
    for location in external_data_locations(path):
        relative = os.path.normpath(location)
        if os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep):
            raise ValueError(
                f"{path} refers to external data {location!r} outside its folder; keep the "
                "weights files beside the model (onnx.save(..., location='NAME'))"
            )
        target = folder / relative
        if not target.is_file():
            raise FileNotFoundError(
                f"{path} needs its external-data file {location!r}, not found in {folder}; "
                "copy it beside the model"
            )
        files.append(target)
    return files


def onnx_fingerprint(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 that identifies an ONNX model and every file it loads.

    Without external data it is the ``.onnx`` file's own SHA-256 (so it can be
    checked against a published hash); with external data it is the SHA-256
    of the model's hash followed by each data file's location and hash.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "empty.onnx"
        >>> _ = f.write_bytes(b"")
        >>> onnx_fingerprint(f) == file_sha256(f)
        True

    """
    own = file_sha256(Path(path))
    folder = Path(os.path.abspath(path)).parent
    parts = [
        f"{target.relative_to(folder).as_posix()}\n{file_sha256(target)}"
        for target in external_data_files(path)
    ]
    if not parts:
        return own
    text = "\n".join([own, *parts])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
