"""``decoder``: an inverse network trained on the attacker's own images (learning baseline).

The attacker runs their auxiliary images through the known device part and
trains an :class:`~trainleak.audits.inversion.nets.InverseNet` to map the
features back to the images (mean squared pixel error, Adam). Choices that
are ours: each auxiliary image is also used mirrored left-right; batches of
``batch_size`` are drawn with a seeded generator.
"""

from __future__ import annotations

import torch

from trainleak.audits.inversion.nets import InverseNet
from trainleak.audits.inversion.split import SplitModel


class DecoderInverter:
    """Learned decoder from split features to pixels, trained on auxiliary images.

    Args:
        steps: training steps.
        lr: Adam learning rate.
        batch_size: images per training step.
        width: channels of the inverse network.
        seed: seeds initialisation and batch order.

    Attributes:
        loss_history_: training loss (pixel MSE) per step.

    Example:
        >>> from trainleak.audits.inversion.nets import small_resnet
        >>> sm = SplitModel(small_resnet().eval(), "stem", (1, 8, 8))
        >>> aux = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        >>> inv = DecoderInverter(steps=40, width=8).fit(sm, aux)
        >>> inv.reconstruct(sm.device(aux[:2])).shape
        torch.Size([2, 1, 8, 8])

    """

    name = "decoder"
    higher_is_better = True

    def __init__(
        self,
        steps: int = 300,
        lr: float = 2e-3,
        batch_size: int = 32,
        width: int = 32,
        seed: int = 0,
    ) -> None:
        self.steps, self.lr, self.batch_size, self.width, self.seed = (
            steps,
            lr,
            batch_size,
            width,
            seed,
        )

    def fit(self, split: SplitModel, aux: torch.Tensor | None = None) -> DecoderInverter:
        """Train the decoder on ``aux`` pixel images ``(m, C, H, W)`` in [0, 1]."""
        if aux is None or len(aux) == 0:
            raise ValueError(
                "the decoder method trains on the attacker's own images: give them with --aux PATH"
            )
        if tuple(aux.shape[1:]) != split.input_shape:
            raise ValueError(
                f"aux images are {tuple(aux.shape[1:])}, the model input is {split.input_shape}"
            )
        self.split_ = split
        torch.manual_seed(self.seed)
        images = torch.cat([aux, aux.flip(-1)]).to(split.torch_device)
        with torch.no_grad():
            feats = torch.cat([split.device(b) for b in images.split(64)])
        self.net_ = InverseNet(tuple(feats.shape[1:]), split.input_shape, self.width)
        self.net_ = self.net_.to(split.torch_device)
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        g = torch.Generator().manual_seed(self.seed)
        self.loss_history_: list[float] = []
        for _ in range(self.steps):
            idx = torch.randint(len(images), (min(self.batch_size, len(images)),), generator=g)
            idx = idx.to(split.torch_device)
            loss = (self.net_(feats[idx]) - images[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.loss_history_.append(float(loss.detach()))
        self.net_.eval()
        return self

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """Decode features into pixel images ``(n, C, H, W)`` in [0, 1]."""
        with torch.no_grad():
            return self.net_(features).clamp(0, 1)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """PSNR (dB) of each image's reconstruction from its own features; higher leaks more."""
        from trainleak.audits.inversion.metrics import psnr

        with torch.no_grad():
            feats = self.split_.device(images)
        return torch.as_tensor(psnr(images, self.reconstruct(feats)))
