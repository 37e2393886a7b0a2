"""dlib's face recognition ResNet, read from its own file and run by torch.

The ``dlib-bin`` wheel is built without BLAS: its convolutions run at about a
third of a second per 150 x 150 chip on one core here, two thirds of the
``face`` encoder's time (the descriptor and its mirror). torch runs the same
network, with the same weights, in a small fraction of that
(bench/bench_face_speed.py).

What is read (facts about dlib's serialisation format and the network it
stores, ``dlib_face_recognition_resnet_model_v1.dat``):

* integers: one byte giving the byte count (low four bits) and the sign (bit
  7), then that many little-endian bytes; floats of layer settings as such an
  integer mantissa and exponent; tensors as version 2, four dimensions, then
  raw little-endian float32.
* layers are stored from the input up, each led by its name: the input (mean
  red, green, blue, subtracted before dividing by 256), 29 ``con_``
  convolutions (weights ``(out, in, h, w)`` then biases; stride and padding
  stored), each followed by an ``affine_`` layer (batch norm folded into
  ``gamma``, ``beta`` per channel), pools, and the final ``fc_`` layer
  (``(256, 128)``, no bias).
* the network (King's ``dnn_face_recognition_ex``): a 7 x 7 / 2 convolution,
  ReLU, 3 x 3 / 2 max pool, residual units of two 3 x 3 convolutions with 32
  (x3), 64 (x4), 128 (x3), 256 (x3) and 256 (x1) filters, the first unit of
  each width after the first downsampling by a stride-2 convolution beside a
  2 x 2 average pool (the missing channels of the shortcut are zeros), a
  global average pool and the 128-d linear layer.

:func:`load` checks that the file holds exactly that (layer names, counts and
shapes) and raises otherwise; tests compare its descriptors with dlib's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: Filters of the residual units, input side first; ``True`` marks a downsampling unit.
UNITS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),) + ((64, False),) * 3
    + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2
    + ((256, True),)
)  # fmt: skip

_NAMES = re.compile(rb"(con_4|affine_|max_pool_2|avg_pool_2|fc_2|input_rgb_image_sized)")


@dataclass
class _Conv:
    weight: np.ndarray
    bias: np.ndarray
    stride: int
    padding: int


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        n = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        return float(mantissa * 2.0 ** self.int())

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"unsupported dlib tensor version {version}")
        shape = [self.int() for _ in range(4)]
        count = int(np.prod(shape))
        out = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos += 4 * count
        return out


def _parse(path: Path) -> dict[str, Any]:
    """Return the input means, the convolutions with their affine layers, and the fc weights."""
    data = path.read_bytes()
    found = [m for m in _NAMES.finditer(data) if data[m.start() - 1] == len(m.group())]
    kinds = [m.group().decode() for m in found]
    if kinds.count("con_4") != 29 or kinds.count("affine_") != 29 or kinds[-1] != "fc_2":
        raise ValueError(f"{path.name} is not the dlib face recognition ResNet this code reads")
    means: list[float] = []
    convs: list[_Conv] = []
    affines: list[tuple[np.ndarray, np.ndarray]] = []
    fc: np.ndarray = np.zeros((0, 0), np.float32)
    for m, kind in zip(found, kinds, strict=True):
        r = _Reader(data, m.end())
        if kind == "input_rgb_image_sized":
            means = [r.float() for _ in range(3)]
        elif kind == "con_4":
            params = r.tensor().ravel()
            out, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
            cin = (params.size - out) // (out * kh * kw)
            weight = params[: out * cin * kh * kw].reshape(out, cin, kh, kw)
            if sy != sx or py != px:
                raise ValueError("unexpected asymmetric convolution in the dlib network")
            convs.append(_Conv(weight, params[out * cin * kh * kw :], sy, py))
        elif kind == "affine_":
            params = r.tensor().ravel()
            half = params.size // 2
            affines.append((params[:half], params[half:]))
        elif kind == "fc_2":
            outputs, inputs = r.int(), r.int()
            fc = r.tensor().reshape(inputs, outputs)
    return {"means": means, "convs": convs, "affines": affines, "fc": fc}


@lru_cache(maxsize=2)
def load(path: str) -> Any:
    """Return the network of the dlib model file at ``path`` as a torch module (eval mode)."""
    import torch

    parts = _parse(Path(path))
    return _DlibResNet(parts).eval().requires_grad_(False).to(torch.float32)


def _module() -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    class ConvAffine(nn.Module):
        """A convolution and its affine layer, folded into one convolution."""

        def __init__(self, conv: _Conv, affine: tuple[np.ndarray, np.ndarray]) -> None:
            super().__init__()
            gamma, beta = (torch.from_numpy(np.array(a, np.float32)) for a in affine)
            w = torch.from_numpy(np.array(conv.weight, np.float32))
            b = torch.from_numpy(np.array(conv.bias, np.float32))
            size = (int(w.shape[2]), int(w.shape[3]))
            self.conv = nn.Conv2d(w.shape[1], w.shape[0], size, conv.stride, conv.padding)
            # dlib's affine layer (frozen batch norm) folded into the convolution.
            self.conv.weight = nn.Parameter(w * gamma[:, None, None, None])
            self.conv.bias = nn.Parameter(b * gamma + beta)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    class Unit(nn.Module):
        def __init__(self, a: ConvAffine, b: ConvAffine, down: bool) -> None:
            super().__init__()
            self.a, self.b, self.down = a, b, down

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.b(F.relu(self.a(x)))
            skip = F.avg_pool2d(x, 2, 2) if self.down else x
            # dlib adds tensors of different sizes over the larger one, zeros outside
            # the smaller (at 8 x 8 the stride-2 convolution gives 3 x 3, the pool 4 x 4).
            return F.relu(_pad_to(y, skip) + _pad_to(skip, y))

    class DlibResNet(nn.Module):
        def __init__(self, parts: dict[str, Any]) -> None:
            super().__init__()
            layers = [
                ConvAffine(c, a) for c, a in zip(parts["convs"], parts["affines"], strict=True)
            ]
            self.stem = layers[0]
            self.units = nn.ModuleList(
                Unit(layers[1 + 2 * j], layers[2 + 2 * j], down)
                for j, (_, down) in enumerate(UNITS)
            )
            self.means = nn.Parameter(torch.tensor(parts["means"]).view(1, 3, 1, 1))
            self.fc = nn.Parameter(torch.from_numpy(np.array(parts["fc"], np.float32)))

        def forward(self, chips: torch.Tensor) -> torch.Tensor:
            """``(n, 150, 150, 3)`` uint8 RGB chips -> ``(n, 128)`` descriptors."""
            x = (chips.permute(0, 3, 1, 2).float() - self.means) / 256.0
            x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
            for unit in self.units:
                x = unit(x)
            return x.mean(dim=(2, 3)) @ self.fc

    return DlibResNet


def _pad_to(x: Any, other: Any) -> Any:
    """Zero-pad ``x`` at the end of channels, rows and columns to at least ``other``'s size."""
    from torch.nn import functional as F  # noqa: N812

    grow = [max(0, other.shape[d] - x.shape[d]) for d in (3, 2, 1)]
    return F.pad(x, (0, grow[0], 0, grow[1], 0, grow[2])) if any(grow) else x


def _DlibResNet(parts: dict[str, Any]) -> Any:  # noqa: N802 - builds the class lazily (torch import)
    return _module()(parts)


def descriptors(net: Any, chips: list[np.ndarray]) -> np.ndarray:
    """Run ``net`` on ``(150, 150, 3)`` uint8 chips; return ``(n, 128)`` float64 descriptors."""
    import torch

    batch = torch.from_numpy(np.ascontiguousarray(np.stack(chips)))
    with torch.inference_mode():
        return net(batch).double().numpy()
