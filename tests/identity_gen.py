"""Class-conditional face generators for the identity membership claim (issue 16).

Webster et al. 2021's identity attack asks whether generated faces reveal
which *people* a generator was trained on. To show it on a generator that
makes new photos of its training people, rather than copies, these
generators are conditioned on the person: sample ``i`` is drawn for identity
``labels[i]``, so every member gets the same number of samples, and the
pose, expression and lighting come from the noise.

* :class:`CondVAE` - a small convolutional conditional VAE (Sohn et al.
  2015): the decoder maps a Gaussian latent and the person's embedding to a
  face; its samples are smooth (a VAE averages what it cannot encode).
* a class-conditional DDPM - diffusers' ``UNet2DModel`` with one class
  embedding per person (plus a "no person" class, dropped in 10% of training
  steps), sampled with DDIM (``eta = 0``); :func:`ddpm_unet` builds it.

Training (:func:`train`) is resumable: ``out/ckpt.pt`` holds the model, its
exponential moving average, the optimiser and the random generator's state,
written atomically every ``ckpt_every`` steps; a killed run restarted with
the same arguments continues where the last checkpoint left it, and the
steps already taken are not repeated. At each step in ``snapshots`` the
EMA weights are also saved as ``out/step-{n:06d}.safetensors``, which
:func:`load_snapshot` reads back (no pickle).

All choices here (sizes, learning rates, EMA decay, KL weight) are ours,
picked to train on one shared CPU core within an hour or two; none comes
from a paper. Images are grey, ``HEIGHT`` x ``WIDTH`` = 48 x 40 (ORL's
92 x 112 aspect, 1.22, within 2%), in [-1, 1].
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

HEIGHT, WIDTH = 48, 40


def load_faces(
    root: Path,
    people: Sequence[int],
    photos: Sequence[int],
    size: tuple[int, int] = (HEIGHT, WIDTH),
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORL photos as ``(n, 1, H, W)`` floats in [-1, 1], and each one's person index (0-based)."""
    xs, ys = [], []
    for k, s in enumerate(people):
        for p in photos:
            im = Image.open(root / f"s{s}" / f"{p}.pgm").convert("L")
            im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            xs.append(np.asarray(im, np.float32) / 127.5 - 1.0)
            ys.append(k)
    return torch.from_numpy(np.stack(xs)[:, None]), torch.tensor(ys)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(n, 1, H, W)`` in [-1, 1] -> ``(n, H, W)`` uint8."""
    return ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def sample_noise(shape: tuple[int, ...], seed: int, first: int) -> torch.Tensor:
    """Noise of samples ``first ..``; sample ``i``'s noise depends on ``(seed, i)`` only."""
    rows = [
        torch.randn(
            shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + first + j)
        )
        for j in range(shape[0])
    ]
    return torch.stack(rows)


# --- the conditional VAE -------------------------------------------------------------------


class CondVAE(nn.Module):
    """Conditional VAE on ``48 x 40`` grey faces: ``decode(z, person) -> image``."""

    def __init__(self, n_classes: int, latent: int = 16, width: int = 32) -> None:
        super().__init__()
        self.latent, w = latent, width
        self.embed = nn.Embedding(n_classes, 32)
        act = nn.SiLU
        self.enc = nn.Sequential(  # 48x40 -> 24x20 -> 12x10 -> 6x5
            nn.Conv2d(1, w, 4, 2, 1), act(),
            nn.Conv2d(w, 2 * w, 4, 2, 1), act(),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), act(),
            nn.Flatten(),
        )  # fmt: skip
        feat = 4 * w * 6 * 5
        self.to_stats = nn.Linear(feat + 32, 2 * latent)
        self.from_z = nn.Linear(latent + 32, feat)
        self.dec = nn.Sequential(
            nn.Unflatten(1, (4 * w, 6, 5)), act(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), act(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), act(),
            nn.ConvTranspose2d(w, w, 4, 2, 1), act(),
            nn.Conv2d(w, 1, 3, 1, 1),
        )  # fmt: skip

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Faces ``(n, 1, 48, 40)`` for latents ``(n, latent)`` and person indices ``(n,)``."""
        return torch.tanh(self.dec(self.from_z(torch.cat([z, self.embed(y)], 1))))

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, beta: float
    ) -> torch.Tensor:
        """Negative ELBO per pixel (Gaussian likelihood, KL weighted by ``beta``)."""
        stats = self.to_stats(torch.cat([self.enc(x), self.embed(y)], 1))
        mu, logvar = stats.chunk(2, 1)
        z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
        rec = ((self.decode(z, y) - x) ** 2).sum((1, 2, 3))
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
        return (rec + beta * kl).mean() / x[0].numel()


# --- the conditional DDPM ------------------------------------------------------------------


def ddpm_unet(n_classes: int, channels: tuple[int, ...]) -> nn.Module:
    """A diffusers ``UNet2DModel`` with ``n_classes + 1`` class embeddings (the last: no person)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=(HEIGHT, WIDTH),
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=8,
        num_class_embeds=n_classes + 1,
    )


