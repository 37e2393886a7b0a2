"""User-supplied embedding models: ``onnx:FILE`` and ``torchscript:FILE``.

Both resize the whole image (assumed already cropped/aligned as the model
expects) to ``size`` x ``size`` with bicubic resampling, scale to [0, 1],
normalise with ``mean``/``std`` and feed the model. Usual settings:

* ArcFace (InsightFace ONNX): ``size=112, mean=[0.5]*3, std=[0.5]*3,
  channels="bgr"`` on 5-point-aligned crops.
* AdaFace: ``size=112, mean=[0.5]*3, std=[0.5]*3, channels="bgr"``.
* SSCD copy detection (TorchScript): ``size=288`` (or 320),
  ``mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]``, ``rgb``.

Loading never executes code from the file: ONNX goes through onnxruntime,
TorchScript through ``torch.jit.load`` (a TorchScript archive, not a pickle);
a pickled model is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainleak.encoders import ENCODERS
from trainleak.encoders.base import (
    Encoder,
    EncoderInfo,
    EncodeSkip,
    file_sha256,
    l2_normalise,
    resolve_options,
)

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
}


class _ModelEncoder(Encoder):
    """Shared preprocessing and batching; subclasses run the model."""

    defaults = _DEFAULTS
    kind = ""

    def __init__(self, **options: Any) -> None:
        opts = resolve_options(self.kind, self.defaults, options)
        if not opts["path"]:
            raise ValueError(
                f"the {self.kind} encoder needs a model file: --encoder {self.kind}:FILE"
            )
        path = Path(os.fspath(opts["path"]))
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        if opts["layout"] not in ("nchw", "nhwc") or opts["channels"] not in ("rgb", "bgr"):
            raise ValueError("layout must be 'nchw' or 'nhwc'; channels must be 'rgb' or 'bgr'")
        opts["path"] = str(opts["path"])
        self.opts = opts
        self._load(path)
        probe = self._run(self.preprocess([np.zeros((8, 8, 3), np.uint8)]))
        self.info = EncoderInfo(
            name=self.kind,
            version=1,
            dim=int(probe.shape[1]),
            metric="cosine",
            default_threshold=0.5,
            threshold_note=(
                "placeholder operating point (cosine 0.5) for a user model trainleak knows "
                "nothing about: uncalibrated - pass --holdout to calibrate"
            ),
            options=opts,
            weights_sha256=file_sha256(path),
            paper="user-supplied model",
        )

    def _load(self, path: Path) -> None:
        raise NotImplementedError

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """Images -> the model's float32 input batch."""
        size = self.opts["size"]
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mean = np.asarray(self.opts["mean"], np.float32)
        std = np.asarray(self.opts["std"], np.float32)
        out = []
        for image in images:
            im = Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC)
            x = (np.asarray(im, np.float32) / 255.0 - mean) / std
            if self.opts["channels"] == "bgr":
                x = x[:, :, ::-1]
            out.append(x)
        batch = np.stack(out).astype(np.float32)
        if self.opts["layout"] == "nchw":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch)

    def _embed(self, images: list[np.ndarray]) -> np.ndarray:
        x = self.preprocess(images)
        y = self._run(x).reshape(len(images), -1).astype(np.float64)
        if self.opts["flip"]:
            axis = 3 if self.opts["layout"] == "nchw" else 2
            y = y + self._run(np.ascontiguousarray(np.flip(x, axis))).reshape(len(images), -1)
        return y

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Return one ``(1, dim)`` unit row."""
        result = self.encode_batch([image])[0]
        if isinstance(result, EncodeSkip):
            raise result
        return result

    def encode_batch(self, images: list[np.ndarray]) -> list[np.ndarray | EncodeSkip]:
        """Run the model on real batches of ``batch_size`` images."""
        out: list[np.ndarray | EncodeSkip] = []
        step = int(self.opts["batch_size"])
        for start in range(0, len(images), step):
            y = self._embed(images[start : start + step])
            for row in y:
                if np.all(np.isfinite(row)):
                    out.append(l2_normalise(row[None]))
                else:
                    out.append(EncodeSkip("model produced a non-finite embedding"))
        return out


@ENCODERS.register("onnx")
class OnnxEncoder(_ModelEncoder):
    """An ONNX embedding model run with onnxruntime on the CPU."""

    kind = "onnx"

    def _load(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(
                "the onnx encoder needs onnxruntime: pip install 'trainleak[onnx]'"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
            raise ValueError(f"{path} is not a loadable ONNX model: {err}") from None
        self._input = self._session.get_inputs()[0].name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        outputs = self._session.run(None, {self._input: batch})
        return np.asarray(outputs[int(self.opts["output"])])


@ENCODERS.register("torchscript")
class TorchScriptEncoder(_ModelEncoder):
    """A TorchScript embedding model run with torch on the CPU."""

    kind = "torchscript"

    def _load(self, path: Path) -> None:
        import torch

        try:
            self._module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception:  # noqa: BLE001 - torch raises RuntimeError and others
            raise ValueError(
                f"{path} is not a TorchScript archive; export the model with "
                "torch.jit.script/trace and .save() - pickled models are not loaded"
            ) from None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            y = self._module(torch.from_numpy(batch))
        if isinstance(y, (tuple, list)):
            y = y[int(self.opts["output"])]
        return y.detach().cpu().numpy()
