"""The ``face`` encoder: dlib detector, 5-point alignment, 128-d ResNet descriptor.

All model files come from the offline ``face-recognition-models`` package; the
package itself is never imported (its ``__init__`` needs ``pkg_resources``), its
folder is located with :func:`importlib.util.find_spec`.

Choices that are ours, not dlib's (each is an option and part of the cache key):

* ``pad`` - the image is edge-padded by this fraction of its longer side before
  detection: cropped face photos (ORL, LFW crops) fill the frame and the HOG
  detector misses faces that touch the border. On ORL this cut missed faces
  from 57 to 23 of 400.
* ``upsample="auto"`` - the smallest upsampling (0-3) that brings the padded
  image's shorter side to ``min_side`` pixels, since the HOG detector finds
  faces of about 80 px and up.
* ``cnn_fallback`` - when HOG finds nothing, dlib's MMOD CNN detector is tried
  (slower, only for misses). On ORL it found all 23 remaining faces.
* ``cheap_first`` - each detector runs first at upsampling 0 and at its full
  upsampling only when that pass finds nothing (version 3). On ORL (92 x 112,
  padded to 160 x 180) the HOG pass at upsampling 0 costs about 11 ms against
  155 ms at the ``"auto"`` level 2 and misses 13 of 400 faces, which the full
  pass then looks for; the CNN at upsampling 0 costs about a sixteenth of
  level 2 and found 6 of the 8 faces HOG missed. bench/bench_face_speed.py
  measures speed, identification and false matches with and without it.
* ``runtime="torch"`` - the descriptor network runs in torch, with dlib's
  weights read from dlib's own file (:mod:`trainleak.encoders.dlib_resnet`);
  its descriptors equal dlib's to 4e-7 (cosine 1 - 4e-13 on ORL). The
  ``dlib-bin`` wheel has no BLAS, and its network took two thirds of the time
  (version 3). ``jitter`` needs ``runtime="dlib"``.
* ``flip`` - the descriptor is the mean of the aligned chip's and its mirror's
  descriptors (test-time augmentation): on ORL it raised identity-leak recall
  at 1% holdout FPR from 0.82 to 0.90 (nearest-photo score).

Descriptors are L2-normalised and compared by cosine similarity.

Memory: the padding grows with the longer side, so a thin image costs far
more than its pixels (a 112-byte PNG of 30000 x 1 pads to 18001 x 48000). The
image a detector works on (padded and upsampled for HOG, upsampled for the
CNN) may hold at most ``max_pixels`` pixels (``--max-pixels``, the decoding
limit); an image over it is skipped with the sizes in the reason, before any
work. dlib's HOG detector needs about 30 bytes per working pixel, so the
default limit (100 megapixels) bounds it at about 3 GB. An image more than
:data:`MAX_ASPECT` times longer than it is wide (or the reverse) is a strip,
not a photo, and is skipped too: under that bound the working image is at most
about 21 times the image itself (2.6 times for a square), so no small file
costs much memory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from trainleak.encoders import ENCODERS
from trainleak.encoders.base import (
    Encoder,
    EncoderInfo,
    EncodeSkip,
    file_sha256,
    l2_normalise,
    resolve_options,
)

_MODEL_FILES = {
    "landmarks": "shape_predictor_5_face_landmarks.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn": "mmod_human_face_detector.dat",
}


#: The most elongated image (longer side / shorter side) the detector is run on.
MAX_ASPECT = 20

#: Faces are looked for in a copy whose long side is at most this many pixels
#: (ours): a 48-megapixel photo would otherwise need a 138-megapixel padded
#: detector input. Landmarks and descriptors still use the full image.
DETECT_MAX_SIDE = 2048


def model_dir() -> Path:
    """Return the ``models`` folder of the installed ``face-recognition-models``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the face encoder needs the offline model files: pip install face-recognition-models"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _upsample_for(side: int, min_side: int) -> int:
    for n in range(4):
        if side * (2**n) >= min_side:
            return n
    return 3


