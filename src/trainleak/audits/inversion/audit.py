"""``invert``: how much of the input can be rebuilt from a split model's features.

:func:`invert` loads the model, reads the images, and for every split point
inverts the features the device would send with one method, then measures
the reconstructions against the originals. Choices that are ours:

* Images are decoded by content, converted to the model's channel count
  (taken from the first convolution's input channels; grey when it is 1)
  and resized (bicubic) to ``size`` = ``(height, width)``, by default the
  first readable image's size; pixels in [0, 1] are normalised with
  ``(x - mean) / std`` before the model.
* The no-information baseline is the mean of the inverted images: a
  reconstruction must beat it to show that the features leak anything.
* Identity similarity is the ``face`` encoder's cosine between the original
  and the reconstruction, both resized back to the original file's size;
  ``None`` for an image when either has no detectable face. Per split, the
  mean over images where both have a face, and how many that was.
* Labels (one sub-folder per class) map to model outputs: folder names that
  are integers are the class index; otherwise the sorted folder names are
  classes 0, 1, ... in that order.
* A defence transforms the features before the attacker sees them; each
  split's entry then has the defended metrics and the model's accuracy with
  and without the defence (when labels are given) under ``defense``.
"""

from __future__ import annotations

import os
import time
from typing import Any, get_args

import numpy as np
import torch
from PIL import Image
from torch import nn

from trainleak.archives import decode_inputs
from trainleak.audits.inversion.dci import DCIInverter
from trainleak.audits.inversion.decoder import DecoderInverter
from trainleak.audits.inversion.metrics import (
    Defense,
    face_vectors,
    identity_similarity,
    psnr,
    skimage_metrics,
    ssim,
    to_uint8_images,
)
from trainleak.audits.inversion.optimize import OptimizeInverter
from trainleak.audits.inversion.split import SplitModel, load_model
from trainleak.config import InvertConfig as InvertConfig  # re-exported: it lived here
from trainleak.config import InvertMethod
from trainleak.device import resolve_device
from trainleak.images import DEFAULT_MAX_PIXELS, SkipRecord, list_records
from trainleak.records import report_header
from trainleak.result import Result

Method = InvertMethod  # the name it had here
METHODS: tuple[str, ...] = get_args(InvertMethod)
Inverter = OptimizeInverter | DCIInverter | DecoderInverter


