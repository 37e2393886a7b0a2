"""A generator trained from a network's batch-norm statistics (no real data).

Dong et al. 2021/2022 synthesise the inputs on which divide-and-conquer
inversion trains its block inverses with a generator fitted, without any
real image, so that the device part's batch-norm layers see batches whose
statistics match the running mean and variance they stored during training
(the DeepInversion idea of Yin et al. 2020, applied to a generator as in
data-free knowledge distillation). :class:`BNGenerator` is that step.

The papers do not fix what follows; these are our choices, each a setting:

* **Architecture** (ours): noise ``z`` of ``z_dim`` values, a linear layer
  onto ``4 * width`` channels at 1/8 of the input's height and width, three
  stages of bilinear 2x upsampling + 3x3 convolution + batch norm + leaky
  ReLU (``4w -> 2w -> w``), a resize to the exact input size, a 3x3
  convolution to the input's channels and a sigmoid (pixels in [0, 1]).
* **Batch-norm loss** (``bn_weight``): for every batch-norm layer of the
  device part, ``|mean - running_mean|_2 + |var - running_var|_2`` of its
  input, taken over the batch and the pixels (DeepInversion's form), summed
  over layers. The classifier stays in eval mode, so its statistics never
  change.
* **Class terms** (DAFL-style; they need the whole classifier, which an
  attacker of a split model may not have, so they can be switched off with
  weight 0): ``entropy_weight`` times the mean entropy of each sample's
  softmax (low: samples the classifier is sure of) minus
  ``diversity_weight`` times the entropy of the batch's mean softmax (high:
  every class is produced).
* **Image prior** (``tv_weight``): total variation of the samples.
* **Training**: ``steps`` Adam steps (lr ``lr``, betas 0.5/0.999) on
  batches of ``batch_size`` fresh noise vectors; the generator's own batch
  norm runs in training mode throughout, sampling included (batches of
  ``batch_size``), so samples come from the distribution it was fitted on.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from trainleak.audits.inversion.optimize import total_variation
from trainleak.audits.inversion.split import SplitModel


class _Net(nn.Module):
    def __init__(self, shape: tuple[int, int, int], z_dim: int, width: int) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.grid = (max(1, -(-h // 8)), max(1, -(-w // 8)))
        self.head = nn.Linear(z_dim, 4 * width * self.grid[0] * self.grid[1])
        self.head_bn = nn.BatchNorm2d(4 * width)
        chans = [4 * width, 2 * width, width, width]
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.LeakyReLU(0.2))
            for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.tail = nn.Conv2d(width, c, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.head(z).reshape(len(z), -1, *self.grid)
        x = F.leaky_relu(self.head_bn(x), 0.2)
        for up in self.ups:
            x = up(F.interpolate(x, scale_factor=2.0, mode="bilinear"))
        x = F.interpolate(x, size=self.shape[1:], mode="bilinear")
        return torch.sigmoid(self.tail(x))


def batch_bn_loss(inputs: list[tuple[nn.Module, torch.Tensor]]) -> torch.Tensor:
    """DeepInversion's batch-norm loss over a batch: statistics over batch and pixels.

    Args:
        inputs: ``(batch-norm layer, its input)`` pairs, inputs ``(n, C, ...)``.

    Example:
        >>> bn = nn.BatchNorm2d(2).eval()
        >>> float(batch_bn_loss([(bn, torch.randn(4096, 2, 1, 1))])) < 0.1
        True

    """
    total = torch.zeros((), device=inputs[0][1].device if inputs else None)
    for layer, a in inputs:
        dims = (0, *range(2, a.ndim))
        mu, var = a.mean(dim=dims), a.var(dim=dims, unbiased=False)
        rm, rv = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
        if rm is None or rv is None:
            continue
        total = total + (mu - rm).norm() + (var - rv).norm()
    return total


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-8))).sum(-1)


class BNGenerator:
    """Generator of inputs fitted to a device part's batch-norm statistics.

    Args:
        steps: Adam steps.
        batch_size: noise vectors per step (and per sampling batch).
        lr: Adam learning rate.
        z_dim: noise dimension.
        width: channels of the generator's last stage.
        bn_weight: weight of the batch-norm loss.
        entropy_weight: weight of the per-sample class entropy (0: no class term).
        diversity_weight: weight of the batch's class entropy, maximised.
        tv_weight: weight of the total-variation prior.
        seed: seeds initialisation and noise.

    Attributes:
        loss_history_: total loss per step.
        bn_history_: batch-norm loss per step (unweighted).

    Example:
        >>> from trainleak.audits.inversion.nets import small_resnet
        >>> sm = SplitModel(small_resnet().eval(), "layer1", (1, 16, 16))
        >>> gen = BNGenerator(steps=20, batch_size=8, width=8).fit(sm)
        >>> x = gen.sample(10)
        >>> tuple(x.shape), bool(x.min() >= 0), bool(x.max() <= 1)
        ((10, 1, 16, 16), True, True)

    """

    def __init__(
        self,
        steps: int = 300,
        batch_size: int = 64,
        lr: float = 1e-3,
        z_dim: int = 64,
        width: int = 16,
        bn_weight: float = 1.0,
        entropy_weight: float = 0.5,
        diversity_weight: float = 1.0,
        tv_weight: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.steps, self.batch_size, self.lr, self.z_dim = steps, batch_size, lr, z_dim
        self.width, self.bn_weight, self.entropy_weight = width, bn_weight, entropy_weight
        self.diversity_weight, self.tv_weight, self.seed = diversity_weight, tv_weight, seed

    def fit(self, split: SplitModel) -> BNGenerator:
        """Train the generator against ``split``'s batch-norm layers (and classifier)."""
        from trainleak.audits.inversion.optimize import BNPrior

        if not split.bn_layers:
            raise ValueError(
                f"split {split.split!r} has no batch-norm layer before it: a generator cannot be "
                "fitted to batch-norm statistics; use --dci-inputs noise"
            )
        torch.manual_seed(self.seed)
        self.net_ = _Net(split.input_shape, self.z_dim, self.width).to(split.torch_device).train()
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr, betas=(0.5, 0.999))
        g = torch.Generator().manual_seed(self.seed)
        prior = BNPrior(split.bn_layers)
        use_classes = bool(self.entropy_weight or self.diversity_weight)
        self.loss_history_: list[float] = []
        self.bn_history_: list[float] = []
        for _ in range(self.steps):
            z = torch.randn(self.batch_size, self.z_dim, generator=g).to(split.torch_device)
            x = self.net_(z)
            with prior:
                out = split.logits(x) if use_classes else split.device(x)
            bn = batch_bn_loss(prior.inputs)
            loss = self.bn_weight * bn + self.tv_weight * total_variation(x).mean()
            if use_classes:
                p = F.softmax(out, dim=1)
                loss = loss + self.entropy_weight * _entropy(p).mean()
                loss = loss - self.diversity_weight * _entropy(p.mean(0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.loss_history_.append(float(loss.detach()))
            self.bn_history_.append(float(bn.detach()))
        return self

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """Draw ``n`` inputs ``(n, C, H, W)`` in [0, 1] (batches of ``batch_size``)."""
        g = torch.Generator().manual_seed(self.seed + 1 if seed is None else seed)
        device = next(self.net_.parameters()).device
        out = []
        with torch.no_grad():
            for start in range(0, n, self.batch_size):
                m = min(self.batch_size, n - start)
                z = torch.randn(max(m, 2), self.z_dim, generator=g).to(device)
                out.append(self.net_(z)[:m])
        return torch.cat(out)
