"""User-supplied embedding models: ``onnx:FILE`` and ``torchscript:FILE``.

Both take images that are already cropped and aligned the way the model
expects (no face detection or alignment happens here), resize the whole image
to ``size`` with bicubic resampling, scale RGB to [0, 1], normalise with
``mean``/``std``, reorder channels and layout, and run the model in batches.
Each output row (flattened per sample) is L2-normalised and compared by cosine.

Options:
    path: the model file (required; ``onnx:FILE`` sets it).
    size: input side in pixels, or ``[height, width]``.
    mean: per-channel mean subtracted from RGB in [0, 1] (in R, G, B order).
    std: per-channel divisor applied after ``mean`` (in R, G, B order).
    layout: ``"nchw"`` or ``"nhwc"`` input tensor.
    channels: ``"rgb"`` or ``"bgr"`` channel order fed to the model.
    batch_size: images per model call; does not change the vectors.
    flip: average the embeddings of the image and its horizontal mirror.
    output: index of the model output that holds the embedding.
    device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``; see
        :mod:`trainleak.encoders.devices`. Not part of the cache key: the
        vectors agree with the CPU's to about 1e-3 cosine or better.
    half: ``torchscript`` on a CUDA device only: run the model in float16
        (part of the cache key, since it changes the numbers).

Usual settings (the named encoders, :mod:`trainleak.encoders.named`, do this
and the face alignment for you: ``--encoder arcface``, ``adaface``, ``sscd``...):

* ArcFace (InsightFace ONNX, e.g. ``w600k_r50.onnx``): ``size=112,
  mean=[0.5]*3, std=[0.5]*3, channels="rgb"`` on 5-point-aligned crops
  (insightface swaps OpenCV's BGR to RGB before the model).
* AdaFace (IResNet exported to ONNX/TorchScript): ``size=112, mean=[0.5]*3,
  std=[0.5]*3, channels="bgr"``.
* SSCD copy detection (TorchScript ``sscd_disc_*.torchscript.pt``): ``size=320``
  (the README's square "skew_320"), ``mean=[0.485, 0.456, 0.406],
  std=[0.229, 0.224, 0.225]``, ``rgb``; this encoder resizes bicubically,
  SSCD's torchvision transform bilinearly.

The defaults (112, 0.5/0.5, RGB, NCHW) suit face backbones trained on RGB.

The fingerprint in the cache key (``weights_sha256``) covers every file the
model loads: for ONNX, the external-data files its tensors name (see
:mod:`trainleak.encoders.onnx_files`), which must lie inside the model's folder.

Loading never executes code from the file: ONNX goes through onnxruntime
(its CPU or CUDA execution provider), TorchScript through ``torch.jit.load`` (a
TorchScript archive is read by torch's own restricted loader, not by Python's
pickle); a pickled model is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from trainleak._optional import require
from trainleak.encoders import ENCODERS
from trainleak.encoders.base import (
    Encoder,
    EncoderInfo,
    EncodeSkip,
    file_sha256,
    l2_normalise,
    resolve_options,
)
from trainleak.encoders.devices import onnx_session, parse_device, torch_device
from trainleak.encoders.onnx_files import onnx_fingerprint

_DEFAULTS: dict[str, Any] = {
    "path": None,
    "size": 112,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "layout": "nchw",
    "channels": "rgb",
    "batch_size": 32,
    "flip": False,
    "output": 0,
    "device": "cpu",
}

# Options that change how or where work is done, not the vectors: kept out
# of the cache key so that another batch size or device reuses the cache.
_EXECUTION_ONLY = ("batch_size", "device")

_THRESHOLD_NOTE = (
    "placeholder operating point (cosine 0.5) for a user model trainleak knows nothing "
    "about: uncalibrated; pass a holdout set (--holdout) to set the threshold at a target "
    "false-positive rate"
)


def _side(size: Any) -> tuple[int, int]:
    """Return ``(height, width)`` from an int or a ``[height, width]`` pair."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be an int or [height, width], got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return hw


#: Longest side PIL's bicubic resize is given. Its filter table takes about
#: 32 bytes per input pixel of a side (3.2 GB for a 100,000,000 x 1 PNG of a few
#: kilobytes); a longer side is first box-reduced by a whole factor. No real
#: photograph comes near it, so their vectors are unchanged.
_MAX_RESIZE_SIDE = 1 << 20