def ddpm_schedulers() -> tuple[Any, Any]:
    """The training (DDPM, linear betas, 1000 steps) and sampling (DDIM) schedulers."""
    from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(num_train_timesteps=1000)
    return train, DDIMScheduler.from_config(train.config)


@torch.no_grad()
def ddpm_sample(
    unet: nn.Module,
    labels: Sequence[int],
    seed: int,
    steps: int = 50,
    guidance: float = 1.0,
    batch: int = 64,
    null_class: int | None = None,
) -> np.ndarray:
    """DDIM samples (``eta = 0``) of the people ``labels``: ``(n, H, W)`` uint8.

    With ``guidance`` above 1, classifier-free guidance towards the person
    (``null_class`` is the "no person" index).
    """
    _, sched = ddpm_schedulers()
    sched.set_timesteps(steps)
    unet.eval()
    out = []
    for first in range(0, len(labels), batch):
        y = torch.tensor(list(labels[first : first + batch]))
        x = sample_noise((len(y), 1, HEIGHT, WIDTH), seed, first)
        for t in sched.timesteps:
            tt = t.expand(len(y))
            eps = unet(x, tt, class_labels=y).sample
            if guidance != 1.0:
                assert null_class is not None
                free = unet(x, tt, class_labels=torch.full_like(y, null_class)).sample
                eps = free + guidance * (eps - free)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        out.append(to_uint8(x))
    return np.concatenate(out)


@torch.no_grad()
def vae_sample(
    model: CondVAE, labels: Sequence[int], seed: int, temperature: float = 1.0
) -> np.ndarray:
    """Samples of the people ``labels``: ``(n, H, W)`` uint8."""
    model.eval()
    y = torch.tensor(list(labels))
    z = sample_noise((len(y), model.latent), seed, 0) * temperature
    return to_uint8(model.decode(z, y))


# --- resumable training --------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Settings of :func:`train` (ours; see the module docstring)."""

    kind: str = "ddpm"  # "ddpm" or "vae"
    steps: int = 8000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    ema: float = 0.999
    hflip: bool = True
    channels: tuple[int, ...] = (16, 32, 64)  # ddpm
    drop_label: float = 0.1  # ddpm: share of steps without the person (classifier-free guidance)
    latent: int = 16  # vae
    width: int = 32  # vae
    beta: float = 1.0  # vae: KL weight
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def build(cfg: TrainConfig, n_classes: int) -> nn.Module:
    """The untrained model of ``cfg``."""
    torch.manual_seed(cfg.seed)
    if cfg.kind == "vae":
        return CondVAE(n_classes, cfg.latent, cfg.width)
    return ddpm_unet(n_classes, cfg.channels)


