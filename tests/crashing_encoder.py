"""Test encoders that kill their own process, for the crash-isolation tests.

Imported by the tests (and by worker processes, which get the parent's
``sys.path``); the CLI tests reach it through an entry point. Never run them
in-process (``workers=1``): they would kill the test run.
"""

from __future__ import annotations

import os
import signal
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trainleak.encoders import ENCODERS
from trainleak.encoders.base import Encoder, EncoderInfo, l2_normalise, resolve_options

#: Top-left pixel of a marked image; photos in ../shared/data are grey, so none has it.
MARK = (255, 0, 255)


def mark(image: Image.Image) -> Image.Image:
    """Return an RGB copy of ``image`` with the crash mark in its top-left pixel."""
    out = image.convert("RGB")
    out.putpixel((0, 0), MARK)
    return out


@ENCODERS.register("crash-test")
class CrashingEncoder(Encoder):
    """An 8x8 grey thumbnail, except that it kills its own process.

    Options:
        crash_on: ``"marked"`` (images carrying :data:`MARK`), ``"all"``, or
            ``"start"`` (in ``__init__``, in any process but ``host_pid``).
        how: ``"sigkill"`` (signal 9) or ``"exit"`` (``os._exit(3)``).
        host_pid: the one process where ``crash_on="start"`` does not crash.

    """

    defaults: ClassVar[dict[str, Any]] = {"crash_on": "marked", "how": "sigkill", "host_pid": 0}

    def __init__(self, **options: Any) -> None:
        self.opts = resolve_options("crash-test", self.defaults, options)
        self.info = EncoderInfo("crash-test", 1, 64, "cosine", 0.9, "test encoder", self.opts)
        if self.opts["crash_on"] == "start" and os.getpid() != self.opts["host_pid"]:
            self._die()

    def _die(self) -> None:
        if self.opts["how"] == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Return one ``(1, 64)`` unit row, or kill the process."""
        marked = tuple(int(v) for v in image[0, 0]) == MARK
        if self.opts["crash_on"] == "all" or (self.opts["crash_on"] == "marked" and marked):
            self._die()
        grey = np.asarray(Image.fromarray(image).convert("L").resize((8, 8)), np.float32)
        return l2_normalise((grey - grey.mean()).reshape(1, -1))
