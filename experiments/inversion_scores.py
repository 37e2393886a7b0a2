"""Scores and tables of ``orl_inversion_deep.py`` (issue 16 part 2).

Face scores (with and without the face detector), the victim classifier's
top-1, adding them to a run made without dlib (``--rescore``), joining runs
(``--merge``) and the Markdown tables the README shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from trainleak.audits.inversion.metrics import face_rates, face_vectors, to_uint8_images
from trainleak.audits.inversion.nets import resnet18_like
from trainleak.encoders import get_encoder

THRESHOLD = 0.93


def face_scorer(data: dict):
    """``recon -> {face_found, verified, rank1, verified_aligned, rank1_aligned}``.

    The first three detect the face (HOG) as a user's audit would; a
    reconstruction without a detected face counts as not recognised. The
    ``_aligned`` pair skips detection: ORL photos are centred faces, so the
    whole image is taken as the face box for gallery, originals and
    reconstructions alike. It measures identity in reconstructions too blurred
    for the detector; ``face_rates`` gives its ``face_found`` as 1 by design.
    """
    out = {}
    for suffix, aligned in (("", False), ("_aligned", True)):
        # HOG detector only: dlib's CNN fallback costs ~2 s per image without a face,
        # and most deep-split reconstructions have none.
        enc = get_encoder("face", cnn_fallback=False, aligned=aligned)
        x, y_query, rows = data["query"]
        sizes = [tuple(r["size"]) for r in rows]
        g_sizes = [tuple(r["size"]) for r in data["gallery"][2]]
        gallery = face_vectors(to_uint8_images(data["gallery"][0], g_sizes), enc)
        g_ok = [i for i, v in enumerate(gallery) if v is not None]
        out[suffix] = (
            enc,
            sizes,
            np.stack([gallery[i] for i in g_ok]),
            data["gallery"][1].cpu().numpy()[g_ok],
            face_vectors(to_uint8_images(x, sizes), enc),
            y_query.cpu().numpy(),
        )

    def faces(recon: torch.Tensor) -> dict:
        rates = {}
        for suffix, (enc, sizes, g_mat, g_lab, originals, labels) in out.items():
            vecs = face_vectors(to_uint8_images(recon, sizes), enc)
            r = face_rates(vecs, originals, g_mat, g_lab, labels, THRESHOLD)
            keys = ("face_found", "verified", "rank1") if not suffix else ("verified", "rank1")
            rates |= {k + suffix: r[k] for k in keys}
        return rates

    faces.gallery_with_face = len(out[""][3])  # type: ignore[attr-defined]
    return faces


def model_labels(data: dict) -> torch.Tensor:
    """The query people's class indices in the classifier's order (that of the training set)."""
    order = sorted({r["label"] for r in data["train"][2]})
    return torch.tensor([order.index(r["label"]) for r in data["query"][2]])


def model_rank1(model: torch.nn.Module, recon: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of reconstructions the victim classifier itself assigns to the right person."""
    p = next(model.parameters())
    with torch.no_grad():
        pred = model((recon.to(p.device) - 0.5) / 0.5).argmax(1).cpu()
    return float((pred == labels).float().mean())


