"""The encoder contract as a function: run it on your own encoder before you register it.

:func:`check_encoder` checks what every part of trainleak relies on (as
scikit-learn's ``check_estimator`` does for estimators): what the encoder
declares in its :class:`~trainleak.encoders.base.EncoderInfo` (kind, metric,
comparison rule, operating point, a stable cache key) and what ``encode_batch``
returns (one result per image, ``(m, dim)`` float32 finite rows or an
:class:`~trainleak.encoders.base.EncodeSkip`, unit rows for ``cosine``, the
same rows for the same image, and the declared mirror rule holding for a
mirrored image). The project runs it over every registered encoder
(``tests/encoders/test_check_encoder.py``).

Example:
    >>> import numpy as np
    >>> from trainleak.encoders import get_encoder
    >>> from skimage import data
    >>> check_encoder(get_encoder("tiled"), [data.astronaut(), data.coffee()])["embedded"]
    2

"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

import numpy as np

from trainleak._optional import require
from trainleak.encoders.base import Encoder, EncodeSkip, Kind, Metric, OperatingPoint
from trainleak.errors import TrainleakError


class EncoderContractError(TrainleakError, AssertionError):
    """An encoder breaks the contract; the message says which rule and how to fix it."""


def check_encoder(encoder: Encoder, images: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Check one encoder instance against the encoder contract; raise on the first breach.

    Args:
        encoder: the encoder to check (an instance, e.g. ``get_encoder("myenc")``).
        images: RGB ``uint8`` images ``(H, W, 3)`` the encoder should embed (at
            least one must embed; others may be skips). ``None``: three of
            scikit-image's bundled photographs (``pip install scikit-image``).

    Returns:
        What was checked: ``{"name", "embedded", "skipped", "mirror_checked"}``.

    Raises:
        EncoderContractError: naming the rule broken.

    """
    info = encoder.info
    _check_info(encoder)
    imgs = list(images) if images is not None else _default_images()
    if not imgs:
        raise EncoderContractError("give check_encoder at least one image to embed")
    results = encoder.encode_batch(imgs)
    _require(
        len(results) == len(imgs),
        f"encode_batch returned {len(results)} results for {len(imgs)} images: return one per "
        "image, an EncodeSkip in place of an image it cannot embed",
    )
    rows: list[tuple[int, np.ndarray]] = []
    for i, res in enumerate(results):
        if isinstance(res, EncodeSkip):
            _require(bool(str(res)), f"image {i}: an EncodeSkip needs a one-line reason")
            continue
        _check_rows(info.metric, info.dim, res, f"image {i}")
        rows.append((i, res))
    _require(bool(rows), "no image embedded: give images this encoder can embed")
    first_i, first = rows[0]
    again = encoder.encode_batch([imgs[first_i]])[0]
    _require(
        # Float rounding may differ with the batch's size (BLAS picks kernels by shape).
        isinstance(again, np.ndarray)
        and again.shape == first.shape
        and bool(np.allclose(again, first, atol=1e-5)),
        "the same image gave different rows: an encoder must be deterministic",
    )
    mirror_checked = False
    if info.mirror is not None:
        flipped = encoder.encode_batch([np.ascontiguousarray(imgs[first_i][:, ::-1])])[0]
        _require(isinstance(flipped, np.ndarray), "the mirror image of an embedded image skipped")
        assert isinstance(flipped, np.ndarray)
        _require(
            np.allclose(first[:, info.mirror], flipped, atol=1e-4),
            "info.mirror does not turn a row into its mirror image's row: fix the permutation "
            "or declare mirror=None",
        )
        mirror_checked = True
    return {
        "name": info.name,
        "embedded": len(rows),
        "skipped": len(imgs) - len(rows),
        "mirror_checked": mirror_checked,
    }


def _check_info(encoder: Encoder) -> None:
    info = encoder.info
    _require(bool(info.name) and ":" not in info.name, f"info.name {info.name!r} must be a name")
    _require(info.version >= 1, "info.version starts at 1 and goes up when behaviour changes")
    _require(info.dim > 0, f"info.dim must be positive, got {info.dim}")
    _require(info.metric in get_args(Metric), f"info.metric must be one of {get_args(Metric)}")
    _require(info.kind in get_args(Kind), f"info.kind must be one of {get_args(Kind)}")
    _require(
        info.operating_point in get_args(OperatingPoint),
        f"info.operating_point must be one of {get_args(OperatingPoint)}",
    )
    _require(
        info.tiles >= 1 and info.dim % info.tiles == 0,
        f"info.tiles ({info.tiles}) must divide info.dim ({info.dim})",
    )
    _require(info.tiles == 1 or info.metric == "tiled_l2", "tiles > 1 needs metric 'tiled_l2'")
    if info.mirror is not None:
        perm = np.asarray(info.mirror)
        _require(
            perm.shape == (info.dim,) and np.array_equal(np.sort(perm), np.arange(info.dim)),
            "info.mirror must be a permutation of the row's dim columns",
        )
        _require(
            np.array_equal(perm[perm], np.arange(info.dim)),
            "info.mirror must undo itself (mirroring twice gives the image back)",
        )
    _require(
        np.isfinite(info.default_threshold) and bool(info.threshold_note),
        "declare a finite default_threshold and a threshold_note saying how it was chosen",
    )
    _require(
        info.cache_key() == info.cache_key() and info.cache_key().startswith(f"{info.name}-v"),
        "info.cache_key() must be stable and start with the name and version",
    )


def _check_rows(metric: str, dim: int, rows: Any, where: str) -> None:
    _require(isinstance(rows, np.ndarray), f"{where}: return a numpy array, got {type(rows)}")
    _require(
        rows.ndim == 2 and rows.shape[1] == dim and len(rows) >= 1,
        f"{where}: rows must be (m >= 1, {dim}), got {rows.shape}",
    )
    _require(rows.dtype == np.float32, f"{where}: rows must be float32, got {rows.dtype}")
    _require(bool(np.isfinite(rows).all()), f"{where}: rows hold NaN or infinite values")
    if metric == "cosine":
        norms = np.linalg.norm(rows, axis=1)
        _require(
            bool(np.allclose(norms, 1.0, atol=1e-4)),
            f"{where}: cosine rows must be L2-normalised, norms {norms.tolist()[:3]}",
        )


def _default_images() -> list[np.ndarray]:
    # Without images, scikit-image's bundled photographs; require() names the extra to install.
    data = require(
        "skimage.data", extra="demo", needed_for="check_encoder without images=[...]"
    )
    grey = data.camera()
    return [data.astronaut(), data.coffee(), np.repeat(grey[:, :, None], 3, axis=2)]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise EncoderContractError(message)


__all__ = ["EncoderContractError", "check_encoder"]
