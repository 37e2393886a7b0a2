"""``optimize``: gradient descent on the input until its features match (DeepInversion style).

The loss per image is the feature mismatch relative to the features' energy,
``|f(x) - y|^2 / |y|^2``, plus two image priors:

* total variation: mean squared difference of neighbouring pixels;
* batch-norm statistics (Yin et al. 2020, DeepInversion): for every
  batch-norm layer before the split, the distance between the channel means
  and variances of its input and the running statistics stored in the layer.

Choices that are ours: the statistics are taken per image over its pixels
(not over the batch), so every image is inverted independently and a batch
gives the same result as one image at a time; the loss is summed over images
so the batch size does not change the step size; the image is clamped to
[0, 1] after every Adam step, starts as grey 0.5 plus seeded noise of std
0.1 (the same noise for every image, so batching never changes a
result), and the learning rate follows a cosine schedule to zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from trainleak.audits.inversion.split import SplitModel


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared difference of horizontal and vertical neighbours ``(n,)``.

    Example:
        >>> float(total_variation(torch.zeros(1, 1, 4, 4))[0])
        0.0

    """
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).mean(dim=(1, 2, 3))
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).mean(dim=(1, 2, 3))
    return dh + dw


class BNPrior:
    """Collects the inputs of batch-norm layers during a forward pass.

    Use as a context manager around the forward; :meth:`loss` then returns
    the per-image distance to the running statistics, ``(n,)``.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        self.inputs: list[tuple[nn.Module, torch.Tensor]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> BNPrior:
        self.inputs = []
        for layer in self.layers:
            self._handles.append(
                layer.register_forward_pre_hook(lambda m, i: self.inputs.append((m, i[0])))
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def loss(self, n: int, device: torch.device) -> torch.Tensor:
        """Sum over layers of ``|mean - running_mean| + |var - running_var|`` per image."""
        total = torch.zeros(n, device=device)
        for layer, a in self.inputs:
            dims = tuple(range(2, a.ndim))
            mu = a.mean(dim=dims) if dims else a
            var = a.var(dim=dims, unbiased=False) if dims else torch.zeros_like(a)
            rm, rv = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
            if rm is None or rv is None:
                continue
            total = total + (mu - rm).norm(dim=1) + (var - rv).norm(dim=1)
        return total


def feature_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image relative squared error ``|pred - target|^2 / |target|^2`` ``(n,)``."""
    n = pred.shape[0]
    err = (pred - target).reshape(n, -1).pow(2).sum(1)
    return err / (target.reshape(n, -1).pow(2).sum(1) + 1e-8)


def descend(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    steps: int,
    lr: float,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[torch.Tensor, list[float]]:
    """Minimise ``loss_fn(x).sum()`` over ``x`` with Adam; return ``x`` and the mean-loss history.

    Example:
        >>> x, hist = descend(lambda x: (x - 0.3).pow(2).sum(1), torch.zeros(2, 3), 50, 0.1)
        >>> hist[-1] < hist[0]
        True

    """
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    history = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        opt.zero_grad()
        loss = loss_fn(x)
        loss.sum().backward()
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                x.clamp_(*bounds)
        history.append(float(loss.detach().mean()))
    return x.detach(), history


class OptimizeInverter:
    """Invert features by optimising the input (an estimator; ``fit`` needs no data).

    Args:
        steps: Adam steps per batch of features.
        lr: peak learning rate (pixels are in [0, 1]).
        tv_weight: weight of the total-variation prior.
        bn_weight: weight of the batch-norm-statistics prior.
        seed: seeds the starting noise.

    Attributes:
        loss_history_: mean loss per step of the last :meth:`reconstruct`.

    Example:
        >>> from trainleak.audits.inversion.nets import small_resnet
        >>> sm = SplitModel(small_resnet().eval(), "stem", (1, 12, 12))
        >>> x = torch.rand(2, 1, 12, 12)
        >>> inv = OptimizeInverter(steps=30).fit(sm)
        >>> inv.reconstruct(sm.device(x)).shape, inv.loss_history_[-1] < inv.loss_history_[0]
        (torch.Size([2, 1, 12, 12]), True)

    """

    name = "optimize"
    higher_is_better = True

    def __init__(
        self,
        steps: int = 300,
        lr: float = 0.05,
        tv_weight: float = 0.5,
        bn_weight: float = 0.002,
        seed: int = 0,
    ) -> None:
        self.steps, self.lr, self.tv_weight, self.bn_weight, self.seed = (
            steps,
            lr,
            tv_weight,
            bn_weight,
            seed,
        )

    def fit(self, split: SplitModel, aux: torch.Tensor | None = None) -> OptimizeInverter:
        """Remember the device part; the method uses no data (``aux`` is ignored)."""
        self.split_ = split
        self.loss_history_: list[float] = []
        return self

    def start(self, n: int) -> torch.Tensor:
        """Return the seeded starting images ``(n, C, H, W)``, the same noise for every image."""
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(1, *self.split_.input_shape, generator=g).to(self.split_.torch_device)
        return (0.5 + 0.1 * noise).clamp(0, 1).expand(n, -1, -1, -1).clone()

    def reconstruct(
        self, features: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return pixel images ``(n, C, H, W)`` in [0, 1] whose features match ``features``."""
        split = self.split_
        prior = BNPrior(split.bn_layers)
        target = features.detach()

        def loss_fn(x: torch.Tensor) -> torch.Tensor:
            with prior:
                pred = split.device(x)
            loss = feature_loss(pred, target) + self.tv_weight * total_variation(x)
            if self.bn_weight and split.bn_layers:
                loss = loss + self.bn_weight * prior.loss(len(x), x.device)
            return loss

        x0 = self.start(len(features)) if start is None else start
        x, self.loss_history_ = descend(loss_fn, x0, self.steps, self.lr)
        return x

    def prior_images(self, x: torch.Tensor) -> torch.Tensor:
        """Nudge images towards the priors alone (no features to match); used to synthesise."""
        split = self.split_
        prior = BNPrior(split.bn_layers)

        def loss_fn(v: torch.Tensor) -> torch.Tensor:
            with prior:
                split.device(v)
            return self.tv_weight * total_variation(v) + self.bn_weight * prior.loss(
                len(v), v.device
            )

        return descend(loss_fn, x, self.steps, self.lr)[0]

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """PSNR (dB) of each image's reconstruction from its own features; higher leaks more."""
        from trainleak.audits.inversion.metrics import psnr

        with torch.no_grad():
            feats = self.split_.device(images)
        return torch.as_tensor(psnr(images, self.reconstruct(feats)))
