"""Small networks: the inverse network every learned inversion uses, and a reference CNN.

:class:`InverseNet` maps features of shape ``in_shape`` back to a tensor of
shape ``out_shape``. Its layout is ours (the papers leave it open): a 3x3
convolution to ``width`` channels (a linear layer onto a quarter-resolution
grid when the features are a vector), then stages of bilinear 2x upsampling
+ 3x3 convolution + ReLU until the output grid is reached, a resize to the
exact output size, and a final 3x3 convolution. No batch norm, so that an
inverse net behaves the same on one image as on a batch.

:func:`small_resnet` is the ResNet-style classifier with batch norm of the
ORL experiment and the tests; the CLI can load it as
``python:trainleak.audits.inversion.nets:small_resnet``.
:func:`resnet18_like` is the deeper one of the depth experiment (ResNet-18's
layout of four stages of two residual units, narrower);
``python:trainleak.audits.inversion.nets:resnet18_like``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class InverseNet(nn.Module):
    """Learned inverse from ``in_shape = (C, h, w)`` or ``(d,)`` to ``out_shape = (C', H, W)``.

    Example:
        >>> net = InverseNet((8, 4, 4), (1, 16, 12))
        >>> net(torch.zeros(2, 8, 4, 4)).shape
        torch.Size([2, 1, 16, 12])
        >>> InverseNet((10,), (3, 8, 8))(torch.zeros(1, 10)).shape
        torch.Size([1, 3, 8, 8])

    """

    def __init__(
        self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], width: int = 64
    ) -> None:
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        c_out, height, width_out = out_shape
        if len(in_shape) == 1 or (len(in_shape) == 3 and in_shape[1] * in_shape[2] == 1):
            grid = (max(1, math.ceil(height / 4)), max(1, math.ceil(width_out / 4)))
            self.head: nn.Module = nn.Linear(int(math.prod(in_shape)), width * grid[0] * grid[1])
            self.grid: tuple[int, int] | None = grid
            start = grid[0]
        else:
            self.head = nn.Conv2d(in_shape[0], width, 3, padding=1)
            self.grid = None
            start = in_shape[1]
        stages: list[nn.Module] = []
        side = start
        while side * 2 <= height or (side < height and not stages):
            stages.append(nn.Conv2d(width, width, 3, padding=1))
            side *= 2
        self.ups = nn.ModuleList(stages)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.tail = nn.Conv2d(width, c_out, 3, padding=1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Return the estimate of the input ``(n, *out_shape)``."""
        n = y.shape[0]
        if self.grid is not None:
            z = self.head(y.reshape(n, -1)).reshape(n, -1, *self.grid)
        else:
            z = self.head(y)
        z = F.relu(z)
        for conv in self.ups:
            z = F.relu(conv(F.interpolate(z, scale_factor=2.0, mode="bilinear")))
        z = F.interpolate(z, size=self.out_shape[1:], mode="bilinear")
        return self.tail(F.relu(self.mid(z)))


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch norm, with an identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual unit."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem + three stages of two residual units (widths ``w, 2w, 4w``) + linear head.

    Split points, with their depth in conv/linear layers: ``stem`` 1,
    ``layer1`` 5, ``layer2`` 10, ``layer3`` 15, ``fc`` 16.
    """

    def __init__(self, classes: int = 40, channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(
            BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width)
        )
        self.layer3 = nn.Sequential(
            BasicBlock(2 * width, 4 * width, 2), BasicBlock(4 * width, 4 * width)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(n, classes)``."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def small_resnet(classes: int = 40, channels: int = 1, width: int = 16) -> SmallResNet:
    """Build an untrained :class:`SmallResNet` (a ``python:module:factory`` target).

    Example:
        >>> small_resnet(classes=3)(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 3])

    """
    return SmallResNet(classes, channels, width)


class ResNet18Like(nn.Module):
    """ResNet-18's layout, narrow and for small grey images: 21 conv/linear layers.

    A 3x3 stem convolution with stride 2 (in place of ResNet-18's 7x7
    stride-2 convolution and max pooling, which would leave 2x2 maps of a
    64x64 input), four stages of two residual units of widths ``w, 2w, 4w,
    8w`` (the last three halve the resolution), global average pooling and a
    linear head. A 64x64 input gives 32, 16, 8 and 4 pixel maps.

    Split points, with their depth in conv/linear layers (1x1 shortcut
    projections included): ``stem`` 1, ``layer1`` 5, ``layer2`` 10,
    ``layer3`` 15, ``layer4`` 20 (the last before global pooling), ``fc`` 21.
    """

    def __init__(self, classes: int = 40, channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        widths = [width, 2 * width, 4 * width, 8 * width]
        stages, c_in = [], width
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(n, classes)``."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18_like(classes: int = 40, channels: int = 1, width: int = 16) -> ResNet18Like:
    """Build an untrained :class:`ResNet18Like` (a ``python:module:factory`` target).

    Example:
        >>> net = resnet18_like(classes=3, width=4)
        >>> net(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 3])
        >>> sum(m.weight.ndim >= 2 for m in net.modules() if hasattr(m, "weight")
        ...     and isinstance(m, (nn.Conv2d, nn.Linear)))
        21

    """
    return ResNet18Like(classes, channels, width)
