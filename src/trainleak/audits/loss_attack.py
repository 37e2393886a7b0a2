"""Sample-level membership on diffusion models from their denoising loss.

Carlini et al. 2023 show that a diffusion model's noise-prediction loss on a
training image is lower than on an image it never saw, most clearly at
small-to-moderate noise levels. :class:`LossAttack` measures, per image, the
loss at chosen timesteps with fixed noise (the same noise draws for every
image, so differences come from the images, not from the draws), and
calibrates it on reference non-members: each timestep's ``-log loss`` is turned
into a z-score against the reference images, and the score is the mean z.

Our choices: timesteps (25, 50, 100, 200) of 1000 and 8 noise draws each by
default; log losses, because losses are skewed; per-timestep standardisation,
because loss scales differ by orders of magnitude across timesteps.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from typing import Any

import numpy as np

from trainleak.archives import decode_inputs
from trainleak.audits.membership import MembershipResult
from trainleak.audits.membership_report import SCORE_NOTES, header, summary_block
from trainleak.config import LossConfig as LossConfig  # re-exported: it lived here
from trainleak.errors import AuditInputError
from trainleak.generators import sample_seed
from trainleak.images import SkipRecord, list_records
from trainleak.stats import leave_one_out_p_values


def denoising_losses(
    unet: Any,
    scheduler: Any,
    images: list[np.ndarray],
    timesteps: tuple[int, ...],
    noise_seeds: int,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """Per-image noise-prediction loss at each timestep, averaged over fixed noise draws.

    Args:
        unet: a diffusers ``UNet2DModel`` predicting the noise.
        scheduler: the scheduler it was trained with (``add_noise``).
        images: RGB uint8 images; resized to the model's sample size.
        timesteps: the noise levels, each below ``scheduler.config.num_train_timesteps``.
        noise_seeds: noise draws per timestep, the same for every image.
        seed: seeds the draws.
        batch_size: images per forward pass.

    Returns:
        ``(n_images, n_timesteps)`` float64 mean squared errors.

    """
    import torch

    from trainleak.ddpm import images_to_tensor

    size = int(unet.config.sample_size)
    grey = int(unet.config.in_channels) == 1
    top = int(scheduler.config.num_train_timesteps)
    bad = [t for t in timesteps if not 0 <= t < top]
    if bad:
        raise ValueError(f"timesteps {bad} out of range: the model has 0..{top - 1}")
    x0 = images_to_tensor(images, size, grey)
    out = np.zeros((len(images), len(timesteps)))
    with torch.no_grad():
        for j, t in enumerate(timesteps):
            for k in range(noise_seeds):
                gen = torch.Generator().manual_seed(sample_seed(seed, t * 10_000 + k))
                noise = torch.randn(x0.shape[1:], generator=gen)
                for start in range(0, len(x0), batch_size):
                    batch = x0[start : start + batch_size]
                    eps = noise.expand_as(batch)
                    tt = torch.full((len(batch),), t, dtype=torch.long)
                    pred = unet(scheduler.add_noise(batch, eps, tt), tt).sample
                    err = ((pred - eps) ** 2).mean(dim=(1, 2, 3)).double().numpy()
                    out[start : start + len(batch), j] += err / noise_seeds
    return out


class LossAttack:
    """Loss-based membership inference on a diffusion model (white-box).

    Args:
        model: a pipeline folder saved by :func:`trainleak.ddpm.train_ddpm`
            or any diffusers folder with ``unet/`` and ``scheduler/``.
        config: timesteps, noise draws, seed (:class:`LossConfig`).

    ``higher_is_better`` is True: a higher score means a lower loss than the
    reference images had, so more likely a member.

    """

    higher_is_better = True

    def __init__(self, model: str | os.PathLike[str], config: LossConfig | None = None) -> None:
        self.model = os.fspath(model)
        self.config = config or LossConfig()
        self._unet: Any = None
        self._sched: Any = None
        self.ref_mean_: np.ndarray | None = None
        self.ref_std_: np.ndarray | None = None
        self.reference_scores_: np.ndarray | None = None

    def losses(self, images: list[np.ndarray]) -> np.ndarray:
        """Return the ``(n, n_timesteps)`` denoising losses of images."""
        if self._unet is None:
            from trainleak.ddpm import load_unet

            if not os.path.isdir(os.path.join(self.model, "unet")):
                raise FileNotFoundError(
                    f"no diffusers pipeline with a unet/ folder at {self.model!r}; "
                    "give --model diffusers:DIR with DIR a saved pipeline"
                )
            if self.config.threads:
                import torch

                torch.set_num_threads(self.config.threads)
            self._unet, self._sched = load_unet(self.model)
        c = self.config
        return denoising_losses(
            self._unet, self._sched, images, c.timesteps, c.noise_seeds, c.seed, c.batch_size
        )

    def fit(self, reference: list[np.ndarray] | None) -> LossAttack:
        """Calibrate on reference non-members; ``None`` leaves scores uncalibrated."""
        if reference is None:
            self.ref_mean_ = self.ref_std_ = self.reference_scores_ = None
            return self
        if len(reference) < 2:
            raise AuditInputError("the reference needs at least 2 images to calibrate on")
        logs = -np.log(self.losses(reference))
        self.ref_mean_ = logs.mean(axis=0)
        self.ref_std_ = np.maximum(logs.std(axis=0, ddof=1), 1e-12)
        self.reference_scores_ = self._combine(logs)
        return self

    def score(self, queries: list[np.ndarray]) -> np.ndarray:
        """Return one score per image, ``(n,)`` float64."""
        return self._combine(-np.log(self.losses(queries)))

    def score_losses(self, losses: np.ndarray) -> np.ndarray:
        """Scores from already computed ``(n, n_timesteps)`` losses."""
        return self._combine(-np.log(losses))

    def _combine(self, logs: np.ndarray) -> np.ndarray:
        if self.ref_mean_ is None or self.ref_std_ is None:
            return np.asarray(logs.mean(axis=1))
        return np.asarray(((logs - self.ref_mean_) / self.ref_std_).mean(axis=1))


def read_images(
    source: str | os.PathLike[str], set_name: str
) -> tuple[list[str], list[np.ndarray], list[SkipRecord]]:
    """Decode every image of a source; unusable files become skip records."""
    ids, images, skipped = [], [], []
    for rec, rgb in decode_inputs(list_records(source)):
        if isinstance(rgb, str):
            skipped.append(SkipRecord(set_name, rec.id, rgb))
        else:
            images.append(rgb)
            ids.append(rec.id)
    if not images:
        raise AuditInputError(f"no usable image in --{set_name} {os.fspath(source)!r}")
    return ids, images, skipped


def match_members(ids: list[str], root: str, members: set[str]) -> list[bool]:
    """Whether each id is listed, as given, relative to ``root``, or as an absolute path."""
    wanted = set(members) | {os.path.abspath(m) for m in members}
    return [bool(_names_of(i, root) & wanted) for i in ids]


def _names_of(sample: str, root: str) -> set[str]:
    rel = os.path.relpath(sample, root) if os.path.isdir(root) else sample
    return {sample, rel, os.path.abspath(sample)}


def loss_membership(
    model: str,
    candidates: str | os.PathLike[str],
    reference: str | os.PathLike[str] | None = None,
    members: set[str] | None = None,
    *,
    config: LossConfig | None = None,
    argv: list[str] | None = None,
) -> MembershipResult:
    """Run the loss attack on candidate images and build its report.

    Args:
        model: ``diffusers:DIR`` (or the folder itself).
        candidates: the images to test (folder, glob or list file).
        reference: images known not to be in training; calibrates the scores
            and gives each candidate a p-value.
        members: candidate paths (as listed, or relative to ``candidates``)
            that are members, for evaluation.
        config: settings (:class:`LossConfig` defaults).
        argv: the command line, recorded in the report.

    Returns:
        A :class:`~trainleak.audits.membership.MembershipResult`.

    """
    config = config or LossConfig()
    folder = model.partition(":")[2] if model.startswith("diffusers:") else model
    attack = LossAttack(folder, config)
    ids, images, skipped = read_images(candidates, "candidates")
    ref_ids: list[str] = []
    if reference is not None:
        ref_ids, ref_images, ref_skipped = read_images(reference, "reference")
        skipped += ref_skipped
        attack.fit(ref_images)
    else:
        attack.fit(None)
    losses = attack.losses(images)
    scores = attack.score_losses(losses)
    p_values = None
    if attack.reference_scores_ is not None:
        p_values = leave_one_out_p_values(scores, ids, attack.reference_scores_, ref_ids)
    flags: list[bool | None] = [None] * len(ids)
    unmatched: list[str] = []
    if members is not None:
        flags = list(match_members(ids, os.fspath(candidates), members))
        known = {k for i in ids for k in _names_of(i, os.fspath(candidates))}
        unmatched = sorted(m for m in members if not {m, os.path.abspath(m)} & known)
        if not any(flags):
            raise AuditInputError(
                "no --members line matches a candidate: list candidate paths one per line, "
                f"as listed (e.g. {ids[0]!r}) or relative to --candidates"
            )
    summary = summary_block(scores, flags, p_values, config.n_boot, config.seed)
    summary["score"] = "loss" if p_values is not None else "loss-raw"
    summary["score_note"] = SCORE_NOTES[summary["score"]]
    summary["members_unmatched"] = unmatched
    summary["p_value_floor"] = None if reference is None else 1.0 / (len(ref_ids) + 1)
    rows: list[dict[str, Any]] = [
        {
            "sample": sid,
            "score": float(scores[i]),
            "p_value": None if p_values is None else float(p_values[i]),
            "member": flags[i],
            "loss": {str(t): float(v) for t, v in zip(config.timesteps, losses[i], strict=True)},
        }
        for i, sid in enumerate(ids)
    ]
    rows.sort(key=lambda r: (-r["score"], r["sample"]))
    report = header("loss", asdict(config), argv if argv is not None else list(sys.argv))
    report.update(
        {
            "model": {"source": model, "folder": folder},
            "inputs": {
                "candidates": {"root": os.fspath(candidates), "used": len(ids)},
                "reference": None
                if reference is None
                else {"root": os.fspath(reference), "used": len(ref_ids)},
            },
            "summary": summary,
            "samples": rows,
            "skipped": [s.to_dict() for s in skipped],
        }
    )
    return MembershipResult(report)