def rescore(
    json_path: str, npz_path: str, data: dict, out: str, classifier: str | None, width: int
) -> None:
    """Add face scores to a ``--no-faces`` run from its saved reconstructions.

    Rows already scored keep their face scores (a second pass adds only what
    is missing); with ``classifier`` (the run's weights), ``model_rank1`` too.
    """
    results = json.loads(Path(json_path).read_text())
    recons = np.load(npz_path)
    faces = None
    model = None
    if classifier:
        model = resnet18_like(classes=40, width=width)
        model.load_state_dict(torch.load(classifier, map_location="cpu"))
        model.eval()
    labels = model_labels(data)
    x = data["query"][0]

    def pixels(key: str) -> torch.Tensor:
        return torch.from_numpy(recons[key].astype(np.float32) / 255.0)

    def add(row: dict, recon: torch.Tensor) -> None:
        nonlocal faces
        if "rank1_aligned" not in row:
            faces = faces or face_scorer(data)
            row |= faces(recon)
            results["gallery_with_face"] = faces.gallery_with_face  # type: ignore[attr-defined]
        if model is not None:
            row["model_rank1"] = model_rank1(model, recon, labels)

    add(results["baseline"], pixels("baseline"))
    add(results.setdefault("originals", {}), x)
    for row in results["rows"] + results["defenses"]:
        key = "/".join([row["split"], row["method"], row.get("defense", "")]).rstrip("/")
        add(row, pixels(key))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def merge(paths: list[str], out: str) -> None:
    """Join runs made over different splits, methods or step scales (same classifier).

    A row (split, method, defence, scale) measured by several runs is taken
    from the first file given.
    """
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({r["accuracy_clean"] for r in runs}) != 1:
        raise SystemExit("the runs trained different classifiers: their accuracies differ")
    merged = dict(runs[0])
    merged["rows"], merged["defenses"], merged["runs"], merged["skipped"] = [], [], [], []
    done: set[tuple] = set()
    for path, r in zip(paths, runs, strict=True):
        for key in ("rows", "defenses"):
            for row in r[key]:
                scale = row.get("scale", r["settings"]["scale"])
                ident = (key, row["split"], row["method"], row.get("defense"), scale)
                if ident not in done:
                    merged[key].append(row | {"scale": scale})
                    done.add(ident)
        merged["skipped"] += r.get("skipped", [])
        merged["runs"].append(
            {"file": Path(path).name, "settings": r["settings"], "seconds": r["seconds"]}
        )
    merged["seconds"] = sum(r["seconds"] for r in runs)
    Path(out).write_text(json.dumps(merged, indent=2) + "\n")
    print_table(merged)


def pct(row: dict, key: str) -> str:
    """A rate as a whole percentage; "-" where it was not measured (``--no-faces``)."""
    return "-" if row.get(key) is None else f"{100 * row[key]:.0f}%"


def print_table(r: dict) -> None:
    b = r["baseline"]
    print(
        f"\ntest accuracy {r['accuracy_clean']:.3f}; mean image: PSNR {b['psnr']:.2f} dB, "
        f"SSIM {b['ssim']:.3f}, face found {pct(b, 'face_found')}, rank-1 "
        f"{pct(b, 'rank1')}; {r['seconds'] / 60:.0f} min\n"
    )
    print(
        "| split | depth | features | method | PSNR (dB) | SSIM | face found | verified | rank-1 "
        "| rank-1, no detector | victim model's top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def label(row: dict) -> str:
        scale = row.get("scale", r["settings"]["scale"])
        return row["method"] + ("" if scale == 1 else f" ({scale:g}x steps)")

    def order(row: dict) -> tuple:
        return row["depth"], row.get("scale", r["settings"]["scale"])

    for row in sorted(r["rows"], key=order):
        print(
            f"| `{row['split']}` | {row['depth']} | {'x'.join(map(str, row['features_shape']))} "
            f"| {label(row)} | "
            f"{row['psnr']:.2f} | {row['ssim']:.3f} | "
            f"{pct(row, 'face_found')} | {pct(row, 'verified')} | {pct(row, 'rank1')} "
            f"| {pct(row, 'rank1_aligned')} | {pct(row, 'model_rank1')} |"
        )
    print(
        "\n| split | defence | test accuracy | method | PSNR (dB) | SSIM | face found | rank-1 "
        "| rank-1, no detector |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in sorted(r["defenses"], key=order):
        print(
            f"| `{row['split']}` | {row['defense']} | {row['accuracy']:.3f} | {label(row)} | "
            f"{row['psnr']:.2f} | {row['ssim']:.3f} | {pct(row, 'face_found')} | "
            f"{pct(row, 'rank1')} | {pct(row, 'rank1_aligned')} |"
        )
