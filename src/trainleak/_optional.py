"""Optional dependencies: one place that imports them and names the extra to install.

Every import of a package that ``pip install trainleak`` does not bring goes
through :func:`require`, so a missing one fails with the command that fixes
it instead of ``No module named ...``. The extras are declared in
``pyproject.toml`` under ``[project.optional-dependencies]`` (a test checks
that each extra named here is declared there and lists the package).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from trainleak.errors import MissingExtraError

#: Top-level module of each optional dependency -> the package pip installs.
PACKAGES: dict[str, str] = {
    "skimage": "scikit-image",
    "onnxruntime": "onnxruntime",
    "faiss": "faiss-cpu",
    "cv2": "opencv-python-headless",
    "diffusers": "diffusers",
    "pyarrow": "pyarrow",
    "ray": "ray[data]",
}


def require(module: str, *, extra: str, needed_for: str) -> ModuleType:
    """Import an optional dependency, or fail with the ``pip install`` that provides it.

    Args:
        module: the module to import, e.g. ``"skimage.metrics"``; its top-level
            package must be listed in :data:`PACKAGES`.
        extra: the trainleak extra that installs it (``invert``, ``onnx``...).
        needed_for: what needs it, for the message (e.g. ``"trainleak invert"``).

    Returns:
        The imported module.

    Raises:
        MissingExtraError: the package is missing or cannot be imported (an
            ``ImportError``), with a message such as ``trainleak invert needs
            scikit-image: pip install 'trainleak[invert]'``.

    Example:
        >>> require("faiss", extra="faiss", needed_for="backend='faiss'").__name__
        'faiss'
        >>> import sys
        >>> saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m.startswith("skimage")}
        >>> sys.modules["skimage"] = None  # what an uninstalled package looks like
        >>> try:
        ...     require("skimage.metrics", extra="invert", needed_for="trainleak invert")
        ... except ImportError as err:
        ...     print(err)
        trainleak invert needs scikit-image: pip install 'trainleak[invert]'
        >>> del sys.modules["skimage"]; sys.modules.update(saved)

    """
    top = module.partition(".")[0]
    if top not in PACKAGES:
        raise KeyError(f"{top!r} is not a declared optional dependency; add it to PACKAGES")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None) or top
        # A package that is there but cannot import (a dependency of its own is
        # missing or broken) is mended by the same install; say what failed.
        detail = "" if missing.partition(".")[0] == top else f" (it failed to import: {err})"
        raise MissingExtraError(
            f"{needed_for} needs {PACKAGES[top]}{detail}: pip install 'trainleak[{extra}]'"
        ) from err


__all__ = ["PACKAGES", "require"]
