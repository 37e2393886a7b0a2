"""Exceptions trainleak raises on purpose, each with a message that says how to fix it.

The command line turns every :class:`TrainleakError` into ``trainleak: error:
<message>`` and exit code 2; the Python API lets them propagate.
"""

from __future__ import annotations


class TrainleakError(Exception):
    """Base class of the errors trainleak raises with a fix-it message."""


class WorkerCrashError(TrainleakError, RuntimeError):
    """The embedding worker processes keep dying, so the run cannot go on.

    Raised when worker processes cannot start, or when they crash on many
    images in a row (one image that crashes its worker is skipped instead).
    """


class AuditInputError(TrainleakError, ValueError):
    """An input set has nothing usable in it, or settings that cannot work together."""


class MissingExtraError(TrainleakError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class SourceError(TrainleakError, ValueError):
    """A source path is missing or malformed; the message says how to fix it."""


class IndexFormatError(TrainleakError, ValueError):
    """A folder is not a readable trainleak index (missing, newer format, or damaged).

    Raised instead of answering from an index whose files do not match its
    manifest: a truncated or corrupted shard, or a format written by a newer
    trainleak.
    """


class EncoderMismatchError(TrainleakError, ValueError):
    """An index is used with an encoder other than the one that built it."""


class EngineError(TrainleakError, RuntimeError):
    """An engine cannot run here: an unreachable Ray cluster, an encoder it cannot load."""


__all__ = [
    "AuditInputError",
    "EncoderMismatchError",
    "EngineError",
    "IndexFormatError",
    "MissingExtraError",
    "SourceError",
    "TrainleakError",
    "WorkerCrashError",
]
