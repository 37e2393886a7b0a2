"""``dci``: data-free divide-and-conquer inversion (after Dong et al. 2021/2022).

The device part is divided into shallow blocks at module boundaries; each
block is inverted from the split back to the input, then the whole estimate
is refined end to end. No real image is used at any point.

How the open choices are made here:

* **Blocks.** The device part's module chain (see
  :class:`~trainleak.audits.inversion.split.SplitModel`) is cut before every
  module that holds a convolution or linear layer; parameter-free modules
  (activation, pooling) and batch norm join the block before them. A
  residual unit whose forward is not a chain stays one block. When the
  device part is not a chain at all, it is one block.
* **Synthesised inputs.** Each block's inverse is trained on ``synth``
  inputs made without real data, pushed through the known blocks to give
  every block's input and output. ``inputs="generator"`` (the paper's
  way): samples of a :class:`~trainleak.audits.inversion.generator.BNGenerator`
  fitted for ``gen_steps`` steps (batches of ``gen_batch``) to the device
  part's batch-norm statistics, with the classifier's class terms when
  ``gen_class_terms`` (that module's docstring lists its open choices).
  ``inputs="noise"`` (ours, cheaper): multi-scale random images (noise at
  2-16 px scales, random brightness and contrast). Either may then be
  nudged for ``synth_steps`` steps towards the batch-norm statistics and
  smoothness, image by image.
* **Block inverses.** ``block_solver="net"``: a small
  :class:`~trainleak.audits.inversion.nets.InverseNet` per block, trained
  with a reconstruction loss on the synthesised inputs plus a cycle
  consistency loss (the estimate fed back through the block must give the
  block's output again), weighted ``cycle_weight``. ``block_solver=
  "optimize"``: no network, the block's input starts at zero.
* **Inversion.** From the split back to the input, each block's estimate
  is refined for ``block_steps`` Adam steps so that the block maps it onto
  the target (cycle consistency at inference time); the image block also
  gets the total-variation and batch-norm priors.
* **Refinement.** ``steps`` steps of the ``optimize`` method on the whole
  device part, started from the block-wise estimate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from trainleak.audits.inversion.generator import BNGenerator
from trainleak.audits.inversion.nets import InverseNet
from trainleak.audits.inversion.optimize import (
    BNPrior,
    OptimizeInverter,
    descend,
    feature_loss,
    total_variation,
)
from trainleak.audits.inversion.split import SplitModel, _is_layer, _run_chain

log = logging.getLogger(__name__)

Block = list[tuple[str, nn.Module]]


def make_blocks(chain: Block) -> list[Block]:
    """Cut a module chain before each module holding a conv or linear layer.

    Example:
        >>> chain = [("c", nn.Conv2d(1, 2, 3)), ("r", nn.ReLU()), ("d", nn.Conv2d(2, 2, 3))]
        >>> [[n for n, _ in b] for b in make_blocks(chain)]
        [['c', 'r'], ['d']]

    """
    blocks: list[Block] = []
    for name, module in chain:
        has_layer = any(_is_layer(m) for m in module.modules())
        if has_layer or not blocks:
            blocks.append([])
        blocks[-1].append((name, module))
    return blocks


def synthesise(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Multi-scale random images ``(n, *shape)`` in [0, 1] (no real data).

    Example:
        >>> x = synthesise(3, (1, 20, 16), 0)
        >>> tuple(x.shape), bool(x.min() >= 0), bool(x.max() <= 1)
        ((3, 1, 20, 16), True, True)

    """
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    x = torch.zeros(n, c, h, w)
    for scale in (2, 4, 8, 16):
        coarse = torch.randn(n, c, max(1, h // scale), max(1, w // scale), generator=g)
        weight = torch.rand(n, 1, 1, 1, generator=g)
        x = x + weight * F.interpolate(coarse, size=(h, w), mode="bilinear")
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
    contrast = 0.1 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    brightness = 0.25 + 0.5 * torch.rand(n, 1, 1, 1, generator=g)
    return (brightness + contrast * x).clamp(0, 1)


def _rel_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).mean() / (target.pow(2).mean() + 1e-8)


class DCIInverter:
    """Divide-and-conquer inversion without data; see the module docstring for choices.

    Attributes:
        blocks_: the block names, input side first.
        loss_history_: losses of the last call, in order: every block
            inverse's training (``fit``), or the end-to-end refinement
            (``reconstruct``).
        block_histories_: ``fit``'s training loss per block.

    Example:
        >>> from trainleak.audits.inversion.nets import small_resnet
        >>> sm = SplitModel(small_resnet().eval(), "layer1", (1, 12, 12))
        >>> inv = DCIInverter(synth=16, train_steps=5, block_steps=5, steps=5, width=8).fit(sm)
        >>> [len(b) for b in inv.blocks_]
        [3, 1, 1]
        >>> inv.reconstruct(sm.device(torch.rand(2, 1, 12, 12))).shape
        torch.Size([2, 1, 12, 12])

    """

    name = "dci"
    higher_is_better = True

    def __init__(
        self,
        block_solver: Literal["net", "optimize"] = "net",
        synth: int = 256,
        synth_steps: int = 0,
        train_steps: int = 300,
        block_steps: int = 100,
        steps: int = 300,
        lr: float = 0.05,
        tv_weight: float = 0.5,
        bn_weight: float = 0.002,
        cycle_weight: float = 1.0,
        width: int = 32,
        seed: int = 0,
        inputs: Literal["noise", "generator"] = "noise",
        gen_steps: int = 300,
        gen_batch: int = 64,
        gen_class_terms: bool = True,
    ) -> None:
        self.inputs, self.gen_steps, self.gen_batch = inputs, gen_steps, gen_batch
        self.gen_class_terms = gen_class_terms
        self.block_solver, self.synth, self.synth_steps = block_solver, synth, synth_steps
        self.train_steps, self.block_steps, self.steps = train_steps, block_steps, steps
        self.lr, self.tv_weight, self.bn_weight = lr, tv_weight, bn_weight
        self.cycle_weight, self.width, self.seed = cycle_weight, width, seed

    def _refiner(self, steps: int) -> OptimizeInverter:
        return OptimizeInverter(steps, self.lr, self.tv_weight, self.bn_weight, self.seed)

    def fit(self, split: SplitModel, aux: torch.Tensor | None = None) -> DCIInverter:
        """Build the blocks and train their inverses on synthesised inputs (``aux`` ignored)."""
        if self.block_solver not in ("net", "optimize"):
            raise ValueError(f"block_solver must be 'net' or 'optimize', got {self.block_solver!r}")
        if self.inputs not in ("noise", "generator"):
            raise ValueError(f"inputs must be 'noise' or 'generator', got {self.inputs!r}")
        self.split_ = split
        self.generator_: BNGenerator | None = None
        if split.chain is None:
            log.warning("%s: forward is not a chain of modules; DCI uses one block", split.split)
        self.blocks_ = make_blocks(split.chain) if split.chain else []
        self.block_histories_: list[list[float]] = []
        self.nets_: list[InverseNet | None] = [None] * len(self.blocks_)
        self.loss_history_: list[float] = []
        if self.block_solver != "net" or not self.blocks_:
            return self
        torch.manual_seed(self.seed)
        x = self._synthesise(split)
        if self.synth_steps:
            x = self._refiner(self.synth_steps).fit(split).prior_images(x)
        with torch.no_grad():
            acts = [x]
            for k in range(len(self.blocks_)):
                acts.append(self._block(k)(acts[-1]))
        g = torch.Generator().manual_seed(self.seed)
        for k in range(len(self.blocks_)):
            z_in, z_out = acts[k], acts[k + 1]
            net = InverseNet(tuple(z_out.shape[1:]), tuple(z_in.shape[1:]), self.width)
            net = net.to(split.torch_device)
            opt = torch.optim.Adam(net.parameters(), lr=2e-3)
            block = self._block(k)
            history = []
            for _ in range(self.train_steps):
                idx = torch.randint(len(z_in), (min(64, len(z_in)),), generator=g)
                idx = idx.to(split.torch_device)
                est = net(z_out[idx])
                loss = _rel_mse(est, z_in[idx])
                if self.cycle_weight:
                    loss = loss + self.cycle_weight * _rel_mse(block(est), z_out[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                history.append(float(loss.detach()))
            self.nets_[k] = net.eval()
            self.block_histories_.append(history)
            self.loss_history_.extend(history)
        return self

    def _synthesise(self, split: SplitModel) -> torch.Tensor:
        if self.inputs == "noise":
            return synthesise(self.synth, split.input_shape, self.seed).to(split.torch_device)
        default = BNGenerator()
        on = self.gen_class_terms
        self.generator_ = BNGenerator(
            steps=self.gen_steps,
            batch_size=self.gen_batch,
            entropy_weight=default.entropy_weight if on else 0.0,
            diversity_weight=default.diversity_weight if on else 0.0,
            seed=self.seed,
        ).fit(split)
        return self.generator_.sample(self.synth)

    def _block(self, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        chain = self.blocks_[k]
        if k == 0:
            split = self.split_
            return lambda x: _run_chain(chain, split._normalise(x))
        return lambda z: _run_chain(chain, z)

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """Invert block by block from the split to the input, then refine end to end."""
        z = features.detach()
        for k in reversed(range(len(self.blocks_))):
            block, net = self._block(k), self.nets_[k]
            target = z
            if net is not None:
                with torch.no_grad():
                    z0 = net(target)
            else:
                z0 = self._zero_input(k, len(target))
            if k == 0:
                z0 = z0.clamp(0, 1)
                prior = BNPrior(
                    [
                        m
                        for _, mod in self.blocks_[0]
                        for m in mod.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    ]
                )

                def loss0(
                    x: torch.Tensor, t: torch.Tensor = target, b=block, p=prior
                ) -> torch.Tensor:
                    with p:
                        out = feature_loss(b(x), t) + self.tv_weight * total_variation(x)
                    return out + self.bn_weight * p.loss(len(x), x.device)

                z, _ = descend(loss0, z0, self.block_steps, self.lr)
            else:

                def lossk(v: torch.Tensor, t: torch.Tensor = target, b=block) -> torch.Tensor:
                    return feature_loss(b(v), t)

                z, _ = descend(lossk, z0, self.block_steps, self.lr, bounds=None)
        refiner = self._refiner(self.steps).fit(self.split_)
        start = z if self.blocks_ else None
        x = refiner.reconstruct(features, start=start)
        self.loss_history_ = refiner.loss_history_
        return x

    def _zero_input(self, k: int, n: int) -> torch.Tensor:
        if k == 0:
            return self._refiner(0).fit(self.split_).start(n)
        shape = self._input_shape(k)
        return torch.zeros(n, *shape, device=self.split_.torch_device)

    def _input_shape(self, k: int) -> tuple[int, ...]:
        with torch.no_grad():
            z = torch.zeros(1, *self.split_.input_shape, device=self.split_.torch_device)
            for j in range(k):
                z = self._block(j)(z)
        return tuple(z.shape[1:])

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """PSNR (dB) of each image's reconstruction from its own features; higher leaks more."""
        from trainleak.audits.inversion.metrics import psnr

        with torch.no_grad():
            feats = self.split_.device(images)
        return torch.as_tensor(psnr(images, self.reconstruct(feats)))
