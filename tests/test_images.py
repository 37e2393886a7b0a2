"""Sources and decoding: every format by content, every bad file a skip record."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from trainleak.embedding import embed
from trainleak.images import ImageSkip, SourceError, decode_image, list_records

from conftest import ORL


def _grad(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "PPM", "GIF", "WEBP", "TIFF", "BMP"])
def test_formats_decode_by_content(fmt):
    arr = decode_image(_bytes(_grad(), fmt))
    assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8


def test_pgm_from_orl_and_no_extension(tmp_path):
    data = (ORL / "s1" / "1.pgm").read_bytes()
    (tmp_path / "noext").write_bytes(data)
    (tmp_path / "wrong.txt.png").write_bytes(_bytes(_grad(), "JPEG"))
    emb = embed(tmp_path, "pixel", workers=1, cache=False)
    assert len(emb) == 2 and not emb.skipped


def test_exif_orientation_applied():
    im = _grad(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    arr = decode_image(_bytes(im, "JPEG", exif=exif))
    assert arr.shape == (40, 30, 3)


def test_modes_become_rgb8():
    grey16 = Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16))
    assert decode_image(_bytes(grey16, "PNG")).max() > 200
    cmyk = _grad().convert("CMYK")
    assert decode_image(_bytes(cmyk, "JPEG")).shape == (30, 40, 3)
    rgba = Image.new("RGBA", (5, 5), (0, 0, 0, 0))
    assert (decode_image(_bytes(rgba, "PNG")) == 255).all()  # transparent -> white
    pal = _grad().convert("P")
    assert decode_image(_bytes(pal, "GIF")).shape == (30, 40, 3)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    arr = decode_image(buf.getvalue())
    assert arr[0, 0, 0] > 200 and arr[0, 0, 2] < 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text", "not an image"),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(ImageSkip, match=reason):
        decode_image(data)


def test_truncated_and_bomb():
    jpeg = _bytes(_grad(200, 200), "JPEG")
    with pytest.raises(ImageSkip, match="truncated or corrupt"):
        decode_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageSkip, match="too many pixels"):
        decode_image(_bytes(_grad(200, 200), "PNG"), max_pixels=10_000)


def _bad_folder(root):
    root.mkdir()
    _grad().save(root / "good.png")
    _grad().save(root / "good2.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    jpeg = _bytes(_grad(300, 300), "JPEG")
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    _grad(400, 400).save(root / "huge.png")
    os.symlink(root / "missing.png", root / "dangling.png")
    (root / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_bad_input_folder_skips_with_reasons(tmp_path):
    emb = embed(
        _bad_folder(tmp_path / "bad"),
        "pixel",
        workers=2,
        cache=tmp_path / "c",
        max_pixels=100_000,
        set_name="synthetic",
    )
    assert sorted(os.path.basename(i) for i in emb.ids) == ["good.png", "good2.jpg"]
    reasons = {os.path.basename(s.path): s.reason for s in emb.skipped}
    assert reasons == {
        "dangling.png": "file not found",
        "empty.jpg": "empty file (0 bytes)",
        "huge.png": reasons["huge.png"],
        "notes.jpg": "not an image (unrecognised format)",
        "truncated.jpg": reasons["truncated.jpg"],
    }
    assert reasons["huge.png"].startswith("too many pixels")
    assert reasons["truncated.jpg"].startswith("truncated or corrupt")
    assert emb.files == 7 and all(s.set == "synthetic" for s in emb.skipped)


def test_sources_folder_glob_txt_csv(tmp_path):
    for person in ("alice", "bob"):
        (tmp_path / "ids" / person).mkdir(parents=True)
        _grad().save(tmp_path / "ids" / person / "1.png")
    recs = list_records(tmp_path / "ids")
    assert [r.label for r in recs] == ["alice", "bob"]
    assert len(list_records(str(tmp_path / "ids" / "*" / "*.png"))) == 2
    (tmp_path / "list.txt").write_text("ids/alice/1.png\n# comment\n\nids/bob/1.png\n")
    assert [r.path.exists() for r in list_records(tmp_path / "list.txt")] == [True, True]
    (tmp_path / "list.csv").write_text("path,identity\nids/alice/1.png,A\nids/bob/1.png,B\n")
    assert [r.label for r in list_records(tmp_path / "list.csv")] == ["A", "B"]
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(SourceError, match="no 'path' column"):
        list_records(tmp_path / "bad.csv")
    with pytest.raises(SourceError, match="does not exist"):
        list_records(tmp_path / "nope")
    with pytest.raises(SourceError, match="matches no files"):
        list_records(str(tmp_path / "nope" / "*.png"))
