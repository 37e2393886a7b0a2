"""Stand-ins of the named models' architectures, at their real sizes, with random weights.

Real weights are not available here (and are not needed to time a network):
these are the published architectures written out in torch, exported to ONNX
or TorchScript by the benchmarks. Where the architecture is not exactly the
published one, the docstring says how it differs.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class IBasicBlock(nn.Module):
    """insightface arcface_torch ``IBasicBlock``: BN-conv-BN-PReLU-conv-BN + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


class IResNet(nn.Module):
    """insightface IResNet (ArcFace ``w600k_r50``: layers 3-4-14-3; IR-100/101: 3-13-30-3).

    112 x 112 input, 512-d output (BN - dropout - flatten - FC - BN1d head).
    """

    def __init__(self, layers: tuple[int, int, int, int], dim: int = 512) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 64, 3, 1)
        blocks: list[nn.Module] = []
        cin = 64
        for cout, n in zip((64, 128, 256, 512), layers, strict=True):
            for i in range(n):
                blocks.append(IBasicBlock(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(512), nn.Flatten(), nn.Linear(512 * 7 * 7, dim), nn.BatchNorm1d(dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            _conv_bn(cin, mid, 1, 1),
            _conv_bn(mid, mid, 3, stride, groups=mid),
            _conv_bn(mid, cout, 1, 1, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """MobileFaceNet (Chen et al. 2018), 112 x 112 -> 128-d, about 1.0M parameters.

    OpenCV's SFace file is described as a MobileFaceNet, but at 38.7 MB it
    holds about 9.7M float32 parameters: its exact layer widths are not known
    here, so this stand-in may be faster than the published model.
    """

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 64, 3, 2), _conv_bn(64, 64, 3, 1, groups=64)]
        cin = 64
        for expand, cout, n, stride in (
            (2, 64, 5, 2),
            (4, 128, 1, 2),
            (2, 128, 6, 1),
            (4, 128, 1, 2),
            (2, 128, 2, 1),
        ):
            for i in range(n):
                layers.append(_Bottleneck(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [
            _conv_bn(128, 512, 1, 1),
            nn.Conv2d(512, 512, 7, 1, 0, groups=512, bias=False),  # global depthwise conv
            nn.BatchNorm2d(512),
            nn.Conv2d(512, dim, 1, bias=False),
            nn.Flatten(),
            nn.BatchNorm1d(dim),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _ResBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class ResNet50GeM(nn.Module):
    """SSCD's ResNet-50 trunk, GeM pooling (p=3), linear 2048 -> 512, L2 normalisation."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        ]
        cin = 64
        for mid, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                layers.append(_ResBottleneck(cin, mid, stride if i == 0 else 1))
                cin = mid * 4
        self.trunk = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.trunk(x).clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1.0 / 3)
        y = self.fc(y)
        return y / y.norm(dim=1, keepdim=True)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.g1 = nn.Parameter(torch.full((dim,), 1e-5))  # LayerScale
        self.g2 = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.n1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.g1 * self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.g2 * self.mlp(self.n2(x))


class ViTS14(nn.Module):
    """DINOv2 ViT-S/14: 224 x 224 -> 256 patches + CLS, 12 blocks of width 384, CLS out."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 14, 14)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 257, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.norm(self.blocks(t))[:, 0]


#: name -> (builder, input side, what it stands in for)
ARCHS = {
    "arcface": (lambda: IResNet((3, 4, 14, 3)), 112, "IResNet-50 (w600k_r50)"),
    "adaface": (lambda: IResNet((3, 13, 30, 3)), 112, "IResNet-100 (AdaFace IR-101)"),
    "sface": (MobileFaceNet, 112, "MobileFaceNet, 128-d (SFace; see its docstring)"),
    "sscd": (ResNet50GeM, 320, "ResNet-50 + GeM, 320x320 (sscd_disc_mixup)"),
    "dinov2-s14": (ViTS14, 224, "ViT-S/14, 224x224 (DINOv2 dinov2_vits14)"),
}


def build(name: str) -> nn.Module:
    """Return the stand-in for ``name`` in eval mode, seeded."""
    torch.manual_seed(0)
    return ARCHS[name][0]().eval()


def params(net: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in net.parameters())