def make_inverter(config: InvertConfig) -> Inverter:
    """Build the inverter of ``config.method`` from ``config``, other settings default.

    Example:
        >>> inv = make_inverter(InvertConfig(method="dci", dci_inputs="generator"))
        >>> type(inv).__name__, inv.inputs
        ('DCIInverter', 'generator')

    """
    method, steps, seed = config.method, config.steps, config.seed
    if method == "optimize":
        return OptimizeInverter(steps=steps, seed=seed)
    if method == "dci":
        return DCIInverter(
            train_steps=steps,
            block_steps=max(1, steps // 2),
            steps=steps,
            seed=seed,
            inputs=config.dci_inputs,
            gen_steps=config.dci_gen_steps,
        )
    if method == "decoder":
        return DecoderInverter(steps=steps, seed=seed)
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def input_channels(model: nn.Module) -> int:
    """Input channels of the first 4-d weight (a convolution); 3 when there is none."""
    for p in model.parameters():
        if p.ndim == 4:
            return int(p.shape[1])
    return 3


def read_images(
    source: str | os.PathLike[str],
    set_name: str,
    channels: int,
    size: tuple[int, int] | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, list[dict[str, Any]], list[SkipRecord]]:
    """Decode and resize a source into pixels ``(n, channels, H, W)`` in [0, 1].

    Returns:
        The images, one ``{"path", "label", "size"}`` per image (``size`` is
        the file's ``(height, width)``), and skip records for unusable files.

    """
    rows, arrays, skipped = [], [], []
    for rec, rgb in decode_inputs(list_records(source), max_pixels):
        if isinstance(rgb, str):
            skipped.append(SkipRecord(set_name, rec.id, rgb))
            continue
        im = Image.fromarray(rgb)
        if channels == 1:
            im = im.convert("L")
        if size is None:
            size = (rgb.shape[0], rgb.shape[1])
        im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        arr = np.asarray(im, np.float32) / np.float32(255.0)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        rows.append({"path": rec.id, "label": rec.label, "size": (rgb.shape[0], rgb.shape[1])})
    if not arrays:
        return torch.zeros(0, channels, *(size or (1, 1))), rows, skipped
    return torch.from_numpy(np.stack(arrays)), rows, skipped


def class_indices(labels: list[str | None]) -> list[int] | None:
    """Class index per label (see the module docstring), or ``None`` without labels.

    Example:
        >>> class_indices(["s2", "s10", "s2"]), class_indices(["3", "0"]), class_indices([None])
        ([1, 0, 1], [3, 0], None)

    """
    if not labels or any(lab is None for lab in labels):
        return None
    names = [str(lab) for lab in labels]
    if all(n.isdigit() for n in names):
        return [int(n) for n in names]
    order = {n: i for i, n in enumerate(sorted(set(names)))}
    return [order[n] for n in names]


def _batched(inverter: Inverter, features: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([inverter.reconstruct(f) for f in features.split(batch_size)])


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


class _Identity:
    """Face descriptors of the originals, computed once, compared to each reconstruction."""

    def __init__(self, originals: torch.Tensor, sizes: list[tuple[int, int]]) -> None:
        from trainleak.encoders import get_encoder

        self.encoder = get_encoder("face")
        self.sizes = sizes
        self.originals = face_vectors(to_uint8_images(originals, sizes), self.encoder)

    def __call__(self, reconstructions: torch.Tensor) -> list[float | None]:
        recon = face_vectors(to_uint8_images(reconstructions, self.sizes), self.encoder)
        return identity_similarity(self.originals, recon)


def _accuracy(split: SplitModel, x: torch.Tensor, y: list[int], transform: Any = None) -> float:
    with torch.no_grad():
        pred = torch.cat([split.logits(b, transform).argmax(1) for b in x.split(64)])
    return float((pred == torch.as_tensor(y, device=pred.device)).float().mean())


def _measure(x: torch.Tensor, recon: torch.Tensor, identity: _Identity | None) -> dict[str, Any]:
    sims = identity(recon) if identity is not None else None
    return {
        "psnr": float(np.mean(psnr(x, recon))),
        "ssim": float(np.mean(ssim(x, recon))),
        "identity_similarity": None if sims is None else _mean(sims),
        "identity_compared": None if sims is None else sum(s is not None for s in sims),
        "per_image_identity": sims,
    }


class InversionResult(Result):
    """The report and the images behind it (originals and reconstructions per split)."""

    def __init__(
        self,
        report: dict[str, Any],
        originals: torch.Tensor,
        reconstructions: dict[str, torch.Tensor],
    ) -> None:
        super().__init__(report)
        self.originals = originals
        self.reconstructions = reconstructions

    @property
    def verdict(self) -> str:
        """E.g. ``most leaky split stem: PSNR 53.8 dB (mean-image baseline 17.3 dB)``."""
        s = self.report["summary"]
        best = next(e for e in self.report["splits"] if e["split"] == s["most_leaky_split"])
        return (
            f"most leaky split {best['split']}: PSNR {best['psnr']:.1f} dB "
            f"(mean-image baseline {s['baseline']['psnr']:.1f} dB)"
        )


def invert(
    model: str | nn.Module,
    splits: list[str],
    images: str | os.PathLike[str],
    *,
    aux: str | os.PathLike[str] | None = None,
    weights: str | None = None,
    trust_pickle: bool = False,
    config: InvertConfig | None = None,
    argv: list[str] | None = None,
) -> InversionResult:
    """Invert each split's features of ``images`` and measure what the reconstructions show.

    Args:
        model: a model, a TorchScript file or ``python:module:factory``.
        splits: module names (``model.named_modules()``) to cut at.
        images: the inputs a device would process (folder, glob or list).
        aux: the attacker's own images (``decoder`` trains on them).
        weights: weights of a ``python:`` model.
        trust_pickle: allow pickled model or weights files.
        config: settings; defaults as in :class:`InvertConfig`.
        argv: the command line, recorded in the report.

    Raises:
        ValueError: unknown split (the message lists valid names) or method,
            a bad defence, no readable image, or ``decoder`` without ``aux``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.radial_gradient("L").resize((16, 16)).save(d / "a.png")
        >>> cfg = InvertConfig(steps=20, identity=False)
        >>> r = invert("python:trainleak.audits.inversion.nets:small_resnet", ["stem"], d,
        ...            config=cfg)
        >>> keys = {"split", "depth", "method", "psnr", "ssim", "identity_similarity"}
        >>> keys <= set(r.report["splits"][0])
        True

    """
    config = config or InvertConfig()
    skimage_metrics()  # before any work: the report's PSNR and SSIM need it
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; use one of {', '.join(METHODS)}")
    defense = Defense.parse(config.defense, config.seed) if config.defense else None
    dev = torch.device(resolve_device(config.device))
    net = load_model(model, weights, trust_pickle) if not isinstance(model, nn.Module) else model
    net.eval()
    channels = input_channels(net)
    net.to(dev)
    x, rows, skipped = read_images(images, "images", channels, config.size, config.max_pixels)
    x = x.to(dev)
    if not len(x):
        raise ValueError(f"no readable images in {os.fspath(images)!r} ({len(skipped)} skipped)")
    shape = (channels, int(x.shape[2]), int(x.shape[3]))
    split_models = [SplitModel(net, s, shape, config.mean, config.std) for s in splits]
    aux_x = None
    if aux is not None:
        aux_x, aux_rows, aux_skipped = read_images(
            aux, "aux", channels, shape[1:], config.max_pixels
        )
        aux_x = aux_x.to(dev)
        skipped += aux_skipped
    if config.method == "decoder" and (aux_x is None or not len(aux_x)):
        raise ValueError("the decoder method trains on the attacker's own images: give --aux PATH")
    labels = class_indices([r["label"] for r in rows])
    identity = _Identity(x, [r["size"] for r in rows]) if config.identity else None
    baseline = x.mean(0, keepdim=True).expand_as(x)
    clean_accuracy = _accuracy(split_models[0], x, labels) if labels is not None else None
    entries, recons = [], {}
    for sm in split_models:
        start = time.perf_counter()
        inverter = make_inverter(config).fit(sm, aux_x)
        fit_s = time.perf_counter() - start
        with torch.no_grad():
            feats = torch.cat([sm.device(b) for b in x.split(config.batch_size)])
        start = time.perf_counter()
        recon = _batched(inverter, feats, config.batch_size)
        per_image = (time.perf_counter() - start) / len(x)
        recons[sm.split] = recon.cpu()
        m = _measure(x, recon, identity)
        entry = {
            "split": sm.split,
            "depth": sm.depth,
            "method": config.method,
            "psnr": m["psnr"],
            "ssim": m["ssim"],
            "identity_similarity": m["identity_similarity"],
            "identity_compared": m["identity_compared"],
            "features_shape": list(feats.shape[1:]),
            "fit_seconds": fit_s,
            "seconds_per_image": per_image,
            "final_loss": inverter.loss_history_[-1] if inverter.loss_history_ else None,
            "defense": None,
        }
        if defense is not None:
            d_recon = _batched(inverter, defense(feats), config.batch_size)
            recons[f"{sm.split} ({defense})"] = d_recon.cpu()
            dm = _measure(x, d_recon, identity)
            acc = _accuracy(sm, x, labels, defense) if labels is not None else None
            entry["defense"] = {
                "spec": str(defense),
                "psnr": dm["psnr"],
                "ssim": dm["ssim"],
                "identity_similarity": dm["identity_similarity"],
                "identity_compared": dm["identity_compared"],
                "accuracy": acc,
                "accuracy_clean": clean_accuracy,
                "accuracy_cost": (
                    None if acc is None or clean_accuracy is None else clean_accuracy - acc
                ),
            }
        entries.append(entry)
    report = {
        # The inversion runs where the images are: the device of their tensor.
        **report_header("invert", argv, config.to_dict(), str(x.device)),
        "model": {
            "spec": model if isinstance(model, str) else type(model).__name__,
            "weights": weights,
            "input_shape": list(shape),
            "mean": config.mean,
            "std": config.std,
        },
        "inputs": {
            "images": {
                "root": os.fspath(images),
                "files": len(rows) + sum(s.set == "images" for s in skipped),
                "used": len(rows),
                "skipped": sum(s.set == "images" for s in skipped),
            },
            "aux": None
            if aux_x is None
            else {
                "root": os.fspath(aux or ""),
                "files": len(aux_x) + sum(s.set == "aux" for s in skipped),
                "used": len(aux_x),
                "skipped": sum(s.set == "aux" for s in skipped),
            },  # fmt: skip
        },
        "summary": {
            "n_images": len(rows),
            "method": config.method,
            "baseline": {
                "psnr": float(np.mean(psnr(x, baseline))),
                "ssim": float(np.mean(ssim(x, baseline))),
                "note": "mean of the inverted images: what a reconstruction scores with no "
                "information from the features",
            },
            "most_leaky_split": max(entries, key=lambda e: e["psnr"])["split"],
            "accuracy": clean_accuracy,
            "defense": None if defense is None else str(defense),
            "identity_note": "face-encoder cosine between original and reconstruction (both at "
            "the file's size), mean over images where both have a detectable face; "
            f"same-person operating point {0.93 if identity else 'n/a'}",
        },
        "images": [{"path": r["path"], "label": r["label"]} for r in rows],
        "splits": entries,
        "skipped": [s.to_dict() for s in skipped],
    }
    # The result keeps its images in host memory, wherever the inversion ran.
    return InversionResult(report, x.cpu(), recons)
