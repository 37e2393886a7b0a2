"""Small diffusers DDPMs trained on CPU: real generators with a known training set.

The membership and extraction audits need generators whose training data is
known. This module trains a small unconditional ``UNet2DModel`` with the DDPM
noise-prediction loss (Ho et al. 2020) and saves it as a diffusers
``DDIMPipeline`` folder, which ``diffusers:DIR`` loads offline. Sampling uses
DDIM with ``eta = 0``: each sample is a deterministic function of its initial
noise, so a per-sample seed fixes the image.

Our choices (none of them comes from a paper): a three-level UNet with
``channels`` (16, 32, 64), one ResNet layer per level and no attention (the
attention block doubles the step time on CPU for little gain at 32 x 32), 1000 training
timesteps with the linear beta schedule, AdamW at ``lr = 1e-3`` with a short
warm-up, and 50 DDIM steps when sampling. They make a 32 x 32 model that
trains at a few hundred images per second on 2 CPU cores and memorizes a small
or heavily duplicated training set within minutes.

Needs ``pip install 'trainleak[diffusion]'``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trainleak._optional import require
from trainleak.config import DDPMConfig as DDPMConfig  # re-exported: it lived here

log = logging.getLogger(__name__)


def _diffusers(needed_for: str = "training and loading DDPMs") -> Any:
    return require("diffusers", extra="diffusion", needed_for=needed_for)


def images_to_tensor(images: Sequence[np.ndarray], size: int, grey: bool) -> Any:
    """Stack RGB uint8 images into a ``(n, c, size, size)`` float tensor in [-1, 1].

    Example:
        >>> images_to_tensor([np.zeros((8, 8, 3), np.uint8)], 4, grey=True).shape
        torch.Size([1, 1, 4, 4])

    """
    import torch
    from PIL import Image

    rows = []
    for image in images:
        pil = Image.fromarray(np.asarray(image, np.uint8)).convert("L" if grey else "RGB")
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(pil, np.float32) / 127.5 - 1.0
        rows.append(arr[None] if grey else arr.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(rows))


def _unet(config: DDPMConfig) -> Any:
    UNet2DModel = _diffusers().UNet2DModel  # noqa: N806 - the class, by its own name

    levels = len(config.channels)
    deepest_down = "AttnDownBlock2D" if config.attention else "DownBlock2D"
    deepest_up = "AttnUpBlock2D" if config.attention else "UpBlock2D"
    return UNet2DModel(
        sample_size=config.size,
        in_channels=1 if config.grey else 3,
        out_channels=1 if config.grey else 3,
        layers_per_block=config.layers_per_block,
        block_out_channels=config.channels,
        down_block_types=("DownBlock2D",) * (levels - 1) + (deepest_down,),
        up_block_types=(deepest_up,) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=8,
    )


def train_ddpm(
    images: Sequence[np.ndarray],
    out_dir: str | os.PathLike[str],
    config: DDPMConfig | None = None,
    progress: Callable[[int, float], None] | None = None,
    checkpoints: Sequence[int] = (),
) -> Path:
    """Train a DDPM on ``images`` and save a ``DDIMPipeline`` folder.

    Args:
        images: RGB uint8 training images ``(H, W, 3)``; resized to ``config.size``.
            Repeat an image to duplicate it in the training set.
        out_dir: the pipeline folder to write (``diffusers:out_dir`` loads it).
        config: settings; :class:`DDPMConfig` defaults when omitted.
        progress: called as ``progress(step, loss)`` every 50 steps.
        checkpoints: step counts (below ``config.steps``) after which the model
            is also saved, as ``out_dir/step-{n:06d}``, a pipeline folder of its
            own: one run gives the models of several training lengths.

    Returns:
        ``out_dir`` as a path. ``out_dir/trainleak.json`` records the config,
        the training-set size, the final loss and the training time.

    Raises:
        ValueError: when ``images`` is empty.

    """
    import torch

    DDPMScheduler = _diffusers().DDPMScheduler  # noqa: N806

    config = config or DDPMConfig()
    if not len(images):
        raise ValueError("no training images: pass at least one image")
    torch.manual_seed(config.seed)
    data = images_to_tensor(images, config.size, config.grey)
    unet = _unet(config)
    noise_sched: Any = DDPMScheduler(num_train_timesteps=config.train_timesteps)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup))
    )
    gen = torch.Generator().manual_seed(config.seed)
    unet.train()
    start, running = time.perf_counter(), float("nan")
    for step in range(config.steps):
        pick = torch.randint(len(data), (config.batch_size,), generator=gen)
        x0 = data[pick]
        if config.hflip:
            flip = torch.rand(len(x0), generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(config.train_timesteps, (len(x0),), generator=gen)
        pred = unet(noise_sched.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if progress is not None and (step + 1) % 50 == 0:
            progress(step + 1, running)
        if step + 1 in checkpoints and step + 1 < config.steps:
            folder = Path(out_dir) / f"step-{step + 1:06d}"
            _save(unet, noise_sched, folder, config, len(images), running, start, step + 1)
            unet.train()
    seconds = time.perf_counter() - start
    out = _save(unet, noise_sched, Path(out_dir), config, len(images), running, start, config.steps)
    log.info("trained DDPM on %d images in %.0f s, loss %.4f", len(images), seconds, running)
    return out


def _save(
    unet: Any,
    noise_sched: Any,
    out: Path,
    config: DDPMConfig,
    n_images: int,
    loss: float,
    start: float,
    steps: int,
) -> Path:
    diffusers = _diffusers()

    unet.eval()
    pipe: Any = diffusers.DDIMPipeline(
        unet=unet, scheduler=diffusers.DDIMScheduler.from_config(noise_sched.config)
    )
    pipe.save_pretrained(out, safe_serialization=True)
    meta = {
        "config": asdict(config),
        "train_images": n_images,
        "steps_done": steps,
        "final_loss": loss,
        "train_seconds": time.perf_counter() - start,
    }
    (out / "trainleak.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def load_unet(folder: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Load the UNet and a DDPM noise scheduler of a saved pipeline folder (offline)."""
    diffusers = _diffusers("the loss attack (a diffusers:DIR model)")
    folder = Path(folder)
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet", local_files_only=True).eval()
    sched = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
    return unet, sched
