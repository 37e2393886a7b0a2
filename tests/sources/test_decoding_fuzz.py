"""Issue 21 items 4 and 5 at the decoder: any damage is a skip, only documented formats open.

The fuzz cases are random mutations of real COIL photos encoded as PNG, JPEG,
TIFF, GIF and WebP (:mod:`hostile_files`); each must decode or raise
:class:`ImageSkip` with a reason, never anything else.
"""

from __future__ import annotations

import io
import json
import os
import random
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hostile_files import (
    coil_image,
    encode,
    eps,
    mutate,
    seeds,
    typeerror_tiff,
    unknown_pixel_format_dds,
)
from PIL import Image

from trainleak.decoding import (
    FORMATS,
    ImageSkip,
    NotAnImage,
    decode_image,
    image_format,
    open_image,
)
from trainleak.service.uploads import refusal

#: Cases per run; about 3 s on one shared core of the dev machine.
FUZZ_CASES = 3000
#: The whole fuzz run must stay well inside a test's time budget.
FUZZ_SECONDS = 20.0


def _pillow_unguarded(data: bytes) -> str | None:
    """What plain Pillow (all formats, no guard) raises beyond its documented errors."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None
    except Exception as err:  # noqa: BLE001 - the point: what escapes
        return type(err).__name__
    return None


def test_crafted_crashers_are_skips_with_reasons():
    tiff, dds = typeerror_tiff(), unknown_pixel_format_dds()
    # The files really do crash plain Pillow the way the issue saw.
    assert _pillow_unguarded(tiff) == "TypeError"
    assert _pillow_unguarded(dds) == "NotImplementedError"
    with pytest.raises(ImageSkip, match=r"truncated or corrupt image data: TypeError"):
        decode_image(tiff)
    with pytest.raises(NotAnImage, match="unrecognised format"):
        decode_image(dds)


def test_fuzzed_images_decode_or_skip_never_raise(tmp_path):
    rng = random.Random(21)
    base = seeds()
    names = sorted(base)
    decoded = skipped = 0
    escaped_plain_pillow: dict[str, int] = {}
    # Decoders write libtiff/libjpeg complaints to fd 2 and warn; neither is the point here.
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(devnull, 2)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for case in range(FUZZ_CASES):
                name = names[case % len(names)]
                data = mutate(base[name], rng, tiff=name.startswith("tiff"))
                try:
                    rgb = decode_image(data, max_pixels=4_000_000)
                except ImageSkip as skip:
                    assert str(skip).strip(), f"empty skip reason ({name}, case {case})"
                    assert "\n" not in str(skip)
                    skipped += 1
                except Exception as err:  # pragma: no cover - the failure being tested for
                    (tmp_path / f"case{case}.{name}").write_bytes(data)
                    pytest.fail(f"{name} case {case} raised {type(err).__name__}: {err}")
                else:
                    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
                    decoded += 1
                escaped = _pillow_unguarded(data)
                if escaped:
                    escaped_plain_pillow[escaped] = escaped_plain_pillow.get(escaped, 0) + 1
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    elapsed = time.perf_counter() - start
    assert decoded + skipped == FUZZ_CASES
    # Both outcomes occur (the mutations are neither all harmless nor all fatal) ...
    assert decoded > FUZZ_CASES // 10 and skipped > FUZZ_CASES // 10
    # ... and the cases reach exceptions plain Pillow lets escape (TypeError
    # from retyped TIFF tags at least), so the guard is exercised, not assumed.
    assert escaped_plain_pillow.get("TypeError", 0) > 0, escaped_plain_pillow
    assert elapsed < FUZZ_SECONDS


def test_unmutated_seeds_decode():
    for name, data in seeds().items():
        assert decode_image(data).shape == (16, 16, 3), name


def test_only_documented_formats_open():
    # Formats Pillow reads but trainleak does not document are "not an image".
    for fmt in ("DDS", "ICO", "PCX", "TGA", "EPS", "SGI"):
        data = encode(Image.new("RGB", (8, 8), (9, 9, 9)), fmt)
        with pytest.raises(NotAnImage, match="unrecognised format"):
            open_image(data)
        assert refusal(f"x.{fmt.lower()}", data, 10**6) is not None
        assert refusal(f"x.{fmt.lower()}", data, 10**6)[0] == 415
    assert set(FORMATS) == {"JPEG", "PNG", "PPM", "GIF", "WEBP", "TIFF", "BMP"}


def test_eps_never_runs_ghostscript(tmp_path):
    """A real EPS file in a folder run through ``trainleak audit``: no ``gs`` is started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ghostscript-ran"
    fake_gs = bin_dir / "gs"
    # Pillow finds Ghostscript as "gs" on PATH; this one only records that it ran.
    fake_gs.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 1\n')
    fake_gs.chmod(fake_gs.stat().st_mode | stat.S_IXUSR)
    train, synth = tmp_path / "train", tmp_path / "synth"
    for d in (train, synth):
        d.mkdir()
    for v in range(4):
        (train / f"t{v}.png").write_bytes(encode(coil_image(2, v, 32), "PNG"))
        (synth / f"s{v}.png").write_bytes(encode(coil_image(7, v, 32), "PNG"))
    (synth / "poster.png").write_bytes(eps())  # named like a PNG: decoding goes by content
    (train / "art.eps").write_bytes(eps())
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("trainleak")
    proc = subprocess.run(
        [str(exe), "audit", "--train", str(train), "--synthetic", str(synth), "--encoder",
         "pixel", "--threshold", "0.99", "--out", str(out), "--no-cache", "--workers", "1", "-q"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), marker.read_text()
    report = json.loads((out / "report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "poster.png": "not an image (unrecognised format)",
        "art.eps": "not an image (unrecognised format)",
    }


def test_naming_a_format_leaves_pillows_guard_alone():
    before = Image.MAX_IMAGE_PIXELS
    assert image_format(encode(Image.new("RGB", (8, 8)), "TIFF")) == "TIFF"
    assert image_format(eps()) is None and image_format(unknown_pixel_format_dds()) is None
    assert before == Image.MAX_IMAGE_PIXELS