@ENCODERS.register("face")
class FaceEncoder(Encoder):
    """dlib face descriptor (King 2017; 99.38% on LFW), cosine on unit vectors.

    Options:
        aligned: the image is already a face crop; skip detection and use the
            whole frame as the face box.
        all_faces: return every detected face (largest first) instead of only
            the largest; each becomes its own record ``path#k``.
        upsample: ``"auto"`` or 0-3, HOG detector upsampling.
        min_side: the shorter side ``"auto"`` upsampling aims for, in pixels.
        pad: edge padding before detection, as a fraction of the longer side.
        cnn_fallback: try the MMOD CNN detector when HOG finds no face.
        cheap_first: run each detector at upsampling 0 first and at its full
            upsampling only when that finds nothing.
        flip: average the descriptors of the chip and its mirror image.
        runtime: ``"torch"`` or ``"dlib"``: what runs the descriptor network
            (same weights, same descriptors to 4e-7).
        jitter: dlib's ``num_jitters`` (deterministic random crops; slow).

    The default operating point (cosine 0.93) is ours: on ORL it sits at
    about a 1% same-person false-match rate between different people. It is
    uncalibrated for other data: give a holdout.

    Example:
        >>> enc = FaceEncoder()
        >>> enc.info.dim, enc.info.metric
        (128, 'cosine')

    """

    defaults: ClassVar[dict[str, Any]] = {
        "aligned": False,
        "all_faces": False,
        "upsample": "auto",
        "min_side": 400,
        "pad": 0.3,
        "cnn_fallback": True,
        "cheap_first": True,
        "flip": True,
        "runtime": "torch",
        "jitter": 0,
    }

    def __init__(self, **options: Any) -> None:
        opts = resolve_options("face", self.defaults, options)
        if opts["upsample"] != "auto" and not (
            isinstance(opts["upsample"], int) and 0 <= opts["upsample"] <= 3
        ):
            raise ValueError("face option upsample must be 'auto' or an integer 0-3")
        if opts["runtime"] not in ("torch", "dlib"):
            raise ValueError("face option runtime must be 'torch' or 'dlib'")
        if opts["jitter"] and opts["runtime"] != "dlib":
            raise ValueError("face option jitter needs runtime='dlib' (dlib's random crops)")
        self.opts = opts
        folder = model_dir()
        # The models load on the first image (_models): a warm re-run, where
        # every image is a cache hit, needs only the cache key, which hashes
        # the weight files (about 30 MB, a few tens of milliseconds).
        self._loaded: tuple[Any, Any, Any, Any] | None = None
        self._cnn: Any = None
        self._hog: tuple[Any, Any] | None = None
        weights = "+".join(
            file_sha256(folder / _MODEL_FILES[k])[:16] for k in ("landmarks", "descriptor")
        )
        self.info = EncoderInfo(
            name="face",
            # 3: cheap_first (a detection pass at upsampling 0 before the full one);
            # the descriptor network run by torch (runtime).
            version=3,
            dim=128,
            metric="cosine",
            kind="identity",
            operating_point="identity",
            default_threshold=0.93,
            threshold_note=(
                "encoder default operating point (cosine 0.93, chosen by trainleak on ORL faces); "
                "uncalibrated for your data: calibrate it with a holdout (audit --holdout, "
                "index build --holdout) or set --threshold"
            ),
            options=opts,
            weights_sha256=weights,
            paper="King, dlib face recognition ResNet (2017); Kazemi & Sullivan landmarks (2014)",
            licence="dlib models: CC0 / Boost Software License (face-recognition-models)",
        )

    def _detector(self) -> tuple[Any, Any]:
        """Return ``(dlib, HOG detector)``; detecting alone loads no other model."""
        if self._hog is None:
            import dlib

            self._hog = (dlib, dlib.get_frontal_face_detector())
        return self._hog

    def _models(self) -> tuple[Any, Any, Any, Any]:
        """Return ``(dlib, detector, landmarks, net)``, loading them on the first call."""
        if self._loaded is None:
            dlib, detector = self._detector()
            folder = model_dir()
            weights = str(folder / _MODEL_FILES["descriptor"])
            if self.opts["runtime"] == "torch":
                from trainleak.encoders.dlib_resnet import load

                net = load(weights)
            else:
                net = dlib.face_recognition_model_v1(weights)
            self._loaded = (
                dlib,
                detector,
                dlib.shape_predictor(str(folder / _MODEL_FILES["landmarks"])),
                net,
            )
        return self._loaded

    def detect(self, image: np.ndarray) -> list[Any]:
        """Return dlib rectangles of the faces in ``image``, largest first.

        The detection :meth:`encode` runs (padding, upsampling, CNN fallback,
        the ``max_pixels`` bound); the named face models align these faces.

        Raises:
            EncodeSkip: the image is too elongated or too large to search.

        """
        return self._detect(np.ascontiguousarray(image))

    def _detect(self, image: np.ndarray) -> list[Any]:
        height, width = image.shape[:2]
        if self.opts["aligned"]:
            dlib = self._detector()[0]
            return [dlib.rectangle(0, 0, width - 1, height - 1)]
        if max(height, width) > MAX_ASPECT * min(height, width):
            raise EncodeSkip(
                f"too elongated for face detection: {width}x{height} is more than "
                f"{MAX_ASPECT}:1 (crop it to the part with the face)"
            )
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        if scale < 1.0:
            from PIL import Image

            small = Image.fromarray(image).resize(
                (max(1, round(width * scale)), max(1, round(height * scale))),
                Image.Resampling.BOX,
            )
            dlib = self._detector()[0]
            return [_scale(dlib, box, 1.0 / scale) for box in self._detect(np.asarray(small))]
        pad = int(round(self.opts["pad"] * max(height, width)))
        up = self.opts["upsample"]
        if up == "auto":
            up = _upsample_for(min(height, width) + 2 * pad, self.opts["min_side"])
        # Checked before any work (or model loading): over the limit is a skip.
        self._check_work("padded and upsampled", height + 2 * pad, width + 2 * pad, up)
        cnn_up = _upsample_for(min(height, width), 300)
        if self.opts["cnn_fallback"]:
            self._check_work("upsampled (CNN detector)", height, width, cnn_up)
        dlib, detector = self._detector()
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image
        boxes = [_shift(dlib, r, -pad) for r in self._passes(detector, padded, up)]
        if not boxes and self.opts["cnn_fallback"]:
            if self._cnn is None:
                self._cnn = dlib.cnn_face_detection_model_v1(str(model_dir() / _MODEL_FILES["cnn"]))
            found = self._passes(self._cnn, np.ascontiguousarray(image), cnn_up)
            boxes = [d.rect for d in found]
        # Largest first; position breaks ties so the order is deterministic.
        return sorted(boxes, key=lambda r: (-r.area(), r.top(), r.left()))

    def _passes(self, detector: Any, image: np.ndarray, up: int) -> list[Any]:
        """Run ``detector`` at upsampling 0 first (``cheap_first``), then at ``up`` if needed.

        The work of one pass grows with the square of its upsampling factor, so
        a face found by the cheap pass saves nearly all of the full one.
        """
        if self.opts["cheap_first"] and up > 0:
            found = list(detector(image, 0))
            if found:
                return found
        return list(detector(image, up))

    def _check_work(self, how: str, height: int, width: int, up: int) -> None:
        """Skip an image whose detector input would exceed ``max_pixels``."""
        h, w = height << up, width << up
        if h * w > self.max_pixels:
            raise EncodeSkip(
                f"too many pixels for face detection: {how} it is {w}x{h}, over the limit "
                f"of {self.max_pixels:,} (crop the image, or raise --max-pixels if the file "
                "is trusted and memory allows)",
                cache=False,  # depends on --max-pixels, not on the file alone
            )

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Return ``(m, 128)`` unit descriptors, largest face first."""
        (out,) = self.encode_batch([image])
        if isinstance(out, EncodeSkip):
            raise out
        return out

    def chips(self, image: np.ndarray) -> list[np.ndarray]:
        """Return the aligned ``(150, 150, 3)`` chips of the faces :meth:`encode` describes.

        Raises:
            EncodeSkip: no face, or the image is too large or elongated to search.

        """
        image = np.ascontiguousarray(image)
        boxes = self._detect(image)
        if not boxes:
            raise EncodeSkip("no face detected")
        if not self.opts["all_faces"]:
            boxes = boxes[:1]
        dlib, _, landmarks, _ = self._models()
        return [dlib.get_face_chip(image, landmarks(image, b), size=150, padding=0.25)
                for b in boxes]  # fmt: skip

    def describe(self, chips: list[np.ndarray]) -> np.ndarray:
        """Return ``(n, 128)`` unit descriptors of aligned chips (and mirrors, under ``flip``)."""
        net = self._models()[3]
        batch = list(chips)
        if self.opts["flip"]:
            batch += [np.ascontiguousarray(c[:, ::-1]) for c in chips]
        if self.opts["runtime"] == "torch":
            from trainleak.encoders.dlib_resnet import descriptors

            vecs = descriptors(net, batch)
        else:
            vecs = np.stack([np.asarray(net.compute_face_descriptor(c, self.opts["jitter"]))
                             for c in batch])  # fmt: skip
        if self.opts["flip"]:
            vecs = vecs[: len(chips)] + vecs[len(chips) :]
        return l2_normalise(vecs)

    def encode_batch(self, images: list[np.ndarray]) -> list[np.ndarray | EncodeSkip]:
        """Embed several images; a skip is returned in place.

        Each image's chips (and their mirrors) go through the network as one batch
        of their own: a batch holding other images' chips changes how torch blocks
        its convolutions, and with it the last bits of the descriptors, so vectors
        would depend on ``--batch-size`` and on the worker count.
        """
        out: list[np.ndarray | EncodeSkip] = []
        for image in images:
            try:
                out.append(self.describe(self.chips(image)))
            except EncodeSkip as skip:
                out.append(skip)
        return out


def _scale(dlib: Any, rect: Any, factor: float) -> Any:
    return dlib.rectangle(
        int(round(rect.left() * factor)),
        int(round(rect.top() * factor)),
        int(round(rect.right() * factor)),
        int(round(rect.bottom() * factor)),
    )


def _shift(dlib: Any, rect: Any, offset: int) -> Any:
    return dlib.rectangle(
        rect.left() + offset, rect.top() + offset, rect.right() + offset, rect.bottom() + offset
    )
