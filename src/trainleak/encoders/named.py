"""Published models by name: ``arcface``, ``adaface``, ``sface``, ``sscd``, ``dinov2-s14``.

Each name is a :class:`~trainleak.encoders.cards.ModelCard` (the facts about
the published model and where they come from) and an encoder that feeds the
model exactly as its publisher does: face models get a 5-landmark aligned
112 x 112 crop (:mod:`trainleak.encoders.align`), copy descriptors a resized
(and centre-cropped) image; then the card's colour order and normalisation.
The weights file comes from ``--weights FILE``, ``$TRAINLEAK_MODELS`` or, for
a card with a pinned SHA-256, ``--allow-download``
(:mod:`trainleak.encoders.weights`); a ``.onnx`` file runs on onnxruntime,
anything else as TorchScript, on the CPU or a CUDA ``device``.

Options:
    weights: the weights file (default: found by the card's file name).
    allow_download: fetch a missing file once from the publisher (pinned only).
    device: ``cpu``, ``cuda`` or ``cuda:N``.
    half: float16 on a CUDA device (TorchScript files only).
    batch_size: crops per model call; does not change the vectors.
    flip: average the embeddings of the crop and its mirror (not the
        publishers' default).
    aligned: face models: the images are already aligned crops; no detection.
    all_faces: face models: one row per detected face, largest first.
    crop: copy descriptors: ``square`` (whole image to the input size),
        ``short`` (short edge to the card's ``resize_to``, aspect kept) or
        ``short_center`` (then a centre crop to the input size).

The report records the licence and flags non-commercial weights
(``non_commercial`` in the encoder entry); building such an encoder logs a
warning too.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trainleak.encoders import ENCODERS
from trainleak.encoders.align import FaceAligner, landmarks_sha256, resize_aligned
from trainleak.encoders.base import Encoder, EncoderInfo, EncodeSkip, l2_normalise, resolve_options
from trainleak.encoders.cards import CARDS, ModelCard
from trainleak.encoders.devices import parse_device
from trainleak.encoders.model import OnnxEncoder, TorchScriptEncoder, _bounded
from trainleak.encoders.weights import locate_weights

log = logging.getLogger(__name__)

# Options that say where or how to compute, not what: recorded, not keyed.
_EXECUTION = ("weights", "allow_download", "batch_size", "device")
_COPY_CROPS = ("square", "short", "short_center")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def card_defaults(card: ModelCard) -> dict[str, Any]:
    """Return the options of ``card``'s encoder with their defaults."""
    opts: dict[str, Any] = {
        "weights": None,
        "allow_download": False,
        "device": "cpu",
        "half": False,
        "batch_size": 32,
        "flip": False,
    }
    if card.crop == "align5":
        opts.update(aligned=False, all_faces=False)
    else:
        opts["crop"] = card.crop
    return opts


def resize_short(image: Image.Image, short: int, resample: Image.Resampling) -> Image.Image:
    """Resize so the short edge is ``short`` pixels, as torchvision's ``Resize(short)``."""
    w, h = image.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return image.resize(size, resample)


def center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Crop the centre ``(height, width)``, offsets rounded as torchvision's ``CenterCrop``."""
    w, h = image.size
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
    return image.crop((left, top, left + size[1], top + size[0]))