def train(
    data: torch.Tensor,
    labels: torch.Tensor,
    out: Path,
    cfg: TrainConfig,
    snapshots: Sequence[int] = (),
    ckpt_every: int = 250,
    log: Callable[[str], None] | None = None,
    stop_after_s: float | None = None,
) -> dict[str, Any]:
    """Train (or resume training) a conditional generator; see the module docstring.

    Args:
        data: ``(n, 1, H, W)`` training images in [-1, 1].
        labels: ``(n,)`` person index of each image.
        out: the run folder (``ckpt.pt``, ``step-*.safetensors``, ``train.json``).
        cfg: settings; a resumed run must use the same ones.
        snapshots: steps at which the EMA weights are saved for evaluation.
        ckpt_every: steps between resumable checkpoints.
        log: called with a progress line every checkpoint.
        stop_after_s: stop (after writing a checkpoint) once this many seconds
            have passed in this call; the next call resumes.

    Returns:
        ``out/train.json``'s content: the config, steps done, seconds of
        training summed over resumed runs, and the loss at each checkpoint.

    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    n_classes = int(labels.max()) + 1
    model = build(cfg, n_classes)
    ema = build(cfg, n_classes)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    meta: dict[str, Any] = {
        "config": asdict(cfg),
        "steps_done": 0,
        "train_seconds": 0.0,
        "losses": [],
    }
    ckpt = out / "ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        # Only the step count may differ: a finished run can be trained on.
        saved = {**json.loads(state["config"]), "steps": cfg.steps}
        if saved != json.loads(json.dumps(asdict(cfg))):
            raise ValueError(f"{ckpt} was trained with other settings: use another --out")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        meta = {**json.loads((out / "train.json").read_text()), "config": asdict(cfg)}
    noise_sched = ddpm_schedulers()[0] if cfg.kind == "ddpm" else None
    call_start = started = time.perf_counter()
    done0 = meta["steps_done"]
    running = float("nan")
    model.train()
    for step in range(meta["steps_done"], cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        pick = torch.randint(len(data), (cfg.batch_size,), generator=gen)
        x, y = data[pick], labels[pick]
        if cfg.hflip:
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if cfg.kind == "vae":
            loss = model.loss(x, y, gen, cfg.beta)  # type: ignore[operator]
        else:
            drop = torch.rand(len(y), generator=gen) < cfg.drop_label
            y = torch.where(drop, torch.full_like(y, n_classes), y)
            noise = torch.randn(x.shape, generator=gen)
            t = torch.randint(1000, (len(x),), generator=gen)
            pred = model(noise_sched.add_noise(x, noise, t), t, class_labels=y).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # The EMA's decay ramps up (as in Ho et al.'s code and timm's ModelEmaV3),
        # so an early snapshot is not mostly the initial weights.
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - decay)
        running = loss.item() if running != running else 0.98 * running + 0.02 * loss.item()
        n = step + 1
        if n in snapshots:
            save_file(
                {k: v.contiguous() for k, v in ema.state_dict().items()},
                str(out / f"step-{n:06d}.safetensors"),
            )
        over = stop_after_s is not None and time.perf_counter() - call_start > stop_after_s
        if n % ckpt_every == 0 or n == cfg.steps or over:
            meta["steps_done"] = n
            now = time.perf_counter()
            meta["train_seconds"] += now - started
            started = now
            meta["losses"].append([n, running])
            state = {
                "config": json.dumps(asdict(cfg), sort_keys=True),
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "opt": opt.state_dict(),
                "gen": gen.get_state(),
            }
            tmp = out / "ckpt.pt.tmp"
            torch.save(state, tmp)
            os.replace(tmp, ckpt)
            tmp_meta = out / "train.json.tmp"
            tmp_meta.write_text(json.dumps(meta, indent=1))
            os.replace(tmp_meta, out / "train.json")
            if log:
                rate = (n - done0) / max(now - call_start, 1e-9)
                log(
                    f"step {n}/{cfg.steps} loss {running:.4f} "
                    f"({meta['train_seconds']:.0f} s, {rate:.2f} steps/s)"
                )
            if over:
                break
    return meta


def load_snapshot(path: Path, cfg: TrainConfig, n_classes: int) -> nn.Module:
    """A snapshot's EMA model, in eval mode (safetensors: no code runs on load)."""
    from safetensors.torch import load_file

    model = build(cfg, n_classes)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


#: The parameters :meth:`CondVAE.decode` uses: all a VAE needs to sample.
DECODER_PARTS = ("embed.", "from_z.", "dec.")


def export_decoder(model: CondVAE, path: Path, meta: dict[str, str]) -> Path:
    """Save a VAE's decoder in float16 safetensors (a few hundred kB), with ``meta`` as metadata."""
    from safetensors.torch import save_file

    state = {
        k: v.to(torch.float16).contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(DECODER_PARTS)
    }
    save_file(state, str(path), metadata=meta)
    return path


def load_decoder(path: Path) -> CondVAE:
    """A :class:`CondVAE` whose decoder is read from ``path`` (see :func:`export_decoder`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model = CondVAE(int(meta["n_classes"]), int(meta["latent"]), int(meta["width"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith(DECODER_PARTS) for k in missing):
        raise ValueError(
            f"{path} is not a CondVAE decoder: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()
