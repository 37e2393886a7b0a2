"""Golden: augmented copies of real COIL-20 images found by ``pixel`` and ``tiled``."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from trainleak import audit
from trainleak.config import AuditConfig, EmbedConfig

from conftest import COIL

AUGMENTS = ("flip", "crop", "jpeg30", "bright")


def _augment(im: Image.Image, kind: str) -> Image.Image:
    if kind == "flip":
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "crop":  # cut 3% (at least 1 px) off each side and scale back
        w, h = im.size
        dx, dy = max(1, round(w * 0.03)), max(1, round(h * 0.03))
        return im.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)
    if kind == "jpeg30":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=30)
        return Image.open(io.BytesIO(buf.getvalue()))
    return ImageEnhance.Brightness(im).enhance(1.25)


@pytest.fixture(scope="module")
def copy_scenario(tmp_path_factory):
    """train: objects 1-10, 10 views each; synthetic: 20 augmented copies of
    training images + 40 views of objects 11-20; holdout: 40 other views of 11-20."""
    root = tmp_path_factory.mktemp("coil")
    for sub in ("train", "synthetic", "holdout"):
        (root / sub).mkdir()
    train_views = range(0, 50, 5)
    for obj in range(1, 11):
        for v in train_views:
            os.symlink(COIL / f"obj{obj}__{v}.png", root / "train" / f"obj{obj}__{v}.png")
    rng = np.random.default_rng(0)
    for i in range(20):
        obj, v = int(rng.integers(1, 11)), int(rng.choice(list(train_views)))
        kind = AUGMENTS[i % 4]
        img = _augment(Image.open(COIL / f"obj{obj}__{v}.png").convert("L"), kind)
        img.save(root / "synthetic" / f"copy{i:02d}_{kind}_obj{obj}__{v}.png")
    for obj in range(11, 21):
        for v in (2, 14, 26, 38):
            os.symlink(COIL / f"obj{obj}__{v}.png", root / "synthetic" / f"new_obj{obj}__{v}.png")
        for v in (8, 20, 32, 44):
            os.symlink(COIL / f"obj{obj}__{v}.png", root / "holdout" / f"obj{obj}__{v}.png")
    return root


# Pixel space cannot tell object 16 from a training object at 32 px: up to 4 of
# its views pass the holdout maximum, so pixel is allowed 4 false flags of 40.
@pytest.mark.parametrize(("encoder", "max_false"), [("pixel", 4), ("tiled", 2)])
def test_augmented_copies_found(copy_scenario, encoder, max_false, tmp_path):
    cfg = AuditConfig(embed=EmbedConfig(encoder=encoder, workers=1, cache=str(tmp_path)), fpr=0.02)
    result = audit(
        copy_scenario / "train", copy_scenario / "synthetic", copy_scenario / "holdout", config=cfg
    )
    flagged = [os.path.basename(f) for f in result.flagged]
    copies = [f for f in flagged if f.startswith("copy")]
    false = [f for f in flagged if f.startswith("new_")]
    assert len(copies) == 20, f"{encoder}: copies found {sorted(copies)}"
    assert len(false) <= max_false, f"{encoder}: false flags {false}"
    # each flagged copy points at the exact training image it was made from
    for m in result.report["matches"]:
        if m["flagged"] and os.path.basename(m["synthetic"]).startswith("copy"):
            assert os.path.basename(m["synthetic"]).split("_", 2)[2] == os.path.basename(m["train"])