class NamedEncoder(Encoder):
    """A published model fed as its publisher feeds it; see the module docstring."""

    card: ClassVar[ModelCard]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        card = self.card
        opts = resolve_options(card.name, self.defaults, options)
        kind, _ = parse_device(opts["device"])
        if int(opts["batch_size"]) < 1:
            raise ValueError(f"batch_size must be at least 1, got {opts['batch_size']!r}")
        if "crop" in opts and opts["crop"] not in _COPY_CROPS:
            raise ValueError(f"crop must be one of {list(_COPY_CROPS)}, got {opts['crop']!r}")
        path = locate_weights(card, opts["weights"], bool(opts["allow_download"]))
        runner: dict[str, Any] = {
            "path": path,
            "size": list(card.size),
            "batch_size": int(opts["batch_size"]),
            "device": opts["device"],
            "output": card.output,
        }
        if path.suffix.lower() == ".onnx":
            if opts["half"]:
                raise ValueError(
                    "half=true converts a TorchScript model; for ONNX export a float16 model "
                    "(its input type is read from the file)"
                )
            self._model: OnnxEncoder | TorchScriptEncoder = OnnxEncoder(**runner)
        else:
            self._model = TorchScriptEncoder(**runner, half=bool(opts["half"]))
        if self._model.info.dim != card.dim:
            raise ValueError(
                f"{path} gives {self._model.info.dim}-d vectors, the {card.name} model "
                f"{card.dim}-d: not the {card.file_name} this card describes (for another "
                "model use onnx:FILE or torchscript:FILE with its options)"
            )
        self.opts = opts
        self.device = str(opts["device"]) if kind == "cuda" else "cpu"
        self._aligner = FaceAligner(card.size) if card.crop == "align5" else None
        weights = str(self._model.info.weights_sha256)
        if self._aligner is not None and not opts["aligned"]:
            weights += "+dlib68:" + landmarks_sha256()[:16]
        if card.non_commercial:
            log.warning("%s: non-commercial weights (%s)", card.name, card.licence)
        self.info = EncoderInfo(
            name=card.name,
            version=1,
            dim=card.dim,
            metric="cosine",
            kind=card.kind,
            default_threshold=card.default_threshold,
            threshold_note=card.threshold_note,
            options={k: v for k, v in opts.items() if k not in _EXECUTION},
            weights_sha256=weights,
            paper=card.paper,
            licence=card.licence,
            non_commercial=card.non_commercial,
            execution={
                **self._model.info.execution,
                "weights": str(path),
                "published_sha256": card.sha256,
                "is_published_file": None
                if card.sha256 is None
                else self._model.info.weights_sha256 == card.sha256,
            },
        )

    def crops(self, image: np.ndarray) -> list[np.ndarray]:
        """Return the ``uint8`` RGB crops the model sees for one RGB image (one per face)."""
        card = self.card
        if self._aligner is not None:
            if self.opts["aligned"]:
                return [resize_aligned(image, card.size)]
            return self._aligner.align(image, self.max_pixels, bool(self.opts["all_faces"]))
        im = _bounded(Image.fromarray(np.asarray(image, np.uint8)).convert("RGB"))
        resample = _RESAMPLE[card.resample]
        crop = self.opts["crop"]
        if crop == "square":
            im = im.resize((card.size[1], card.size[0]), resample)
        else:
            im = resize_short(im, card.resize_to, resample)
            if crop == "short_center":
                im = center_crop(im, card.size)
        return [np.asarray(im, np.uint8)]

    def to_input(self, crops: list[np.ndarray]) -> np.ndarray:
        """Turn same-size RGB ``uint8`` crops into the model's ``(n, 3, h, w)`` float32 batch."""
        mean = np.asarray(self.card.mean, np.float32)
        std = np.asarray(self.card.std, np.float32)
        x = (np.stack(crops).astype(np.float32) - mean) / std
        if self.card.channels == "bgr":
            x = x[..., ::-1]
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """Return the model input for images with one crop each (largest face)."""
        return self.to_input([self.crops(im)[0] for im in images])

    def _rows(self, crops: list[np.ndarray]) -> np.ndarray:
        rows = np.zeros((len(crops), self.card.dim), np.float64)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, crop in enumerate(crops):
            by_shape.setdefault(crop.shape, []).append(i)
        step = int(self.opts["batch_size"])
        for members in by_shape.values():
            for start in range(0, len(members), step):
                part = members[start : start + step]
                x = self.to_input([crops[i] for i in part])
                y = self._model.run_batch(x)
                if self.opts["flip"]:
                    y = 0.5 * (y + self._model.run_batch(np.ascontiguousarray(x[..., ::-1])))
                rows[part] = y
        return rows

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Embed one image as ``(m, dim)`` float32 unit rows (``m`` faces, else 1)."""
        result = self.encode_batch([image])[0]
        if isinstance(result, EncodeSkip):
            raise result
        return result

    def encode_batch(self, images: list[np.ndarray]) -> list[np.ndarray | EncodeSkip]:
        """Embed images; a failure (no face, non-finite output) is returned in place."""
        found: list[list[np.ndarray] | EncodeSkip] = []
        for image in images:
            try:
                found.append(self.crops(image))
            except EncodeSkip as skip:
                found.append(skip)
        flat = [c for f in found if not isinstance(f, EncodeSkip) for c in f]
        rows = iter(self._rows(flat) if flat else [])
        out: list[np.ndarray | EncodeSkip] = []
        for f in found:
            if isinstance(f, EncodeSkip):
                out.append(f)
                continue
            mine = np.stack([next(rows) for _ in f])
            if np.all(np.isfinite(mine)):
                out.append(l2_normalise(mine))
            else:
                out.append(EncodeSkip("model produced non-finite embedding"))
        return out


def _register(card: ModelCard) -> type[NamedEncoder]:
    cls = type(
        f"{card.name.title().replace('-', '')}Encoder",
        (NamedEncoder,),
        {
            "card": card,
            "defaults": card_defaults(card),
            "__module__": __name__,
            "__doc__": f"{card.paper}. Licence: {card.licence}.",
        },
    )
    ENCODERS.register(card.name)(cls)
    return cls


NAMED_ENCODERS = {name: _register(card) for name, card in CARDS.items()}
