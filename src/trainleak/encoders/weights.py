"""Finding a named model's weights file, and the one download trainleak may make.

Looked for, in order: the ``weights`` option (``--weights FILE``), the card's
file name in ``$TRAINLEAK_MODELS``, then in the download folder
(``$TRAINLEAK_CACHE/models`` or ``~/.cache/trainleak/models``). Only with
``allow_download`` (``--allow-download``), and only for a card with a pinned
SHA-256, is the file fetched from the publisher's URL, checked against the pin
while it streams and moved into place atomically. A card without a pin is
never downloaded: the error says so and how to get the file by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

from trainleak.encoders.cards import ModelCard

log = logging.getLogger(__name__)

#: Environment variable naming a folder of weights files, by their card names.
MODELS_ENV = "TRAINLEAK_MODELS"
#: The most bytes one download may bring (the largest card is well under it).
MAX_DOWNLOAD_BYTES = 2 << 30
_CHUNK = 1 << 20


def download_dir() -> Path:
    """Return the folder ``--allow-download`` writes weights into."""
    from trainleak.store import default_cache_dir

    return Path(default_cache_dir()) / "models"


def locate_weights(card: ModelCard, weights: str | os.PathLike[str] | None, allow: bool) -> Path:
    """Return the weights file of ``card``; see the module docstring for the order.

    Raises:
        FileNotFoundError: no file, with every way to provide one.
        ValueError: a download was allowed but the card has no pinned SHA-256,
            or the downloaded file does not match the pin.

    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{card.name}: weights file not found: {path}")
        return path
    folders = [Path(p).expanduser() for p in [os.environ.get(MODELS_ENV)] if p]
    folders.append(download_dir())
    for folder in folders:
        if (folder / card.file_name).is_file():
            return folder / card.file_name
    if allow:
        return download(card, download_dir())
    where = f"${MODELS_ENV} ({folders[0]})" if os.environ.get(MODELS_ENV) else f"${MODELS_ENV}"
    pin = (
        "or pass --allow-download to fetch it once from the publisher (pinned SHA-256)"
        if card.url and card.sha256
        else "(no pinned SHA-256 is known for it, so trainleak will not download it)"
    )
    raise FileNotFoundError(
        f"the {card.name} encoder needs its weights file {card.file_name}: pass "
        f"--weights FILE (-O weights=FILE), or put it in the folder {where}, {pin}. "
        f"To get it: {card.get}. Licence: {card.licence}"
    )


def download(card: ModelCard, folder: Path) -> Path:
    """Fetch ``card``'s file into ``folder``, verified against its pinned SHA-256.

    Raises:
        ValueError: no URL or no pin on the card, a scheme other than https
            (or ``file:``), a size over :data:`MAX_DOWNLOAD_BYTES`, or a hash
            that differs from the pin (the partial file is deleted).

    """
    if not card.url or not card.sha256:
        raise ValueError(
            f"--allow-download: the {card.name} weights have no pinned SHA-256 "
            f"({'no URL' if not card.url else card.url}), so trainleak does not download "
            f"them unverified. Get the file yourself ({card.get}) and pass --weights FILE"
        )
    if not card.url.startswith(("https://", "file:")):
        raise ValueError(f"refusing to download {card.url}: only https URLs are fetched")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / card.file_name
    log.warning("downloading %s weights from %s (licence: %s)", card.name, card.url, card.licence)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{card.file_name}.", dir=folder)
    try:
        # The scheme is checked above; the content is checked against the pin below.
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(card.url, timeout=60) as src:  # noqa: S310
            size = 0
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise ValueError(f"{card.url}: more than {MAX_DOWNLOAD_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != card.sha256:
            raise ValueError(
                f"{card.url}: SHA-256 {digest.hexdigest()} is not the pinned {card.sha256}; "
                "the file was deleted (the publisher changed it, or the download was altered)"
            )
        os.replace(tmp, target)
    except OSError as err:  # URLError is an OSError: no network, HTTP errors
        Path(tmp).unlink(missing_ok=True)
        raise ValueError(
            f"could not download {card.url}: {err}; download it yourself and pass --weights FILE"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