def _bounded(im: Image.Image) -> Image.Image:
    fx, fy = (-(-side // _MAX_RESIZE_SIDE) for side in im.size)  # ceiling division
    return im.reduce((fx, fy)) if max(fx, fy) > 1 else im


def _check_options(kind: str, opts: dict[str, Any]) -> None:
    if not opts["path"]:
        raise ValueError(f"the {kind} encoder needs a model file: --encoder {kind}:FILE")
    _side(opts["size"])
    for key in ("mean", "std"):
        if not isinstance(opts[key], (list, tuple)) or len(opts[key]) != 3:
            raise ValueError(f"{key} needs three values (R, G, B), got {opts[key]!r}")
    if any(float(s) == 0 for s in opts["std"]):
        raise ValueError(f"std values must be non-zero, got {opts['std']!r}")
    if opts["layout"] not in ("nchw", "nhwc"):
        raise ValueError(f"layout must be 'nchw' or 'nhwc', got {opts['layout']!r}")
    if opts["channels"] not in ("rgb", "bgr"):
        raise ValueError(f"channels must be 'rgb' or 'bgr', got {opts['channels']!r}")
    if int(opts["batch_size"]) < 1:
        raise ValueError(f"batch_size must be at least 1, got {opts['batch_size']!r}")
    if int(opts["output"]) < 0:
        raise ValueError(f"output must be a non-negative index, got {opts['output']!r}")
    kind, _ = parse_device(opts["device"])
    if opts.get("half") and kind != "cuda":
        raise ValueError("half=true runs the model in float16 on a CUDA device: add device=cuda")


class _ModelEncoder(Encoder):
    """Shared preprocessing, batching and provenance; subclasses run the model."""

    defaults: ClassVar[dict[str, Any]] = _DEFAULTS
    kind: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        opts = resolve_options(self.kind, self.defaults, options)
        _check_options(self.kind, opts)
        opts["path"] = os.fspath(opts["path"])
        path = Path(opts["path"])
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {opts['path']}")
        self.opts = opts
        self.device = str(opts["device"])
        # Before loading: a model that names files outside its folder is refused unread.
        weights = self._fingerprint(path)
        self._provider = "cpu"
        self._load(path)
        height, width = _side(opts["size"])
        probe = self._run(self.preprocess([np.zeros((height, width, 3), np.uint8)]))
        self.info = EncoderInfo(
            name=self.kind,
            version=1,
            dim=int(self._rows(probe, 1).shape[1]),
            metric="cosine",
            default_threshold=0.5,
            threshold_note=_THRESHOLD_NOTE,
            options={k: v for k, v in opts.items() if k not in _EXECUTION_ONLY},
            weights_sha256=weights,
            paper="user-supplied model",
            execution={"device": self.device, "runtime": self._provider},
        )

    def _fingerprint(self, path: Path) -> str:
        """Return the SHA-256 of every file the model loads (here: the file itself)."""
        return file_sha256(path)

    def _load(self, path: Path) -> None:
        raise NotImplementedError

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a preprocessed batch; return the chosen output as numpy."""
        raise NotImplementedError

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch already in its input layout.

        Returns:
            ``(n, dim)`` float64 raw (unnormalised) rows, one per sample.

        """
        return self._rows(self._run(batch), len(batch))

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """Turn RGB ``uint8`` images ``(H, W, 3)`` into the model's float32 input batch.

        Returns:
            ``(n, 3, h, w)`` for ``nchw`` or ``(n, h, w, 3)`` for ``nhwc``.

        """
        height, width = _side(self.opts["size"])
        mean = np.asarray(self.opts["mean"], np.float32)
        std = np.asarray(self.opts["std"], np.float32)
        out = []
        for image in images:
            im = _bounded(Image.fromarray(np.asarray(image, np.uint8)).convert("RGB"))
            im = im.resize((width, height), Image.Resampling.BICUBIC)
            x = (np.asarray(im, np.float32) / np.float32(255.0) - mean) / std
            if self.opts["channels"] == "bgr":
                x = x[:, :, ::-1]
            out.append(x)
        batch = np.stack(out)
        if self.opts["layout"] == "nchw":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _embed(self, images: list[np.ndarray]) -> np.ndarray:
        """Return raw (unnormalised) ``(n, dim)`` float64 rows for one batch."""
        x = self.preprocess(images)
        y = self._rows(self._run(x), len(images))
        if self.opts["flip"]:
            width_axis = 3 if self.opts["layout"] == "nchw" else 2
            mirrored = np.ascontiguousarray(np.flip(x, axis=width_axis))
            y = 0.5 * (y + self._rows(self._run(mirrored), len(images)))
        return y

    def _rows(self, y: np.ndarray, n: int) -> np.ndarray:
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(
                f"{self.kind} model returned shape {tuple(y.shape)} for a batch of {n}; "
                "its output must keep the batch dimension first"
            )
        return y.reshape(n, -1).astype(np.float64)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Embed one image as a ``(1, dim)`` float32 unit row."""
        result = self.encode_batch([image])[0]
        if isinstance(result, EncodeSkip):
            raise result
        return result

    def encode_batch(self, images: list[np.ndarray]) -> list[np.ndarray | EncodeSkip]:
        """Embed images in model calls of ``batch_size``; one ``(1, dim)`` row each."""
        out: list[np.ndarray | EncodeSkip] = []
        step = int(self.opts["batch_size"])
        for start in range(0, len(images), step):
            for row in self._embed(images[start : start + step]):
                if np.all(np.isfinite(row)):
                    out.append(l2_normalise(row[None]))
                else:
                    out.append(EncodeSkip("model produced non-finite embedding"))
        return out


@ENCODERS.register("onnx")
class OnnxEncoder(_ModelEncoder):
    """An ONNX embedding model run by onnxruntime; see the module docstring.

    A model with a fixed batch dimension is fed in chunks of that size (the
    last one zero-padded); a model with fixed spatial dimensions must be given
    a matching ``size``.
    """

    kind: ClassVar[str] = "onnx"

    def _fingerprint(self, path: Path) -> str:
        """Cover the external-data files too: changed weights must change the cache key."""
        # The missing runtime is the first thing to say, before judging the file.
        require("onnxruntime", extra="onnx", needed_for="the onnx encoder")
        return onnx_fingerprint(path)

    def _load(self, path: Path) -> None:
        self._session, self._provider = onnx_session(path, self.device)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [(i.name, i.shape) for i in inputs]
            raise ValueError(f"{path}: expected one 4-d image input, the model has {shapes}")
        n_outputs = len(self._session.get_outputs())
        if int(self.opts["output"]) >= n_outputs:
            raise ValueError(
                f"output={self.opts['output']} but {path} has {n_outputs} output(s); "
                f"use an index below {n_outputs}"
            )
        self._input = inputs[0].name
        self._dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        shape = inputs[0].shape
        self._fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        spatial = shape[2:] if self.opts["layout"] == "nchw" else shape[1:3]
        want = _side(self.opts["size"])
        if all(isinstance(d, int) for d in spatial) and tuple(spatial) != want:
            raise ValueError(
                f"{path} takes {spatial[0]}x{spatial[1]} inputs (layout "
                f"{self.opts['layout']!r}) but size is {want[0]}x{want[1]}; "
                f"pass size={spatial[0] if spatial[0] == spatial[1] else list(spatial)}"
            )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(self._dtype, copy=False)
        chunk = self._fixed_batch or len(batch)
        parts = []
        for start in range(0, len(batch), chunk):
            part = batch[start : start + chunk]
            n = len(part)
            if n < chunk:
                pad = np.zeros((chunk - n, *part.shape[1:]), part.dtype)
                part = np.concatenate([part, pad])
            y = self._session.run(None, {self._input: part})[int(self.opts["output"])]
            parts.append(np.asarray(y)[:n])
        return np.concatenate(parts)


@ENCODERS.register("torchscript")
class TorchScriptEncoder(_ModelEncoder):
    """A TorchScript embedding model run by torch; see the module docstring."""

    defaults: ClassVar[dict[str, Any]] = {**_DEFAULTS, "half": False}
    kind: ClassVar[str] = "torchscript"

    def _load(self, path: Path) -> None:
        import torch

        self._device = torch_device(self.device)
        self._provider = f"torch {torch.__version__} {self._device}"
        try:
            module = torch.jit.load(str(path), map_location=self._device)
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError and others
            raise ValueError(
                f"{path} is not a TorchScript archive; export with torch.jit.script/trace and "
                "save, pickled models are not loaded"
                f" (torch said: {str(err).splitlines()[0] if str(err) else type(err).__name__})"
            ) from None
        self._module = module.eval()
        if self.opts["half"]:
            self._module = self._module.half()
        params = list(self._module.parameters())
        self._dtype = params[0].dtype if params else torch.float32

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self._device.type == "cuda":
                x = x.pin_memory().to(self._device, non_blocking=True)
            y = self._module(x.to(self._dtype))
        index = int(self.opts["output"])
        if isinstance(y, (tuple, list)):
            if index >= len(y):
                raise ValueError(
                    f"output={index} but the model returns {len(y)} output(s); "
                    f"use an index below {len(y)}"
                )
            y = y[index]
        elif index != 0:
            raise ValueError(f"output={index} but the model returns a single tensor; use output=0")
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"the model's output {index} is a {type(y).__name__}, not a tensor")
        return y.detach().float().cpu().numpy()
