"""Five-landmark face alignment to the ArcFace template, as the published models expect.

The face recognition models of :mod:`trainleak.encoders.named` take 112 x 112
crops made by a similarity transform (rotation, uniform scale, translation)
that carries five facial landmarks onto fixed template points
(:data:`~trainleak.encoders.cards.ARCFACE_TEMPLATE`): insightface's
``norm_crop`` and OpenCV's ``FaceRecognizerSF.alignCrop`` do exactly this.

* The transform is the least-squares similarity of Umeyama (1991), what
  insightface gets from ``skimage``'s ``SimilarityTransform.estimate``.
* The warp maps each output pixel back into the image and interpolates
  bilinearly, pixel centres at integer coordinates, zero outside the image,
  rounded to ``uint8``: ``cv2.warpAffine(..., INTER_LINEAR, borderValue=0)``
  (OpenCV rounds its interpolation weights to 1/32, so a pixel may differ by
  one level).
* The landmarks: the publishers' detectors (RetinaFace, MTCNN, YuNet) give
  eye centres, the nose tip and the mouth corners. dlib's 5-point predictor
  gives eye corners and the base of the nose, not these, so the 68-point
  predictor (shipped in the same ``face-recognition-models`` package) is used:
  eye centres are the means of the eye contours (points 36-41 and 42-47),
  the nose tip is point 30, the mouth corners points 48 and 54. Faces are
  found by the ``face`` encoder's detector (HOG with padding, CNN fallback).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainleak.encoders.base import EncodeSkip, file_sha256
from trainleak.encoders.cards import ARCFACE_TEMPLATE

#: dlib's 68-point landmark model, in the face-recognition-models package.
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Return the ``(2, 3)`` similarity that best maps ``src`` points onto ``dst`` (Umeyama).

    Args:
        src: ``(n, 2)`` points ``(x, y)``.
        dst: ``(n, 2)`` points ``(x, y)``.

    Example:
        >>> s = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> similarity_transform(s, 2 * s + 3).round(6).tolist()
        [[2.0, 0.0, 3.0], [0.0, 2.0, 3.0]]

    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0  # a rotation, never a reflection
    u, s, vt = np.linalg.svd(cov)
    rot = u @ np.diag(d) @ vt
    var = sc.var(axis=0).sum()
    scale = float(s @ d / var) if var > 0 else 1.0
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` by ``matrix`` (image -> output coordinates) into ``size`` pixels.

    Args:
        image: ``(H, W, 3)`` ``uint8``.
        matrix: ``(2, 3)`` forward affine map, pixel centres at integers.
        size: output ``(height, width)``.

    Returns:
        ``(height, width, 3)`` ``uint8``: bilinear, zero outside the image.

    """
    height, width = size
    inv = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    h, w = image.shape[:2]
    src = image.astype(np.float64)
    out = np.zeros((height, width, image.shape[2]), np.float64)
    for dy, dx, weight in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        values = src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        out += np.where(inside[..., None], values, 0.0) * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def five_points(parts: np.ndarray) -> np.ndarray:
    """Return the template's five points ``(5, 2)`` from dlib's 68 landmarks ``(68, 2)``."""
    parts = np.asarray(parts, np.float64)
    return np.stack(
        [parts[36:42].mean(axis=0), parts[42:48].mean(axis=0), parts[30], parts[48], parts[54]]
    )


def align_face(
    image: np.ndarray, points: np.ndarray, size: tuple[int, int] = (112, 112)
) -> np.ndarray:
    """Return the ``size`` crop that puts the five ``points`` on the ArcFace template.

    The template is for 112 x 112 and is scaled for other sizes.
    """
    template = np.asarray(ARCFACE_TEMPLATE, np.float64) * (np.array(size[::-1]) / 112.0)
    return warp_affine(image, similarity_transform(points, template), size)


@lru_cache(maxsize=4)
def _hash(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


def landmarks_sha256() -> str:
    """Return the SHA-256 of the 68-point landmark model (hashed once per process)."""
    from trainleak.encoders.face import model_dir

    path = model_dir() / LANDMARKS_68
    st = path.stat()
    return _hash(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=1)
def predictor_68() -> Any:
    """Return dlib's 68-point predictor, loaded once per process (2 s, 100 MB)."""
    import dlib

    from trainleak.encoders.face import model_dir

    return dlib.shape_predictor(str(Path(model_dir()) / LANDMARKS_68))


class FaceAligner:
    """Finds faces with the ``face`` encoder's detector and aligns them to the template.

    Models load on the first image, so a warm (all cached) run loads none.
    """

    def __init__(self, size: tuple[int, int] = (112, 112)) -> None:
        from trainleak.encoders.face import FaceEncoder

        self.size = size
        # The detection these models were versioned with: the face encoder's
        # cheap first pass (its version 3) moves boxes, and these encoders'
        # cache keys do not follow the face encoder's version.
        self._detector = FaceEncoder(flip=False, cheap_first=False)
        self._predictor: Any = None

    def landmarks(self, image: np.ndarray, box: Any) -> np.ndarray:
        """Return dlib's 68 landmarks ``(68, 2)`` of the face in ``box``."""
        if self._predictor is None:
            self._predictor = predictor_68()
        shape = self._predictor(image, box)
        return np.array([[p.x, p.y] for p in shape.parts()], np.float64)

    def align(self, image: np.ndarray, max_pixels: int, all_faces: bool) -> list[np.ndarray]:
        """Return aligned ``uint8`` crops, largest face first (only it unless ``all_faces``).

        Raises:
            EncodeSkip: no face found, or the image is too large to search.

        """
        image = np.ascontiguousarray(image)
        self._detector.max_pixels = max_pixels
        boxes = self._detector.detect(image)
        if not boxes:
            raise EncodeSkip("no face detected")
        if not all_faces:
            boxes = boxes[:1]
        return [align_face(image, five_points(self.landmarks(image, b)), self.size) for b in boxes]


def resize_aligned(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return an already aligned crop at ``size`` (bilinear when it is not that size)."""
    if image.shape[:2] == tuple(size):
        return np.ascontiguousarray(image)
    im = Image.fromarray(np.asarray(image, np.uint8))
    return np.asarray(im.resize((size[1], size[0]), Image.Resampling.BILINEAR))
